"""Gaussian and Laplacian pyramids (Burt & Adelson 1983) on torch tensors.

The expand step is a normalised convolution (the up-sampled image divided by
the up-sampled ones), so borders and odd sizes are interpolated without
darkening; reconstruction is exact by construction for any size.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F

from .filters import separable_filter

_BURT = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0


def pyramid_levels(height: int, width: int, *, min_size: int = 8) -> int:
    """Number of levels so that the coarsest level is at least ``min_size`` pixels."""
    smallest = max(1, min(int(height), int(width)))
    return max(1, int(math.floor(math.log2(max(smallest / float(min_size), 1.0)))) + 1)


_K = [float(v) for v in _BURT.tolist()]


def _reduce_reference(x: torch.Tensor) -> torch.Tensor:
    """Blur with the Burt kernel (reflected borders), keep every second row and column."""
    return separable_filter(x, _BURT)[..., ::2, ::2]


def _expand_reference(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Zero-insert to ``size``, blur, divide by the blurred insertion mask (normalised convolution)."""
    h, w = size
    lead = x.shape[:-2]
    up = torch.zeros(*lead, h, w, device=x.device, dtype=x.dtype)
    up[..., ::2, ::2] = x[..., : (h + 1) // 2, : (w + 1) // 2]
    ones = torch.zeros(h, w, device=x.device, dtype=x.dtype)
    ones[::2, ::2] = 1.0
    return separable_filter(up, _BURT) / separable_filter(ones, _BURT)


def _along(x: torch.Tensor, dim: int, index: slice) -> torch.Tensor:
    """``x[..., index, ...]`` with ``index`` on axis ``dim``."""
    return x[(slice(None),) * (dim % x.ndim) + (index,)]


def _taps_into(out: torch.Tensor, src: torch.Tensor, dim: int, count: int, step: int, taps: list[float]) -> None:
    """``out[i] = sum_t taps[t] * src[t + step * i]`` for ``i < count`` along ``dim``, written into ``out``.

    The products are summed in tap order (one multiply, then multiply-adds), so
    any split of the outputs into pieces gives the same values bit for bit.
    """
    for t, k in enumerate(taps):
        tap = src.narrow(dim, t, step * (count - 1) + 1)
        if step > 1:
            tap = _along(tap, dim, slice(None, None, step))
        if t == 0:
            torch.mul(tap, k, out=out)
        else:
            out.add_(tap, alpha=k)


def _reduce_axis(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Every second sample of the Burt-blurred signal along ``dim`` (reflected borders), computed directly.

    With the signal reflected as ``x2 x1 | x0 ... x(n-1) | x(n-2) x(n-3)``,
    output ``j`` sums taps on padded samples ``2j .. 2j+4``. The outputs whose
    five samples all lie inside ``x`` (``1 <= j <= inner``) read ``x`` itself; only
    the first and the last one or two are computed on small reflected pieces,
    so no padded copy of the image is made.
    """
    n = x.shape[dim]
    m = (n + 1) // 2
    inner = (n - 3) // 2  # outputs 1..inner read x[2j-2 .. 2j+2] directly
    shape = list(x.shape)
    shape[dim] = m
    out = torch.empty(shape, device=x.device, dtype=x.dtype)
    if inner >= 1:
        _taps_into(out.narrow(dim, 1, inner), x, dim, inner, 2, _K)
    else:
        inner = 0
    head = torch.cat([x.narrow(dim, 1, 2).flip(dim), x.narrow(dim, 0, 3)], dim)  # x2 x1 x0 x1 x2
    _taps_into(out.narrow(dim, 0, 1), head, dim, 1, 2, _K)
    last = m - 1 - inner  # outputs after the inner ones (and after output 0)
    if last > 0:
        first = 2 * inner  # padded sample 2(inner+1) is x[2 inner]
        tail = torch.cat([x.narrow(dim, first, n - first), x.narrow(dim, n - 3, 2).flip(dim)], dim)
        _taps_into(out.narrow(dim, inner + 1, last), tail, dim, last, 2, _K)
    return out


def _expand_axis(x: torch.Tensor, length: int, dim: int) -> torch.Tensor:
    """Normalised Burt interpolation of ``x`` to ``length`` samples along ``dim`` (polyphase form).

    The zero-inserted signal filtered with [1, 4, 6, 4, 1] / 16 has, at even
    outputs, taps 1, 6, 1 on three input samples and, at odd outputs, taps 4, 4
    on two; with reflected borders the insertion mask filters to 1/2
    everywhere, so the normalisation is a factor 2. Equal to
    :func:`_expand_reference` up to float rounding. Both phases are written
    straight into the output's even and odd samples; only the two ends are
    computed on small reflected pieces.
    """
    n = x.shape[dim]
    shape = list(x.shape)
    shape[dim] = length
    out = torch.empty(shape, device=x.device, dtype=x.dtype)
    even, odd = _along(out, dim, slice(0, None, 2)), _along(out, dim, slice(1, None, 2))
    even_taps, odd_taps = [2 * _K[0], 2 * _K[2], 2 * _K[4]], [2 * _K[1], 2 * _K[3]]
    tail = x.narrow(dim, n - 1 if length % 2 == 0 else n - 2, 1)  # the sample reflected past the end
    if n >= 3:
        _taps_into(even.narrow(dim, 1, n - 2), x, dim, n - 2, 1, even_taps)
    _taps_into(even.narrow(dim, 0, 1), torch.cat([x.narrow(dim, 1, 1), x.narrow(dim, 0, 2)], dim), dim, 1, 1, even_taps)
    ends = torch.cat([x.narrow(dim, n - 2, 2), tail], dim)  # n >= 2 (smaller inputs take the reference path)
    _taps_into(even.narrow(dim, n - 1, 1), ends, dim, 1, 1, even_taps)
    _taps_into(odd.narrow(dim, 0, n - 1), x, dim, n - 1, 1, odd_taps)
    if length // 2 == n:
        _taps_into(odd.narrow(dim, n - 1, 1), torch.cat([x.narrow(dim, n - 1, 1), tail], dim), dim, 1, 1, odd_taps)
    return out


def _differentiated(x: torch.Tensor) -> bool:
    """Whether autograd records operations on ``x`` (the direct forms write into ``out=`` buffers,
    which autograd does not support; the reference forms are used instead)."""
    return x.requires_grad and torch.is_grad_enabled()


def _reduce(x: torch.Tensor) -> torch.Tensor:
    if min(x.shape[-2:]) < 4 or _differentiated(x):
        return _reduce_reference(x)
    return _reduce_axis(_reduce_axis(x, x.ndim - 1), x.ndim - 2)


def _expand(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    h, w = size
    if min(x.shape[-2:]) < 2 or (h + 1) // 2 != x.shape[-2] or (w + 1) // 2 != x.shape[-1] or _differentiated(x):
        return _expand_reference(x, size)
    return _expand_axis(_expand_axis(x, w, x.ndim - 1), h, x.ndim - 2)


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
    return collapse_onto(pyr[-1], pyr[:-1])


def collapse_onto(coarse: torch.Tensor, bands: list[torch.Tensor]) -> torch.Tensor:
    """The collapse of a pyramid from a level already collapsed: ``coarse`` expanded and added to
    ``bands`` (the finer band levels, finest first), level by level."""
    x = coarse
    for band in reversed(bands):
        x = band + _expand(x, band.shape[-2:])
    return x


def gaussian_level(x: torch.Tensor, level: int) -> torch.Tensor:
    """Level ``level`` of :func:`gaussian_pyramid` (same values), ``ceil(size / 2**level)`` samples."""
    g = x
    for _ in range(level):
        g = _reduce(g).contiguous()
    return g


#: Band levels that :func:`split_levels` leaves to tiles; the coarser ones come from the whole image.
SPLIT_LEVEL = 4


def split_levels(levels: int) -> int:
    """How many of a ``levels``-level pyramid's finest band levels to compute per tile when the
    coarser levels are a whole-image step (:mod:`napari_fusion.whole_image`): tiles then start
    on the ``2**split`` grid and need ``4 * 2**(split + 1)`` pixels of context. 0: no split."""
    return max(0, min(levels - 1, SPLIT_LEVEL))


def blend_in_pyramid(
    stack: torch.Tensor,
    weights: torch.Tensor,
    levels: int,
    *,
    progress: Callable[[int], Any] | None = None,
    coarse: torch.Tensor | None = None,
) -> torch.Tensor:
    """``(C, H, W)``: the slices of ``stack`` ``(N, C, H, W)`` blended by ``weights`` ``(N, H, W)`` in a pyramid.

    Each slice's Laplacian pyramid is weighted by the Gaussian pyramid of its
    weight map and summed over slices, then collapsed: the multiresolution
    spline of Burt & Adelson (1983), as used by Mertens et al.'s exposure
    fusion. Streams one slice, one channel and one level at a time, so memory
    is the fused pyramid plus a few planes; ``stack[k]`` is read once per slice
    (``stack`` may be a :class:`~napari_fusion._inputs.ScaledSlices` view). Weights are used as given (normalise
    them first if they should sum to 1). ``progress(k)`` is called after slice ``k``.

    With ``coarse`` ``(C, h_m, w_m)``, the blend of the levels from ``m = levels``
    on, already collapsed to level ``m``: only the ``levels`` finest band levels
    are blended here, and the collapse continues from ``coarse`` (the coarse part
    of a tiled run, from the whole image).
    """
    n, c, h, w = stack.shape
    fused_pyr: list[torch.Tensor] = []  # (C, h, w) running sums over slices of weighted Laplacian levels
    n_pyr = levels if coarse is None else levels + 1
    for k in range(n):
        wpyr = list(iter_gaussian_levels(weights[k], levels))
        image = stack[k]  # read once: ``stack`` may be a slice view that converts on reading
        for ch in range(c):
            for level, band in enumerate(iter_laplacian_levels(image[ch], n_pyr)):
                if level == levels:  # level m itself: the coarse part's
                    break
                if k == 0 and ch == 0:
                    fused_pyr.append(torch.zeros((c, *band.shape), dtype=band.dtype, device=band.device))
                fused_pyr[level][ch].addcmul_(band, wpyr[level])
        del wpyr, image
        if progress is not None:
            progress(k)
    fused = torch.empty((c, h, w), dtype=stack.dtype, device=stack.device)
    for ch in range(c):  # one channel at a time: the collapse's buffers are single planes
        if coarse is None:
            fused[ch] = reconstruct_laplacian_pyramid([level[ch] for level in fused_pyr])
        else:
            fused[ch] = collapse_onto(coarse[ch], [level[ch] for level in fused_pyr])
    return fused


def downsample_like(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Area-average resize, used for weight maps."""
    return F.interpolate(x.reshape(-1, 1, *x.shape[-2:]), size=size, mode="area").reshape(*x.shape[:-2], *size)
