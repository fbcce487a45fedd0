"""Training CSC-MMFN (Xu, Zhao et al.) per task under the Wald protocol.

Tasks (one model class, one weights file each):

``cave``
    31-band CAVE cubes (sponges, stuffed_toys) + RGB simulated with the Nikon D700
    response; scale 4.
``pansharpening``
    4-band MS + PAN pairs of the DGIF collection at reduced resolution (scale 4).

Paper recipe (CAVE): 64x64 ground-truth patches, LR by downsampling, 4 rotations,
MSE, Adam 5e-4, batch 16, 100 epochs, 3 DCUs at 256 channels per branch. Our
``gpu`` configuration follows it; ``cpu`` is a smaller network (32 channels)
trained for ~14 minutes on one thread; ``smoke`` is for tests. ``--sam-weight``
adds a spectral-angle term to the MSE (:func:`spectral_angle`; 0 = the paper's loss). The data are
tiny (two CAVE scenes, five pansharpening scenes): the held-out strips and the
held-out scene (see :mod:`.mmf_data`) are never seen in training and are the
only figures we report.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..nets.csc_mmfn import CSCMMFN, count_parameters
from .loop import TrainConfig
from .mmf_data import PatchSet, task_cases
from .run_options import add_run_arguments, apply_train_overrides
from .skeleton import LoopRecipe, Run, loop_summary, run_from_args, run_recipe

CITATION = (
    "Z. Zhao, J. Zhang, H. Bai, Y. Wang, Y. Cui, L. Deng, K. Sun, C. Zhang, J. Liu, S. Xu, "
    "'Deep convolutional sparse coding networks for interpretable image fusion', CVPR Workshops 2023 "
    "(CSC-MMFN; authors' code shuangxu96/CSC-MMFN). Data: CAVE (Yasuma et al. 2008, CUCS-061-08); "
    "DGIF pairs (L. Jian et al., 'Pansharpening using a guided image filter based on dual-scale detail extraction')."
)
TASKS = ("cave", "pansharpening")


@dataclass
class MMFNetConfig:
    features: int = 32
    n_dcu: int = 3
    radius: int = 1
    eps: float = 1e-4


@dataclass
class MMFDataConfig:
    scale: int = 4
    patch: int = 64  # ground-truth patch size
    n_train: int = 16_000
    n_val: int = 64


@dataclass
class MMFTrainConfig:
    name: str
    task: str
    net: MMFNetConfig = field(default_factory=MMFNetConfig)
    data: MMFDataConfig = field(default_factory=MMFDataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    #: weight of the mean spectral angle (radians) added to the MSE; 0 = the paper's MSE alone
    sam_weight: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "task": self.task,
            "net": dataclasses.asdict(self.net),
            "data": dataclasses.asdict(self.data),
            "train": self.train.as_dict(),
            "sam_weight": self.sam_weight,
        }


def get_config(name: str, task: str) -> MMFTrainConfig:
    """``cpu`` (32 channels, ~14 min on one thread), ``gpu`` (paper scale) or ``smoke`` (seconds)."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}")
    if name == "cpu":
        return MMFTrainConfig(
            "cpu",
            task,
            MMFNetConfig(features=32, n_dcu=3),
            MMFDataConfig(n_train=8 * 2500, n_val=64),
            TrainConfig(
                seed=2023,
                batch_size=8,
                epochs=1,
                optimizer="adam",
                lr=1e-3,
                weight_decay=0.0,
                schedule="cosine",
                max_minutes=14,
                checkpoint_every=200,
                val_every=250,
                val_batch_size=16,
                threads=1,
            ),
        )
    if name == "gpu":
        return MMFTrainConfig(
            "gpu",
            task,
            MMFNetConfig(features=256, n_dcu=3),
            MMFDataConfig(n_train=16 * 20_000, n_val=256),
            TrainConfig(
                seed=2023,
                batch_size=16,
                epochs=1,
                optimizer="adam",
                lr=5e-4,
                weight_decay=0.0,
                schedule="cosine",
                checkpoint_every=1000,
                val_every=2000,
                val_batch_size=32,
                threads=None,
            ),
        )
    if name == "smoke":
        return MMFTrainConfig(
            "smoke",
            task,
            MMFNetConfig(features=8, n_dcu=1),
            MMFDataConfig(patch=32, n_train=8 * 12, n_val=8),
            TrainConfig(
                seed=0,
                batch_size=8,
                epochs=1,
                optimizer="adam",
                lr=3e-3,
                weight_decay=0.0,
                schedule="cosine",
                checkpoint_every=1000,
                val_batch_size=8,
                threads=1,
            ),
        )
    raise ValueError(f"unknown configuration {name!r}; use cpu, gpu or smoke")


