"""Gaussian and Laplacian pyramids (Burt & Adelson 1983) on torch tensors.

The expand step is a normalised convolution (the up-sampled image divided by
the up-sampled ones), so borders and odd sizes are interpolated without
darkening; reconstruction is exact by construction for any size.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from .filters import separable_filter

_BURT = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0


def pyramid_levels(height: int, width: int, *, min_size: int = 8) -> int:
    """Number of levels so that the coarsest level is at least ``min_size`` pixels."""
    smallest = max(1, min(int(height), int(width)))
    return max(1, int(math.floor(math.log2(max(smallest / float(min_size), 1.0)))) + 1)


def _reduce(x: torch.Tensor) -> torch.Tensor:
    return separable_filter(x, _BURT)[..., ::2, ::2]


def _expand(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    h, w = size
    lead = x.shape[:-2]
    up = torch.zeros(*lead, h, w, device=x.device, dtype=x.dtype)
    up[..., ::2, ::2] = x[..., : (h + 1) // 2, : (w + 1) // 2]
    ones = torch.zeros(h, w, device=x.device, dtype=x.dtype)
    ones[::2, ::2] = 1.0
    return separable_filter(up, _BURT) / separable_filter(ones, _BURT)


def gaussian_pyramid(x: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """``levels`` images, the first ``x`` itself, each next one blurred and halved."""
    pyr = [x]
    for _ in range(levels - 1):
        pyr.append(_reduce(pyr[-1]))
    return pyr


def laplacian_pyramid(x: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """Band-pass levels plus the coarsest Gaussian level last."""
    g = gaussian_pyramid(x, levels)
    pyr = [g[i] - _expand(g[i + 1], g[i].shape[-2:]) for i in range(levels - 1)]
    pyr.append(g[-1])
    return pyr


def iter_gaussian_levels(x: torch.Tensor, levels: int) -> Iterator[torch.Tensor]:
    """The levels of :func:`gaussian_pyramid`, finest first, one at a time (same values).

    Each reduced level is its own compact tensor (not a strided view of the
    full-size filtered image), so a caller that keeps only the current level
    holds little more than it.
    """
    g = x
    yield g
    for _ in range(levels - 1):
        g = _reduce(g).contiguous()
        yield g


def iter_laplacian_levels(x: torch.Tensor, levels: int) -> Iterator[torch.Tensor]:
    """The levels of :func:`laplacian_pyramid`, finest band first, one at a time (same values).

    Only two Gaussian levels are held at once, so streaming over the bands
    costs a few images of the current level's size instead of the whole
    Gaussian and Laplacian pyramids.
    """
    g = x
    for _ in range(levels - 1):
        reduced = _reduce(g).contiguous()
        yield g - _expand(reduced, g.shape[-2:])
        g = reduced
    yield g


def reconstruct_laplacian_pyramid(pyr: list[torch.Tensor]) -> torch.Tensor:
    """Inverse of :func:`laplacian_pyramid`."""
    x = pyr[-1]
    for band in reversed(pyr[:-1]):
        x = band + _expand(x, band.shape[-2:])
    return x


def downsample_like(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Area-average resize, used for weight maps."""
    return F.interpolate(x.reshape(-1, 1, *x.shape[-2:]), size=size, mode="area").reshape(*x.shape[:-2], *size)
