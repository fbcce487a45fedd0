"""CPU seconds per metric per case for ``napari-fusion evaluate``'s metrics.

Usage::

    PYTHONPATH=src python benchmarks/metrics_speed.py [--case DIR] [--fused NAME]
        [--metrics qabf,ssim] [--repeat 3] [--threads 1] [--rev HEAD] [--check]

Times every metric (default: the 13 of ``DEFAULT_METRICS``) on one case
(default ``multifocus/lytro/lytro-01``, 520x520 RGB; the fused image is
``reference/<NAME>.jpg``, default the first one) with ``time.process_time``,
single-threaded, the source-side memo cleared before every call (the cost of
a case's first fused image; later methods on the same case reuse the source
side). Reports the minimum over ``--repeat`` runs.

``--rev REV`` also times the metrics of a git revision (its ``src/`` tree is
extracted with ``git archive`` into a temporary folder and run in a
subprocess), side by side with the working tree: the before/after table.
``--check`` prints the relative difference of the values as well.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _revisions import extract_src


def _read(path: Path):
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im)


def time_metrics(case: Path, fused_name: str, names: list[str], repeat: int, threads: int) -> dict:
    """``{name: [isolated CPU-s, in-sequence CPU-s, value]}`` for the importable ``napari_fusion``.

    Isolated: the memo cleared before each metric (the metric alone on a new
    case). In sequence: cleared once, then the metrics in order, as
    ``evaluate`` runs them on a case's first fused image (what a metric shares
    with the ones before it is not paid again). Minimum over ``repeat`` runs.
    """
    import torch

    from napari_fusion.metrics import METRICS, _common

    torch.set_num_threads(threads)
    srcs = [_read(p) for p in sorted(case.glob("src_*.*"))]
    fused = _read(case / "reference" / f"{fused_name}.jpg")
    out = {n: [math.inf, math.inf, math.nan] for n in names}
    for _ in range(repeat):
        for n in names:
            _common.clear_memo()
            t0 = time.process_time()
            out[n][2] = METRICS[n](fused, srcs)
            out[n][0] = min(out[n][0], time.process_time() - t0)
        _common.clear_memo()
        for n in names:
            t0 = time.process_time()
            METRICS[n](fused, srcs)
            out[n][1] = min(out[n][1], time.process_time() - t0)
    return out


def _time_revision(rev: str, args, names: list[str]) -> dict:
    """Run this script with ``--json`` on the ``src/`` of git revision ``rev``."""
    with tempfile.TemporaryDirectory() as tmp:
        src = extract_src(rev, Path(tmp))
        cmd = [sys.executable, __file__, "--json", "--case", str(args.case), "--fused", args.fused]
        cmd += ["--metrics", ",".join(names), "--repeat", str(args.repeat), "--threads", str(args.threads)]
        env = {"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin"}
        res = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    return json.loads(res.stdout)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", type=Path, default=None, help="case folder (default lytro-01 from the shared data)")
    ap.add_argument("--fused", default="", help="reference/<NAME>.jpg scored as the fused image")
    ap.add_argument("--metrics", default="", help="comma-separated metric names (default DEFAULT_METRICS)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rev", default="", help="also time the metrics of this git revision (e.g. HEAD)")
    ap.add_argument("--check", action="store_true", help="with --rev: relative difference of the values")
    ap.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    from napari_fusion.metrics import DEFAULT_METRICS

    if args.case is None:
        from napari_fusion.datasets import shared_data_dir

        base = shared_data_dir()
        if base is None:
            print("shared data not found; pass --case", file=sys.stderr)
            return 2
        args.case = base / "multifocus" / "lytro" / "lytro-01"
    args.fused = args.fused or sorted(p.stem for p in (args.case / "reference").glob("*.jpg"))[0]
    names = [m for m in args.metrics.split(",") if m] or list(DEFAULT_METRICS)
    now = time_metrics(args.case, args.fused, names, args.repeat, args.threads)
    if args.json:
        print(json.dumps(now))
        return 0
    old = _time_revision(args.rev, args, names) if args.rev else None
    _print_table(args, names, now, old)
    return 0


def _print_table(args, names: list[str], now: dict, old: dict | None) -> None:
    shape = _read(args.case / "reference" / f"{args.fused}.jpg").shape
    print(f"case {args.case.name} ({'x'.join(map(str, shape))}), fused = {args.fused}, threads = {args.threads}")
    print(f"CPU-s per metric per case, min of {args.repeat}: alone (memo cleared) and in sequence (cleared once)")
    head = f"{'metric':12s} {'alone':>8s} {'in seq':>8s}"
    if old is not None:
        head += f" {args.rev + ' alone':>12s} {args.rev + ' seq':>10s} {'speed-up':>9s}"
        head += f" {'rel diff':>9s}" if args.check else ""
    print(head)
    for n in names:
        line = f"{n:12s} {now[n][0]:8.3f} {now[n][1]:8.3f}"
        if old is not None:
            o = old[n]
            line += f" {o[0]:12.3f} {o[1]:10.3f} {o[1] / max(now[n][1], 1e-9):8.1f}x"
            if args.check:
                a, b = now[n][2], o[2]
                rel = 0.0 if a == b else abs(a - b) / max(abs(b), 1e-300)
                line += f" {rel:9.1e}"
        print(line)
    tot = [sum(now[n][i] for n in names) for i in (0, 1)]
    line = f"{'total':12s} {tot[0]:8.3f} {tot[1]:8.3f}"
    if old is not None:
        tot_old = [sum(old[n][i] for n in names) for i in (0, 1)]
        line += f" {tot_old[0]:12.3f} {tot_old[1]:10.3f} {tot_old[1] / max(tot[1], 1e-9):8.1f}x"
    print(line)


if __name__ == "__main__":
    sys.exit(main())
