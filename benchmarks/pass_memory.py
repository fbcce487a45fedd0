"""Memory of a tiled run as it goes: resident and peak RSS after every tile, pass by pass.

Fuses the synthetic uint16 stack that ``benchmarks/tiled_fusion.py`` writes (default
``$TMPDIR/napari-fusion-bench/stack_10x8192.tif``; make it with ``python benchmarks/tiled_fusion.py
--sizes 8192 --methods average --no-untiled``), lazily, in tiles of ``--tile``, and prints one line
per finished tile: seconds, resident MiB, peak MiB (VmHWM), the pass. Then writes the outputs to a
temporary zarr store, unless ``--first-pass-only``, which stops when the second pass starts (the
peak then includes the first pass's whole-image step).

    python benchmarks/pass_memory.py liu2017_cnn --first-pass-only
    python benchmarks/pass_memory.py csc_mefn --rows 4096 --slices 10
    python benchmarks/pass_memory.py li2018_vgg19 --untrained-vgg19

``--untrained-vgg19`` runs ``li2018_vgg19`` with a randomly initialised full-size VGG19 in place
of the ImageNet weights (which this project cannot download): the same layers, tiles, passes
and memory, a meaningless image. It measures the method's time and memory, not its output.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time
from pathlib import Path

from _stand_ins import untrained_vgg19


def _status(field: str) -> int:
    with open(f"/proc/{os.getpid()}/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) >> 10
    return -1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("method")
    default = Path(tempfile.gettempdir()) / "napari-fusion-bench" / "stack_10x8192.tif"
    ap.add_argument("--stack", type=Path, default=default)
    ap.add_argument("--rows", type=int, default=None, help="only the first ROWS rows")
    ap.add_argument("--cols", type=int, default=None, help="only the first COLS columns")
    ap.add_argument("--slices", type=int, default=None, help="only the first SLICES slices")
    ap.add_argument("--tile", type=int, default=1024)
    ap.add_argument("--first-pass-only", action="store_true")
    ap.add_argument("--untrained-vgg19", action="store_true", help="li2018_vgg19 with random VGG19 weights")
    args = ap.parse_args()
    from napari_fusion import fuse
    from napari_fusion.io import open_lazy_stack, write_lazy

    stack = open_lazy_stack(args.stack)[: args.slices, : args.rows, : args.cols]
    print(f"{args.method} on {stack.shape} {stack.dtype}, tiles of {args.tile}", flush=True)
    t0 = time.time()
    last = [""]

    class SecondPass(Exception):
        pass

    def progress(done, total, message=""):
        if args.first_pass_only and message.startswith("whole-image pass 2"):
            raise SecondPass
        if "tile" not in message:
            return
        key = ":".join(message.split(":")[:2]) if message.startswith("whole-image") else message.split(":")[0]
        if key != last[0]:
            last[0] = key
            print(f"{time.time() - t0:7.1f} s  rss {_status('VmRSS'):5d} MiB  peak {_status('VmHWM'):5d} MiB  {key}")

    with contextlib.ExitStack() as stand_in:
        if args.untrained_vgg19:
            stand_in.enter_context(untrained_vgg19())
            print("li2018_vgg19 with an untrained full-size VGG19 (time and memory only; the image is meaningless)")
        try:
            result = fuse(stack, method=args.method, chunks=args.tile, device="cpu", progress=progress)
            with tempfile.TemporaryDirectory() as out:
                write_lazy(result, Path(out) / "out.zarr", progress=progress)
        except SecondPass:
            print("stopped at the second pass")
    print(f"{time.time() - t0:.1f} s, peak RSS {_status('VmHWM')} MiB")


if __name__ == "__main__":
    main()
