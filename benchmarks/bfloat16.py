"""The learned methods' ``precision="bfloat16"`` against float32: time, decisions and quality.

    NAPARI_FUSION_DATA=../shared/data PYTHONPATH=src python benchmarks/bfloat16.py
        [--methods liu2017_cnn tiis2018_fcn] [--datasets multifocus/lytro multifocus/mf_voc]
        [--threads 2] [--repeats 3]

For every method and every case of each dataset (two sources, shared data): the method's default
run and the run with ``precision="bfloat16"`` (``liu2017_cnn``: the CNN branch in bfloat16, head
and outputs float32; ``tiis2018_fcn``: the network in bfloat16). Printed
per dataset: the share of pixels whose final label differs, the PSNR between the two fused images
(pooled: of the mean squared error over the cases) and how many cases came out identical, and,
where the case has a ground truth (``gt``), each run's pooled PSNR against it. Then the time of
the method on one 1024^2 grey pair in each precision (median of ``--repeats``, alternated), and
whether this CPU has bfloat16 units (AVX512-BF16 / AMX): without them bfloat16 is the slower choice.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from napari_fusion import fuse
from napari_fusion.datasets import iter_cases, shared_data_dir
from napari_fusion.io import read_image


def mse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))


def pooled_psnr(errors: list[float]) -> float:
    """PSNR (8-bit) of the mean squared error over the cases (identical images count as 0)."""
    m = float(np.mean(errors))
    return float("inf") if m == 0 else 10 * np.log10(255.0**2 / m)


def method_times(method: str, repeats: int) -> dict[str, float]:
    from napari_fusion.methods.liu2017_cnn import clear_score_cache

    rng = np.random.default_rng(0)
    pair = [rng.random((1024, 1024), dtype=np.float32) for _ in range(2)]
    precisions = ("float32", "bfloat16")
    for p in precisions:
        fuse([a[:256, :256] for a in pair], method=method, precision=p)  # warm-up: weights, copies
    times: dict[str, list[float]] = {p: [] for p in precisions}
    for _ in range(repeats):
        for p in precisions:
            clear_score_cache()
            t = time.perf_counter()
            fuse(pair, method=method, precision=p)
            times[p].append(time.perf_counter() - t)
    return {p: statistics.median(v) for p, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", nargs="+", default=["liu2017_cnn", "tiis2018_fcn"])
    ap.add_argument("--datasets", nargs="+", default=["multifocus/lytro", "multifocus/mf_voc"])
    ap.add_argument("--data", default=None, help="shared data folder (default: NAPARI_FUSION_DATA or ../shared/data)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")  # the slower-on-this-CPU warning is printed below instead
    root = Path(args.data) if args.data else shared_data_dir()
    print("| method | dataset | cases | labels changed % (mean, max) | f32 vs bf16: PSNR dB, identical "
          "| PSNR vs gt f32 / bf16 |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for method in args.methods:
        for name in args.datasets:
            print(quality_row(method, root, name), flush=True)
    units = bool(getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)())
    print(f"\n{args.threads} threads; bfloat16 units on this CPU: {'yes' if units else 'no'}")
    for method in args.methods:
        t = method_times(method, args.repeats)
        print(f"{method}, one 1024^2 grey pair: float32 {t['float32']:.2f} s, bfloat16 {t['bfloat16']:.2f} s "
              f"({t['float32'] / t['bfloat16']:.2f}x)")  # fmt: skip


def quality_row(method: str, root: Path | None, name: str) -> str:
    if root is None or not (root / name).is_dir():
        return f"| {method} | {name} | skipped: not found under {root} | | | |"
    changed, between, gt32, gt16 = [], [], [], []
    cases = [c for c in iter_cases(root / name) if len(c.sources) == 2]
    for case in cases:
        images = [read_image(p) for p in case.sources]
        r32 = fuse(images, method=method)
        r16 = fuse(images, method=method, precision="bfloat16")
        changed.append(float(np.mean(r32.labels != r16.labels)))
        between.append(mse(r32.fused, r16.fused))
        if case.gt is not None:
            gt = read_image(case.gt)
            gt32.append(mse(r32.fused, gt))
            gt16.append(mse(r16.fused, gt))
    vs_gt = f"{pooled_psnr(gt32):.2f} / {pooled_psnr(gt16):.2f}" if gt32 else "-"
    same = sum(e == 0 for e in between)
    return (
        f"| {method} | {name} | {len(cases)} | {100 * np.mean(changed):.3f}, {100 * max(changed):.3f} "
        f"| {pooled_psnr(between):.1f}, {same} of {len(cases)} | {vs_gt} |"
    )


if __name__ == "__main__":
    main()
