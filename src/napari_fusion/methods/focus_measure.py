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

from ..ops.blend import luminance_stack
from ..ops.filters import box_filter, conv2d_same, gaussian_filter, sobel_gradients
from ..ops.regions import mode_filter
from ..registry import FusionContext, MethodOutput, Param, register_method

MEASURES = ("variance", "sml", "tenengrad")


def focus_measure(image: torch.Tensor, measure: str, window: int) -> torch.Tensor:
    """Local focus measure of a grey ``(..., H, W)`` image over a ``(2w+1)^2`` window."""
    if measure == "variance":
        mean = box_filter(image, window)
        return (box_filter(image * image, window) - mean * mean).clamp_min(0)
    if measure == "sml":
        kx = torch.tensor([[0.0, 0.0, 0.0], [-1.0, 2.0, -1.0], [0.0, 0.0, 0.0]])
        ml = conv2d_same(image, kx).abs() + conv2d_same(image, kx.T.contiguous()).abs()
        return box_filter(ml, window)
    if measure == "tenengrad":
        gx, gy = sobel_gradients(image)
        return box_filter(gx * gx + gy * gy, window)
    raise ValueError(f"unknown focus measure {measure!r}")


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
    grey = luminance_stack(stack)
    best = torch.full((h, w), -math.inf, device=stack.device)
    labels = torch.zeros((h, w), dtype=torch.long, device=stack.device)
    for k in range(n):
        fm = focus_map(grey[k], measure=measure, window=window, smooth=smooth, halo_control=halo_control)
        better = fm > best
        labels = torch.where(better, torch.full_like(labels, k), labels)
        best = torch.where(better, fm, best)
        ctx.report(k + 1, n + 1, f"focus measure, slice {k + 1}/{n}")
    if consistency > 0:
        labels = mode_filter(labels, consistency)
    if blend > 0:
        fused = torch.zeros((c, h, w), device=stack.device)
        total = torch.zeros((h, w), device=stack.device)
        for k in torch.unique(labels).tolist():
            wk = gaussian_filter((labels == k).float(), blend)
            fused += wk * stack[k]
            total += wk
        fused = fused / total.clamp_min(1e-12)
    else:
        idx = labels.view(1, 1, h, w).expand(1, c, h, w)
        fused = stack.gather(0, idx)[0]
    ctx.report(1, 1, "focus measure done")
    return MethodOutput(fused=fused, labels=labels, extras={"focus": best})
