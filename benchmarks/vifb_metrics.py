"""Reproduce VIFB's stored per-image metric table from its images.

Usage::

    PYTHONPATH=src python benchmarks/vifb_metrics.py [--data DIR] [--cases carLight,kettle]
        [--methods ADF,GFF] [--metrics Qabf,Ssim] [--threads 1] [--csv out.csv]

Reads ``irvis/vifb/vifb_metrics.csv`` (21 pairs x 25 methods x 13 metrics,
stored with 5 significant digits) and every ``<case>/src_00.jpg`` (infrared),
``src_01.jpg`` (visible), ``reference/<METHOD>.jpg`` with Pillow (libjpeg-turbo,
default ISLOW DCT and fancy upsampling), recomputes each value with
:data:`napari_fusion.metrics.vifb.VIFB_METRICS`, and prints the worst
relative errors per metric and the total time.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np


def read_jpeg(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im)


def load_table(path: Path) -> dict[tuple[str, str, str], float]:
    out = {}
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            out[(row["image"], row["method"], row["metric"])] = float(row["value_as_stored"])
    return out


def main(argv=None) -> int:
    import torch

    from napari_fusion.datasets import shared_data_dir
    from napari_fusion.metrics.vifb import VIFB_METRICS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=None, help="the irvis/vifb folder")
    ap.add_argument("--cases", default="", help="comma-separated case names (default all)")
    ap.add_argument("--methods", default="", help="comma-separated methods (default all with images)")
    ap.add_argument("--metrics", default="", help="comma-separated VIFB metric names (default all 13)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--csv", type=Path, default=None, help="write every computed value here")
    ap.add_argument("--worst", type=int, default=3, help="worst entries listed per metric")
    ap.add_argument(
        "--exclude",
        default="SwinFusion,YDTR",
        help="methods also summarised separately (their stored JPEGs are not what VIFB scored)",
    )
    ap.add_argument("--from-csv", type=Path, default=None, help="summarise a CSV written by --csv instead of computing")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    root = args.data
    if root is None:
        base = shared_data_dir()
        if base is None:
            print("shared data not found; pass --data or set NAPARI_FUSION_DATA", file=sys.stderr)
            return 2
        root = base / "irvis" / "vifb"
    table = load_table(root / "vifb_metrics.csv")
    cases = [c for c in args.cases.split(",") if c] or sorted({k[0] for k in table})
    metrics = [m for m in args.metrics.split(",") if m] or list(VIFB_METRICS)
    want_methods = [m for m in args.methods.split(",") if m]

    errors: dict[str, list[tuple[float, str, str, float, float]]] = defaultdict(list)
    seconds: dict[str, float] = defaultdict(float)
    rows = []
    t_all = time.perf_counter()
    cpu_all = time.process_time()
    if args.from_csv:
        with open(args.from_csv, newline="") as fh:
            for r in csv.DictReader(fh):
                stored = table.get((r["image"], r["method"], r["metric"]))
                if stored is None or r["metric"] not in metrics or r["image"] not in cases:
                    continue
                value = float(r["computed"])
                errors[r["metric"]].append(
                    (abs(value - stored) / max(abs(stored), 1e-12), r["image"], r["method"], value, stored)
                )
        cases_done = sorted({e[1] for v in errors.values() for e in v})
        _report(errors, seconds, metrics, args, len(cases_done), math.nan, math.nan)
        return 0
    out_fh = None
    if args.csv:
        out_fh = open(args.csv, "w", newline="")  # noqa: SIM115 - closed at the end of the run
        out_w = csv.writer(out_fh)
        out_w.writerow(["image", "method", "metric", "computed", "stored"])
    for case in cases:
        ir = read_jpeg(root / case / "src_00.jpg")
        vi = read_jpeg(root / case / "src_01.jpg")
        methods = want_methods or sorted(p.stem for p in (root / case / "reference").glob("*.jpg"))
        for method in methods:
            fused = read_jpeg(root / case / "reference" / f"{method}.jpg")
            for name in metrics:
                t0 = time.perf_counter()
                value = VIFB_METRICS[name](fused, [vi, ir])
                seconds[name] += time.perf_counter() - t0
                stored = table.get((case, method, name))
                rows.append((case, method, name, value, stored))
                if stored is None:
                    continue
                rel = abs(value - stored) / max(abs(stored), 1e-12)
                errors[name].append((rel, case, method, value, stored))
        if out_fh is not None:  # written case by case, so a long run leaves partial results
            out_w.writerows(r for r in rows if r[0] == case)
            out_fh.flush()
        print(
            f"{case}: done ({time.perf_counter() - t_all:.0f} s wall, {time.process_time() - cpu_all:.0f} s CPU)",
            file=sys.stderr,
            flush=True,
        )
    total = time.perf_counter() - t_all
    cpu = time.process_time() - cpu_all
    n_bad = _report(errors, seconds, metrics, args, len(cases), total, cpu)
    if out_fh is not None:
        out_fh.close()
    return 0 if n_bad == 0 else 1


def _table(errors, seconds, metrics, args, title):
    n_all = sum(len(v) for v in errors.values())
    n_bad = sum(1 for v in errors.values() for e in v if e[0] > 1e-3)
    print(f"\n{title}: {n_all} stored values compared")
    print(f"{'metric':18s} {'n':>5s} {'max rel err':>12s} {'median':>10s} {'>1e-3':>6s} {'seconds':>8s}  worst entries")
    for name in metrics:
        errs = sorted(errors[name], reverse=True)
        if not errs:
            continue
        rel = np.array([e[0] for e in errs])
        worst = "; ".join(f"{c}/{m} {v:.6g} vs {s:.6g}" for _, c, m, v, s in errs[: args.worst])
        print(
            f"{name:18s} {len(errs):5d} {rel.max():12.2e} {np.median(rel):10.1e} {int((rel > 1e-3).sum()):6d}"
            f" {seconds.get(name, math.nan):8.1f}  {worst}"
        )
    print(f"entries above 1e-3 relative error: {n_bad} of {n_all}")
    return n_bad


def _report(errors, seconds, metrics, args, n_cases, total, cpu):
    excluded = {m for m in args.exclude.split(",") if m}
    n_bad = _table(errors, seconds, metrics, args, f"VIFB reproduction, {n_cases} pairs, all methods")
    if excluded:
        kept = {k: [e for e in v if e[2] not in excluded] for k, v in errors.items()}
        _table(kept, seconds, metrics, args, f"without {', '.join(sorted(excluded))}")
        bad = {k: [e for e in v if e[2] in excluded] for k, v in errors.items()}
        _table(bad, seconds, metrics, args, f"only {', '.join(sorted(excluded))}")
    print(f"\ntotal time: {total:.1f} s wall, {cpu:.1f} s CPU (threads={args.threads})")
    return n_bad


if __name__ == "__main__":
    sys.exit(main())
