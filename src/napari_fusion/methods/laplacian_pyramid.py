"""Laplacian-pyramid fusion with a choose-max rule on local band energy.

Each source is decomposed into a Laplacian pyramid; at every band-pass level
the source with the largest local energy (3x3 mean of the squared
coefficient, on luminance) gives the coefficients of all channels; the
coarsest level is averaged; the pyramid is collapsed.

References: P. J. Burt, E. H. Adelson, "The Laplacian pyramid as a compact
image code", IEEE Trans. Communications 31(4), 1983; P. J. Burt, R. J.
Kolczynski, "Enhanced image capture through fusion", ICCV 1993.
The labels are the level-0 decision (finest details), smoothed by a small
majority filter.
"""

from __future__ import annotations

import torch

from ..ops.blend import luminance_stack
from ..ops.filters import box_filter
from ..ops.pyramids import laplacian_pyramid, pyramid_levels, reconstruct_laplacian_pyramid
from ..ops.regions import mode_filter
from ..registry import FusionContext, MethodOutput, Param, register_method


@register_method(
    name="laplacian_pyramid",
    title="Laplacian-pyramid fusion",
    tasks=("multi-focus", "infrared-visible", "medical", "multispectral"),
    mode="nway",
    outputs=("fused", "labels", "depth"),
    params=(
        Param("levels", 0, int, "Pyramid levels (0: as many as fit, coarsest level >= 8 px).", low=0, high=16),
        Param("window", 1, int, "Radius of the window for the local band energy.", low=0, high=8),
    ),
    citation=(
        "P. J. Burt, E. H. Adelson, 'The Laplacian pyramid as a compact image code', "
        "IEEE Trans. Communications 31(4), 1983; Burt & Kolczynski, ICCV 1993."
    ),
    description="Multi-scale choose-max fusion of Laplacian band-pass coefficients.",
    halo=lambda p: 4 * 2 ** p["levels"] if p["levels"] > 0 else None,
)
def fuse_laplacian_pyramid(stack: torch.Tensor, *, ctx: FusionContext, levels: int, window: int) -> MethodOutput:
    n, c, h, w = stack.shape
    nlev = levels or pyramid_levels(h, w)
    grey = luminance_stack(stack)
    pyr = laplacian_pyramid(stack, nlev)  # each (N, C, h, w)
    gpyr = laplacian_pyramid(grey, nlev)  # each (N, h, w)
    fused_pyr = []
    labels = None
    for level in range(nlev - 1):
        energy = box_filter(gpyr[level] ** 2, window)
        choice = energy.argmax(0)
        if level == 0:
            labels = choice
        lh, lw = choice.shape
        idx = choice.view(1, 1, lh, lw).expand(1, c, lh, lw)
        fused_pyr.append(pyr[level].gather(0, idx)[0])
        ctx.report(level + 1, nlev, f"pyramid level {level + 1}/{nlev}")
    fused_pyr.append(pyr[-1].mean(0))
    fused = reconstruct_laplacian_pyramid(fused_pyr)
    if labels is None:  # a single level: nothing to choose, use band energy of the image
        labels = box_filter(grey**2, window).argmax(0)
    labels = mode_filter(labels, 2)
    ctx.report(nlev, nlev, "collapsed")
    return MethodOutput(fused=fused, labels=labels)
