"""Speed of the classical methods: seconds and megapixels per second per method and size.

Usage: python benchmarks/classical.py [--sizes 512 1024 2048] [--slices 8] [--repeat 3]

Prints a table; compares methods within one run (the machines are shared and noisy).
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch

import napari_fusion as nf
from napari_fusion.synthetic import render_focal_stack


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048])
    ap.add_argument("--slices", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--methods", nargs="+", default=["average", "focus_measure", "gff", "laplacian_pyramid", "mertens"])
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    print(
        f"# torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, device {args.device}"
    )
    print(f"# grey uint8 focal stacks of {args.slices} slices; best of {args.repeat} runs")
    print(f"{'method':20s} {'size':>10s} {'seconds':>9s} {'MP/s':>8s}")
    for size in args.sizes:
        base = (rng.random((size, size)) * 255).astype(np.uint8)
        stack = render_focal_stack(base, n_slices=args.slices, max_sigma=4.0).slices
        mp = stack.size / 1e6
        for m in args.methods:
            best = float("inf")
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                nf.fuse(stack, method=m, device=args.device)
                best = min(best, time.perf_counter() - t0)
            print(f"{m:20s} {f'{size}x{size}':>10s} {best:9.3f} {mp / best:8.1f}")


if __name__ == "__main__":
    main()
