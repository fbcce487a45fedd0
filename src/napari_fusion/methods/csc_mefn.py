"""CSC-MEFN: multi-exposure fusion by a deep convolutional sparse coding network
(Xu, Zhao et al., CVPR Workshops 2023).

1. Every exposure's luma (BT.601, :mod:`napari_fusion.ops.colour`) goes through
   the same trained weight network (:class:`napari_fusion.nets.csc_mefn.CSCMEFN`:
   Conv3x3 -> BN -> soft shrinkage -> DCUs -> Conv1x1); a softmax across the K
   exposures gives per-pixel luma weights that sum to one. Any K >= 2 works.
2. The fused luma is the weighted sum of the exposures' luma; the chroma
   planes Cb, Cr are fused with the paper's fixed weights ``|C - 0.5| + 1e-8``
   (normalised across exposures), and YCbCr goes back to RGB. Grey stacks
   are fused on their single channel (no chroma).
3. The result is clamped to [0, 1] and, by default, stretched between its
   0.5th and 99.5th percentiles (the authors' released test script).

The percentile stretch needs the whole image's distribution. Its two values
are exact order statistics found from two histograms of the float32 bit
patterns (:func:`whole_image_bounds`), which add up over tiles: a tiled run
computes them in two collect passes (:mod:`napari_fusion.whole_image`), so
tiled results equal untiled ones (the network runs three times per tile).
The network itself needs ``1 + 2 * n_dcu`` pixels of context.

Labels: the exposure with the largest luma weight at each pixel. Weights:
the per-exposure luma weight maps.

The network is trained here (``napari-fusion train csc_mefn``) on exposure
series rendered from photographs; the shipped weights are checked against
their sha256.

``csc_mefn_pyramid`` (:func:`fuse_csc_mefn_pyramid`) is a named variant, not the
paper's rule: the same network, trained through a Laplacian-pyramid blend of the
exposures' channels (``napari-fusion train csc_mefn --blend pyramid``; Mertens,
Kautz & Van Reeth 2007 blend their weights this way), with its own weights file.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch

from ..errors import FusionInputError, WeightsUnavailableError
from ..nets.csc_mefn import (
    CSCMEFN,
    chroma_weights,
    coarse_histogram,
    fine_histograms,
    order_statistic,
    percentile_ranks,
    rank_in_histogram,
    stretch_between,
)
from ..ops.colour import rgb_to_ycbcr, ycbcr_to_rgb
from ..ops.pyramids import SPLIT_LEVEL, blend_in_pyramid, pyramid_levels, split_levels
from ..ops.tiles import map_tiles, tile_with_unmapped_maps
from ..registry import FusionContext, MethodOutput, Param, register_method
from ..weights import LoadedWeights, how_to_train, load_shipped, shipped_path
from .mertens import coarse_inputs

CITATION = (
    "Z. Zhao, J. Zhang, H. Bai, Y. Wang, Y. Cui, L. Deng, K. Sun, C. Zhang, J. Liu, S. Xu, "
    "'Deep convolutional sparse coding networks for interpretable image fusion', "
    "CVPR Workshops 2023 (CSC-MEFN)."
)

WEIGHTS_NAME = "csc_mefn"
NET_TILE = 256  # tile side of the network pass (bounds memory, keeps the working set in cache)
_FALLBACK_HALO = 16


def default_weights_path() -> Path:
    return shipped_path(WEIGHTS_NAME)


def _how(name: str = WEIGHTS_NAME) -> str:
    blend = name.removeprefix(WEIGHTS_NAME).lstrip("_")
    return how_to_train("csc_mefn", options="--config cpu" + (f" --blend {blend}" if blend else ""))


def load_csc_mefn(weights: str | Path | None, device: torch.device, *, name: str = WEIGHTS_NAME) -> CSCMEFN:
    """The weight network on ``device`` (eval mode), sha256-verified and cached; ``name``: the
    shipped weights (and the manifest's ``method``), ``csc_mefn`` or ``csc_mefn_pyramid``."""

    def build(w: LoadedWeights) -> CSCMEFN:
        try:
            net = CSCMEFN(int(w.manifest.get("channels", 24)), int(w.manifest.get("n_dcu", 2)))
            net.load_state_dict(w.state)
        except (RuntimeError, ValueError, TypeError) as exc:
            raise WeightsUnavailableError(
                f"weights {w.path} do not fit the CSC-MEFN network: {exc}. {_how(name)}"
            ) from None
        return net.eval().requires_grad_(False).to(w.device)

    return load_shipped(
        name, path=weights or None, device=device, build=build, expect={"method": name}, how_to_get=_how(name)
    )


def _halo(params: dict, name: str = WEIGHTS_NAME) -> int:
    """The network's receptive radius (from the weights' manifest)."""
    path = Path(params.get("weights") or shipped_path(name))
    try:
        manifest = json.loads(path.with_suffix(".json").read_text())
        return 1 + 2 * int(manifest.get("n_dcu", 2))
    except (OSError, ValueError, TypeError):
        return _FALLBACK_HALO


def _collect_halo(params: dict) -> int | None:
    """The percentile stretch is a whole-image step on the fused values (the network's context)."""
    return _halo(params) if params.get("stretch", True) else None


def whole_image_bounds(ctx: FusionContext, out: torch.Tensor, low: float, high: float) -> tuple[float, float]:
    """The values :func:`~napari_fusion.nets.csc_mefn.percentile_bounds` takes from the whole
    image's ``out`` (in [0, 1]), exactly, from two summable histograms of the float32 bit patterns:
    one finds the bins of the two ranks, the other the values inside them. In a tiled run each
    histogram is a whole-image statistic (two collect passes)."""
    coarse = ctx.whole_image_stat("stretch_bins", out, coarse_histogram, lambda total: total)
    ranks = percentile_ranks(int(coarse.sum()), low, high)
    where = [rank_in_histogram(coarse, k) for k in ranks]
    bins = tuple(b for b, _ in where)
    fine = ctx.whole_image_stat("stretch_values", out, lambda v: fine_histograms(v, bins), lambda total: total)
    lo, hi = (order_statistic(b, fine[i], r) for i, (b, r) in enumerate(where))
    return lo, hi


@torch.no_grad()
def luma_logits(
    net: CSCMEFN, luma: torch.Tensor, *, tile: int | None = None, report: Callable[[int, int], None] | None = None
) -> torch.Tensor:
    """Logit map ``(H, W)`` of one luma image ``(H, W)``, computed in tiles.

    Each tile carries the network's receptive radius of extra pixels (cut off
    afterwards), so the result equals a single pass over the whole image;
    ``report(done, total)`` after every tile.
    """
    # in tiled runs, tiles whose feature maps (the codes, reflect-padded by 1 for the next 3x3
    # convolution) stay below the size that gets fresh pages: on 3 x 1100^2 the network took 10.2 s
    # (5.7 s system) with 256 px tiles there, against 3.6 s outside tiled runs (2026-12-02)
    r = net.receptive_radius
    size = tile_with_unmapped_maps(tile or NET_TILE, channels=net.channels, grow=2 * r + 2)
    (out,) = map_tiles(lambda block: net.logits(block[None, None])[0, 0], luma, halo=r, tile=size, report=report)
    return out


_PARAMS = (
    Param(
        "stretch",
        True,
        bool,
        "Stretch the result between the low/high percentiles (released code; a whole-image step).",
    ),
    Param("low_percentile", 0.5, float, "Percentile mapped to black by the stretch.", low=0.0, high=50.0, step=0.1),
    Param("high_percentile", 99.5, float, "Percentile mapped to white by the stretch.", low=50.0, high=100.0, step=0.1),
    Param("weights", "", str, "Path to other trained weights (.pt with its .json manifest); empty: shipped weights."),
)


#: What ``csc_mefn`` and its variant ``csc_mefn_pyramid`` register alike.
_COMMON: dict = dict(
    tasks=("multi-exposure",),
    mode="nway",
    learned=True,
    outputs=("fused", "labels", "weights"),
    intensity="dtype",
    colour="native",
)


@register_method(
    name="csc_mefn",
    title="CSC-MEFN deep sparse coding exposure fusion (Xu, Zhao et al. 2023)",
    **_COMMON,
    params=_PARAMS,
    citation=CITATION,
    description=(
        "A trained convolutional sparse coding network weights every exposure's luma (softmax across "
        "exposures); chroma by saturation; percentile stretch."
    ),
    halo=_halo,
    collect_halo=_collect_halo,
)
def fuse_csc_mefn(
    stack: torch.Tensor,
    *,
    ctx: FusionContext,
    stretch: bool,
    low_percentile: float,
    high_percentile: float,
    weights: str,
) -> MethodOutput:
    _check(stack, stretch, low_percentile, high_percentile)
    wts, ycc = _exposure_weights(stack.float().clamp(0.0, 1.0), ctx, load_csc_mefn(weights, ctx.device))
    n, c = stack.shape[:2]
    y = (wts * ycc[:, 0]).sum(0)
    if c == 3:
        chroma = ycc[:, 1:]
        cbcr = (chroma_weights(chroma, dim=0) * chroma).sum(0)
        fused = ycbcr_to_rgb(torch.cat([y.unsqueeze(0), cbcr]), channel_dim=0)
    else:
        fused = y.unsqueeze(0)
    ctx.report(n + 1, n + 2, "fused")
    return _finish(fused, wts, ctx, stretch, low_percentile, high_percentile)


def _check(stack: torch.Tensor, stretch: bool, low: float, high: float) -> None:
    n, c, h, w = stack.shape
    if c not in (1, 3):
        raise FusionInputError(f"csc_mefn fuses grey or RGB exposures, got {c} channels")
    if h < 2 or w < 2:
        raise FusionInputError(f"csc_mefn needs images of at least 2x2 pixels, got {h}x{w}")
    if stretch and low >= high:
        raise FusionInputError(f"low_percentile ({low}) must be below high_percentile ({high})")


def _exposure_weights(x: torch.Tensor, ctx: FusionContext, net: CSCMEFN) -> tuple[torch.Tensor, torch.Tensor]:
    """The softmax luma weights ``(N, H, W)`` of the exposures ``x`` (float, in [0, 1]) and the
    exposures in YCbCr (grey: ``x`` itself) ``(N, C, H, W)``."""
    n, c, h, w = x.shape
    ycc = rgb_to_ycbcr(x, channel_dim=1) if c == 3 else x  # (N, C, H, W)
    logits = torch.empty((n, h, w), dtype=torch.float32, device=x.device)
    for k in range(n):
        message = f"weights, exposure {k + 1}/{n}"
        logits[k] = luma_logits(
            net, ycc[k, 0], report=lambda done, count, k=k, m=message: ctx.report(k + done / count, n + 2, m)
        )
    return torch.softmax(logits, dim=0), ycc


def _finish(
    fused: torch.Tensor, wts: torch.Tensor, ctx: FusionContext, stretch: bool, low: float, high: float
) -> MethodOutput:
    """Clamp, optionally stretch between the whole image's percentiles, and package."""
    steps = len(wts) + 2
    fused = fused.clamp(0.0, 1.0)
    if stretch:
        fused = stretch_between(fused, *whole_image_bounds(ctx, fused, low / 100.0, high / 100.0))
    ctx.report(steps, steps, "stretched" if stretch else "clamped")
    return MethodOutput(fused=fused, labels=wts.argmax(0), weights=wts)


PYRAMID_NAME = f"{WEIGHTS_NAME}_pyramid"


def _pyramid_halo(params: dict) -> int:
    """The pyramid's context plus the network's, rounded up to the grid of the coarse levels
    (tiles of a split pyramid start on the ``2**SPLIT_LEVEL`` grid)."""
    levels = params["levels"] if params["levels"] > 0 else SPLIT_LEVEL + 1
    grid = 2**SPLIT_LEVEL
    return -(-(4 * 2**levels + _halo(params, PYRAMID_NAME)) // grid) * grid


def _pyramid_collect_halo(params: dict) -> int | None:
    """Whole-image steps: the pyramid's coarse levels (automatic depth) and the stretch."""
    return _pyramid_halo(params) if params["levels"] == 0 or params.get("stretch", True) else None


@register_method(
    name=PYRAMID_NAME,
    title="CSC-MEFN weights blended in a pyramid (variant of Xu, Zhao et al. 2023)",
    **_COMMON,
    params=(*_PARAMS, Param("levels", 0, int, "Pyramid levels (0: as many as fit).", low=0, high=16)),
    citation=CITATION + " Blend: T. Mertens, J. Kautz, F. Van Reeth, 'Exposure fusion', Pacific Graphics 2007.",
    description=(
        "Not the paper's rule: a CSC-MEFN weight network trained for this blend weights every exposure, "
        "and the exposures are blended in a Laplacian pyramid (as Mertens et al.); percentile stretch."
    ),
    halo=_pyramid_halo,
    collect_halo=_pyramid_collect_halo,
)
def fuse_csc_mefn_pyramid(
    stack: torch.Tensor,
    *,
    ctx: FusionContext,
    stretch: bool,
    low_percentile: float,
    high_percentile: float,
    weights: str,
    levels: int,
) -> MethodOutput:
    """CSC-MEFN's weight network (weights trained through this blend, ``napari-fusion train
    csc_mefn --blend pyramid``) with the exposures' channels blended in a Laplacian pyramid by
    Gaussian pyramids of the weights, then the paper's clamp and stretch. With automatic depth
    the coarse levels are a whole-image step, as in :mod:`napari_fusion.methods.mertens`."""
    _check(stack, stretch, low_percentile, high_percentile)
    x = stack.float().clamp(0.0, 1.0)
    wts = _exposure_weights(x, ctx, load_csc_mefn(weights, ctx.device, name=PYRAMID_NAME))[0]  # YCbCr freed
    h, w = x.shape[-2:]
    nlev = levels or pyramid_levels(*ctx.image_shape((h, w)))
    split = 0 if levels else split_levels(nlev)
    if split:
        coarse = ctx.whole_image_map(
            "coarse levels",
            lambda: coarse_inputs(x, wts, split),
            lambda full: blend_in_pyramid(full[:, :-1], full[:, -1], nlev - split),
            scale=2**split,
        )
        fused = blend_in_pyramid(x, wts, split, coarse=coarse)
    else:
        fused = blend_in_pyramid(x, wts, nlev)
    ctx.report(len(wts) + 1, len(wts) + 2, "fused")
    return _finish(fused, wts, ctx, stretch, low_percentile, high_percentile)
