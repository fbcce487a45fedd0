"""Do the published Li et al. 2018 TNO outputs carry a zero-weight border? (no weights needed)

In the released MATLAB code, when an image side is not a multiple of 8, the
last rows/columns of the conv4_1 weight map stay at zero, so that layer's
detail candidate is 0 there and the signed max over the four candidates can
never be negative. Every candidate is a convex combination of the two detail
layers, so wherever both details are clearly negative the fused detail of a
zero-border run would be >= 0 in that strip (and negative elsewhere).

This script recomputes the base layers with our Tikhonov split (lam=5,
16-px symmetric padding, images /255 as im2double), takes the authors' fused
detail as ``Li2018.png/255 - mean(base)``, and counts, inside and outside the
strip, the pixels where both details are below -1.5 grey levels and how many
of them have a fused detail below -0.6 (below zero beyond 8-bit rounding).

Usage: ``python benchmarks/li2018_border_check.py``
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from napari_fusion.datasets import shared_data_dir
from napari_fusion.io import read_image
from napari_fusion.ops.decomposition import tikhonov_split


def main() -> int:
    data = shared_data_dir()
    root = None if data is None else data / "irvis" / "tno_li2018"
    if root is None or not root.is_dir():
        print("SKIP: irvis/tno_li2018 not found (set NAPARI_FUSION_DATA)")
        return 0
    counts = {"strip": [0, 0], "inner": [0, 0]}
    for case in sorted(root.glob("pair-*")):
        ir = read_image(case / "src_00.png") / 255.0
        vis = read_image(case / "src_01.png") / 255.0
        ref = read_image(case / "reference" / "Li2018.png") / 255.0
        base, detail = tikhonov_split(torch.from_numpy(np.stack([ir, vis])), lam=5.0, pad=16)
        detail = detail.numpy() * 255
        fused_detail = (ref - base.numpy().mean(0)) * 255
        h, w = ir.shape
        strip = np.zeros((h, w), bool)
        strip[h - h % 8 :, :] = True
        strip[:, w - w % 8 :] = True
        both_negative = (detail.max(0) < -1.5) & (ref > 0) & (ref < 1)
        for name, region in (("strip", strip), ("inner", ~strip)):
            sel = both_negative & region
            counts[name][0] += int(sel.sum())
            counts[name][1] += int((sel & (fused_detail < -0.6)).sum())
    for name, (n, neg) in counts.items():
        frac = neg / n if n else float("nan")
        print(f"{name:5s}: {n:7d} pixels with both details < -1.5; fused detail < -0.6 at {neg} ({frac:.1%})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
