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
from ..ops.tiles import map_tiles
from ..registry import FusionContext, MethodOutput, Param, register_method
from ..weights import LoadedWeights, how_to_train, load_shipped, shipped_path

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


def _how() -> str:
    return how_to_train("csc_mefn")


def load_csc_mefn(weights: str | Path | None, device: torch.device) -> CSCMEFN:
    """The weight network on ``device`` (eval mode), sha256-verified and cached."""

    def build(w: LoadedWeights) -> CSCMEFN:
        try:
            net = CSCMEFN(int(w.manifest.get("channels", 24)), int(w.manifest.get("n_dcu", 2)))
            net.load_state_dict(w.state)
        except (RuntimeError, ValueError, TypeError) as exc:
            raise WeightsUnavailableError(
                f"weights {w.path} do not fit the CSC-MEFN network: {exc}. {_how()}"
            ) from None
        return net.eval().requires_grad_(False).to(w.device)

    return load_shipped(
        WEIGHTS_NAME, path=weights or None, device=device, build=build, expect={"method": "csc_mefn"}, how_to_get=_how()
    )


def _halo(params: dict) -> int:
    """The network's receptive radius (from the weights' manifest)."""
    path = Path(params.get("weights") or default_weights_path())
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
    h, w = luma.shape
    (out,) = map_tiles(
        lambda block: net.logits(block[None, None])[0, 0],
        luma,
        halo=net.receptive_radius,
        tile=tile or NET_TILE,
        report=report,
    )
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


@register_method(
    name="csc_mefn",
    title="CSC-MEFN deep sparse coding exposure fusion (Xu, Zhao et al. 2023)",
    tasks=("multi-exposure",),
    mode="nway",
    learned=True,
    outputs=("fused", "labels", "weights"),
    params=_PARAMS,
    citation=CITATION,
    description=(
        "A trained convolutional sparse coding network weights every exposure's luma (softmax across "
        "exposures); chroma by saturation; percentile stretch."
    ),
    intensity="dtype",
    colour="native",
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
    n, c, h, w = stack.shape
    if c not in (1, 3):
        raise FusionInputError(f"csc_mefn fuses grey or RGB exposures, got {c} channels")
    if h < 2 or w < 2:
        raise FusionInputError(f"csc_mefn needs images of at least 2x2 pixels, got {h}x{w}")
    if stretch and low_percentile >= high_percentile:
        raise FusionInputError(f"low_percentile ({low_percentile}) must be below high_percentile ({high_percentile})")
    net = load_csc_mefn(weights, ctx.device)
    x = stack.float().clamp(0.0, 1.0)
    ycc = rgb_to_ycbcr(x, channel_dim=1) if c == 3 else x  # (N, C, H, W)
    logits = torch.empty((n, h, w), dtype=torch.float32, device=stack.device)
    steps = n + 2
    for k in range(n):
        message = f"weights, exposure {k + 1}/{n}"
        logits[k] = luma_logits(
            net, ycc[k, 0], report=lambda done, count, k=k, m=message: ctx.report(k + done / count, steps, m)
        )
    wts = torch.softmax(logits, dim=0)
    y = (wts * ycc[:, 0]).sum(0)
    if c == 3:
        chroma = ycc[:, 1:]
        cbcr = (chroma_weights(chroma, dim=0) * chroma).sum(0)
        fused = ycbcr_to_rgb(torch.cat([y.unsqueeze(0), cbcr]), channel_dim=0)
    else:
        fused = y.unsqueeze(0)
    ctx.report(n + 1, steps, "fused")
    fused = fused.clamp(0.0, 1.0)
    if stretch:
        fused = stretch_between(fused, *whole_image_bounds(ctx, fused, low_percentile / 100.0, high_percentile / 100.0))
    ctx.report(steps, steps, "stretched" if stretch else "clamped")
    return MethodOutput(fused=fused, labels=wts.argmax(0), weights=wts)
