"""``liu2017_cnn`` in bfloat16 against float32: time, decisions and quality on real pairs.

    NAPARI_FUSION_DATA=../shared/data PYTHONPATH=src python benchmarks/liu2017_bfloat16.py
        [--datasets multifocus/lytro multifocus/mf_voc] [--threads 2] [--repeats 3]

For every case of each dataset (two sources, shared data): the method's default run and the
run with ``precision="bfloat16"`` (the CNN branch in bfloat16, head and outputs float32). Printed
per dataset: the share of pixels whose final label differs, the PSNR between the two fused images
(pooled: of the mean squared error over the cases) and how many cases came out identical, and,
where the case has a ground truth (``gt``), each run's pooled PSNR against it. Then the CNN scoring
time of one 1024^2 pair in each precision (median of ``--repeats``, alternated), and whether this
CPU has bfloat16 units (AVX512-BF16 / AMX): without them bfloat16 is the slower choice.
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


def scoring_times(repeats: int) -> dict[str, float]:
    from napari_fusion.methods.liu2017_cnn import scorer_for
    from napari_fusion.nets.liu2017_cnn import stack_terms

    grey = torch.rand(2, 1024, 1024, generator=torch.Generator().manual_seed(0))
    scorers = {p: scorer_for("slight", None, torch.device("cpu"), p) for p in ("float32", "bfloat16")}
    times: dict[str, list[float]] = {p: [] for p in scorers}
    for scorer in scorers.values():
        stack_terms(scorer, grey[:, :256, :256])  # warm-up
    for _ in range(repeats):
        for p, scorer in scorers.items():
            t = time.perf_counter()
            stack_terms(scorer, grey)
            times[p].append(time.perf_counter() - t)
    return {p: statistics.median(v) for p, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=["multifocus/lytro", "multifocus/mf_voc"])
    ap.add_argument("--data", default=None, help="shared data folder (default: NAPARI_FUSION_DATA or ../shared/data)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")  # the slower-on-this-CPU warning is printed below instead
    root = Path(args.data) if args.data else shared_data_dir()
    print(
        "| dataset | cases | labels changed % (mean, max) | f32 vs bf16: PSNR dB, identical | PSNR vs gt f32 / bf16 |"
    )
    print("|---|---|---|---|---|")
    for name in args.datasets:
        if root is None or not (root / name).is_dir():
            print(f"| {name} | skipped: not found under {root} | | | |")
            continue
        changed, between, gt32, gt16 = [], [], [], []
        cases = [c for c in iter_cases(root / name) if len(c.sources) == 2]
        for case in cases:
            images = [read_image(p) for p in case.sources]
            r32 = fuse(images, method="liu2017_cnn")
            r16 = fuse(images, method="liu2017_cnn", precision="bfloat16")
            changed.append(float(np.mean(r32.labels != r16.labels)))
            between.append(mse(r32.fused, r16.fused))
            if case.gt is not None:
                gt = read_image(case.gt)
                gt32.append(mse(r32.fused, gt))
                gt16.append(mse(r16.fused, gt))
        vs_gt = f"{pooled_psnr(gt32):.2f} / {pooled_psnr(gt16):.2f}" if gt32 else "-"
        same = sum(e == 0 for e in between)
        print(
            f"| {name} | {len(cases)} | {100 * np.mean(changed):.3f}, {100 * max(changed):.3f} "
            f"| {pooled_psnr(between):.1f}, {same} of {len(cases)} | {vs_gt} |"
        )
    t = scoring_times(args.repeats)
    units = bool(getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)())
    print(
        f"\nCNN scoring of one 1024^2 pair, {args.threads} threads: float32 {t['float32']:.2f} s, "
        f"bfloat16 {t['bfloat16']:.2f} s ({t['float32'] / t['bfloat16']:.2f}x); "
        f"bfloat16 units on this CPU: {'yes' if units else 'no'}"
    )


if __name__ == "__main__":
    main()
