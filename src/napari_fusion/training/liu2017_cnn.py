"""Training the focus CNN of Liu, Chen, Peng & Wang 2017 on synthetic defocus.

Paper recipe (Information Fusion 36:191-207, 2017, Sec. 3.2): grey natural
images, five cumulative Gaussian blurs (sigma 2, 7x7), 16x16 patch pairs
whose clear patch has variance > 25, positives and negatives by swapping
the order, softmax loss, SGD (momentum 0.9, weight decay 5e-4, batch 128,
lr 1e-4 dropped ten-fold once), about 10 epochs over 2M examples. We train
on BSDS500 (ImageNet is not available here), filtered for sharpness.

Two configurations: ``gpu`` follows the paper's scale; ``cpu`` is the same
data recipe at a size that trains in well under an hour on two CPU cores
(fewer examples, AdamW with cosine decay to converge in few steps).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..nets.liu2017_cnn import VARIANTS, LiuFocusNet, count_parameters
from .data import (
    DefocusRenderer,
    SwappedPairs,
    filter_sharp_photos,
    list_photos,
    load_photos,
    resolve_data_path,
    sample_patch_pairs,
    split_indices,
)
from .loop import TrainConfig
from .model_card import write_model_card
from .run_options import add_run_arguments, apply_train_overrides
from .skeleton import LoopRecipe, Run, loop_summary, run_from_args, run_recipe

CITATION = (
    "Y. Liu, X. Chen, H. Peng, Z. Wang, 'Multi-focus image fusion with a deep convolutional "
    "neural network', Information Fusion 36:191-207, 2017."
)


@dataclass
class LiuDataConfig:
    """Where the training patches come from and how they are made."""

    photos: str = "train/bsds500"  # relative to the shared data folder, or absolute
    n_train_pairs: int = 60_000
    n_val_pairs: int = 2_000
    val_fraction: float = 0.1  # of the photographs, held out for validation
    var_threshold: float = 25.0  # on the 0-255 scale (paper)
    sharp_threshold: float = 0.15  # re-blur ratio below which a patch counts as sharp
    min_sharp_fraction: float = 0.75  # photographs with less sharp texture are dropped
    blur_mode: str = "paper"
    max_photos: int | None = None


@dataclass
class LiuTrainConfig:
    name: str
    variant: str = "slight"
    data: LiuDataConfig = field(default_factory=LiuDataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "variant": self.variant,
            "data": dataclasses.asdict(self.data),
            "train": self.train.as_dict(),
        }


def get_config(name: str, *, variant: str = "slight") -> LiuTrainConfig:
    """The named configuration: ``cpu`` (< 1 h on 2 cores), ``gpu`` (paper scale) or ``smoke``."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}")
    if name == "cpu":
        return LiuTrainConfig(
            "cpu",
            variant,
            LiuDataConfig(n_train_pairs=60_000, n_val_pairs=2_000),
            TrainConfig(
                seed=2017,
                batch_size=64,
                epochs=1,
                optimizer="adam",
                lr=1e-3,
                weight_decay=1e-4,
                schedule="cosine",
                max_minutes=45,
                checkpoint_every=100,
                val_every=400,
                val_batch_size=500,
                threads=2,
            ),
        )
    if name == "gpu":
        return LiuTrainConfig(
            "gpu",
            variant,
            LiuDataConfig(n_train_pairs=1_000_000, n_val_pairs=20_000),
            TrainConfig(
                seed=2017,
                batch_size=128,
                epochs=10,
                optimizer="sgd",
                lr=1e-4,
                momentum=0.9,
                weight_decay=5e-4,
                schedule="step",
                lr_drop_at=(0.7,),
                checkpoint_every=2000,
                val_batch_size=2048,
                threads=None,
            ),
        )
    if name == "smoke":
        return LiuTrainConfig(
            "smoke",
            variant,
            LiuDataConfig(n_train_pairs=256, n_val_pairs=64, max_photos=12),
            TrainConfig(
                seed=0,
                batch_size=32,
                epochs=2,
                optimizer="adam",
                lr=1e-3,
                weight_decay=0.0,
                schedule="cosine",
                checkpoint_every=4,
                val_batch_size=128,
                threads=1,
            ),
        )
    raise ValueError(f"unknown configuration {name!r}; use cpu, gpu or smoke")


