"""Benchmark: peak memory and time of an untiled ``fuse`` per method.

Prints a table method -> peak MiB, ratio to ``focus_measure`` (the default
method), seconds, for one in-memory CPU fusion of an ``N x H x W`` RGB uint8
stack (default 10 x 1024 x 1024, the issue's case).

Each method runs in a fresh Python process: after importing napari_fusion
and torch and a warm-up fusion of a 2x32x32 stack, the process's RSS is
noted; then the random input stack is built and fused once. "Peak" is
``resource.getrusage(RUSAGE_SELF).ru_maxrss`` after the call minus that RSS,
so it includes the 30 MiB input array and the outputs. On Linux the
high-water mark is reset (``/proc/self/clear_refs``) before the call so a
higher import-time peak cannot hide the fusion's. Torch runs on one thread
(``--threads``) for repeatable numbers.

Examples::

    python benchmarks/methods_memory.py
    python benchmarks/methods_memory.py --methods focus_measure gff --size 512 --slices 6
    python benchmarks/methods_memory.py --methods li2018_vgg19 --untrained-vgg19 --grey --slices 2 --size 1214
    python benchmarks/methods_memory.py --methods li2018_vgg19 --untrained-vgg19 --grey --mapped --size 638
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

DEFAULT_METHODS = ("focus_measure", "laplacian_pyramid", "gff", "mertens")

_CHILD = r"""
import json, resource, sys, time, warnings
import numpy as np
import torch
import napari_fusion as nf
a = json.loads(sys.argv[1])
torch.set_num_threads(a["threads"])
warnings.simplefilter("ignore")
def rss(key="VmRSS"):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
if a["untrained_vgg19"]:  # li2018_vgg19 without the ImageNet weights: a random full-size VGG19
    from napari_fusion.methods.li2018_vgg19 import _NET_DEPTH, untrained_network_for_tests
    from napari_fusion.nets.vgg19 import VGG19
    torch.manual_seed(0)
    stand_in = untrained_network_for_tests(VGG19(depth=_NET_DEPTH))  # kept: collected, it would exit
    stand_in.__enter__()
if a["mapped"]:  # as in tiled runs: allocations of 4 MiB or more get their own mappings
    from napari_fusion.ops.tiles import keep_large_allocations_mapped
    keep_large_allocations_mapped()
rng = np.random.default_rng(1)
nf.fuse(rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8), a["method"], device="cpu")
try:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
except OSError:
    pass
base = rss()
if a["grey"]:
    x = np.random.default_rng(0).integers(0, 60000, (a["n"], a["size"], a["size"]), dtype=np.uint16)
else:
    x = np.random.default_rng(0).integers(0, 256, (a["n"], a["size"], a["size"], 3), dtype=np.uint8)
t0 = time.perf_counter()
nf.fuse(x, a["method"], device="cpu")
seconds = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print("RESULT", json.dumps({"peak": peak - base, "hwm": rss("VmHWM") - base, "seconds": seconds}))
"""


def measure(
    method: str,
    n: int,
    size: int,
    threads: int,
    *,
    grey: bool = False,
    untrained_vgg19: bool = False,
    mapped: bool = False,
) -> dict:
    """Peak bytes above the post-import RSS and seconds of one untiled fuse, in a fresh process."""
    args = json.dumps(
        {"method": method, "n": n, "size": size, "threads": threads, "grey": grey,
         "untrained_vgg19": untrained_vgg19, "mapped": mapped}
    )  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", _CHILD, args], capture_output=True, text=True, check=False)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"{method} failed: {proc.stderr[-2000:]}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS))
    ap.add_argument("--slices", type=int, default=10)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--grey", action="store_true", help="grey uint16 stacks instead of RGB uint8")
    ap.add_argument(
        "--untrained-vgg19",
        action="store_true",
        help="li2018_vgg19 with a randomly initialised full-size VGG19 (memory and time only; no ImageNet weights here)",
    )
    ap.add_argument(
        "--mapped",
        action="store_true",
        help="allocations of 4 MiB or more in their own memory mappings, as tiled runs have them "
        "(napari_fusion.ops.tiles.keep_large_allocations_mapped): the working set of one tile's block",
    )
    args = ap.parse_args(argv)
    methods = list(args.methods)
    if "focus_measure" not in methods:
        methods.insert(0, "focus_measure")
    results = {
        m: measure(
            m,
            args.slices,
            args.size,
            args.threads,
            grey=args.grey,
            untrained_vgg19=args.untrained_vgg19,
            mapped=args.mapped,
        )  # fmt: skip
        for m in methods
    }
    ref = results["focus_measure"]["peak"]
    kind = "grey uint16" if args.grey else "RGB uint8"
    mapped = ", large allocations mapped (as in tiled runs)" if args.mapped else ""
    print(f"untiled CPU fuse of {args.slices} x {args.size} x {args.size} {kind}, {args.threads} thread(s){mapped}")
    print(f"{'method':<20} {'peak MiB':>9} {'ratio':>6} {'seconds':>8}")
    for m in methods:
        r = results[m]
        print(f"{m:<20} {r['peak'] / 2**20:9.1f} {r['peak'] / ref:6.2f} {r['seconds']:8.2f}")


if __name__ == "__main__":
    main()
