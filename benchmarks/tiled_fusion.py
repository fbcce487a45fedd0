"""Benchmark: tiled (lazy, out-of-core) vs untiled (in-memory) fusion of large synthetic stacks.

Prints a table method x size x mode x device -> seconds, megapixels/s, peak RSS.

Each measurement runs in a fresh Python process, so "peak RSS" is that run's
own high-water mark (``resource.getrusage``), imports included. A run:

* tiled: open the on-disk TIFF lazily (``io.open_lazy_stack``), ``fuse(...,
  chunks=TILE)``, write fused + labels + depth as tiled TIFFs with
  ``io.write_lazy`` (tile by tile; nothing whole in memory);
* untiled: ``tifffile.imread`` the whole stack, ``fuse`` in memory, write the
  fused TIFF.

Megapixels/s counts input pixels (slices x height x width) per second of the
whole run (read + statistics pass + fusion + write).

The inputs are synthetic uint16 focal stacks written as tiled TIFFs
(generated tile by tile, never whole in memory) under ``--workdir`` and
reused between runs. The issue's large case, 10 x 16384^2 uint16 (5.4 GB on
disk), is ``--sizes 16384`` (needs ~11 GB of free disk for input + outputs).

Examples::

    python benchmarks/tiled_fusion.py --sizes 1024 2048 4096 --methods focus_measure
    python benchmarks/tiled_fusion.py --sizes 16384 --methods average focus_measure --no-untiled
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

import numpy as np

GEN_TILE = 512


def make_stack(path: Path, size: int, slices: int, seed: int = 0) -> Path:
    """Write a ``slices x size x size`` uint16 focal stack as a tiled TIFF, one tile at a time."""
    import tifffile
    from scipy.ndimage import uniform_filter

    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)

    def tiles():
        for k in range(slices):
            for ty in range(0, size, GEN_TILE):
                for tx in range(0, size, GEN_TILE):
                    rng = np.random.default_rng([seed, ty, tx])  # same texture in every slice
                    h, w = min(GEN_TILE, size - ty), min(GEN_TILE, size - tx)
                    base = rng.random((h, w), dtype=np.float32)
                    yy, xx = np.mgrid[ty : ty + h, tx : tx + w].astype(np.float32)
                    # the in-focus slice varies smoothly over the image
                    focus = (slices - 1) * (0.5 + 0.5 * np.sin(yy / 700.0) * np.cos(xx / 900.0))
                    sharp = np.clip(1.0 - np.abs(k - focus) / 2.0, 0.0, 1.0)
                    blurred = uniform_filter(base, 5)
                    img = sharp * base + (1 - sharp) * blurred
                    yield (img * 50000 + 2000).astype(np.uint16)

    tmp = path.with_suffix(".part.tif")
    tifffile.imwrite(
        tmp,
        tiles(),
        shape=(slices, size, size),
        dtype=np.uint16,
        tile=(GEN_TILE, GEN_TILE),
        photometric="minisblack",
        bigtiff=slices * size * size * 2 > 2**31,
    )
    tmp.rename(path)
    return path


def _child(args: argparse.Namespace) -> None:
    """One measurement (run in its own process); prints a JSON line."""
    import resource

    import torch

    torch.set_num_threads(1 if args.mode == "tiled" else args.threads)
    import dask
    import tifffile

    import napari_fusion as nf
    from napari_fusion.io import open_lazy_stack, write_image, write_lazy

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    params = json.loads(args.params)
    t0 = time.perf_counter()
    if args.mode == "tiled":
        with dask.config.set(scheduler="threads", num_workers=args.threads):
            stack = open_lazy_stack(args.input)
            result = nf.fuse(stack, args.method, device=args.device, chunks=args.tile, **params)
            write_lazy(
                result,
                out / "fused.tif",
                overwrite=True,
                labels=out / "labels.tif" if result.labels is not None else None,
                depth=out / "depth.tif" if result.depth is not None else None,
            )
        n, h, w = stack.shape[:3]
        tiles = result.grid.n_tiles
    else:
        stack = tifffile.imread(args.input)
        result = nf.fuse(stack, args.method, device=args.device, **params)
        write_image(out / "fused.tif", result.fused, overwrite=True)
        n, h, w = stack.shape[:3]
        tiles = 1
    seconds = time.perf_counter() - t0
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(json.dumps({"seconds": seconds, "n": n, "h": h, "w": w, "rss_mb": rss_mb, "tiles": tiles}))


def _run_child(ns: dict) -> dict:
    cmd = [sys.executable, __file__, "--child"]
    for k, v in ns.items():
        cmd += [f"--{k.replace('_', '-')}", str(v)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096])
    p.add_argument("--slices", type=int, default=10)
    p.add_argument("--methods", nargs="+", default=["focus_measure", "average", "gff"])
    p.add_argument("--params", default="{}", help="JSON method parameters, applied to every method")
    p.add_argument("--tile", type=int, default=1024)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="dask threads (tiled) / torch threads (untiled)")
    p.add_argument("--no-untiled", action="store_true", help="skip the in-memory runs")
    p.add_argument("--untiled-max", type=int, default=4096, help="largest size run in memory")
    p.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "napari-fusion-bench"))
    p.add_argument("--keep-outputs", action="store_true")
    # child-process options
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--mode", help=argparse.SUPPRESS)
    p.add_argument("--method", help=argparse.SUPPRESS)
    p.add_argument("--input", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        _child(args)
        return 0

    work = Path(args.workdir)
    rows = []
    header = f"{'method':15s} {'size':>12s} {'mode':7s} {'device':6s} {'tiles':>5s} {'seconds':>8s} {'MP/s':>7s} {'peak RSS MB':>11s}"
    print(header)
    print("-" * len(header))
    for size in args.sizes:
        t = time.perf_counter()
        src = make_stack(work / f"stack_{args.slices}x{size}.tif", size, args.slices)
        gen = time.perf_counter() - t
        if gen > 1:
            print(f"# generated {src} in {gen:.1f} s", flush=True)
        for method in args.methods:
            modes = ["tiled"] + ([] if args.no_untiled or size > args.untiled_max else ["untiled"])
            for mode in modes:
                out = work / f"out_{method}_{size}_{mode}"
                r = _run_child(
                    dict(
                        mode=mode,
                        method=method,
                        input=src,
                        out=out,
                        tile=args.tile,
                        device=args.device,
                        threads=args.threads,
                        params=args.params,
                    )
                )
                if "error" in r:
                    print(
                        f"{method:15s} {args.slices:>3d}x{size:>5d}^2 {mode:7s} {args.device:6s} failed: {r['error']}"
                    )
                    continue
                mp = r["n"] * r["h"] * r["w"] / 1e6
                print(
                    f"{method:15s} {args.slices:>3d}x{size:>5d}^2 {mode:7s} {args.device:6s} {r['tiles']:5d} "
                    f"{r['seconds']:8.2f} {mp / r['seconds']:7.2f} {r['rss_mb']:11.0f}",
                    flush=True,
                )
                rows.append(dict(method=method, size=size, mode=mode, **r))
                if not args.keep_outputs:
                    for f in out.glob("*.tif"):
                        f.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
