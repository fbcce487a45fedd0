"""Noise-aware focus weights blended in a Laplacian pyramid: the focal-stack default.

Built for microscope stacks (dark, shot-noise limited, textureless background,
out-of-focus haze) and measured against a physical ground truth in
``benchmarks/microscopy_gt.py`` (table in ``docs/focalstack.md``). For each
slice:

1. **Variance stabilisation.** The grey image ``x`` (scaled to [0, 1]) is
   replaced by ``sqrt(x + 0.001)``, the square-root transform behind
   Anscombe's (1948): Poisson (shot) noise then has about the same variance
   at every brightness, so a bright blurred skirt no longer outvotes a faint
   sharp structure just by being noisier.
2. **Focus measure.** The energy of the Laplacian of Gaussian
   (``prefilter`` sigma) smoothed by a Gaussian of ``smooth`` pixels (Nayar &
   Nakagawa 1994; Pertuz et al. 2013 for the family of measures). The
   prefilter keeps the measure from being dominated by pixel noise.
3. **Soft decision with a temperature from the noise.** The weight of slice
   ``k`` at a pixel is ``softmax_k(F_k / T)`` with
   ``T = softness * cv * median_k F_k``: the median over slices of the focus
   measure is the pixel's local noise-plus-haze floor (most slices of a
   stack are out of focus at any pixel), and ``cv`` is the exact
   coefficient of variation of the measure on white noise for these filters.
   Where one slice stands out by many noise standard deviations the weight is
   a hard choice; where nothing does (textureless background, very low
   light) the slices are averaged, which denoises and gives the background a
   smooth height instead of a random one. ``softness=0`` is a hard argmax.
4. **Seamless merge.** The weights are feathered by a Gaussian of
   ``feather`` pixels and the slices are blended in a Laplacian pyramid of
   ``levels`` levels with the Gaussian pyramids of their weights (the
   multiresolution spline of Burt & Adelson 1983, as in Mertens et al.'s
   exposure fusion), so transitions are smooth at every scale.

Outputs: ``labels`` name the slice with the largest weight (the source of
each pixel), ``extras["index"]`` is the weight-averaged fractional slice
index (the height), ``extras["confidence"]`` the largest weight (1: one slice
decides alone; 1/N: no slice is in focus).

Every step is local (the median is over slices, per pixel; the pyramid depth
is a parameter), so tiled runs reproduce untiled ones within float rounding
given the declared halo.

References: F. J. Anscombe, "The transformation of Poisson, binomial and
negative-binomial data", Biometrika 35, 1948; S. K. Nayar, Y. Nakagawa,
"Shape from focus", IEEE TPAMI 16(8), 1994; S. Pertuz, D. Puig, M. A. Garcia,
"Analysis of focus measure operators for shape-from-focus", Pattern
Recognition 46(5), 2013; P. J. Burt, E. H. Adelson, "A multiresolution spline
with application to image mosaics", ACM Trans. Graphics 2(4), 1983;
T. Mertens, J. Kautz, F. Van Reeth, "Exposure fusion", Pacific Graphics 2007.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

from ..ops.colour import luminance
from ..ops.filters import gaussian_filter, laplacian
from ..ops.pyramids import blend_in_pyramid
from ..registry import FusionContext, MethodOutput, Param, register_method

#: Offset added before the square root (intensities scaled to [0, 1]).
STABILISE_OFFSET = 1e-3


def _kernel_response(prefilter: float, smooth: float, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Impulse responses of the LoG (``prefilter``) and of the ``smooth`` Gaussian on a ``size``^2 grid."""
    delta = torch.zeros(size, size, dtype=torch.float64)
    delta[size // 2, size // 2] = 1.0
    pre = gaussian_filter(delta, prefilter, border="constant") if prefilter > 0 else delta
    log = laplacian(pre, border="constant")
    g = gaussian_filter(delta, smooth, border="constant") if smooth > 0 else delta
    return log.numpy(), g.numpy()


@lru_cache(maxsize=32)
def noise_cv(prefilter: float, smooth: float) -> float:
    """Coefficient of variation of the focus measure on Gaussian white noise (exact, for these filters).

    For white noise ``n`` and ``L = LoG * n`` (variance ``r(0)``), the measure
    ``F = g * L^2`` has mean ``r(0)`` and variance ``2 sum_d (g*g)(d) r(d)^2``
    where ``r`` is the autocorrelation of the LoG kernel and ``g*g`` that of
    the smoothing kernel (Isserlis' theorem).
    """
    radius = int(math.ceil(3 * prefilter)) + 2 + int(math.ceil(3 * smooth))
    size = 2 * (2 * radius + 2) + 1
    log, g = _kernel_response(prefilter, smooth, size)
    r = np.real(np.fft.ifft2(np.abs(np.fft.fft2(log)) ** 2))
    gg = np.real(np.fft.ifft2(np.abs(np.fft.fft2(g)) ** 2))
    var = 2.0 * float(np.sum(gg * r**2))
    return math.sqrt(max(var, 0.0)) / float(r[0, 0])


def focus_energy(grey: torch.Tensor, *, prefilter: float, smooth: float) -> torch.Tensor:
    """The smoothed Laplacian-of-Gaussian energy of one variance-stabilised grey slice in [0, 1]."""
    v = torch.sqrt(grey.clamp_min(0) + STABILISE_OFFSET)
    if prefilter > 0:
        v = gaussian_filter(v, prefilter)
    e = laplacian(v).square_()
    return gaussian_filter(e, smooth) if smooth > 0 else e


#: Pixels per block of :func:`median_over_slices` (a block's (N, pixels) copy stays small).
MEDIAN_BLOCK_PIXELS = 1 << 16


def median_over_slices(focus: torch.Tensor) -> torch.Tensor:
    """``focus.median(dim=0).values`` of an ``(N, H, W)`` stack, computed in blocks of rows.

    torch's median over the leading axis copies the whole stack into a
    contiguous transposed buffer first (335 MB for 20 planes of 2048^2); per
    block of rows the copy is a block's. The median is a selection, so the
    values are the same bit for bit.
    """
    n, h, w = focus.shape
    out = torch.empty((h, w), dtype=focus.dtype, device=focus.device)
    rows = max(1, MEDIAN_BLOCK_PIXELS // max(1, w))
    for r0 in range(0, h, rows):
        out[r0 : r0 + rows] = focus[:, r0 : r0 + rows].median(dim=0).values
    return out


def soft_weights(focus: torch.Tensor, *, softness: float, cv: float) -> torch.Tensor:
    """``softmax_k(F_k / T)``, ``T = softness * cv * median_k F_k``, computed in place on ``focus`` (N, H, W)."""
    n = focus.shape[0]
    if softness <= 0 or n == 1:
        idx = focus.argmax(0, keepdim=True)
        return torch.zeros_like(focus).scatter_(0, idx, 1.0)
    temp = median_over_slices(focus).mul_(softness * cv).clamp_min_(1e-20)
    focus.sub_(focus.amax(0, keepdim=True)).div_(temp).exp_()
    return focus.div_(focus.sum(0, keepdim=True))


def _halo(p) -> int:
    """Context of one output pixel: the weights' filters, then the pyramid blend's reach.

    The weights reach ``3 sigma`` (+1 for the Laplacian) through each filter. An
    ``L``-level Burt-Adelson blend (5-tap reduce, 3-tap polyphase expand) reaches
    ``2 * 2**L - 4`` pixels: a band level ``l`` reaches ``3 * 2**(l + 1) - 2`` through
    its Gaussian and expanded images and ``2 * (2**l - 1)`` more through the collapse's
    expansions, ``8 * 2**l - 4`` in all, largest at ``l = L - 2`` (as the top Gaussian
    level, ``4 * (2**(L - 1) - 1)``). The weights' Gaussian pyramids reach less. On the
    real PCB stack, tiles with a halo of the filters plus 16 px already equal the
    untiled result bit for bit; a halo of the filters alone does not (1.3e-4).
    """
    filters = math.ceil(3 * p["prefilter"]) + 1 + math.ceil(3 * p["smooth"]) + math.ceil(3 * p["feather"])
    return int(filters + 2 * 2 ** p["levels"] - 4)


@register_method(
    name="focus_pyramid",
    title="Noise-aware focus, pyramid blend",
    tasks=("multi-focus",),
    mode="nway",
    outputs=("fused", "labels", "depth"),
    params=(
        Param("smooth", 7.0, float, "Gaussian sigma (pixels) smoothing each focus map.", low=0.0, high=32.0),
        Param(
            "softness",
            2.0,
            float,
            "How far below the best a slice may score, in noise standard deviations, and still be "
            "blended in (0: hard choice).",
            low=0.0,
            high=16.0,
        ),
        Param("feather", 3.0, float, "Gaussian sigma (pixels) feathering the weights.", low=0.0, high=16.0),
        Param("levels", 4, int, "Levels of the blending pyramid (coarsest at 1/2^(levels-1)).", low=1, high=8),
        Param(
            "prefilter",
            1.0,
            float,
            "Gaussian sigma (pixels) before the Laplacian (noise suppression in the measure).",
            low=0.0,
            high=4.0,
        ),
    ),
    citation=(
        "Anscombe, Biometrika 1948; Nayar & Nakagawa, IEEE TPAMI 1994; Burt & Adelson, "
        "ACM Trans. Graphics 1983; Mertens et al., Pacific Graphics 2007."
    ),
    description="Variance-stabilised LoG focus, soft weights with a noise temperature, pyramid blend.",
    halo=_halo,
    streams_slices=True,
)
def fuse_focus_pyramid(
    stack: torch.Tensor,
    *,
    ctx: FusionContext,
    smooth: float,
    softness: float,
    feather: float,
    levels: int,
    prefilter: float,
) -> MethodOutput:
    n, c, h, w = stack.shape
    focus = torch.empty((n, h, w), device=stack.device)
    labels = torch.zeros((h, w), dtype=torch.long, device=stack.device)
    for k in range(n):
        focus[k] = focus_energy(luminance(stack[k], channel_dim=0), prefilter=prefilter, smooth=smooth)
        if k == 0:
            best = focus[0].clone()
        else:  # running argmax: the first slice wins ties, as with torch.argmax
            labels.masked_fill_(focus[k] > best, k)
            torch.maximum(best, focus[k], out=best)
        ctx.report(k + 1, 2 * n + 1, f"focus, slice {k + 1}/{n}")
    del best
    weights = soft_weights(focus, softness=softness, cv=noise_cv(float(prefilter), float(smooth)))
    confidence = weights.amax(0)
    if feather > 0:
        for k in range(n):
            weights[k] = gaussian_filter(weights[k], feather)
    index = torch.einsum("khw,k->hw", weights, torch.arange(n, device=stack.device, dtype=weights.dtype))
    nlev = max(1, min(int(levels), _max_levels(h, w)))
    report = lambda k: ctx.report(n + k + 1, 2 * n + 1, f"pyramid blend, slice {k + 1}/{n}")  # noqa: E731
    fused = blend_in_pyramid(stack, weights, nlev, progress=report).clamp_(0.0, 1.0)
    ctx.report(1, 1, "focus pyramid done")
    return MethodOutput(fused=fused, labels=labels, extras={"index": index, "confidence": confidence})


def _max_levels(h: int, w: int) -> int:
    """Pyramid levels that keep the coarsest level at least 2 pixels."""
    return max(1, int(math.floor(math.log2(max(min(h, w) / 2.0, 1.0)))) + 1)
