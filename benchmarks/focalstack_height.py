"""Height-map accuracy on synthetic stacks with known depth (error in slices), and the real
DAPI widefield stack (height in microns, 300 nm z-step).

    PYTHONPATH=src NAPARI_FUSION_DATA=/work/shared/data python benchmarks/focalstack_height.py
"""

from __future__ import annotations

import numpy as np
import torch
from skimage import data
from skimage.filters import threshold_otsu
from skimage.transform import resize

from napari_fusion import fuse
from napari_fusion.datasets import shared_data_dir
from napari_fusion.focalstack import height_map
from napari_fusion.io import read_stack
from napari_fusion.synthetic import render_focal_stack


def main() -> None:
    torch.set_num_threads(1)
    photo = (resize(data.astronaut(), (192, 192), anti_aliasing=True) * 255).astype(np.uint8)
    print("synthetic (astronaut 192x192, smooth depth): mean |index - true index| in slices")
    print(f"{'slices':>6s} {'max_sigma':>9s} {'seed':>4s} {'integer':>8s} {'parabola':>8s} {'gaussian':>8s}")
    for n, sig in ((6, 4.0), (10, 6.0), (16, 8.0)):
        for seed in (0, 1):
            st = render_focal_stack(photo, n_slices=n, max_sigma=sig, seed=seed)
            true = st.depth * (n - 1)
            errs = [
                np.abs(height_map(st.slices, refine=r).index - true).mean() for r in ("none", "parabola", "gaussian")
            ]
            print(f"{n:6d} {sig:9.1f} {seed:4d} " + " ".join(f"{e:8.3f}" for e in errs))
    d = shared_data_dir()
    if d is None:
        return
    stack = read_stack(d / "focalstack" / "dapi_widefield" / "dapi")
    hm = height_map(stack, z_step=0.3)
    fused = fuse(stack).fused
    nucleus = fused > threshold_otsu(fused)
    q = np.percentile(hm.height[nucleus], [10, 50, 90])
    print(
        f"dapi_widefield (40 x 201x101 uint16, z-step 0.3 um): height range [{hm.height.min():.3f}, "
        f"{hm.height.max():.3f}] um; nucleus (Otsu on fused, {nucleus.mean():.0%} of pixels) "
        f"height p10/p50/p90 = {q[0]:.2f}/{q[1]:.2f}/{q[2]:.2f} um"
    )


if __name__ == "__main__":
    main()
