"""Plain averaging: the baseline every method must beat."""

from __future__ import annotations

import torch

from ..registry import FusionContext, MethodOutput, register_method


@register_method(
    name="average",
    title="Average",
    tasks=("multi-focus", "infrared-visible", "multi-exposure", "medical", "multispectral"),
    mode="nway",
    outputs=("fused", "weights"),
    params=(),
    citation="Baseline (pixel-wise mean of the sources).",
    description="Pixel-wise mean of all sources. Chooses nothing, so it gives no labels.",
    halo=0,
)
def fuse_average(stack: torch.Tensor, *, ctx: FusionContext) -> MethodOutput:
    """Pixel-wise mean of all sources."""
    n, _, h, w = stack.shape
    ctx.report(1, 1, "average")
    weights = torch.full((n, h, w), 1.0 / n, device=stack.device)
    return MethodOutput(fused=stack.mean(0), weights=weights)
