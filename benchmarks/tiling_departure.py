"""How far tiled fusion departs from untiled fusion, per method and setting.

Prints, for each case, the largest absolute difference of the fused image
(in the input's units) and the number of label pixels that differ, between
``fuse(stack)`` and ``fuse(stack, chunks=TILE).compute()``. Two control rows
show what the design prevents: pyramid tiles not aligned to ``2**(levels-1)``
and a halo of half the declared one.

    python benchmarks/tiling_departure.py [--size 384] [--tile 100]
"""

from __future__ import annotations

import argparse
import sys

import numpy as np


def synthetic(size: int, slices: int, seed: int = 0) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    base = rng.random((size, size))
    yy, xx = np.mgrid[:size, :size]
    focus = (slices - 1) * (0.5 + 0.5 * np.sin(yy / 60.0) * np.cos(xx / 80.0))
    planes = []
    for k in range(slices):
        sharp = np.clip(1 - np.abs(k - focus) / 2, 0, 1)
        planes.append(sharp * base + (1 - sharp) * gaussian_filter(base, 2.0))
    return np.stack(planes).astype(np.float32)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=384)
    p.add_argument("--slices", type=int, default=6)
    p.add_argument("--tile", type=int, default=100)
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    import napari_fusion as nf
    from napari_fusion import tiling
    from napari_fusion.datasets import shared_data_dir

    f32 = synthetic(args.size, args.slices)
    u16 = (f32 * 60000).astype(np.uint16)
    stacks = {"synthetic float32": f32, "synthetic uint16": u16}
    data = shared_data_dir()
    if data is not None and (data / "focalstack/dapi_widefield/dapi").is_dir():
        from napari_fusion.io import read_stack

        stacks["dapi widefield uint16 (real)"] = np.stack(read_stack(data / "focalstack/dapi_widefield/dapi"))

    cases = [
        ("average", {}),
        ("focus_measure", {}),
        ("focus_measure", {"measure": "variance", "blend": 2.0}),
        ("gff", {}),
        ("laplacian_pyramid", {"levels": 4}),
        ("mertens", {"levels": 4}),
    ]
    print(f"{'stack':30s} {'method':34s} {'tile':>5s} {'halo':>5s} {'max |diff|':>11s} {'labels differ':>13s}")
    for sname, stack in stacks.items():
        for method, params in cases:
            ref = nf.fuse(stack, method, device="cpu", **params)
            lazy = nf.fuse(stack, method, device="cpu", chunks=args.tile, **params)
            got = lazy.compute()
            diff = float(np.abs(got.fused.astype(np.float64) - ref.fused.astype(np.float64)).max())
            lab = "-" if ref.labels is None else str(int((got.labels != ref.labels).sum()))
            label = method + (" " + ",".join(f"{k}={v}" for k, v in params.items()) if params else "")
            print(f"{sname:30s} {label:34s} {args.tile:5d} {lazy.grid.halo:5d} {diff:11.3g} {lab:>13s}", flush=True)
    # controls: what alignment and halos prevent
    stack = f32
    for method, params, what in [
        ("laplacian_pyramid", {"levels": 4}, "unaligned tiles"),
        ("focus_measure", {}, "half halo"),
        ("gff", {}, "half halo"),
    ]:
        ref = nf.fuse(stack, method, device="cpu", **params)
        if what == "unaligned tiles":
            tiling.TILE_ALIGN[method] = lambda p: 1
            lazy = nf.fuse(stack, method, device="cpu", chunks=args.tile + 1, **params)
            tiling.TILE_ALIGN.pop(method)
        else:
            halo = tiling.get_method(method).halo_for(tiling.get_method(method).resolve_params(params)) // 2
            lazy = tiling.fuse_lazy(stack, method, device="cpu", chunks=args.tile, halo=halo, **params)
        got = lazy.compute()
        diff = float(np.abs(got.fused - ref.fused).max())
        lab = int((got.labels != ref.labels).sum())
        print(
            f"{'control: ' + what:30s} {method:34s} {lazy.grid.tile[0]:5d} {lazy.grid.halo:5d} {diff:11.3g} {lab:13d}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