def spectral_angle(fused: torch.Tensor, gt: torch.Tensor, *, eps: float = 1e-12) -> torch.Tensor:
    """Mean angle (radians) between the spectra (dim 1) of ``fused`` and ``gt``, as the SAM metric
    measures it but differentiable everywhere: ``atan2(|f x g|, <f, g>)`` with the cross term
    ``sqrt(|f|^2 |g|^2 - <f, g>^2)`` kept above ``eps`` (arccos has an infinite slope at 0)."""
    dot = (fused * gt).sum(1)
    cross = (fused.square().sum(1) * gt.square().sum(1) - dot.square()).clamp_min(eps).sqrt()
    return torch.atan2(cross, dot).mean()


def mmf_step(model: torch.nn.Module, batch: tuple, *, sam_weight: float = 0.0) -> tuple[torch.Tensor, int, int]:
    """MSE of the network output against the ground-truth patch, plus ``sam_weight`` times the mean
    spectral angle in radians (no accuracy: returns 0 correct)."""
    lr, guide, gt = batch
    out = model(lr, guide)
    loss = torch.mean((out - gt) ** 2)
    if sam_weight:
        loss = loss + sam_weight * spectral_angle(out, gt)
    return loss, 0, int(lr.shape[0])


def build_datasets(cfg: MMFTrainConfig, cases: dict | None = None):
    d = cfg.data
    cases = cases or {s: task_cases(cfg.task, s, d.scale) for s in ("train", "val")}
    train_set = PatchSet(cases["train"], patch=d.patch, n=d.n_train, seed=cfg.train.seed)
    vw = min(c.gt.shape[-1] for c in cases["val"])
    vp = min(d.patch, vw - vw % d.scale)
    val_set = PatchSet(cases["val"], patch=vp, n=d.n_val, seed=cfg.train.seed + 1, augment=False)
    return train_set, val_set


def weights_name(task: str) -> str:
    return f"csc_mmfn_{task}"


# --------------------------------------------------------------------------- held-out evaluation

#: PSNR/SSIM peak: CAVE cubes are reflectances in [0, 1]; pansharpening: the ground truth's maximum
DATA_RANGE = {"cave": 1.0, "pansharpening": None}
HELDOUT_SPLITS = {"cave": ("test",), "pansharpening": ("test", "heldout_scene")}


