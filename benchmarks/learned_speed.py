"""Speed of every learned fusion method against this CPU's matrix-product (GEMM) rate.

    PYTHONPATH=src python benchmarks/learned_speed.py [--size 1024] [--threads 2] [--repeats 3]
        [--methods liu2017_cnn,tiis2018_fcn] [--data ../shared/data] [--untrained-vgg19]

For each method in ``napari_fusion.list_methods()`` with ``learned=True``: the FLOPs of
one ``size x size`` pair (analytic for the Liu et al. 2017 CNN, conv layers counted as
``2*Cin*Cout*k*k*H*W``; for the others counted by ``torch.utils.flop_counter`` while
the method runs, i.e. the convolutions and matrix products actually executed), the
measured seconds of ``fuse`` on that pair (median of ``--repeats``), the float32
GEMM rate (``torch.matmul`` of two 2048x2048 matrices, GFLOP/s, median of runs
interleaved with the methods' runs, so that load from other jobs hits both) and the
ratio measured / (FLOPs / GEMM rate): 1.0 means the method runs at the GEMM rate.
Methods whose weights are absent are skipped with a message; ``--untrained-vgg19`` runs
``li2018_vgg19`` with a random full-size VGG19 instead (the same work and time).

The pair is a ``size``-square crop of the first two PCB focal-stack slices when the
shared data are found (``--data`` or ``NAPARI_FUSION_DATA``), else random images;
the work of these networks does not depend on the content.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from pathlib import Path

import numpy as np
import torch

import napari_fusion as nf
from _stand_ins import untrained_vgg19
from napari_fusion import fuse
from napari_fusion.errors import WeightsUnavailableError
from napari_fusion.methods.liu2017_cnn import clear_score_cache
from napari_fusion.nets.liu2017_cnn import score_map_size, tile_grid

GEMM_N = 2048


def gemm_rate() -> float:
    """float32 GFLOP/s of one 2048x2048 matmul (best of 3 after a warm-up)."""
    a, b = torch.rand(GEMM_N, GEMM_N), torch.rand(GEMM_N, GEMM_N)
    a @ b
    times = []
    for _ in range(3):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return 2 * GEMM_N**3 / min(times) / 1e9


def conv_flops(cin: int, cout: int, k: int, h: int, w: int) -> float:
    return 2.0 * cin * cout * k * k * h * w


def liu_pair_flops(h: int, w: int, *, tiled: bool) -> float:
    """FLOPs of one pair's dense scoring by the folded Liu network (two branch passes + head).

    ``tiled``: over the tiles actually computed (their halos recompute a border).
    """
    boxes = [(y.stop - y.start, x.stop - x.start) for _, _, y, x in tile_grid(h, w)] if tiled else [(h, w)]
    total = 0.0
    for th, tw in boxes:
        h2, w2 = (th + 1) // 2, (tw + 1) // 2
        total += conv_flops(1, 64, 3, th, tw) + conv_flops(64, 128, 3, th, tw) + conv_flops(128, 256, 3, h2, w2)
        total += conv_flops(256, 2, 8, h2 - 7, w2 - 7)
    return 2 * total


def counted_flops(fn) -> float:
    """FLOPs of ``fn()`` as torch's counter sees them; oneDNN's fused convolution + ReLU, which it
    does not count, is switched off meanwhile (the same convolutions then run as ``conv2d``)."""
    from unittest import mock

    from torch.utils.flop_counter import FlopCounterMode

    with mock.patch("napari_fusion.nets._conv.has_fused_conv", lambda: False), FlopCounterMode(display=False) as c:
        fn()
    return float(c.get_total_flops())


def load_pair(size: int, data: str | None) -> list[np.ndarray]:
    from napari_fusion.datasets import shared_data_dir
    from napari_fusion.io import read_image

    root = Path(data) if data else shared_data_dir()
    pcb = root / "focalstack/pcb/pcb" if root is not None else None
    if pcb is not None and (pcb / "src_00.jpg").is_file():
        imgs = [read_image(pcb / f"src_0{k}.jpg") for k in range(2)]
        if min(imgs[0].shape[:2]) >= size:
            return [np.ascontiguousarray(im[:size, :size].mean(axis=-1).astype(np.uint8)) for im in imgs]
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (size, size), dtype=np.uint8) for _ in range(2)]


def time_method(name: str, pair: list[np.ndarray], repeats: int, rates: list[float]) -> float:
    times = []
    for _ in range(repeats):
        rates.append(gemm_rate())
        clear_score_cache()  # repeated identical pairs would otherwise reuse the last scores
        t = time.perf_counter()
        fuse(pair, method=name, device="cpu")
        times.append(time.perf_counter() - t)
    rates.append(gemm_rate())
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--methods", default="", help="comma-separated subset (default: every learned method)")
    ap.add_argument("--data", default=None, help="shared data folder (default: NAPARI_FUSION_DATA)")
    ap.add_argument(
        "--untrained-vgg19",
        action="store_true",
        help="li2018_vgg19 with a random full-size VGG19 when the ImageNet weights are absent (same time)",
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    wanted = [m for m in args.methods.split(",") if m]
    specs = [s for s in nf.list_methods() if s.learned and (not wanted or s.name in wanted)]
    pair = load_pair(args.size, args.data)
    n = args.size
    print(f"{len(specs)} learned methods, {n}x{n} pair, {args.threads} threads, median of {args.repeats}")
    rows = []
    stand_in = contextlib.ExitStack()
    if args.untrained_vgg19:
        stand_in.enter_context(untrained_vgg19())
    for spec in specs:
        try:
            fuse(pair, method=spec.name, device="cpu")  # warm-up: loads and caches the weights
        except WeightsUnavailableError as exc:
            print(f"skip {spec.name}: weights absent ({str(exc).splitlines()[0][:100]})")
            continue
        if spec.name.startswith("liu2017_cnn"):
            flops, how = liu_pair_flops(n, n, tiled=False), "analytic"
        else:
            flops, how = counted_flops(lambda s=spec: fuse(pair, method=s.name, device="cpu")), "counted"
        rates: list[float] = []
        t = time_method(spec.name, pair, args.repeats, rates)
        rate = statistics.median(rates)
        rows.append((spec.name, flops, how, t, rate))
        print(f"  {spec.name}: {t:.2f} s, GEMM {rate:.1f} GFLOP/s", flush=True)
    print("\n| method | GFLOP / pair | FLOPs | measured s | GEMM GFLOP/s | bound s | measured / bound |")
    print("|---|---|---|---|---|---|---|")
    for name, flops, how, t, rate in rows:
        bound = flops / (rate * 1e9)
        ratio = f"{t / bound:.2f}" if flops > 0 else "-"
        print(f"| {name} | {flops / 1e9:.1f} | {how} | {t:.2f} | {rate:.1f} | {bound:.2f} | {ratio} |")
    sh, sw = score_map_size(n, n)
    extra = liu_pair_flops(n, n, tiled=True) / liu_pair_flops(n, n, tiled=False)
    print(f"\nliu2017: score map {sh}x{sw}; tile halos add {100 * (extra - 1):.1f}% to the analytic FLOPs.")


if __name__ == "__main__":
    main()
