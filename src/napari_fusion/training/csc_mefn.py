"""Training CSC-MEFN (Xu, Zhao et al.) on exposure series rendered from photographs.

The authors trained on real multi-exposure sequences (4 random exposures
per scene, batch 8, Adam 5e-4, 50 epochs, random 90-degree rotations) with
the loss ``-MEF-SSIM + w * halo``, ``halo`` the mean absolute (normalised)
Sobel gradient of the fused luma and ``w`` ramped from 0 by 0.25 per step up
to 10. Real sequences are scarce here and are kept for validation, so
training series are rendered from BSDS500 photographs
(:class:`ExposureSeriesRenderer`):

1. a random crop (random flips / 90-degree rotations) of an sRGB photograph
   is linearised (gamma 2.2);
2. its dynamic range is expanded into a scene radiance: intensities raised
   to a random power (1-2.5) and multiplied by a smooth random illumination
   field of up to several stops (shadows and bright regions), then scaled
   so the median luma sits at 0.18;
3. K exposures: gains ``2^ev`` with the EVs spread evenly over a random span
   of 3-8 stops around a random centre (plus jitter);
4. each exposure gets signal-dependent noise (shot + read), clipping at
   full well, a random camera response curve (gamma 1.8-2.6 blended with an
   S-curve) and 8-bit quantisation; the order of the exposures is shuffled.

Every series is a deterministic function of (seed, index), so data need no
storage and a resumed run sees the same examples. Validation series come
from disjoint photographs (the BSDS500 ``val`` split). After training, the
model is scored on the real sequences of ``mef/ma_mef`` (downscaled) beside
Mertens exposure fusion and the plain average; they are never trained on.

Configurations: ``cpu`` (one thread, 25 min here), ``gpu`` (the paper's
optimisation at larger scale) and ``smoke`` (seconds, for tests).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..metrics.mef_torch import mef_ssim_torch
from ..nets.csc_mefn import BLENDS, CSCMEFN, count_parameters, fuse_exposures, postprocess
from ..ops.colour import luminance
from ..ops.filters import sobel_gradients
from .data import list_photos, resolve_data_path
from .loop import TrainConfig
from .model_card import write_model_card
from .run_options import add_run_arguments, apply_train_overrides
from .skeleton import LoopRecipe, Run, loop_summary, run_from_args, run_recipe

CITATION = (
    "Z. Zhao, J. Zhang, H. Bai, Y. Wang, Y. Cui, L. Deng, K. Sun, C. Zhang, J. Liu, S. Xu, "
    "'Deep convolutional sparse coding networks for interpretable image fusion', CVPR Workshops 2023."
)

WEIGHTS_NAME = "csc_mefn"


# ---------------------------------------------------------------------------
# data


@dataclass
class ExposureRenderConfig:
    """How a photograph becomes an exposure series (ranges are sampled uniformly)."""

    crop: int = 128
    n_exposures: int = 4
    range_power: tuple[float, float] = (1.0, 2.5)
    illumination_stops: tuple[float, float] = (0.0, 5.0)
    span_stops: tuple[float, float] = (3.0, 8.0)
    centre_stops: tuple[float, float] = (-1.0, 1.0)
    ev_jitter: float = 0.3
    crf_gamma: tuple[float, float] = (1.8, 2.6)
    crf_s_curve: tuple[float, float] = (0.0, 0.6)
    shot_noise: tuple[float, float] = (0.0, 2e-3)  # variance per unit signal
    read_noise: tuple[float, float] = (0.0, 4e-3)  # standard deviation


def _u(rng: np.random.Generator, lo_hi: tuple[float, float]) -> float:
    return float(rng.uniform(lo_hi[0], lo_hi[1]))


class ExposureSeriesRenderer:
    """Renders ``(K, 3, crop, crop)`` exposure series in [0, 1] from uint8 RGB photographs."""

    def __init__(self, cfg: ExposureRenderConfig):
        self.cfg = cfg

    def crop(self, photo: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        c = self.cfg.crop
        h, w = photo.shape[:2]
        if h < c or w < c:
            raise ValueError(f"photograph {h}x{w} is smaller than the crop {c}")
        y0 = int(rng.integers(0, h - c + 1))
        x0 = int(rng.integers(0, w - c + 1))
        t = torch.from_numpy(np.ascontiguousarray(photo[y0 : y0 + c, x0 : x0 + c])).permute(2, 0, 1).float() / 255.0
        t = torch.rot90(t, int(rng.integers(0, 4)), (1, 2))
        if rng.random() < 0.5:
            t = t.flip(2)
        return t.contiguous()

    def radiance(self, srgb: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        cfg = self.cfg
        lin = srgb.clamp(0, 1) ** 2.2
        lin = lin.clamp_min(1e-4) ** _u(rng, cfg.range_power)
        c = srgb.shape[-1]
        grid = torch.from_numpy(rng.standard_normal((1, 1, 3, 3)).astype(np.float32))
        field_ = F.interpolate(grid, size=(c, c), mode="bicubic", align_corners=True)[0, 0]
        field_ = field_ - field_.mean()
        field_ = field_ / field_.abs().max().clamp_min(1e-6) * 0.5  # in [-0.5, 0.5]
        rad = lin * torch.exp2(_u(rng, cfg.illumination_stops) * field_)
        med = luminance(rad).median().clamp_min(1e-6)
        return rad * (0.18 / med)

    def exposures(self, rad: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        cfg = self.cfg
        k = cfg.n_exposures
        span = _u(rng, cfg.span_stops)
        centre = _u(rng, cfg.centre_stops)
        frac = np.linspace(-0.5, 0.5, k) if k > 1 else np.zeros(1)
        evs = centre + span * frac + rng.uniform(-cfg.ev_jitter, cfg.ev_jitter, k)
        gamma = _u(rng, cfg.crf_gamma)
        s_mix = _u(rng, cfg.crf_s_curve)
        shot = _u(rng, cfg.shot_noise)
        read = _u(rng, cfg.read_noise)
        gen = torch.Generator().manual_seed(int(rng.integers(0, 2**31 - 1)))
        out = []
        for ev in evs:
            x = rad * float(2.0**ev)
            sd = torch.sqrt(shot * x.clamp(0, 1) + read * read)
            x = (x + sd * torch.randn(x.shape, generator=gen)).clamp(0, 1)
            y = x ** (1.0 / gamma)
            y = (1 - s_mix) * y + s_mix * (y * y * (3 - 2 * y))
            out.append(torch.round(y * 255.0) / 255.0)
        series = torch.stack(out)
        return series[torch.from_numpy(rng.permutation(k))]

    def render(self, photo: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        return self.exposures(self.radiance(self.crop(photo, rng), rng), rng)


class RenderedSeries:
    """``length`` exposure series, series ``i`` rendered from ``photos[i % n]`` with seed ``(seed, i)``."""

    def __init__(self, photos: list[np.ndarray], renderer: ExposureSeriesRenderer, length: int, seed: int):
        if not photos:
            raise ValueError("no photographs to render from")
        self.photos = photos
        self.renderer = renderer
        self.length = int(length)
        self.seed = int(seed)
        self.order = np.random.default_rng(seed).permutation(self.length) % len(photos)

    def __len__(self) -> int:
        return self.length

    def item(self, i: int) -> torch.Tensor:
        rng = np.random.default_rng([self.seed, int(i)])
        return self.renderer.render(self.photos[int(self.order[int(i)])], rng)

    def batch(self, index: torch.Tensor) -> tuple[torch.Tensor]:
        return (torch.stack([self.item(int(i)) for i in index]),)


def load_rgb_photos(paths, *, min_size: int = 0, progress: bool = False) -> list[np.ndarray]:
    """Photographs as uint8 ``(H, W, 3)`` arrays (grey ones replicated), those with a side < ``min_size`` dropped."""
    from tqdm.auto import tqdm

    from ..io import read_image

    out = []
    for p in tqdm(paths, desc="loading photos", disable=not progress):
        a = np.asarray(read_image(p))
        if a.dtype != np.uint8:
            a = np.clip(np.rint(a.astype(np.float64) / np.iinfo(a.dtype).max * 255), 0, 255).astype(np.uint8)
        if a.ndim == 2:
            a = np.repeat(a[..., None], 3, axis=-1)
        a = a[..., :3]
        if min(a.shape[:2]) >= min_size:
            out.append(a)
    return out


# ---------------------------------------------------------------------------
# loss


def halo_penalty(luma: torch.Tensor) -> torch.Tensor:
    """Mean absolute Sobel gradient (kernel normalised by 8, as kornia's) of ``(B, H, W)`` luma."""
    gx, gy = sobel_gradients(luma)
    return (gx.abs() + gy.abs()).mean() / 8.0 / 2.0


class MEFNLoss:
    """Step function for :func:`napari_fusion.training.loop.train`.

    ``loss = -MEF-SSIM + w * halo``; ``w`` starts at 0 and grows by ``ramp``
    after every training step up to ``halo_max`` (validation uses the current
    ``w``). The loop's "accuracy" is the mean MEF-SSIM (MEF-Net variant).
    """

    def __init__(self, halo_max: float = 10.0, ramp: float = 0.25, *, blend: str = "sum"):
        self.halo_max = float(halo_max)
        self.ramp = float(ramp)
        self.blend = blend
        self.weight = 0.0

    def __call__(self, model: torch.nn.Module, batch: tuple) -> tuple[torch.Tensor, float, int]:
        (stack,) = batch
        if model.training and stack.shape[-1] == stack.shape[-2]:
            stack = torch.rot90(stack, int(torch.randint(4, (1,))), (-2, -1))
        fused, _ = fuse_exposures(model, stack, blend=self.blend)
        yf = luminance(fused, channel_dim=1)
        ys = luminance(stack, channel_dim=2)
        q = mef_ssim_torch(yf, ys)
        loss = -q.mean()
        if self.halo_max > 0:
            loss = loss + self.weight * halo_penalty(yf)
        if model.training and torch.is_grad_enabled():
            self.weight = min(self.weight + self.ramp, self.halo_max)
        return loss, float(q.detach().sum()), int(stack.shape[0])


# ---------------------------------------------------------------------------
# configurations


@dataclass
class MEFNDataConfig:
    photos: str = "train/bsds500"  # relative to the shared data folder, or absolute
    train_splits: tuple[str, ...] = ("train", "test")  # sub-folders used for training
    val_splits: tuple[str, ...] = ("val",)
    n_train_series: int = 64_000
    n_val_series: int = 64
    max_photos: int | None = None
    render: ExposureRenderConfig = field(default_factory=ExposureRenderConfig)
    real_validation: str = "mef/ma_mef"  # scored after training, never trained on
    real_max_side: int = 256


@dataclass
class MEFNTrainConfig:
    name: str
    channels: int = 24
    n_dcu: int = 2
    halo_max: float = 10.0
    halo_ramp: float = 0.25
    blend: str = "sum"  # how the weights combine the exposures (nets.csc_mefn.BLENDS)
    data: MEFNDataConfig = field(default_factory=MEFNDataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def as_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in dataclasses.asdict(self).items() if k not in ("data", "train")}
        d["data"] = dataclasses.asdict(self.data)
        d["train"] = self.train.as_dict()
        return d


def get_config(
    name: str, *, n_dcu: int | None = None, halo_max: float | None = None, blend: str | None = None
) -> MEFNTrainConfig:
    """``cpu`` (1 thread, 25 min), ``gpu`` (paper optimisation, more data) or ``smoke``; ``blend``
    ``"pyramid"`` trains the weights of the ``csc_mefn_pyramid`` variant (loss on the pyramid blend)."""
    if name == "cpu":
        cfg = MEFNTrainConfig(
            "cpu",
            n_dcu=2,
            halo_max=0.0,  # the released weights' run (".._lw0.000000"); see the docs
            data=MEFNDataConfig(n_train_series=40_000, n_val_series=32, render=ExposureRenderConfig(crop=64)),
            train=TrainConfig(
                seed=2023,
                batch_size=8,
                epochs=1,
                optimizer="adam",
                lr=2e-3,
                weight_decay=0.0,
                schedule="cosine",
                max_minutes=22,
                checkpoint_every=100,
                val_every=150,
                val_batch_size=16,
                threads=1,
            ),
        )
    elif name == "gpu":
        cfg = MEFNTrainConfig(
            "gpu",
            n_dcu=6,
            data=MEFNDataConfig(n_train_series=200_000, n_val_series=256, render=ExposureRenderConfig(crop=256)),
            train=TrainConfig(
                seed=2023,
                batch_size=8,
                epochs=1,
                optimizer="adam",
                lr=5e-4,
                weight_decay=0.0,
                schedule="step",
                lr_drop_at=(),
                checkpoint_every=1000,
                val_every=2000,
                val_batch_size=32,
                threads=None,
            ),
        )
    elif name == "smoke":
        cfg = MEFNTrainConfig(
            "smoke",
            channels=8,
            n_dcu=1,
            halo_max=1.0,
            data=MEFNDataConfig(
                n_train_series=64, n_val_series=8, max_photos=6, render=ExposureRenderConfig(crop=48), real_max_side=96
            ),
            train=TrainConfig(
                seed=0,
                batch_size=4,
                epochs=2,
                optimizer="adam",
                lr=5e-3,
                weight_decay=0.0,
                schedule="cosine",
                checkpoint_every=8,
                val_batch_size=8,
                threads=1,
            ),
        )
    else:
        raise ValueError(f"unknown configuration {name!r}; use cpu, gpu or smoke")
    return _with_overrides(cfg, n_dcu=n_dcu, halo_max=halo_max, blend=blend)


def _with_overrides(
    cfg: MEFNTrainConfig, *, n_dcu: int | None, halo_max: float | None, blend: str | None
) -> MEFNTrainConfig:
    """``cfg`` with the command line's ``--n-dcu``, ``--halo-max`` and ``--blend`` (checked)."""
    if n_dcu is not None:
        if n_dcu < 0:
            raise ValueError("n_dcu must be >= 0")
        cfg.n_dcu = int(n_dcu)
    if halo_max is not None:
        if halo_max < 0:
            raise ValueError("halo_max must be >= 0")
        cfg.halo_max = float(halo_max)
    if blend is not None:
        if blend not in BLENDS:
            raise ValueError(f"blend must be one of {', '.join(BLENDS)}")
        cfg.blend = blend
    return cfg


def weights_name(cfg: MEFNTrainConfig) -> str:
    """File stem (and method name) of the weights ``cfg`` trains."""
    return WEIGHTS_NAME if cfg.blend == "sum" else f"{WEIGHTS_NAME}_{cfg.blend}"


def _photo_paths(folder: Path, splits: tuple[str, ...]) -> list[Path]:
    subs = [folder / s for s in splits if (folder / s).is_dir()]
    if not subs:
        raise FileNotFoundError(f"none of the sub-folders {splits} exist under {folder}")
    return [p for s in subs for p in list_photos(s)]


def build_datasets(cfg: MEFNTrainConfig, *, progress: bool = True, log=print):
    d = cfg.data
    folder = resolve_data_path(d.photos)
    tr_paths = _photo_paths(folder, d.train_splits)
    va_paths = _photo_paths(folder, d.val_splits)
    if d.max_photos is not None:
        tr_paths, va_paths = tr_paths[: d.max_photos], va_paths[: max(1, d.max_photos // 2)]
    renderer = ExposureSeriesRenderer(d.render)
    tr = load_rgb_photos(tr_paths, min_size=d.render.crop, progress=progress)
    va = load_rgb_photos(va_paths, min_size=d.render.crop, progress=progress)
    info = {
        "folder": str(folder),
        "train_photos": len(tr),
        "val_photos": len(va),
        "train_series": d.n_train_series,
        "val_series": d.n_val_series,
    }
    return (
        RenderedSeries(tr, renderer, d.n_train_series, cfg.train.seed),
        RenderedSeries(va, renderer, d.n_val_series, cfg.train.seed + 7919),
        info,
    )


# ---------------------------------------------------------------------------
# real-data validation


def load_sequence(case, max_side: int) -> np.ndarray:
    """A real exposure sequence as uint8 ``(K, H, W, 3)``, the long side at most ``max_side``."""
    from skimage.transform import resize

    srcs = [np.asarray(s) for s in case.load_sources()]
    srcs = [np.repeat(s[..., None], 3, -1) if s.ndim == 2 else s[..., :3] for s in srcs]
    h, w = srcs[0].shape[:2]
    f = max_side / max(h, w)
    if f < 1:
        size = (max(1, round(h * f)), max(1, round(w * f)))
        srcs = [
            np.clip(np.rint(resize(s, size, anti_aliasing=True, preserve_range=True)), 0, 255).astype(np.uint8)
            for s in srcs
        ]
    return np.stack(srcs)


@torch.no_grad()
def score_real_sequences(
    model: CSCMEFN, folder: Path, *, max_side: int = 256, blend: str = "sum", device="cpu", log=print
) -> dict[str, Any]:
    """MEF-SSIM (the MATLAB-faithful metric) of the model, Mertens fusion and the average
    on every sequence of ``folder`` (downscaled to ``max_side``)."""
    from ..api import fuse
    from ..datasets import iter_cases
    from ..metrics import mef_ssim

    model = model.eval().to(device)
    rows = []
    for case in iter_cases(folder):
        seq = load_sequence(case, max_side)
        stack = torch.from_numpy(seq).permute(0, 3, 1, 2).float().div(255).unsqueeze(0).to(device)
        fused, _ = fuse_exposures(model, stack, blend=blend)
        ours = (postprocess(fused[0]).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
        srcs = list(seq)
        mert = fuse(srcs, method="mertens", device="cpu").fused
        avg = fuse(srcs, method="average", device="cpu").fused
        row = {
            "case": case.name,
            "K": len(srcs),
            "csc_mefn": mef_ssim(ours, srcs),
            "mertens": mef_ssim(mert, srcs),
            "average": mef_ssim(avg, srcs),
        }
        rows.append(row)
        log(
            f"  {case.name:16s} K={row['K']:2d} csc_mefn {row['csc_mefn']:.4f} mertens {row['mertens']:.4f} average {row['average']:.4f}"
        )
    mean = {k: float(np.mean([r[k] for r in rows])) for k in ("csc_mefn", "mertens", "average")} if rows else {}
    return {"folder": str(folder), "max_side": max_side, "cases": rows, "mean": mean}


# ---------------------------------------------------------------------------
# run


def _data_text(cfg: MEFNTrainConfig, info: dict[str, Any]) -> str:
    r = cfg.data.render
    return (
        f"Exposure series rendered on the fly from {info['train_photos']} BSDS500 photographs "
        f"(`{cfg.data.photos}`, splits {', '.join(cfg.data.train_splits)}); validation series from "
        f"{info['val_photos']} disjoint photographs (split {', '.join(cfg.data.val_splits)}). Each series: "
        f"{r.crop}x{r.crop} crop, linearised (gamma 2.2), raised to a power in {r.range_power}, times a smooth "
        f"illumination field of up to {r.illumination_stops[1]} stops, median luma 0.18; {r.n_exposures} exposures "
        f"spread over {r.span_stops[0]}-{r.span_stops[1]} stops; shot + read noise, clipping, camera response "
        f"gamma {r.crf_gamma} blended with an S-curve ({r.crf_s_curve}), 8-bit quantisation. "
        "The 'accuracy' columns below are the mean MEF-SSIM (MEF-Net variant, the training objective) "
        "of the synthetic validation series."
    )


def _real_validation_section(cfg: MEFNTrainConfig, real: dict[str, Any]) -> list[str]:
    lines = [
        "",
        "## Validation on real sequences (never trained on)",
        "",
        f"MEF-SSIM (`napari_fusion.metrics.mef_ssim`, Ma et al.'s MATLAB definition) on the "
        f"{len(real['cases'])} sequences of `{cfg.data.real_validation}`, long side downscaled to "
        f"{real['max_side']} px; `{weights_name(cfg)}` with its default percentile stretch (column `csc_mefn`).",
        "",
        "| sequence | K | csc_mefn | mertens | average |",
        "|---|---|---|---|---|",
    ]
    for row in real["cases"]:
        lines.append(
            f"| {row['case']} | {row['K']} | {row['csc_mefn']:.4f} | {row['mertens']:.4f} | {row['average']:.4f} |"
        )
    m = real["mean"]
    lines.append(f"| **mean** | | **{m['csc_mefn']:.4f}** | **{m['mertens']:.4f}** | **{m['average']:.4f}** |")
    return lines


class MEFNRecipe(LoopRecipe):
    """CSC-MEFN's weight network: rendered exposure series, MEF-SSIM loss; scored on real sequences."""

    name = WEIGHTS_NAME

    def __init__(self, cfg: MEFNTrainConfig, *, real_validation: bool = True):
        self.cfg = cfg
        self.real_validation = real_validation
        self.name = weights_name(cfg)

    def build_data(self, run: Run):
        return build_datasets(self.cfg, progress=run.progress, log=run.log)

    def data_message(self, data, seconds: float) -> str:
        return f"data ready in {seconds:.0f} s: {data[2]}"

    def build_model(self, data) -> CSCMEFN:
        return CSCMEFN(self.cfg.channels, self.cfg.n_dcu)

    def step(self):
        return MEFNLoss(self.cfg.halo_max, self.cfg.halo_ramp, blend=self.cfg.blend)

    def evaluate(self, result, data, run: Run) -> dict[str, Any] | None:
        """MEF-SSIM on the real sequences (never trained on), when they are there."""
        if not self.real_validation:
            return None
        try:
            folder = resolve_data_path(self.cfg.data.real_validation)
        except FileNotFoundError:
            return None
        if not folder.is_dir():
            return None
        run.log(f"scoring real sequences in {folder} (never trained on)")
        real = score_real_sequences(
            result.model, folder, max_side=self.cfg.data.real_max_side, blend=self.cfg.blend, log=run.log
        )
        (run.out_dir / "real_validation.json").write_text(json.dumps(real, indent=1) + "\n")
        return real

    def manifest(self, result, data, real, run: Run) -> dict[str, Any]:
        cfg, (train_set, val_set, info) = self.cfg, data
        return {
            "method": self.name,
            "blend": cfg.blend,
            "architecture": f"CSCMEFN(channels={cfg.channels}, n_dcu={cfg.n_dcu})",
            "channels": cfg.channels,
            "n_dcu": cfg.n_dcu,
            "parameters": count_parameters(result.model),
            "config": cfg.as_dict(),
            "data": info,
            "training": loop_summary(
                cfg.train.seed,
                result,
                val_examples=len(val_set),
                train_examples=len(train_set),
                val_accuracy_means="mean MEF-SSIM (MEF-Net variant) of held-out synthetic series",
            ),
            "real_validation": None
            if real is None
            else {
                "folder": cfg.data.real_validation,
                "max_side": real["max_side"],
                "mean_mef_ssim": real["mean"],
                "cases": len(real["cases"]),
            },
        }

    def finish(self, result, data, real, manifest: dict[str, Any], run: Run) -> None:
        card = write_model_card(
            run.out_dir / f"{self.name}.md",
            title=f"CSC-MEFN weight network, `{self.cfg.name}` configuration",
            summary=(
                f"Weights of the luma weight network of the `{self.name}` multi-exposure fusion method "
                f"(`napari_fusion.nets.csc_mefn.CSCMEFN`, {self.cfg.n_dcu} DCUs at {self.cfg.channels} channels; "
                f"exposures combined by the `{self.cfg.blend}` blend of `napari_fusion.nets.csc_mefn.fuse_exposures`)."
            ),
            manifest=manifest,
            command=run.command,
            data=_data_text(self.cfg, data[2]),
            history=result.history,
            citation=CITATION,
        )
        if real is not None:
            with open(card, "a") as fh:
                fh.write("\n".join(_real_validation_section(self.cfg, real)) + "\n")

    def done_message(self, result, real, manifest: dict[str, Any], run: Run) -> str:
        return (
            f"wrote {run.out_dir / (self.name + '.pt')} (sha256 {manifest['sha256']}), synthetic val MEF-SSIM "
            f"{result.val_accuracy:.4f}, {result.train_seconds / 60:.1f} min"
        )


def run_training(
    cfg: MEFNTrainConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    command: str | None = None,
    real_validation: bool = True,
    log=print,
) -> dict[str, Any]:
    """Train, export ``out_dir/<weights_name(cfg)>.{pt,json,md}``; returns the manifest."""
    return run_recipe(
        MEFNRecipe(cfg, real_validation=real_validation),
        out_dir,
        resume=resume,
        progress=progress,
        command=command,
        log=log,
    )


def add_arguments(p) -> None:
    p.add_argument("--config", choices=("cpu", "gpu", "smoke"), default="cpu", help="training scale (default cpu)")
    p.add_argument("--n-dcu", type=int, default=None, help="number of DCUs (default from the config: cpu 2, gpu 6)")
    p.add_argument(
        "--halo-max",
        type=float,
        default=None,
        help="final weight of the halo loss (default from the config: cpu 0 as the released weights, gpu 10)",
    )
    p.add_argument(
        "--blend",
        choices=BLENDS,
        default=None,
        help="sum: the paper's per-pixel blend (csc_mefn); pyramid: the csc_mefn_pyramid variant's weights",
    )
    p.add_argument("--no-real-validation", action="store_true", help="skip scoring on the real mef/ma_mef sequences")
    add_run_arguments(p, default_out="runs/csc_mefn-<config>")


def main_from_args(args) -> int:
    cfg = get_config(args.config, n_dcu=args.n_dcu, halo_max=args.halo_max, blend=args.blend)
    apply_train_overrides(cfg.train, args)
    return run_from_args(
        args, MEFNRecipe(cfg, real_validation=not args.no_real_validation), f"runs/{weights_name(cfg)}-{args.config}"
    )
