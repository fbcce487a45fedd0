"""Per-pixel focus-measure selection for focal stacks, with a regularised decision.

For every slice a local focus measure is computed on luminance; the slice
with the highest (spatially smoothed) measure wins each pixel; a majority
filter cleans the decision; the fused image takes each pixel from its
winning slice, optionally with a soft transition between regions.

Measures (reviewed in Pertuz, Puig & Garcia, "Analysis of focus measure
operators for shape-from-focus", Pattern Recognition 46(5), 2013):

* ``variance`` - local grey-level variance;
* ``sml`` - sum-modified-Laplacian (Nayar & Nakagawa 1994);
* ``tenengrad`` - Sobel gradient energy (Tenenbaum 1970).

The computation streams over slices (running maximum), so memory stays at a
few single-slice maps whatever the depth of the stack.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..ops.colour import luminance
from ..ops.filters import box_filter, gaussian_filter, sobel_gradients
from ..registry import FusionContext, MethodOutput, Param, register_method

MEASURES = ("variance", "sml", "tenengrad")


def _second_difference(image: torch.Tensor, dim: int) -> torch.Tensor:
    """``2 I - I[-1] - I[+1]`` along ``dim`` (-1: x, -2: y) with reflected borders.

    The same values as correlating with the 3x3 kernel ``[-1, 2, -1]`` (the
    zero taps add nothing), without the convolution's cost.
    """
    h, w = image.shape[-2:]
    x4 = image.reshape(-1, 1, h, w)
    pads = (1, 1, 0, 0) if dim == -1 else (0, 0, 1, 1)
    mode = "reflect" if min(h, w) > 1 else "replicate"  # as conv2d_same's padding of a 3x3 kernel
    p = F.pad(x4, pads, mode=mode)
    n = p.shape[dim]
    centre, before, after = p.narrow(dim, 1, n - 2), p.narrow(dim, 0, n - 2), p.narrow(dim, 2, n - 2)
    return (2 * centre - before - after).reshape(image.shape)


def modified_laplacian(image: torch.Tensor) -> torch.Tensor:
    """``|d2I/dx2| + |d2I/dy2|`` (Nayar & Nakagawa's modified Laplacian) of ``(..., H, W)``."""
    ml = _second_difference(image, -1).abs_()
    return ml.add_(_second_difference(image, -2).abs_())


def focus_measure(image: torch.Tensor, measure: str, window: int) -> torch.Tensor:
    """Local focus measure of a grey ``(..., H, W)`` image over a ``(2w+1)^2`` window."""
    if measure == "variance":
        mean = box_filter(image, window)
        return (box_filter(image * image, window) - mean * mean).clamp_min(0)
    if measure == "sml":
        return box_filter(modified_laplacian(image), window)
    if measure == "tenengrad":
        gx, gy = sobel_gradients(image)
        return box_filter(gx * gx + gy * gy, window)
    raise ValueError(f"unknown focus measure {measure!r}")


def _window_counts(mask: torch.Tensor, k: int, h: int, w: int) -> torch.Tensor:
    """Exact integer count of ``True`` over every ``k x k`` window of a padded ``(h+k-1, w+k-1)`` mask.

    Shifted adds in one small integer type (uint8 while ``k * k`` fits, else
    int32): cheaper than cumulative sums or a convolution for these windows.
    """
    m = mask.to(torch.uint8 if k * k <= 255 else torch.int32)
    rows = m[:, 0:w].clone()
    for i in range(1, k):
        rows += m[:, i : i + w]
    out = rows[0:h].clone()
    for i in range(1, k):
        out += rows[i : i + h]
    return out


def majority_filter(labels: torch.Tensor, radius: int) -> torch.Tensor:
    """Majority vote over a ``(2r+1)^2`` window, replicated borders, ties to the lowest label.

    The result of :func:`napari_fusion.ops.regions.mode_filter` (whose float
    votes are these counts over the window area), from exact integer counts.
    """
    h, w = labels.shape
    k = 2 * radius + 1
    rows = torch.arange(-radius, h + radius, device=labels.device).clamp_(0, h - 1)
    cols = torch.arange(-radius, w + radius, device=labels.device).clamp_(0, w - 1)
    padded = labels.index_select(0, rows).index_select(1, cols)
    best = torch.full((h, w), -1, dtype=torch.int32, device=labels.device)
    out = labels.clone()
    for value in torch.unique(labels).tolist():
        votes = _window_counts(padded == value, k, h, w)
        better = votes > best
        out.masked_fill_(better, value)
        best = torch.where(better, votes.to(best.dtype), best)
    return out


#: Offset added before the logarithm of halo control (intensities scaled to [0, 1]).
LOG_OFFSET = 0.01


def focus_map(
    grey: torch.Tensor, *, measure: str, window: int, smooth: float, halo_control: bool = False
) -> torch.Tensor:
    """The smoothed focus map the decision is taken on, for one grey slice scaled to [0, 1].

    With ``halo_control`` the measure is computed on ``log(I + 0.01)``: the
    measure then responds to relative rather than absolute contrast, so the
    large absolute gradients in the blur skirt of a bright, defocused object
    no longer outvote the faint, in-focus background next to it (the halo of
    focus stacking around bright objects on a dark background). Measured in
    ``docs/focalstack.md`` (``benchmarks/focalstack_halo.py``).
    """
    if halo_control:
        grey = torch.log(grey.clamp_min(0) + LOG_OFFSET)
    fm = focus_measure(grey, measure, window)
    if smooth > 0:
        fm = gaussian_filter(fm, smooth)
    return fm


def _halo(p) -> int:
    return int(p["window"] + 1 + math.ceil(3 * p["smooth"]) + p["consistency"] + math.ceil(3 * p["blend"]))


@register_method(
    name="focus_measure",
    title="Focus-measure selection (focal stacks)",
    tasks=("multi-focus",),
    mode="nway",
    outputs=("fused", "labels", "depth"),
    params=(
        Param("measure", "sml", str, "Focus measure computed on luminance.", choices=MEASURES),
        Param("window", 4, int, "Radius (pixels) of the window the measure is summed over.", low=0, high=64),
        Param(
            "smooth",
            2.0,
            float,
            "Gaussian sigma (pixels) smoothing each focus map before the decision.",
            low=0.0,
            high=50.0,
        ),
        Param(
            "consistency",
            3,
            int,
            "Radius of the majority filter that cleans the decision map (0: off).",
            low=0,
            high=50,
        ),
        Param(
            "blend",
            0.0,
            float,
            "Gaussian sigma of a soft transition between chosen slices (0: hard choice).",
            low=0.0,
            high=20.0,
        ),
        Param(
            "halo_control",
            False,
            bool,
            "Decide on log-intensity: fewer halos around bright objects on a dark background.",
        ),
    ),
    citation=(
        "Nayar & Nakagawa, 'Shape from focus', IEEE TPAMI 16(8), 1994; "
        "Pertuz, Puig & Garcia, 'Analysis of focus measure operators for shape-from-focus', "
        "Pattern Recognition 46(5), 2013."
    ),
    description="Fast default for focal stacks: each pixel from the slice where it is sharpest.",
    halo=_halo,
    streams_slices=True,
)
def fuse_focus_measure(
    stack: torch.Tensor,
    *,
    ctx: FusionContext,
    measure: str,
    window: int,
    smooth: float,
    consistency: int,
    blend: float,
    halo_control: bool = False,
) -> MethodOutput:
    n, c, h, w = stack.shape
    best = torch.full((h, w), -math.inf, device=stack.device)
    labels = torch.zeros((h, w), dtype=torch.long, device=stack.device)
    for k in range(n):  # one slice at a time: no (N, H, W) grey or focus copies
        grey = luminance(stack[k], channel_dim=0)
        fm = focus_map(grey, measure=measure, window=window, smooth=smooth, halo_control=halo_control)
        better = fm > best
        labels.masked_fill_(better, k)
        best = torch.where(better, fm, best)
        del grey, fm, better
        ctx.report(k + 1, n + 1, f"focus measure, slice {k + 1}/{n}")
    if consistency > 0:
        labels = majority_filter(labels, consistency)
    if blend > 0:
        fused = torch.zeros((c, h, w), device=stack.device)
        total = torch.zeros((h, w), device=stack.device)
        for k in torch.unique(labels).tolist():
            wk = gaussian_filter((labels == k).float(), blend)
            fused += wk * stack[k]
            total += wk
        fused = fused / total.clamp_min(1e-12)
    else:  # each pixel copied from its slice, one slice at a time (``stack`` may be a slice view)
        fused = torch.empty((c, h, w), dtype=stack.dtype, device=stack.device)
        for k in torch.unique(labels).tolist():
            torch.where(labels == k, stack[k], fused, out=fused)
    ctx.report(1, 1, "focus measure done")
    return MethodOutput(fused=fused, labels=labels, extras={"focus": best})
