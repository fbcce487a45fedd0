"""Benchmark: the two fold orders of the pairwise methods, on synthetic stacks and the real DAPI stack.

A two-input method (``liu2017_cnn``, ``tiis2018_fcn``, ``veshki_cdl``) fuses a stack of N > 2
slices by folding its pair step over the stack (``fold`` parameter):

* ``sequential``: ((I0 + I1) + I2) + ..., the order of the papers: every decision about a pixel
  is chained through up to N - 1 pair steps;
* ``tree``: neighbouring slices first, then neighbouring results: at most ceil(log2 N) steps.

Synthetic focal stacks (``napari_fusion.synthetic.render_focal_stack`` of the demo photograph,
with known sharp image and in-focus slice) give the PSNR of the fused image and the share of
pixels whose label lies within one slice of the true one. The real widefield DAPI stack (40
planes, no ground truth) gives the median distance, inside the nucleus, between each order's
labels and those of ``focus_pyramid`` (the N-way default for microscope stacks), and the share
within 3 slices of it. Prints a table; wall time per fusion is also shown (the machine may be
shared: compare within one run).

    PYTHONPATH=src NAPARI_FUSION_DATA=../shared/data python benchmarks/fold_order.py [--figure docs/images/fold_order_dapi.png]
    PYTHONPATH=src python benchmarks/fold_order.py --methods veshki_cdl --size 256 --no-dapi
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np

import napari_fusion as nf
from napari_fusion.datasets import shared_data_dir
from napari_fusion.io import read_stack
from napari_fusion.synthetic import demo_photograph, render_focal_stack

PAIRWISE = ("liu2017_cnn", "tiis2018_fcn", "veshki_cdl")
ORDERS = ("sequential", "tree")
#: (slices, noise in grey levels) of the synthetic stacks
CASES = ((8, 0.0), (16, 0.0), (16, 3.0))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / max(mse, 1e-12)))


def timed(images, method: str, **params) -> tuple[nf.FusionResult, float]:
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = nf.fuse(images, method, device="cpu", **params)
    return r, time.perf_counter() - t


def synthetic_rows(methods, size: int) -> list[str]:
    image = demo_photograph()[:size, :size]
    rows = []
    for n, noise in CASES:
        stack = render_focal_stack(image, n_slices=n, noise=noise, seed=1)
        for method in methods:
            cells = []
            for order in ORDERS:
                r, s = timed(stack.slices, method, fold=order)
                near = np.abs(r.labels.astype(int) - stack.true_labels) <= 1
                cells.append(f"{psnr(r.fused, stack.ground_truth):.2f} dB, {near.mean() * 100:.1f} %, {s:.1f} s")
            rows.append(f"| synthetic {n} x {size}^2 RGB, noise {noise:g} | `{method}` | {cells[0]} | {cells[1]} |")
            print(rows[-1], flush=True)
    return rows


def dapi_figure(path, stack: np.ndarray, results: list[tuple[str, nf.FusionResult]]) -> None:
    """Fused images (one display range, 2x nearest zoom) above their label maps (slice 0 black,
    the last white), one column per result, written as a PNG."""
    from napari_fusion.io import write_image

    fused = [r.fused.astype(np.float64) for _, r in results]
    lo, hi = np.percentile(np.concatenate([f.ravel() for f in fused]), [1, 99.5])
    top = np.concatenate([np.clip((f - lo) / (hi - lo), 0, 1) for f in fused], 1)
    bottom = np.concatenate([r.labels / (len(stack) - 1) for _, r in results], 1)
    image = np.repeat(np.repeat(np.concatenate([top, bottom], 0), 2, 0), 2, 1)
    write_image(path, (image * 255).round().astype(np.uint8))
    print(f"wrote {path}: columns " + ", ".join(name for name, _ in results))


def dapi_rows(methods, data, figure=None) -> list[str]:
    folder = data / "focalstack" / "dapi_widefield" / "dapi"
    if not folder.is_dir():
        print(f"(no DAPI stack at {folder}: skipped)")
        return []
    stack = np.stack(read_stack(folder))
    nucleus = stack.max(0) > np.percentile(stack.max(0), 60)
    pyramid = timed(stack, "focus_pyramid")[0]
    reference = pyramid.labels.astype(int)
    rows, shown = [], [("focus_pyramid", pyramid)]
    for method in methods:
        cells = []
        for order in ORDERS:
            r, s = timed(stack, method, fold=order)
            shown.append((f"{method} {order}", r))
            d = np.abs(r.labels.astype(int) - reference)[nucleus]
            cells.append(f"median {np.median(d):.0f}, {(d <= 3).mean() * 100:.0f} % within 3, {s:.1f} s")
        rows.append(
            f"| DAPI widefield 40 x 201 x 101 (labels against `focus_pyramid`) | `{method}` | {cells[0]} | {cells[1]} |"
        )
        print(rows[-1], flush=True)
    if figure:
        dapi_figure(figure, stack, shown)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--methods", nargs="+", default=list(PAIRWISE), choices=PAIRWISE)
    ap.add_argument("--size", type=int, default=384, help="side of the synthetic stacks (default 384)")
    ap.add_argument("--no-dapi", action="store_true", help="skip the real DAPI stack")
    ap.add_argument("--figure", help="write the DAPI results (fused above labels) to this PNG")
    ap.add_argument("--no-synthetic", action="store_true", help="skip the synthetic stacks")
    args = ap.parse_args(argv)
    print("| stack | method | sequential (papers' order) | tree |")
    print("|---|---|---|---|")
    if not args.no_synthetic:
        synthetic_rows(args.methods, args.size)
    data = shared_data_dir()
    if not args.no_dapi:
        if data is None:
            print("(no shared data folder: set NAPARI_FUSION_DATA; DAPI skipped)")
        else:
            dapi_rows(args.methods, data, args.figure)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
