"""The tiles a tiled run would use, per method, without running it.

For an ``N x H x W`` stack (grey uint16, or RGB uint8 with ``--rgb``) and ``--chunks``, prints per
registered method: its halo, the tile after fitting to the memory available or to ``--limit``
(:func:`napari_fusion.tiling.fit_grid_to_memory`), the sub-tiles each tile is computed in when no
limit is set (:func:`napari_fusion.tiling.sub_tile_for`, within
:data:`napari_fusion.memory.TILED_ROOM`) and the estimated memory of the tiles computed side by
side, whole and as planned. Nothing is fused; only the memory model is used.

    python benchmarks/tile_plan.py                      # 10 x 8192^2 grey, --chunks 1024
    python benchmarks/tile_plan.py --rgb
    python benchmarks/tile_plan.py --limit 1.4G --slices 10 --size 2048
"""

from __future__ import annotations

import argparse
import warnings


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--slices", type=int, default=10)
    ap.add_argument("--size", type=int, default=8192)
    ap.add_argument("--chunks", type=int, default=1024)
    ap.add_argument("--rgb", action="store_true", help="RGB uint8 slices instead of grey uint16")
    ap.add_argument(
        "--input-chunks",
        type=int,
        default=512,
        help="spatial chunks of the input (512: the file tiles of the synthetic stack of benchmarks/tiled_fusion.py)",
    )
    ap.add_argument("--limit", default=None, help="a memory limit, as --memory-limit (default: none)")
    args = ap.parse_args(argv)

    import numpy as np
    import torch

    import napari_fusion as nf
    from napari_fusion import memory, tiling

    channels, dtype = (3, np.uint8) if args.rgb else (1, np.uint16)
    n, shape = args.slices, (args.size, args.size)
    cpu = torch.device("cpu")
    chunks = (args.input_chunks, args.input_chunks)  # the input's chunks, read by the tiles
    kind = "RGB uint8" if args.rgb else "grey uint16"
    print(f"{n} x {args.size}^2 {kind}, --chunks {args.chunks}, limit {args.limit or 'none'}, "
          f"{memory.tiles_at_once()} tiles side by side")  # fmt: skip
    print(f"{'method':<20} {'halo':>5} {'tile':>11} {'sub-tiles':>11} {'whole MiB':>10} {'planned MiB':>12}")
    with memory.limited_to(args.limit):
        for spec in nf.list_methods():
            params = spec.resolve_params({})
            grid = tiling.plan_grid(spec, params, shape, chunks=args.chunks, n=n)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                grid = tiling.fit_grid_to_memory(grid, spec, n=n, channels=channels, dtype=dtype, device=cpu,
                                                 input_chunks=chunks)  # fmt: skip
            sub = tiling.sub_tile_for(grid, spec, params, n=n, channels=channels, dtype=dtype, device=cpu,
                                      input_chunks=chunks)  # fmt: skip
            costs = dict(halo=grid.halo, shape=shape, n=n, channels=channels, dtype=dtype, method=spec.name,
                         workers=tiling._tiles_side_by_side(grid.n_tiles), input_chunks=chunks)  # fmt: skip
            whole = memory.tiles_need(grid.tile, **costs) / 2**20
            planned = memory.tiles_need(sub or grid.tile, **costs) / 2**20
            side = lambda t: f"{t[0]}x{t[1]}"  # noqa: E731
            print(f"{spec.name:<20} {grid.halo:>5} {side(grid.tile):>11} {side(sub) if sub else '-':>11} "
                  f"{whole:>10.0f} {planned:>12.0f}")  # fmt: skip


if __name__ == "__main__":
    main()
