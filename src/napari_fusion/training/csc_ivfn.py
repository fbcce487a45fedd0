"""Training CSC-IVFN (Zhao et al., CVPR-W 2023) as an autoencoder on grey photographs.

Paper / released-code recipe: single grey images (FLIR frames), 128x128 crops,
batch 16, loss ``MSE + 5 * (1 - SSIM) / 2``, Adam lr 1e-2 divided by 10
halfway. Here the photographs are BSDS500 ``train/`` (converted to BT.601
luma); BSDS500 ``val/`` gives the validation crops; ``test/`` is never used
in training (the tests and the model card measure reconstruction on it).
The infrared/visible test pairs are never used.

Configurations:

- ``gpu``: the paper's scale (64 channels, 8 DCUs, 128x128 crops, batch 16,
  40 000 crops seen 4 times).
- ``cpu``: 8 DCUs per encoder at 32 channels (half the paper's width) on
  48x48 crops, batch 8, capped at 22 minutes on one thread; the schedule
  (x0.1 at half) follows the wall-clock budget. The paper's 64-channel
  network managed only 275 steps in that budget on the shared 2-core machine
  (5 s per step) and reconstructed BSDS500 validation crops at 22.7 dB; the
  narrower network takes about 4x more steps in the same time.
- ``smoke``: a tiny network for tests (seconds).
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

from ..nets.csc_ivfn import CSCIVFN, count_parameters
from ..ops.filters import gaussian_kernel1d
from .data import list_photos, load_photos, resolve_data_path
from .loop import TrainConfig
from .run_options import add_run_arguments, apply_train_overrides
from .skeleton import LoopRecipe, Run, loop_summary, run_from_args, run_recipe

CITATION = (
    "Z. Zhao, J. Zhang, H. Bai, Y. Wang, Y. Cui, L. Deng, K. Sun, C. Zhang, J. Liu, S. Xu, "
    "'Deep Convolutional Sparse Coding Networks for Interpretable Image Fusion', CVPR Workshops 2023, "
    "pp. 2369-2377."
)

#: name of the shipped weights (``trained_weights/<name>.pt``)
WEIGHTS_NAME = "csc_ivfn"


@dataclass
class IVFNDataConfig:
    photos: str = "train/bsds500/train"  # relative to the shared data folder, or absolute
    val_photos: str = "train/bsds500/val"
    crop: int = 128
    n_train: int = 40_000
    n_val: int = 512
    max_photos: int | None = None


@dataclass
class IVFNTrainConfig:
    name: str
    channels: int = 64
    depth: int = 8
    signal: str = "paper"
    ssim_weight: float = 5.0
    data: IVFNDataConfig = field(default_factory=IVFNDataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "channels": self.channels,
            "depth": self.depth,
            "signal": self.signal,
            "ssim_weight": self.ssim_weight,
            "data": dataclasses.asdict(self.data),
            "train": self.train.as_dict(),
        }


def get_config(name: str, *, signal: str = "paper") -> IVFNTrainConfig:
    """``cpu`` (22 min, 1 thread), ``gpu`` (paper scale) or ``smoke`` (tests)."""
    if name == "cpu":
        return IVFNTrainConfig(
            "cpu",
            32,
            8,
            signal,
            data=IVFNDataConfig(crop=48, n_train=24_000, n_val=256),
            train=TrainConfig(
                seed=2023,
                batch_size=8,
                epochs=1,
                optimizer="adam",
                lr=1e-2,
                weight_decay=0.0,
                schedule="step",
                lr_drop_at=(0.5,),
                lr_drop_factor=0.1,
                max_minutes=22,
                checkpoint_every=100,
                val_every=200,
                val_batch_size=32,
                threads=1,
            ),
        )
    if name == "gpu":
        return IVFNTrainConfig(
            "gpu",
            64,
            8,
            signal,
            data=IVFNDataConfig(crop=128, n_train=40_000, n_val=512),
            train=TrainConfig(
                seed=2023,
                batch_size=16,
                epochs=4,
                optimizer="adam",
                lr=1e-2,
                weight_decay=0.0,
                schedule="step",
                lr_drop_at=(0.5,),
                lr_drop_factor=0.1,
                checkpoint_every=1000,
                val_every=2000,
                val_batch_size=64,
                threads=None,
            ),
        )
    if name == "smoke":
        return IVFNTrainConfig(
            "smoke",
            8,
            2,
            signal,
            data=IVFNDataConfig(crop=32, n_train=256, n_val=32, max_photos=6),
            train=TrainConfig(
                seed=0,
                batch_size=8,
                epochs=2,
                optimizer="adam",
                lr=1e-2,
                weight_decay=0.0,
                schedule="step",
                lr_drop_at=(0.5,),
                checkpoint_every=1000,
                val_batch_size=32,
                threads=1,
            ),
        )
    raise ValueError(f"unknown configuration {name!r}; use cpu, gpu or smoke")


# --------------------------------------------------------------------------- loss


def ssim_map(x: torch.Tensor, y: torch.Tensor, *, sigma: float = 1.5, radius: int = 5) -> torch.Tensor:
    """SSIM map of ``(B, 1, H, W)`` images in [0, 1] (Gaussian 11x11 window, sigma 1.5, valid region)."""
    k = gaussian_kernel1d(sigma, radius, device=x.device, dtype=x.dtype)
    w = (k[:, None] * k[None, :]).view(1, 1, 2 * radius + 1, 2 * radius + 1)

    def blur(t):
        return F.conv2d(t, w)

    c1, c2 = 0.01**2, 0.03**2
    mx, my = blur(x), blur(y)
    sxx = blur(x * x) - mx * mx
    syy = blur(y * y) - my * my
    sxy = blur(x * y) - mx * my
    return ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))


def autoencoder_loss(out: torch.Tensor, target: torch.Tensor, ssim_weight: float = 5.0) -> torch.Tensor:
    """``MSE + ssim_weight * (1 - SSIM) / 2`` (the paper's loss with ``ssim_weight = 5``)."""
    return F.mse_loss(out, target) + ssim_weight * (1.0 - ssim_map(out, target).mean()) / 2.0


def make_step(ssim_weight: float):
    def step(model: torch.nn.Module, batch: tuple) -> tuple[torch.Tensor, int, int]:
        (x,) = batch
        loss = autoencoder_loss(model(x), x, ssim_weight)
        return loss, 0, int(x.shape[0])

    return step


# --------------------------------------------------------------------------- data


class Crops(torch.utils.data.Dataset):
    """Pre-cut grey crops ``(N, 1, S, S)`` float32 in [0, 1]."""

    def __init__(self, crops: np.ndarray):
        self.crops = torch.from_numpy(np.ascontiguousarray(crops, dtype=np.float32))

    def __len__(self) -> int:
        return self.crops.shape[0]

    def batch(self, index: torch.Tensor) -> tuple[torch.Tensor]:
        return (self.crops[index],)

    def __getitem__(self, i: int):
        return (self.crops[i],)


def random_crops(photos: list[np.ndarray], n: int, size: int, *, seed: int) -> np.ndarray:
    """``n`` random ``size x size`` crops (random photo, position, flips and 90-degree turn)."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, 1, size, size), dtype=np.float32)
    for i in range(n):
        p = photos[int(rng.integers(len(photos)))]
        h, w = p.shape
        y = int(rng.integers(0, h - size + 1))
        x = int(rng.integers(0, w - size + 1))
        c = p[y : y + size, x : x + size]
        if rng.random() < 0.5:
            c = c[:, ::-1]
        if rng.random() < 0.5:
            c = c[::-1]
        c = np.rot90(c, int(rng.integers(4)))
        out[i, 0] = c
    return out


def build_datasets(cfg: IVFNTrainConfig, *, progress: bool = True):
    d = cfg.data
    tr_paths = list_photos(resolve_data_path(d.photos))
    va_paths = list_photos(resolve_data_path(d.val_photos))
    if d.max_photos is not None:
        tr_paths, va_paths = tr_paths[: d.max_photos], va_paths[: max(1, d.max_photos // 2)]
    tr = load_photos(tr_paths, progress=progress)
    va = load_photos(va_paths, progress=progress)
    train_set = Crops(random_crops(tr, d.n_train, d.crop, seed=cfg.train.seed))
    val_set = Crops(random_crops(va, d.n_val, d.crop, seed=cfg.train.seed + 1))
    info = {
        "train_folder": str(resolve_data_path(d.photos)),
        "val_folder": str(resolve_data_path(d.val_photos)),
        "train_photos": len(tr_paths),
        "val_photos": len(va_paths),
        "train_crops": len(train_set),
        "val_crops": len(val_set),
    }
    return train_set, val_set, info


@torch.no_grad()
def reconstruction_scores(model: CSCIVFN, crops: Crops, *, batch_size: int = 32) -> dict[str, float]:
    """Mean PSNR (dB) and SSIM of the model's reconstructions of ``crops``."""
    model.eval()
    psnrs, ssims = [], []
    for start in range(0, len(crops), batch_size):
        x = crops.crops[start : start + batch_size]
        y = model(x)
        mse = ((y - x) ** 2).flatten(1).mean(1).clamp_min(1e-12)
        psnrs.append(10 * torch.log10(1.0 / mse))
        ssims.append(ssim_map(y, x).flatten(1).mean(1))
    return {"psnr": float(torch.cat(psnrs).mean()), "ssim": float(torch.cat(ssims).mean())}


# --------------------------------------------------------------------------- run


class IVFNRecipe(LoopRecipe):
    """CSC-IVFN trained as an autoencoder of grey crops (MSE + SSIM); scored by reconstruction PSNR/SSIM."""

    write_config = False

    def __init__(self, cfg: IVFNTrainConfig, *, name: str = WEIGHTS_NAME):
        self.cfg = cfg
        self.name = name

    def build_data(self, run: Run):
        return build_datasets(self.cfg, progress=run.progress)

    def data_message(self, data, seconds: float) -> str:
        info = data[2]
        return f"{info['train_crops']} training crops from {info['train_photos']} photos, {info['val_crops']} validation crops"

    def build_model(self, data) -> CSCIVFN:
        return CSCIVFN(self.cfg.channels, self.cfg.depth, signal=self.cfg.signal)

    def step(self):
        return make_step(self.cfg.ssim_weight)

    def evaluate(self, result, data, run: Run) -> dict[str, float]:
        result.model = result.model.to("cpu").eval()
        scores = reconstruction_scores(result.model, data[1])
        run.log(f"validation reconstruction: PSNR {scores['psnr']:.2f} dB, SSIM {scores['ssim']:.4f}")
        return scores

    def manifest(self, result, data, scores, run: Run) -> dict[str, Any]:
        cfg, model = self.cfg, result.model
        return {
            "model": "csc_ivfn",
            "architecture": f"CSCIVFN(channels={cfg.channels}, depth={cfg.depth}, blur=11, signal={cfg.signal!r})",
            "net_config": model.config,
            "parameters": count_parameters(model),
            "config": cfg.as_dict(),
            "data": data[2],
            "training": loop_summary(
                cfg.train.seed,
                result,
                val_examples=len(data[1]),
                omit=("val_accuracy",),
                val_psnr_db=scores["psnr"],
                val_ssim=scores["ssim"],
            ),
        }

    def finish(self, result, data, scores, manifest: dict[str, Any], run: Run) -> None:
        write_card(run.out_dir / f"{self.name}.md", self.cfg, manifest, result.history)


def run_training(cfg: IVFNTrainConfig, out_dir: str | Path, *, name: str = WEIGHTS_NAME, **options) -> dict[str, Any]:
    """Train and export ``out_dir/<name>.{pt,json,md}``; returns the manifest.

    ``options``: those of :func:`~napari_fusion.training.skeleton.run_recipe` (resume, progress, command, log)."""
    return run_recipe(IVFNRecipe(cfg, name=name), out_dir, **options)


def write_card(path: Path, cfg: IVFNTrainConfig, manifest: dict[str, Any], history: list[dict[str, Any]]) -> Path:
    """Model card for autoencoder weights (reconstruction PSNR/SSIM instead of an accuracy)."""
    t = manifest["training"]
    d = manifest["data"]
    lines = [
        f"# CSC-IVFN autoencoder, `{cfg.name}` configuration",
        "",
        "Weights of `napari_fusion.nets.csc_ivfn.CSCIVFN` used by the `csc_ivfn` fusion method "
        "(infrared + visible). Trained as an autoencoder: the base and detail encoders code a grey image, "
        "the shared decoder reconstructs it.",
        "",
        "| | |",
        "|---|---|",
        f"| weights file | `{manifest['file']}` ({manifest['bytes']} bytes) |",
        f"| sha256 | `{manifest['sha256']}` |",
        f"| architecture | {manifest['architecture']} |",
        f"| parameters | {manifest['parameters']} |",
        f"| seed | {t['seed']} |",
        f"| training time | {t['train_minutes']:.1f} min ({t['steps']} steps of batch {cfg.train.batch_size}, "
        f"{cfg.data.crop}x{cfg.data.crop} crops{', stopped by the time budget' if t['stopped_by_time'] else ''}) |",
        f"| validation loss (MSE + 5(1-SSIM)/2) | {t['val_loss']:.4f} |",
        f"| validation reconstruction | PSNR {t['val_psnr_db']:.2f} dB, SSIM {t['val_ssim']:.4f} "
        f"({t['val_examples']} crops) |",
        "",
        "## Reproduce",
        "",
        "```",
        manifest.get("command", ""),
        "```",
        "",
        "## Data",
        "",
        f"{d['train_crops']} random {cfg.data.crop}x{cfg.data.crop} crops (random flips and 90-degree turns) of the "
        f"{d['train_photos']} BSDS500 `train/` photographs converted to grey (BT.601 luma); validation: "
        f"{d['val_crops']} crops of the {d['val_photos']} BSDS500 `val/` photographs. BSDS500 `test/` and all "
        "infrared/visible pairs are unseen. The paper trained on FLIR infrared/visible frames; none are here.",
        "",
    ]
    if cfg.name == "cpu":
        lines += [
            "The `cpu` configuration halves the paper's width (32 code channels instead of 64, still 8 DCUs per "
            "encoder) and trains on 48x48 crops, batch 8, for 22 minutes on one CPU thread, far fewer examples "
            "than the paper; the learning-rate drop happens at half the time budget. `--config gpu` is the "
            "paper's network and scale.",
            "",
        ]
    lines += [
        "## Configuration",
        "",
        "```json",
        json.dumps(manifest.get("config", {}), indent=2, sort_keys=True),
        "```",
        "",
        "## Training history",
        "",
        "| step | minutes | train loss | val loss |",
        "|---|---|---|---|",
    ]
    for h in history:
        lines.append(f"| {h['step']} | {h['minutes']:.1f} | {h['train_loss']:.4f} | {h['val_loss']:.4f} |")
    lines += ["", "## Environment", ""] + [f"- {k}: {v}" for k, v in manifest.get("environment", {}).items()]
    lines += ["", "## Citation", "", CITATION, ""]
    path.write_text("\n".join(lines))
    return path


def add_arguments(p) -> None:
    p.add_argument("--config", choices=("cpu", "gpu", "smoke"), default="cpu", help="training scale (default cpu)")
    p.add_argument(
        "--signal",
        choices=("paper", "released"),
        default="paper",
        help="what the later DCUs code: the base/detail layer (paper) or the raw image (released code)",
    )
    add_run_arguments(p, default_out="runs/csc_ivfn-<config>")


def main_from_args(args) -> int:
    cfg = get_config(args.config, signal=args.signal)
    apply_train_overrides(cfg.train, args)
    return run_from_args(args, IVFNRecipe(cfg), f"runs/csc_ivfn-{args.config}")


__all__ = [
    "IVFNDataConfig",
    "IVFNTrainConfig",
    "get_config",
    "ssim_map",
    "autoencoder_loss",
    "Crops",
    "random_crops",
    "build_datasets",
    "reconstruction_scores",
    "run_training",
    "add_arguments",
    "main_from_args",
    "WEIGHTS_NAME",
]