def liu_step(model: torch.nn.Module, batch: tuple) -> tuple[torch.Tensor, int, int]:
    """Softmax loss of a batch ``(a, b, label)``; label 0 means ``a`` is in focus."""
    a, b, y = batch
    logits = model(a, b).flatten(1)
    loss = F.cross_entropy(logits, y)
    correct = int((logits.argmax(1) == y).sum())
    return loss, correct, int(y.numel())


def build_datasets(cfg: LiuTrainConfig, *, cache_dir: Path | None = None, progress: bool = True, log=print):
    """Train and validation :class:`SwappedPairs` (validation from held-out photographs).

    Patches are cached in ``cache_dir/patches.npz`` keyed by the data config
    and seed, so resuming does not re-sample.
    """
    d = cfg.data
    key = hashlib.sha256(json.dumps([dataclasses.asdict(d), cfg.train.seed], sort_keys=True).encode()).hexdigest()[:16]
    cache = cache_dir / "patches.npz" if cache_dir is not None else None
    if cache is not None and cache.is_file():
        z = np.load(cache)
        if str(z["key"]) == key:
            log(f"using cached patches {cache}")
            info = json.loads(str(z["info"]))
            return SwappedPairs(z["tr_s"], z["tr_b"]), SwappedPairs(z["va_s"], z["va_b"]), info
    folder = resolve_data_path(d.photos)
    paths = list_photos(folder)
    if d.max_photos is not None:
        paths = paths[: d.max_photos]
    photos = load_photos(paths, progress=progress)
    vt = d.var_threshold / 255.0**2
    keep = filter_sharp_photos(
        photos, var_threshold=vt, sharp_threshold=d.sharp_threshold, min_fraction=d.min_sharp_fraction
    )
    log(f"{len(keep)} of {len(photos)} photographs pass the sharpness filter")
    tr_idx, va_idx = split_indices(len(keep), fraction=d.val_fraction, seed=cfg.train.seed)
    renderer = DefocusRenderer(mode=d.blur_mode)
    common = dict(renderer=renderer, var_threshold=vt, sharp_threshold=d.sharp_threshold, progress=progress)
    tr_s, tr_b = sample_patch_pairs(
        [photos[keep[i]] for i in tr_idx], n_pairs=d.n_train_pairs, seed=cfg.train.seed, **common
    )
    va_s, va_b = sample_patch_pairs(
        [photos[keep[i]] for i in va_idx], n_pairs=d.n_val_pairs, seed=cfg.train.seed + 1, **common
    )
    info = {
        "folder": str(folder),
        "photos_found": len(photos),
        "photos_sharp": len(keep),
        "train_photos": [paths[keep[i]].name for i in tr_idx],
        "val_photos": [paths[keep[i]].name for i in va_idx],
        "train_pairs": int(tr_s.shape[0]),
        "val_pairs": int(va_s.shape[0]),
    }
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, key=key, info=json.dumps(info), tr_s=tr_s, tr_b=tr_b, va_s=va_s, va_b=va_b)
    return SwappedPairs(tr_s, tr_b), SwappedPairs(va_s, va_b), info


def weights_name(variant: str) -> str:
    return f"liu2017_{variant}"


