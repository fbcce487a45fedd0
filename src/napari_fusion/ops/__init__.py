"""Shared torch building blocks used by the classical and the paper methods.

All functions take and return tensors on any device; images are ``(..., H, W)``
with any number of leading dimensions unless a docstring says otherwise.
"""

from .blend import luminance_stack, normalise_weights, one_hot, select, weighted_sum
from .colour import luminance, rgb_to_ycbcr, ycbcr_to_rgb
from .filters import box_filter, gaussian_filter, gaussian_kernel1d, laplacian, sobel_gradients
from .guided import fast_guided_filter, guided_filter
from .pyramids import (
    gaussian_pyramid,
    laplacian_pyramid,
    pyramid_levels,
    reconstruct_laplacian_pyramid,
)
from .regions import mode_filter, remove_small_regions

__all__ = [
    "luminance_stack",
    "normalise_weights",
    "one_hot",
    "select",
    "weighted_sum",
    "mode_filter",
    "luminance",
    "rgb_to_ycbcr",
    "ycbcr_to_rgb",
    "box_filter",
    "gaussian_filter",
    "gaussian_kernel1d",
    "laplacian",
    "sobel_gradients",
    "guided_filter",
    "fast_guided_filter",
    "gaussian_pyramid",
    "laplacian_pyramid",
    "pyramid_levels",
    "reconstruct_laplacian_pyramid",
    "remove_small_regions",
]
