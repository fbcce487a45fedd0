"""Training the end-to-end two-stream fusion network (KSII TIIS 2018) on synthetic defocus.

Paper recipe (KSII TIIS 12(5), 2018; ``shared/reference/methods.md`` M3):
pairs of Gaussian-blurred versions of a sharp image, blur sigma 2 to 10 over
random regions, 50x50 training patches, MSE against the sharp image, Adam.

Here: BSDS500 photographs (grey, [0, 1]) pass the shared sharpness filter of
:mod:`.data`; for each photograph a few whole-image Gaussian blurs with sigma
drawn uniformly from [2, 10] are rendered; a training example is a 50x50
location with texture, a random binary region mask M (a straight boundary, an
ellipse, a smooth random blob, or the whole patch) and two blur levels:

    A = M * S + (1 - M) * blur_i(S),     B = (1 - M) * S + M * blur_j(S),

target S (the regions are complementary, so every pixel is sharp in exactly
one source, as in the paper's training pairs). M and 1 - M are equally
likely, so neither input position is favoured.

Configurations: ``cpu`` (24k examples, an hour's budget on two cores),
``gpu`` (400k examples, 10 epochs) and ``smoke`` (seconds, a narrow network,
for tests). The validation "accuracy" reported by the loop is the fraction of
held-out patches on which the network's MSE is below that of the plain
average ``(A + B) / 2``.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..nets.tiis2018_fcn import DEFAULT_KERNEL, DEFAULT_LAYOUT, DEFAULT_WIDTH, TwoStreamFusionNet, count_parameters
from ..ops.filters import gaussian_filter
from .data import filter_sharp_photos, list_photos, load_photos, patch_variance, resolve_data_path, split_indices
from .loop import TrainConfig
from .model_card import write_model_card
from .run_options import add_run_arguments, apply_train_overrides
from .skeleton import LoopRecipe, Run, loop_summary, run_from_args, run_recipe

CITATION = (
    "End-to-end two-stream fully convolutional network for multi-focus image fusion "
    "(conv - fusion - deconv), KSII Transactions on Internet and Information Systems 12(5), 2018."
)
WEIGHTS_NAME = "tiis2018_fcn"

#: mask kinds and their probabilities
MASK_KINDS = ("edge", "ellipse", "blob", "whole")
MASK_PROBS = (0.35, 0.25, 0.2, 0.2)


# --------------------------------------------------------------------------- data


def region_mask(patch: int, rng: np.random.Generator, kind: str | None = None) -> np.ndarray:
    """A random binary region mask ``(patch, patch)`` (bool), possibly all True/False."""
    if kind is None:
        kind = MASK_KINDS[int(rng.choice(len(MASK_KINDS), p=MASK_PROBS))]
    yy, xx = np.mgrid[0:patch, 0:patch].astype(np.float64) - (patch - 1) / 2
    if kind == "edge":
        t = rng.uniform(0, 2 * np.pi)
        off = rng.uniform(-0.4, 0.4) * patch
        m = xx * np.cos(t) + yy * np.sin(t) > off
    elif kind == "ellipse":
        cy, cx = rng.uniform(-0.35, 0.35, size=2) * patch
        ry, rx = rng.uniform(0.15, 0.6, size=2) * patch
        t = rng.uniform(0, np.pi)
        u = (xx - cx) * np.cos(t) + (yy - cy) * np.sin(t)
        v = -(xx - cx) * np.sin(t) + (yy - cy) * np.cos(t)
        m = (u / rx) ** 2 + (v / ry) ** 2 < 1
    elif kind == "blob":
        from scipy import ndimage

        noise = ndimage.gaussian_filter(rng.standard_normal((patch, patch)), patch / 6, mode="reflect")
        m = noise > np.quantile(noise, rng.uniform(0.3, 0.7))
    elif kind == "whole":
        m = np.ones((patch, patch), bool)
    else:
        raise ValueError(f"unknown mask kind {kind!r}")
    if rng.random() < 0.5:
        m = ~m
    return m


def sample_fusion_examples(
    photos: Sequence[np.ndarray],
    *,
    n: int,
    seed: int,
    patch: int = 50,
    sigma_low: float = 2.0,
    sigma_high: float = 10.0,
    levels_per_photo: int = 4,
    var_threshold: float = 25.0 / 255.0**2,
    both_sharp: float = 0.0,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(A, B, S)`` uint8 arrays ``(n', patch, patch)``: complementary-region blurred pairs and the sharp patch.

    Examples are spread evenly over the photographs; a location is used when
    the sharp patch's variance exceeds ``var_threshold`` (grey levels in
    [0, 1]). Photographs smaller than the patch or without texture are
    skipped, so ``n'`` can be below ``n``.

    ``both_sharp``: the fraction of examples in which one source (A or B,
    equally likely) is left sharp everywhere, so the other's sharp region is
    sharp in both. Real focal pairs have such regions (parts in the depth of
    field of both shots), where a fusion must return the sources unchanged;
    the paper's pairs never show one. With 0 (the paper's recipe) the
    examples are those of earlier versions, draw for draw.
    """
    from tqdm.auto import tqdm

    if not photos:
        raise ValueError("no photographs to sample from")
    rng = np.random.default_rng(seed)
    per = np.full(len(photos), n // len(photos))
    per[: n - per.sum()] += 1
    out_a = np.zeros((n, patch, patch), np.uint8)
    out_b = np.zeros_like(out_a)
    out_s = np.zeros_like(out_a)
    j = 0
    for i in tqdm(range(len(photos)), desc="sampling fusion patches", disable=not progress):
        if per[i] == 0:
            continue
        g = np.asarray(photos[i], dtype=np.float32)
        if min(g.shape) < patch:
            continue
        ys, xs = np.nonzero(patch_variance(g, patch) > var_threshold)
        if ys.size == 0:
            continue
        gt = torch.from_numpy(g)
        sigmas = rng.uniform(sigma_low, sigma_high, size=levels_per_photo)
        blurred = [gaussian_filter(gt, float(s), radius=int(math.ceil(3 * s))).numpy() for s in sigmas]
        pick = rng.choice(ys.size, size=per[i], replace=ys.size < per[i])
        for k in range(per[i]):
            y0, x0 = ys[pick[k]], xs[pick[k]]
            sl = (slice(y0, y0 + patch), slice(x0, x0 + patch))
            s = g[sl]
            ba = blurred[int(rng.integers(levels_per_photo))][sl]
            bb = blurred[int(rng.integers(levels_per_photo))][sl]
            m = region_mask(patch, rng)
            if both_sharp > 0 and rng.random() < both_sharp:
                ba, bb = (s, bb) if rng.random() < 0.5 else (ba, s)
            a = np.where(m, s, ba)
            b = np.where(m, bb, s)
            out_a[j] = np.clip(np.rint(a * 255), 0, 255)
            out_b[j] = np.clip(np.rint(b * 255), 0, 255)
            out_s[j] = np.clip(np.rint(s * 255), 0, 255)
            j += 1
    return out_a[:j], out_b[:j], out_s[:j]


class FusionTriplets(torch.utils.data.Dataset):
    """``(A, B, S)`` examples as float32 ``(1, P, P)`` tensors in [0, 1]."""

    def __init__(self, a: np.ndarray, b: np.ndarray, s: np.ndarray):
        if not (a.shape == b.shape == s.shape):
            raise ValueError("A, B and S patch arrays differ in shape")
        self.a = torch.from_numpy(np.ascontiguousarray(a))
        self.b = torch.from_numpy(np.ascontiguousarray(b))
        self.s = torch.from_numpy(np.ascontiguousarray(s))

    def __len__(self) -> int:
        return self.a.shape[0]

    def batch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        index = torch.as_tensor(index, dtype=torch.long)
        f = lambda t: t[index].float().div_(255).unsqueeze(1)  # noqa: E731
        return f(self.a), f(self.b), f(self.s)

    def __getitem__(self, i: int):
        a, b, s = self.batch(torch.tensor([i]))
        return a[0], b[0], s[0]


def gradient_mse(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of the horizontal and vertical first differences of two ``(B, 1, P, P)``
    batches (summed over the two directions): an edge term that the plain MSE spreads thin."""
    dx = (out[..., :, 1:] - out[..., :, :-1]) - (target[..., :, 1:] - target[..., :, :-1])
    dy = (out[..., 1:, :] - out[..., :-1, :]) - (target[..., 1:, :] - target[..., :-1, :])
    return dx.pow(2).mean() + dy.pow(2).mean()


def fusion_step(model: torch.nn.Module, batch: tuple, *, grad_weight: float = 0.0) -> tuple[torch.Tensor, int, int]:
    """MSE of the fused patches against the sharp ones, plus ``grad_weight`` times
    :func:`gradient_mse` (0: the paper's loss); ``correct`` counts patches beating the average."""
    a, b, s = batch
    out = model(a, b)
    loss = torch.mean((out - s) ** 2)
    if grad_weight > 0:
        loss = loss + grad_weight * gradient_mse(out, s)
    with torch.no_grad():
        mse_net = ((out.clamp(0, 1) - s) ** 2).flatten(1).mean(1)
        mse_avg = (((a + b) / 2 - s) ** 2).flatten(1).mean(1)
        better = int((mse_net < mse_avg).sum())
    return loss, better, int(a.shape[0])


# --------------------------------------------------------------------------- configs


@dataclass
class TwoStreamDataConfig:
    photos: str = "train/bsds500"  # relative to the shared data folder, or absolute
    n_train: int = 24_000
    n_val: int = 400
    val_fraction: float = 0.1  # of the photographs
    patch: int = 50
    sigma_low: float = 2.0
    sigma_high: float = 10.0
    levels_per_photo: int = 4
    both_sharp: float = 0.0  # fraction of examples with one source sharp everywhere
    var_threshold: float = 25.0  # 0-255 scale
    sharp_threshold: float = 0.15
    min_sharp_fraction: float = 0.75
    max_photos: int | None = None


@dataclass
class TwoStreamNetConfig:
    width: int = DEFAULT_WIDTH
    kernel: int = DEFAULT_KERNEL
    layout: tuple[int, int, int] = DEFAULT_LAYOUT
    shared_streams: bool = False
    init: str = "average"


@dataclass
class TwoStreamTrainConfig:
    name: str
    data: TwoStreamDataConfig = field(default_factory=TwoStreamDataConfig)
    net: TwoStreamNetConfig = field(default_factory=TwoStreamNetConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    grad_weight: float = 0.0  # weight of the gradient term of the loss (0: MSE alone, the paper's)

    def as_dict(self) -> dict[str, Any]:
        net = dataclasses.asdict(self.net)
        net["layout"] = list(self.net.layout)
        return {
            "name": self.name,
            "data": dataclasses.asdict(self.data),
            "net": net,
            "train": self.train.as_dict(),
            "grad_weight": self.grad_weight,
        }


def get_config(name: str) -> TwoStreamTrainConfig:
    """``cpu`` (about an hour on 2 cores), ``gpu`` (full scale) or ``smoke`` (seconds)."""
    if name == "cpu":
        return TwoStreamTrainConfig(
            "cpu",
            TwoStreamDataConfig(n_train=24_000, n_val=400),
            TwoStreamNetConfig(),
            TrainConfig(
                seed=2018,
                batch_size=16,
                epochs=1,
                optimizer="adam",
                lr=3e-4,
                weight_decay=0.0,
                schedule="cosine",
                max_minutes=55,
                checkpoint_every=50,
                val_every=150,
                val_batch_size=50,
                threads=2,
            ),
        )
    if name == "gpu":
        return TwoStreamTrainConfig(
            "gpu",
            TwoStreamDataConfig(n_train=400_000, n_val=4_000),
            TwoStreamNetConfig(),
            TrainConfig(
                seed=2018,
                batch_size=64,
                epochs=10,
                optimizer="adam",
                lr=3e-4,
                weight_decay=0.0,
                schedule="cosine",
                checkpoint_every=2000,
                val_every=5000,
                val_batch_size=500,
                threads=None,
            ),
        )
    if name == "smoke":
        return TwoStreamTrainConfig(
            "smoke",
            TwoStreamDataConfig(n_train=192, n_val=32, patch=32, max_photos=12),
            TwoStreamNetConfig(width=12, kernel=3),
            TrainConfig(
                seed=0,
                batch_size=16,
                epochs=2,
                optimizer="adam",
                lr=1e-3,
                weight_decay=0.0,
                schedule="cosine",
                checkpoint_every=6,
                val_batch_size=32,
                threads=1,
            ),
        )
    raise ValueError(f"unknown configuration {name!r}; use cpu, gpu or smoke")


def build_model(cfg: TwoStreamTrainConfig) -> TwoStreamFusionNet:
    n = cfg.net
    return TwoStreamFusionNet(
        width=n.width, kernel=n.kernel, layout=tuple(n.layout), shared_streams=n.shared_streams, init=n.init
    )


def build_datasets(cfg: TwoStreamTrainConfig, *, cache_dir: Path | None = None, progress: bool = True, log=print):
    """Train and validation :class:`FusionTriplets` (validation from held-out photographs), cached."""
    d = cfg.data
    key = hashlib.sha256(json.dumps([dataclasses.asdict(d), cfg.train.seed], sort_keys=True).encode()).hexdigest()[:16]
    cache = cache_dir / "patches.npz" if cache_dir is not None else None
    if cache is not None and cache.is_file():
        z = np.load(cache)
        if str(z["key"]) == key:
            log(f"using cached patches {cache}")
            return (
                FusionTriplets(z["tr_a"], z["tr_b"], z["tr_s"]),
                FusionTriplets(z["va_a"], z["va_b"], z["va_s"]),
                json.loads(str(z["info"])),
            )
    folder = resolve_data_path(d.photos)
    paths = list_photos(folder)
    if d.max_photos is not None:
        paths = paths[: d.max_photos]
    photos = load_photos(paths, progress=progress)
    vt = d.var_threshold / 255.0**2
    keep = filter_sharp_photos(
        photos, var_threshold=vt, sharp_threshold=d.sharp_threshold, min_fraction=d.min_sharp_fraction
    )
    if len(keep) < 2:
        keep = list(range(len(photos)))
    log(f"{len(keep)} of {len(photos)} photographs pass the sharpness filter")
    tr_idx, va_idx = split_indices(len(keep), fraction=d.val_fraction, seed=cfg.train.seed)
    common = dict(
        patch=d.patch,
        sigma_low=d.sigma_low,
        sigma_high=d.sigma_high,
        levels_per_photo=d.levels_per_photo,
        var_threshold=vt,
        both_sharp=d.both_sharp,
        progress=progress,
    )
    tr = sample_fusion_examples([photos[keep[i]] for i in tr_idx], n=d.n_train, seed=cfg.train.seed, **common)
    va = sample_fusion_examples([photos[keep[i]] for i in va_idx], n=d.n_val, seed=cfg.train.seed + 1, **common)
    info = {
        "folder": str(folder),
        "photos_found": len(photos),
        "photos_sharp": len(keep),
        "train_photos": [paths[keep[i]].name for i in tr_idx],
        "val_photos": [paths[keep[i]].name for i in va_idx],
        "train_examples": int(tr[0].shape[0]),
        "val_examples": int(va[0].shape[0]),
    }
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(
            cache,
            key=key,
            info=json.dumps(info),
            tr_a=tr[0],
            tr_b=tr[1],
            tr_s=tr[2],
            va_a=va[0],
            va_b=va[1],
            va_s=va[2],
        )
    return FusionTriplets(*tr), FusionTriplets(*va), info


@torch.no_grad()
def psnr_summary(model: torch.nn.Module, dataset: FusionTriplets, *, batch_size: int = 50) -> dict[str, float]:
    """Mean MSE of the network (clamped to [0, 1]) and of the plain average on a dataset, and their PSNR."""
    model.eval()
    dev = next(model.parameters()).device
    se_net = se_avg = 0.0
    count = 0
    for start in range(0, len(dataset), batch_size):
        a, b, s = (t.to(dev) for t in dataset.batch(torch.arange(start, min(start + batch_size, len(dataset)))))
        se_net += float(((model(a, b).clamp(0, 1) - s) ** 2).sum())
        se_avg += float((((a + b) / 2 - s) ** 2).sum())
        count += s.numel()
    mn, ma = se_net / count, se_avg / count
    return {
        "mse_net": mn,
        "mse_average": ma,
        "psnr_net": -10 * math.log10(max(mn, 1e-12)),
        "psnr_average": -10 * math.log10(max(ma, 1e-12)),
    }


def _data_text(cfg: TwoStreamTrainConfig, info: dict[str, Any], val: dict[str, float]) -> str:
    d = cfg.data
    return (
        f"{info['photos_found']} photographs from `{d.photos}` (BSDS500, grey, [0, 1]); {info['photos_sharp']} pass "
        f"the shared sharpness filter (re-blur ratio < {d.sharp_threshold} on at least {d.min_sharp_fraction:.0%} of the "
        f"textured area). {1 - d.val_fraction:.0%} of them give {info['train_examples']} training examples, the other "
        f"{d.val_fraction:.0%} (disjoint photographs) {info['val_examples']} validation examples. An example is a "
        f"{d.patch}x{d.patch} location whose sharp patch S has variance > {d.var_threshold} (0-255 scale), a random "
        f"region mask M (straight boundary, ellipse, smooth blob or the whole patch, either polarity) and two of "
        f"{d.levels_per_photo} whole-photograph Gaussian blurs with sigma uniform in [{d.sigma_low}, {d.sigma_high}]: "
        f"A = M*S + (1-M)*blur_i(S), B = (1-M)*S + M*blur_j(S), target S; 8-bit. "
        + (
            f"In {d.both_sharp:.0%} of the examples one source (A or B) is left sharp everywhere, so the region "
            "M (or 1-M) is sharp in both, as where a real focal pair shares its depth of field. "
            if d.both_sharp > 0
            else ""
        )
        + (
            f"Loss: MSE plus {cfg.grad_weight:g} x the MSE of the horizontal and vertical first differences. "
            if cfg.grad_weight > 0
            else "Loss: MSE. "
        )
        + "The photograph lists "
        f"are in `photos.json` of the run folder.\n\n"
        f"**Validation accuracy** above is the fraction of held-out patches on which the network's MSE is below "
        f"the plain average (A+B)/2's. Held-out PSNR: network {val['psnr_net']:.2f} dB, plain average "
        f"{val['psnr_average']:.2f} dB."
    )


class TwoStreamRecipe(LoopRecipe):
    """The two-stream conv-fusion-deconv network: region-masked blur pairs, MSE to the sharp patch."""

    name = WEIGHTS_NAME

    def __init__(self, cfg: TwoStreamTrainConfig):
        self.cfg = cfg

    def build_data(self, run: Run):
        return build_datasets(self.cfg, cache_dir=run.out_dir, progress=run.progress, log=run.log)

    def build_model(self, data) -> TwoStreamFusionNet:
        return build_model(self.cfg)

    def step(self):
        return functools.partial(fusion_step, grad_weight=self.cfg.grad_weight)

    def evaluate(self, result, data, run: Run) -> dict[str, float]:
        val = psnr_summary(result.model, data[1], batch_size=self.cfg.train.val_batch_size)
        run.log(
            f"validation: network {val['psnr_net']:.2f} dB, plain average {val['psnr_average']:.2f} dB "
            f"(MSE {val['mse_net']:.5f} vs {val['mse_average']:.5f})"
        )
        return val

    def manifest(self, result, data, val, run: Run) -> dict[str, Any]:
        cfg, (train_set, val_set, info), net = self.cfg, data, result.model
        return {
            "method": "tiis2018_fcn",
            "architecture": "TwoStreamFusionNet",
            "net": net.config(),
            "parameters": count_parameters(net),
            "config": cfg.as_dict(),
            "data": {k: v for k, v in info.items() if k not in ("train_photos", "val_photos")},
            "training": loop_summary(
                cfg.train.seed,
                result,
                val_examples=len(val_set),
                train_examples=len(train_set),
                val_accuracy_meaning="fraction of held-out patches where the network's MSE is below the plain average's",
                val_psnr=val["psnr_net"],
                val_psnr_average=val["psnr_average"],
            ),
        }

    def finish(self, result, data, val, manifest: dict[str, Any], run: Run) -> None:
        info = data[2]
        (run.out_dir / "photos.json").write_text(
            json.dumps({"train": info["train_photos"], "val": info["val_photos"]}, indent=1) + "\n"
        )
        nc = result.model.config()
        write_model_card(
            run.out_dir / f"{WEIGHTS_NAME}.md",
            title=f"Two-stream fully convolutional fusion network (KSII TIIS 2018), `{self.cfg.name}` configuration",
            summary=(
                "Weights of the end-to-end conv - fusion - deconv network used by the `tiis2018_fcn` fusion method "
                f"(`napari_fusion.nets.tiis2018_fcn.TwoStreamFusionNet`, layout {'-'.join(map(str, nc['layout']))}, "
                f"{nc['width']} filters of {nc['kernel']}x{nc['kernel']}, grey input; the method runs it on the luma of colour "
                "sources, or per RGB channel with colour='channels'). Output: the fused grey image (ReLU, clamped to [0, 1] by the method)."
            ),
            manifest=manifest,
            command=run.command,
            data=_data_text(self.cfg, info, val),
            history=result.history,
            citation=CITATION,
        )


def run_training(cfg: TwoStreamTrainConfig, out_dir: str | Path, **options) -> dict[str, Any]:
    """Build the data, train, export ``out_dir/tiis2018_fcn.{pt,json,md}``; returns the manifest.

    ``options``: those of :func:`~napari_fusion.training.skeleton.run_recipe` (resume, progress, command, log)."""
    return run_recipe(TwoStreamRecipe(cfg), out_dir, **options)


def add_arguments(p) -> None:
    p.add_argument("--config", choices=("cpu", "gpu", "smoke"), default="cpu", help="training scale (default cpu)")
    p.add_argument("--width", type=int, default=None, help="filters per layer (default 64)")
    p.add_argument("--kernel", type=int, default=None, help="kernel size (default 5)")
    p.add_argument("--layout", default=None, help="conv-fusion-deconv layer counts, e.g. 2-1-2 (default)")
    p.add_argument(
        "--sigma-low", type=float, default=None, help="smallest blur sigma of the training pairs (default 2)"
    )
    p.add_argument("--sigma-high", type=float, default=None, help="largest blur sigma (default 10)")
    p.add_argument(
        "--both-sharp",
        type=float,
        default=None,
        help="fraction of training examples with one source sharp everywhere, in [0, 1] (default 0: the paper's pairs)",
    )
    p.add_argument(
        "--grad-loss",
        type=float,
        default=None,
        help="weight of a gradient term added to the MSE loss (MSE of the first differences; default 0: the paper's loss)",
    )
    add_run_arguments(p, default_out="runs/two_stream-<config>")


def config_from_args(args) -> TwoStreamTrainConfig:
    cfg = get_config(args.config)
    apply_train_overrides(cfg.train, args)
    if args.width is not None:
        cfg.net.width = args.width
    if args.kernel is not None:
        cfg.net.kernel = args.kernel
    if args.layout is not None:
        try:
            layout = tuple(int(v) for v in args.layout.split("-"))
        except ValueError:
            layout = ()
        if len(layout) != 3:
            raise SystemExit(f"--layout must look like 2-1-2, got {args.layout!r}")
        cfg.net.layout = layout
    _apply_data_overrides(cfg.data, args)
    if getattr(args, "grad_loss", None) is not None:
        if not args.grad_loss >= 0:
            raise SystemExit(f"--grad-loss must be >= 0, got {args.grad_loss}")
        cfg.grad_weight = float(args.grad_loss)
    return cfg


def _apply_data_overrides(d: TwoStreamDataConfig, args) -> None:
    for name in ("sigma_low", "sigma_high", "both_sharp"):
        value = getattr(args, name, None)
        if value is not None:
            setattr(d, name, value)
    if not 0 < d.sigma_low <= d.sigma_high:
        raise SystemExit(
            f"blur sigmas must satisfy 0 < --sigma-low <= --sigma-high, got {d.sigma_low} and {d.sigma_high}"
        )
    if not 0 <= d.both_sharp <= 1:
        raise SystemExit(f"--both-sharp must be in [0, 1], got {d.both_sharp}")


def main_from_args(args) -> int:
    return run_from_args(args, TwoStreamRecipe(config_from_args(args)), f"runs/two_stream-{args.config}")