class LiuRecipe(LoopRecipe):
    """Liu et al.'s focus CNN: swapped sharp/blurred patch pairs, softmax loss."""

    def __init__(self, cfg: LiuTrainConfig):
        self.cfg = cfg
        self.name = weights_name(cfg.variant)

    def build_data(self, run: Run):
        return build_datasets(self.cfg, cache_dir=run.out_dir, progress=run.progress, log=run.log)

    def build_model(self, data) -> LiuFocusNet:
        return LiuFocusNet(self.cfg.variant)

    def step(self):
        return liu_step

    def manifest(self, result, data, scores, run: Run) -> dict[str, Any]:
        cfg, (train_set, val_set, info) = self.cfg, data
        return {
            "method": "liu2017_cnn",
            "architecture": f"LiuFocusNet(variant={cfg.variant!r})",
            "variant": cfg.variant,
            "parameters": count_parameters(result.model),
            "config": cfg.as_dict(),
            "data": {k: v for k, v in info.items() if k not in ("train_photos", "val_photos")},
            "training": loop_summary(cfg.train.seed, result, val_examples=len(val_set), train_examples=len(train_set)),
        }

    def finish(self, result, data, scores, manifest: dict[str, Any], run: Run) -> None:
        cfg, info, out_dir = self.cfg, data[2], run.out_dir
        (out_dir / "photos.json").write_text(
            json.dumps({"train": info["train_photos"], "val": info["val_photos"]}, indent=1) + "\n"
        )
        d = cfg.data
        data_text = (
            f"{info['photos_found']} photographs from `{d.photos}` (BSDS500, grey, [0, 1]); "
            f"{info['photos_sharp']} pass the sharpness filter (re-blur ratio < {d.sharp_threshold} on at least "
            f"{d.min_sharp_fraction:.0%} of the textured area). {1 - d.val_fraction:.0%} of them give "
            f"{info['train_pairs']} training pairs, the other {d.val_fraction:.0%} (disjoint photographs) "
            f"{info['val_pairs']} validation pairs: 16x16 sharp patches with variance > {d.var_threshold} "
            f"(0-255 scale) in sharp regions, paired with the same patch blurred by the paper's cumulative "
            f"Gaussian filter (sigma 2, 7x7, applied 1-5 times, levels equally likely); each pair is used in "
            f"both orders (label = which input is sharp). The photograph lists are in `photos.json` of the run folder."
        )
        write_model_card(
            out_dir / f"{self.name}.md",
            title=f"Liu et al. 2017 focus CNN, {cfg.variant} model, `{cfg.name}` configuration",
            summary=(
                "Weights of the siamese focus classifier used by the `liu2017_cnn` fusion method "
                "(`napari_fusion.nets.liu2017_cnn.LiuFocusNet`). Output channel 0 = first input in focus."
            ),
            manifest=manifest,
            command=run.command,
            data=data_text,
            history=result.history,
            citation=CITATION,
        )

    def done_message(self, result, scores, manifest: dict[str, Any], run: Run) -> str:
        return (
            f"wrote {run.out_dir / (self.name + '.pt')} (sha256 {manifest['sha256']}), val accuracy "
            f"{result.val_accuracy:.4f}, {result.train_seconds / 60:.1f} min"
        )


def run_training(cfg: LiuTrainConfig, out_dir: str | Path, **options) -> dict[str, Any]:
    """Build the data, train, export ``out_dir/liu2017_<variant>.{pt,json,md}``; returns the manifest.

    ``options``: those of :func:`~napari_fusion.training.skeleton.run_recipe` (resume, progress, command, log)."""
    return run_recipe(LiuRecipe(cfg), out_dir, **options)


def add_arguments(p) -> None:
    p.add_argument("--config", choices=("cpu", "gpu", "smoke"), default="cpu", help="training scale (default cpu)")
    p.add_argument("--variant", choices=VARIANTS, default="slight", help="network: 'slight' (no fc1) or 'original'")
    add_run_arguments(p, default_out="runs/liu2017-<config>-<variant>")


def main_from_args(args) -> int:
    cfg = get_config(args.config, variant=args.variant)
    apply_train_overrides(cfg.train, args)
    return run_from_args(args, LiuRecipe(cfg), f"runs/liu2017-{args.config}-{args.variant}")
