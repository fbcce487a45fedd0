"""PCB focus stack (7 slices, magnification changes with focus): fusion with and without alignment,
scored against the focus-stack tool's own result (reference/focus-stack.jpg).

Our fused image is first registered onto the reference (similarity, phase correlation) since the
two tools may keep slightly different frames; PSNR and SSIM are computed on BT.601 luma (0-255)
over the region both cover, less a 4-pixel margin.

Magnifications: our chained estimates (relative to the middle slice) are printed next to each
slice registered *directly* onto focus-stack's result (similarity, normalised by the middle
slice's), i.e. the magnification each slice needs to match focus-stack's output frame. Pairs
whose estimate failed the alignment checks are listed (none are expected on this stack).

    PYTHONPATH=src NAPARI_FUSION_DATA=/work/shared/data python benchmarks/focalstack_pcb_alignment.py [FACTOR]

FACTOR (default 4) block-averages the 2048x1536 images first.
"""

from __future__ import annotations

import sys
import time
import warnings

import numpy as np
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from skimage.transform import downscale_local_mean

from napari_fusion.datasets import shared_data_dir
from napari_fusion.focalstack import apply_alignment, estimate_alignment, fuse_focal_stack
from napari_fusion.io import read_image, read_stack


def luma(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def register(ref: np.ndarray, img: np.ndarray):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return estimate_alignment([ref, img], mode="similarity", reference=0)


def score(fused: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    al = register(ref, fused)
    reg = apply_alignment([ref, fused], al)[1]
    r0, r1, c0, c1 = al.valid_box()
    a = luma(ref)[r0 + 4 : r1 - 4, c0 + 4 : c1 - 4]
    b = luma(reg)[r0 + 4 : r1 - 4, c0 + 4 : c1 - 4]
    return peak_signal_noise_ratio(a, b, data_range=255), structural_similarity(a, b, data_range=255)


def main() -> None:
    torch.set_num_threads(1)
    f = int(sys.argv[1]) if len(sys.argv) > 1 else 4
    folder = shared_data_dir() / "focalstack" / "pcb" / "pcb"
    down = lambda a: downscale_local_mean(a.astype(np.float32), (f, f, 1)).round().astype(np.uint8)  # noqa: E731
    stack = [down(a) for a in read_stack(folder)]
    ref = down(read_image(folder / "reference" / "focus-stack.jpg"))
    print(f"PCB stack downsampled by {f}: {stack[0].shape}")
    print(
        f"{'alignment':12s} {'PSNR dB':>8s} {'SSIM':>7s} {'seconds':>8s}  magnification (slice 0..6, vs middle) / centre shifts (full-res px)"
    )
    for mode in (None, "translation", "similarity"):
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            r = fuse_focal_stack(stack, align=mode, height=False)
        dt = time.perf_counter() - t0
        p, s = score(r.fused, ref)
        print(f"{str(mode):12s} {p:8.2f} {s:7.4f} {dt:8.1f}")
        if r.alignment is not None:
            print(f"{'':40s}scales {np.round(r.alignment.scales, 4).tolist()}")
            print(f"{'':40s}shifts {np.round(r.alignment.shifts * f, 1).tolist()}")
            print(f"{'':40s}gains  {np.round(r.alignment.confidence, 3).tolist()}; fallback {r.alignment.fallback}")
    direct = np.array([register(ref, a).scales[1] for a in stack])
    print(f"direct onto focus-stack's result, vs middle: {np.round(direct / direct[len(stack) // 2], 4).tolist()}")


if __name__ == "__main__":
    main()
