"""Exposure fusion of Mertens, Kautz & Van Reeth 2007.

Per-pixel weights are the product of contrast (|Laplacian| of the grey
image), saturation (standard deviation across RGB) and well-exposedness
(Gaussian around mid-grey, sigma 0.2, multiplied over the channels), each
raised to its exponent; the weights are normalised across exposures and the
images blended in a Laplacian pyramid with Gaussian-pyramid weights.

Reference: T. Mertens, J. Kautz, F. Van Reeth, "Exposure fusion", Pacific
Graphics 2007 (Computer Graphics Forum 28(1), 2009). Intensities are taken
on the dtype's full scale (uint8 / 255, uint16 / 65535, floats as in [0, 1]),
since well-exposedness refers to absolute exposure.

The slices are streamed in two passes: the quality weights of every slice
(the ``(N, H, W)`` ``weights`` output, normalised in place), then one
slice's weight pyramid and, one channel and one level at a time, its image
pyramid, multiplied and added into running per-level sums (the fused
pyramid); nothing else holds the whole stack. Weights and labels are those of
the whole-stack formulation exactly; the fused image up to float32 rounding.
"""

from __future__ import annotations

import torch

from ..ops.blend import luminance_stack, normalise_weights_
from ..ops.filters import laplacian
from ..ops.pyramids import SPLIT_LEVEL, blend_in_pyramid, gaussian_level, pyramid_levels, split_levels
from ..registry import FusionContext, MethodOutput, Param, register_method


def mertens_weights(
    stack: torch.Tensor, *, contrast: float, saturation: float, exposedness: float, sigma: float
) -> torch.Tensor:
    """Unnormalised quality weights ``(N, H, W)`` of a ``(N, C, H, W)`` exposure stack in [0, 1]."""
    grey = luminance_stack(stack)
    w = torch.ones_like(grey)
    if contrast:
        w = w * laplacian(grey).abs().pow(contrast)
    if saturation and stack.shape[1] == 3:
        w = w * stack.std(dim=1, unbiased=False).pow(saturation)
    if exposedness:
        we = torch.exp(-((stack - 0.5) ** 2) / (2 * sigma * sigma)).prod(dim=1)
        w = w * we.pow(exposedness)
    return w + 1e-12


def coarse_inputs(stack: torch.Tensor, weights: torch.Tensor, level: int) -> torch.Tensor:
    """``(N, C + 1, h, w)``: every slice's channels and weight map at Gaussian-pyramid ``level``."""
    return torch.stack(
        [
            torch.cat([gaussian_level(stack[k], level), gaussian_level(weights[k], level)[None]])
            for k in range(len(stack))
        ]
    )


@register_method(
    name="mertens",
    title="Exposure fusion (Mertens, Kautz & Van Reeth 2007)",
    tasks=("multi-exposure",),
    mode="nway",
    outputs=("fused", "labels", "weights"),
    params=(
        Param("contrast", 1.0, float, "Exponent of the contrast weight.", low=0.0, high=10.0),
        Param("saturation", 1.0, float, "Exponent of the saturation weight (colour only).", low=0.0, high=10.0),
        Param("exposedness", 1.0, float, "Exponent of the well-exposedness weight.", low=0.0, high=10.0),
        Param("sigma", 0.2, float, "Width of the well-exposedness Gaussian around 0.5.", low=0.01, high=2.0),
        Param("levels", 0, int, "Pyramid levels (0: as many as fit).", low=0, high=16),
    ),
    citation=(
        "T. Mertens, J. Kautz, F. Van Reeth, 'Exposure fusion', Pacific Graphics 2007; "
        "Computer Graphics Forum 28(1):161-171, 2009."
    ),
    description="Multi-exposure fusion by contrast, saturation and well-exposedness weights in a pyramid.",
    intensity="dtype",
    colour="native",
    halo=lambda p: 4 * 2 ** (p["levels"] if p["levels"] > 0 else SPLIT_LEVEL + 1),
    collect_halo=lambda p: None if p["levels"] > 0 else 4 * 2 ** (SPLIT_LEVEL + 1),
    streams_slices=True,
)
def fuse_mertens(
    stack: torch.Tensor,
    *,
    ctx: FusionContext,
    contrast: float,
    saturation: float,
    exposedness: float,
    sigma: float,
    levels: int,
) -> MethodOutput:
    n, c, h, w = stack.shape
    weights = torch.empty((n, h, w), dtype=stack.dtype, device=stack.device)
    for k in range(n):
        weights[k] = mertens_weights(
            stack[k][None], contrast=contrast, saturation=saturation, exposedness=exposedness, sigma=sigma
        )[0]
        ctx.report(k + 1, 2 * n + 1, f"weights of slice {k + 1}/{n}")
    normalise_weights_(weights)
    nlev = levels or pyramid_levels(*ctx.image_shape((h, w)))
    split = 0 if levels else split_levels(nlev)

    def progress(k: int) -> None:
        ctx.report(n + k + 1, 2 * n + 1, f"pyramids of slice {k + 1}/{n}")

    if split:  # the depth follows the whole image: its coarse levels are a whole-image step
        coarse = ctx.whole_image_map(
            "coarse levels",
            lambda: coarse_inputs(stack, weights, split),
            lambda full: blend_in_pyramid(full[:, :-1], full[:, -1], nlev - split),
            scale=2**split,
        )
        fused = blend_in_pyramid(stack, weights, split, coarse=coarse, progress=progress)
    else:
        fused = blend_in_pyramid(stack, weights, nlev, progress=progress)
    ctx.report(1, 1, "collapsed")
    return MethodOutput(fused=fused, labels=weights.argmax(0), weights=weights)
