"""Before/after figure of the real widefield DAPI stack: old default, new default, and their height maps.

Fuses ``shared/data/focalstack/dapi_widefield/dapi`` (40 planes, 300 nm z step)
with ``focus_measure`` (the default before) and ``focus_pyramid`` (the
default now), prints the no-reference seam measure
(:func:`napari_fusion.focalstack.quality.boundary_gradient_excess`), the height
range and the time of each, and writes ``docs/images/dapi_before_after.png``:
fused images (same display range, 3x nearest-neighbour zoom of the nucleus)
above their height maps (same colour scale, 0 to 11.7 um).

    PYTHONPATH=src python benchmarks/dapi_before_after.py [--data ../shared/data] [--out docs/images/dapi_before_after.png]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from napari_fusion.focalstack import fuse_focal_stack
from napari_fusion.focalstack.quality import boundary_gradient_excess
from napari_fusion.io import read_stack, write_image

RUNS = (("before: focus_measure", "focus_measure", {}), ("after: focus_pyramid", "focus_pyramid", {}))
Z_STEP = 0.3


#: A few anchors of a perceptually ordered dark-blue -> green -> yellow ramp for heights.
_RAMP = np.array([[0.27, 0.00, 0.33], [0.23, 0.32, 0.55], [0.13, 0.57, 0.55], [0.37, 0.79, 0.38], [0.99, 0.91, 0.14]])


def _colour(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> RGB by linear interpolation between the ramp's anchors."""
    pos = np.clip(values, 0, 1) * (len(_RAMP) - 1)
    i = np.minimum(np.floor(pos).astype(int), len(_RAMP) - 2)
    f = (pos - i)[..., None]
    return _RAMP[i] * (1 - f) + _RAMP[i + 1] * f


def _zoom(image: np.ndarray, factor: int = 3) -> np.ndarray:
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default_data = os.environ.get("NAPARI_FUSION_DATA", str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--data", default=default_data)
    ap.add_argument(
        "--out", default=str(Path(__file__).resolve().parents[1] / "docs" / "images" / "dapi_before_after.png")
    )
    args = ap.parse_args(argv)
    folder = Path(args.data) / "focalstack" / "dapi_widefield" / "dapi"
    if not folder.is_dir():
        raise SystemExit(f"DAPI stack not found at {folder}")
    stack = np.stack(read_stack(folder))
    n = stack.shape[0]
    tops, bottoms, lo, hi = [], [], None, None
    print(f"{'run':24s} {'seam (no ref)':>13s} {'height min..max (um)':>22s} {'time s':>7s}")
    for title, method, params in RUNS:
        t0 = time.perf_counter()
        res = fuse_focal_stack(stack, method=method, params=params, z_step=Z_STEP)
        dt = time.perf_counter() - t0
        seam = boundary_gradient_excess(res.fused, res.labels)
        print(f"{title:24s} {seam:13.3f} {res.height.min():10.2f} .. {res.height.max():7.2f} {dt:7.2f}")
        fused = res.fused.astype(np.float64)
        if lo is None:
            lo, hi = np.percentile(fused, [0.5, 99.8])
        tops.append(np.clip((fused - lo) / (hi - lo), 0, 1))
        bottoms.append(np.clip(res.height / (Z_STEP * (n - 1)), 0, 1))
    gap = np.ones((tops[0].shape[0] * 3, 6, 3))
    row1 = np.concatenate([np.concatenate([_zoom(np.repeat(t[..., None], 3, -1)), gap], 1) for t in tops], 1)
    row2 = np.concatenate([np.concatenate([_zoom(_colour(b)), gap], 1) for b in bottoms], 1)
    sheet = np.concatenate([row1, np.ones((6, row1.shape[1], 3)), row2], 0)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    # atomic, and refused if --out names one of the stack's files
    write_image(args.out, (sheet * 255).round().astype(np.uint8), overwrite=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
