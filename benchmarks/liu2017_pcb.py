"""Decision maps of the Liu et al. 2017 CNN on a real focal stack (focalstack/pcb).

The 7-slice PCB stack (oblique view, so focus moves smoothly across the image)
is downscaled, aligned (similarity) and fused by ``liu2017_cnn`` (pairwise fold),
``liu2017_cnn_nway`` and the classical ``focus_measure``. Printed: how often the
label maps agree, how smoothly they vary (fraction of label jumps of more than one
slice between 4-neighbours: a focus surface on a tilted board should rarely jump),
and the Spearman correlation of each label map with the image row (the board is
tilted along the vertical axis). ``--save PNG`` writes the middle slice and the three label maps side by side.

    PYTHONPATH=src python benchmarks/liu2017_pcb.py --scale 4 --save docs/images/liu2017_pcb_labels.png
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from napari_fusion import fuse
from napari_fusion.datasets import load_case, shared_data_dir
from napari_fusion.focalstack.align import align_stack
from napari_fusion.io import read_image


def _downscale(img: np.ndarray, f: int) -> np.ndarray:
    h, w = (img.shape[0] // f) * f, (img.shape[1] // f) * f
    a = img[:h, :w].astype(np.float32)
    a = a.reshape(h // f, f, w // f, f, *a.shape[2:]).mean(axis=(1, 3))
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


def _jumps(labels: np.ndarray) -> float:
    l = labels.astype(np.int32)
    dv = np.abs(np.diff(l, axis=0)) > 1
    dh = np.abs(np.diff(l, axis=1)) > 1
    return float((dv.sum() + dh.sum()) / (dv.size + dh.size))


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra = np.argsort(np.argsort(a.ravel())).astype(np.float64)
    rb = np.argsort(np.argsort(b.ravel())).astype(np.float64)
    return float(np.corrcoef(ra, rb)[0, 1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", type=int, default=4, help="downscale factor (default 4)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--save", default=None, help="PNG of the three label maps")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    root = shared_data_dir()
    if root is None or not (root / "focalstack/pcb/pcb").is_dir():
        raise SystemExit("focalstack/pcb not found (set NAPARI_FUSION_DATA)")
    case = load_case(root / "focalstack/pcb/pcb")
    slices = [_downscale(read_image(p), args.scale) for p in case.sources]
    aligned, _ = align_stack(slices, mode="similarity", crop=True)
    rows = np.indices(aligned[0].shape[:2])[0]
    maps, times = {}, {}
    print(f"pcb: {len(aligned)} slices, {aligned[0].shape[1]}x{aligned[0].shape[0]} after /{args.scale} and alignment")
    print("| method | s | label jumps > 1 slice | Spearman(label, row) | agreement with focus_measure |")
    print("|---|---|---|---|---|")
    for method in ("focus_measure", "liu2017_cnn", "liu2017_cnn_nway"):
        t0 = time.perf_counter()
        res = fuse(aligned, method=method)
        times[method] = time.perf_counter() - t0
        maps[method] = np.asarray(res.labels)
    for method, lab in maps.items():
        agree = float((lab == maps["focus_measure"]).mean())
        print(f"| {method} | {times[method]:.1f} | {_jumps(lab):.4f} | {_spearman(lab, rows):+.3f} | {agree:.3f} |")
    if args.save:
        from PIL import Image

        n = len(aligned)
        middle = aligned[n // 2]
        middle = middle if middle.ndim == 3 else np.repeat(middle[..., None], 3, axis=2)
        panels = [middle]
        for lab in maps.values():
            grey = np.rint(lab.astype(np.float32) * 255.0 / max(n - 1, 1)).astype(np.uint8)
            panels.append(np.repeat(grey[..., None], 3, axis=2))
        gap = np.full((middle.shape[0], 8, 3), 255, np.uint8)
        row = np.concatenate([x for p in panels for x in (p, gap)][:-1], axis=1)
        Image.fromarray(row).save(args.save)
        print(f"saved {args.save}: middle slice, then labels of " + ", ".join(maps) + " (dark = first slice)")


if __name__ == "__main__":
    main()
