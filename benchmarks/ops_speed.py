"""Benchmark: the shared image operations the classical methods spend their time in.

Times, best of ``--repeat`` runs, in milliseconds: the Gaussian filter (sigma 1, 3 and 7) on one
2048^2 plane, on 20 planes of 1024^2 and on 768 patches of 64^2 (a batch, as the metrics and
training validation filter them), the Burt reduce and expand of a 2048^2 plane, a 4-level
Laplacian pyramid of a 3 x 2048^2 image, the box filter (radius 7 and 45, the two of ``gff``) and
a guided filter (grey guide, radius 45) of a 2048^2 plane. With ``--rev REV`` the same table is measured for the code
of git revision ``REV`` (its ``src/`` extracted with ``git archive``, run in a subprocess with
``PYTHONPATH`` pointing there), so a change is compared with its parent on the same machine, in
one run::

    python benchmarks/ops_speed.py --rev b3a71ca

Single process, torch's default threads. The machine is shared: compare columns of one run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _revisions import extract_src

CASES = [
    ("gaussian sigma 1, 2048^2", "gauss", (2048, 2048), 1.0),
    ("gaussian sigma 3, 2048^2", "gauss", (2048, 2048), 3.0),
    ("gaussian sigma 7, 2048^2", "gauss", (2048, 2048), 7.0),
    ("gaussian sigma 3, 20 x 1024^2", "gauss", (20, 1024, 1024), 3.0),
    ("gaussian sigma 3, 768 x 64^2", "gauss", (768, 64, 64), 3.0),
    ("pyramid reduce, 2048^2", "reduce", (2048, 2048), None),
    ("pyramid expand to 2048^2", "expand", (1024, 1024), None),
    ("laplacian pyramid 4 levels, 3 x 2048^2", "laplacian", (3, 2048, 2048), None),
    ("box filter r 7, 2048^2", "box", (2048, 2048), 7),
    ("box filter r 45, 2048^2", "box", (2048, 2048), 45),
    ("guided filter r 45 eps 0.3, 2048^2", "guided", (2048, 2048), (45, 0.3)),
]


def measure(repeat: int) -> dict[str, float]:
    """Milliseconds per case (best of ``repeat``) for the napari_fusion found on ``sys.path``."""
    import torch

    from napari_fusion.ops import pyramids
    from napari_fusion.ops.filters import box_filter, gaussian_filter
    from napari_fusion.ops.guided import guided_filter

    gen = torch.Generator().manual_seed(0)
    out = {}
    for label, kind, shape, sigma in CASES:
        x = torch.rand(*shape, generator=gen)
        if kind == "gauss":
            run = lambda: gaussian_filter(x, sigma)  # noqa: E731
        elif kind == "box":
            run = lambda: box_filter(x, sigma)  # noqa: E731
        elif kind == "guided":
            p = torch.rand(*shape, generator=gen)
            run = lambda: guided_filter(x, p, *sigma)  # noqa: E731
        elif kind == "reduce":
            run = lambda: pyramids._reduce(x)  # noqa: E731
        elif kind == "expand":
            run = lambda: pyramids._expand(x, (2 * shape[0], 2 * shape[1]))  # noqa: E731
        else:
            run = lambda: list(pyramids.iter_laplacian_levels(x, 4))  # noqa: E731
        best = float("inf")
        for _ in range(repeat):
            t0 = time.perf_counter()
            run()
            best = min(best, time.perf_counter() - t0)
        out[label] = best * 1000
    return out


def measure_rev(rev: str, repeat: int) -> dict[str, float]:
    """:func:`measure` for the code of git revision ``rev``, in a subprocess."""
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, PYTHONPATH=str(extract_src(rev, Path(tmp))))
        done = subprocess.run(
            [sys.executable, __file__, "--child", "--repeat", str(repeat)], capture_output=True, text=True, env=env
        )
    if done.returncode != 0:
        raise SystemExit(f"revision {rev} failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--rev", help="also time the code of this git revision")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.repeat)))
        return 0
    before = measure_rev(args.rev, args.repeat) if args.rev else None
    now = measure(args.repeat)
    head = f"{'case':<42} {'now ms':>8}"
    if before:
        head += f" {args.rev + ' ms':>14} {'speed-up':>9}"
    print(head)
    for label in now:
        line = f"{label:<42} {now[label]:8.1f}"
        if before:
            line += f" {before[label]:14.1f} {before[label] / now[label]:8.1f}x"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
