"""Tiled runs of the methods with whole-image steps, on real data: equal to untiled? at what cost?

For each case (a real stack or pair from ``shared/data``, optionally downscaled), the method
runs untiled (``fuse`` on numpy) and tiled (``fuse(..., chunks=T)`` on a dask array, then
``compute()``), each in its own process. Printed: wall time, peak RSS of the process (imports
included), the number of whole-image passes, and how far the tiled result is from the untiled
one (max |difference| of the fused image in grey levels, fraction of label pixels that differ).

    PYTHONPATH=src NAPARI_FUSION_DATA=/work/shared/data python benchmarks/whole_image_steps.py
    ... --cases pcb:liu2017_cnn_nway:2 mef:csc_mefn:1 --tile 256

A case is ``data:method:downscale[:tile]``; data is ``pcb`` (focalstack/pcb, 7 RGB slices),
``dapi`` (focalstack/dapi_widefield, 40 widefield microscope planes of 201x101 uint16),
``mef`` (mef/ma_mef/Arno), ``irvis`` (irvis/vifb/carLight) or ``lytro``
(multifocus/lytro/lytro-01).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DATA = {
    "pcb": "focalstack/pcb/pcb",
    "mef": "mef/ma_mef/Arno",
    "irvis": "irvis/vifb/carLight",
    "lytro": "multifocus/lytro/lytro-01",
    "dapi": "focalstack/dapi_widefield/dapi",
}
DEFAULT_CASES = [
    "pcb:liu2017_cnn_nway:2",
    "pcb:liu2017_cnn:4",
    "lytro:liu2017_cnn:1",
    "mef:csc_mefn:1",
    "irvis:csc_ivfn:1",
]


def load(name: str, scale: int) -> np.ndarray:
    from napari_fusion.datasets import shared_data_dir
    from napari_fusion.io import read_stack

    folder = shared_data_dir() / DATA[name]
    if name in ("pcb", "dapi"):
        images = read_stack(folder)
    else:
        images = [p for p in sorted(folder.iterdir()) if p.name.startswith("src_")]
        images = read_stack(images)
    if any(im.ndim != images[0].ndim for im in images):  # grey infrared + colour visible
        images = [im if im.ndim == 3 else np.repeat(im[..., None], 3, -1) for im in images]
    stack = np.stack(images)
    if scale > 1:
        h, w = (stack.shape[1] // scale) * scale, (stack.shape[2] // scale) * scale
        s = stack[:, :h, :w].astype(np.float32)
        s = s.reshape(s.shape[0], h // scale, scale, w // scale, scale, *s.shape[3:]).mean(axis=(2, 4))
        stack = np.clip(np.rint(s), 0, 255).astype(stack.dtype)
    return stack


def child(args) -> None:
    import dask.array as da

    import napari_fusion as nf

    stack = load(args.data, args.scale)
    passes = []

    def progress(done, total, message):
        if message.startswith("whole-image pass") and done == 1:
            passes.append(message)

    t0 = time.perf_counter()
    if args.mode == "untiled":
        res = nf.fuse(stack, args.method, device="cpu")
    else:
        lazy = nf.fuse(da.from_array(stack), args.method, device="cpu", chunks=args.tile, progress=progress)
        res = lazy.compute()
    seconds = time.perf_counter() - t0
    np.savez(args.out, fused=res.fused, labels=res.labels if res.labels is not None else np.zeros(1))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "rss_mb": rss, "passes": len(passes), "shape": list(stack.shape)}))


def run(case: str, mode: str, tile: int, work: Path) -> dict:
    data, method, scale, *own_tile = case.split(":")
    tile = int(own_tile[0]) if own_tile else tile
    out = work / f"{data}_{method}_{scale}_{mode}.npz"
    cmd = [sys.executable, __file__, "--child", "--mode", mode, "--data", data, "--method", method]
    cmd += ["--scale", scale, "--tile", str(tile), "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr else "failed"}
    info = json.loads(done.stdout.strip().splitlines()[-1])
    info["out"] = out
    return info


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", nargs="+", default=DEFAULT_CASES)
    p.add_argument("--tile", type=int, default=256)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--mode", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--method", help=argparse.SUPPRESS)
    p.add_argument("--scale", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(args)
        return 0
    print(
        f"tiles of {args.tile} px unless a case gives its own; CPU; each run in its own process (peak RSS includes imports)"
    )
    print(
        "| case | stack | untiled s | untiled RSS MB | tiled s | tiled RSS MB | passes | max fused diff | labels differ |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for case in args.cases:
            u = run(case, "untiled", args.tile, Path(tmp))
            t = run(case, "tiled", args.tile, Path(tmp))
            if "error" in u or "error" in t:
                print(f"| {case} | failed: {u.get('error') or t.get('error')} |")
                continue
            a, b = np.load(u["out"]), np.load(t["out"])
            diff = float(np.abs(a["fused"].astype(np.float64) - b["fused"]).max())
            labels = float((a["labels"] != b["labels"]).mean())
            shape = "x".join(map(str, t["shape"]))
            print(
                f"| {case} | {shape} | {u['seconds']:.1f} | {u['rss_mb']:.0f} | {t['seconds']:.1f} | "
                f"{t['rss_mb']:.0f} | {t['passes']} | {diff:g} | {labels:.2e} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