def evaluate_heldout(
    task: str,
    model: str | Path | None,
    *,
    methods=("bicubic", "guided_filter", "csc_mmfn"),
    scale: int = 4,
    cases: dict | None = None,
    splits: tuple[str, ...] | None = None,
) -> list[dict[str, Any]]:
    """PSNR / SSIM / SAM / ERGAS of each method on every held-out case, through the public
    :func:`napari_fusion.guided_upsample` (raw units in, raw units out). ``splits`` = other
    splits to score instead (``("val",)``: the validation strips, for choosing between runs)."""
    from ..metrics.spectral import ergas, psnr_bands, sam, ssim_bands
    from ..upsample import guided_upsample

    rows = []
    for split in splits or HELDOUT_SPLITS[task]:
        for case in (cases or {}).get(split) or task_cases(task, split, scale):
            for m in methods:
                kw = {"model": model} if m == "csc_mmfn" else {}
                t0 = time.perf_counter()
                out = guided_upsample(case.lr, case.guide, method=m, band_axis=0, guide_axis=0, **kw)
                sec = time.perf_counter() - t0
                rng = DATA_RANGE[task]
                rows.append(
                    {
                        "case": case.name,
                        "split": split,
                        "method": m,
                        "psnr": psnr_bands(out, case.gt, data_range=rng, band_axis=0),
                        "ssim": ssim_bands(out, case.gt, data_range=rng, band_axis=0),
                        "sam": sam(out, case.gt, band_axis=0),
                        "ergas": ergas(out, case.gt, scale=scale, band_axis=0),
                        "seconds": sec,
                    }
                )
    return rows


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean of each metric per (split, method)."""
    out = []
    keys = []
    for r in rows:
        k = (r["split"], r["method"])
        if k not in keys:
            keys.append(k)
    for split, m in keys:
        sel = [r for r in rows if r["split"] == split and r["method"] == m]
        out.append(
            {
                "split": split,
                "method": m,
                "n": len(sel),
                **{k: float(np.mean([r[k] for r in sel])) for k in ("psnr", "ssim", "sam", "ergas")},
            }
        )
    return out


def table_markdown(rows: list[dict[str, Any]], *, per_case: bool = True) -> str:
    lines = ["| case | method | PSNR dB | SSIM | SAM deg | ERGAS |", "|---|---|---|---|---|---|"]
    if per_case:
        for r in rows:
            lines.append(
                f"| {r['case']} | {r['method']} | {r['psnr']:.2f} | {r['ssim']:.4f} | {r['sam']:.2f} | {r['ergas']:.2f} |"
            )
    for s in summarise(rows):
        lines.append(
            f"| **mean {s['split']}** ({s['n']}) | {s['method']} | {s['psnr']:.2f} | {s['ssim']:.4f} | "
            f"{s['sam']:.2f} | {s['ergas']:.2f} |"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------- run


def _write_card(path: Path, cfg: MMFTrainConfig, manifest: dict, history: list, table: str, command: str) -> None:
    t = manifest["training"]
    task_text = {
        "cave": (
            "CAVE scenes sponges and stuffed_toys (31 bands 400-700 nm, 512x512, uint16/65535). Guide: linear RGB "
            "simulated from the cube with the measured Nikon D700 response (RIT camspec, rows 400-700 nm, each "
            "channel normalised to sum 1)."
        ),
        "pansharpening": (
            "DGIF pairs scene-1..4 (WV-2, Pleiades, QuickBird; MS 256x256x4, PAN 1024x1024) at reduced "
            "resolution: MS and PAN degraded by 4, the original MS is the ground truth. scene-5 is held out whole."
        ),
    }[cfg.task]
    lines = [
        f"# CSC-MMFN, task `{cfg.task}`, `{cfg.name}` configuration",
        "",
        "Weights of `napari_fusion.nets.csc_mmfn.CSCMMFN` used by `napari_fusion.guided_upsample(..., "
        f"method='csc_mmfn', model='{cfg.task}')`.",
        "",
        "| | |",
        "|---|---|",
        f"| weights file | `{manifest['file']}` ({manifest['bytes']} bytes) |",
        f"| sha256 | `{manifest['sha256']}` |",
        f"| architecture | {manifest['architecture']} |",
        f"| parameters | {manifest['parameters']} |",
        f"| seed | {t['seed']} |",
        f"| training time | {t['train_minutes']:.1f} min ({t['steps']} steps of batch {cfg.train.batch_size}"
        f"{', stopped by the time budget' if t['stopped_by_time'] else ''}) |",
        f"| validation {'MSE' if not cfg.sam_weight else f'loss (MSE + {cfg.sam_weight:g} x mean spectral angle in rad)'} "
        f"| {t['val_loss']:.3g} (normalised units, {t['val_examples']} patches of the validation strips) |",
        "",
        "## Reproduce",
        "",
        "```",
        command,
        "```",
        "",
        "## Data (Wald protocol)",
        "",
        task_text + " Degradation: Gaussian blur (sigma = scale/2) then 4x4 block averaging. Each scene is split by "
        "columns before degradation: left 62.5% training, next 12.5% validation, right 25% test; test pixels never "
        f"influence training. {cfg.data.n_train} random {cfg.data.patch}x{cfg.data.patch} training patches "
        "(random rotations by 90 degrees and flips). Inputs are divided by the low-resolution image's maximum, the "
        "guide by its own maximum (as at inference).",
        "",
        "## Held-out results (only regions never seen in training)",
        "",
        table,
        "",
        "PSNR/SSIM: mean over bands; peak 1.0 for CAVE reflectances, the ground truth's maximum for pansharpening. "
        "SAM in degrees, ERGAS with ratio 4.",
        "",
        "## Configuration",
        "",
        "```json",
        json.dumps(cfg.as_dict(), indent=2, sort_keys=True),
        "```",
        "",
        "## Training history",
        "",
        "| step | minutes | train MSE | val MSE |",
        "|---|---|---|---|",
    ]
    lines += [f"| {h['step']} | {h['minutes']:.1f} | {h['train_loss']:.3g} | {h['val_loss']:.3g} |" for h in history]
    lines += ["", "## Environment", ""] + [f"- {k}: {v}" for k, v in manifest["environment"].items()]
    lines += ["", "## Citation", "", CITATION, ""]
    path.write_text("\n".join(lines))


class MMFNRecipe(LoopRecipe):
    """CSC-MMFN for one task: Wald-protocol patches, MSE; card with the held-out table."""

    examples = "patches"

    def __init__(self, cfg: MMFTrainConfig, *, evaluate: bool = True):
        self.cfg = cfg
        self.name = weights_name(cfg.task)
        self.heldout = evaluate

    def build_data(self, run: Run):
        return build_datasets(self.cfg)

    def build_model(self, data) -> CSCMMFN:
        sample = data[0].batch([0])
        return CSCMMFN(sample[0].shape[1], sample[1].shape[1], **dataclasses.asdict(self.cfg.net))

    def step(self):
        return functools.partial(mmf_step, sam_weight=self.cfg.sam_weight)

    def manifest(self, result, data, scores, run: Run) -> dict[str, Any]:
        cfg, (train_set, val_set), net = self.cfg, data, result.model
        return {
            "method": "csc_mmfn",
            "task": cfg.task,
            "architecture": "CSCMMFN({bands}, {guide_channels}, features={features}, n_dcu={n_dcu}, radius={radius}, "
            "eps={eps})".format(**net.config),
            "net": net.config,
            "parameters": count_parameters(net),
            "config": cfg.as_dict(),
            "training": loop_summary(
                cfg.train.seed,
                result,
                val_examples=len(val_set),
                train_examples=len(train_set),
                omit=("epochs_done", "val_accuracy"),
            ),
        }

    def finish(self, result, data, scores, manifest: dict[str, Any], run: Run) -> None:
        table = "(not evaluated)"
        if self.heldout:
            from ..weights import clear_cache

            clear_cache()
            rows = evaluate_heldout(self.cfg.task, run.out_dir / f"{self.name}.pt", scale=self.cfg.data.scale)
            table = table_markdown(rows)
            (run.out_dir / "heldout.json").write_text(json.dumps(rows, indent=1) + "\n")
            run.log(table)
        _write_card(run.out_dir / f"{self.name}.md", self.cfg, manifest, result.history, table, run.command)


def run_training(
    cfg: MMFTrainConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    command: str | None = None,
    evaluate: bool = True,
    log=print,
) -> dict[str, Any]:
    """Train, export ``out_dir/csc_mmfn_<task>.{pt,json,md}`` (card with the held-out table); returns the manifest."""
    return run_recipe(
        MMFNRecipe(cfg, evaluate=evaluate), out_dir, resume=resume, progress=progress, command=command, log=log
    )


def _non_negative(text: str) -> float:
    import argparse

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def add_arguments(p) -> None:
    p.add_argument(
        "--task", choices=TASKS, required=True, help="cave (31 bands + RGB) or pansharpening (4 bands + PAN)"
    )
    p.add_argument("--config", choices=("cpu", "gpu", "smoke"), default="cpu", help="training scale (default cpu)")
    p.add_argument(
        "--sam-weight",
        type=_non_negative,
        default=None,
        metavar="W",
        help="add W x the mean spectral angle (radians) to the MSE loss (default: the configuration's, 0 = MSE only)",
    )
    add_run_arguments(p, default_out="runs/csc_mmfn-<task>-<config>")


def main_from_args(args) -> int:
    cfg = get_config(args.config, args.task)
    apply_train_overrides(cfg.train, args)
    if getattr(args, "sam_weight", None) is not None:
        cfg.sam_weight = args.sam_weight
    return run_from_args(args, MMFNRecipe(cfg), f"runs/csc_mmfn-{args.task}-{args.config}")
