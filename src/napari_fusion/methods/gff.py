"""Guided-filtering fusion (GFF) of Li, Kang & Hu 2013.

Each source is split into a base layer (31x31 mean) and a detail layer.
Saliency is the Gaussian-smoothed absolute Laplacian; the most salient source
wins each pixel (binary weight maps P_n); the weight maps are refined by
guided filtering with the source as guide, coarsely for the base layers
(r1, eps1) and finely for the details (r2, eps2); the layers are recombined
with the normalised refined weights.

Reference: S. Li, X. Kang, J. Hu, "Image fusion with guided filtering",
IEEE Transactions on Image Processing 22(7):2864-2875, 2013. Default
parameters are the paper's (r1=45, eps1=0.3, r2=7, eps2=1e-6). Colour
sources use their luminance as guidance (the decision is made on luminance
and applied to every channel).
"""

from __future__ import annotations

import torch

from ..ops.blend import luminance_stack, normalise_weights
from ..ops.filters import box_filter, gaussian_filter, laplacian
from ..ops.guided import guided_filter
from ..registry import FusionContext, MethodOutput, Param, register_method


def gff_saliency(grey: torch.Tensor, *, sigma: float, radius: int) -> torch.Tensor:
    """Gaussian-smoothed magnitude of the Laplacian (the paper's saliency S_n)."""
    return gaussian_filter(laplacian(grey).abs(), sigma, radius=radius)


@register_method(
    name="gff",
    title="Guided-filtering fusion (Li, Kang & Hu 2013)",
    tasks=("multi-focus", "infrared-visible", "multi-exposure", "medical"),
    mode="nway",
    outputs=("fused", "labels", "weights", "depth"),
    params=(
        Param(
            "base_radius",
            15,
            int,
            "Radius of the mean filter giving the base layer (paper: 31x31 -> 15).",
            low=1,
            high=100,
        ),
        Param("saliency_sigma", 5.0, float, "Sigma of the Gaussian smoothing of |Laplacian|.", low=0.1, high=50.0),
        Param("saliency_radius", 5, int, "Radius of that Gaussian (paper: 11x11 -> 5).", low=1, high=100),
        Param("r1", 45, int, "Guided-filter radius for the base weights.", low=1, high=200),
        Param("eps1", 0.3, float, "Guided-filter regularisation for the base weights.", low=1e-9, high=10.0),
        Param("r2", 7, int, "Guided-filter radius for the detail weights.", low=1, high=100),
        Param("eps2", 1e-6, float, "Guided-filter regularisation for the detail weights.", low=1e-12, high=10.0),
    ),
    citation=(
        "S. Li, X. Kang, J. Hu, 'Image fusion with guided filtering', "
        "IEEE Trans. Image Processing 22(7):2864-2875, 2013."
    ),
    description="Two-scale fusion with guided-filter-refined saliency weights; a strong classical baseline.",
    halo=lambda p: 2 * (p["r1"] + p["base_radius"] + p["saliency_radius"] + 2),
)
def fuse_gff(
    stack: torch.Tensor,
    *,
    ctx: FusionContext,
    base_radius: int,
    saliency_sigma: float,
    saliency_radius: int,
    r1: int,
    eps1: float,
    r2: int,
    eps2: float,
) -> MethodOutput:
    n = stack.shape[0]
    grey = luminance_stack(stack)  # (N, H, W)
    saliency = gff_saliency(grey, sigma=saliency_sigma, radius=saliency_radius)
    labels = saliency.argmax(0)
    ctx.report(1, 4, "saliency")
    p = torch.nn.functional.one_hot(labels, n).movedim(-1, 0).to(stack.dtype)
    w_base = normalise_weights(guided_filter(grey, p, r1, eps1))
    ctx.report(2, 4, "base weights")
    w_detail = normalise_weights(guided_filter(grey, p, r2, eps2))
    ctx.report(3, 4, "detail weights")
    base = box_filter(stack, base_radius)
    detail = stack - base
    fused = (base * w_base.unsqueeze(1)).sum(0) + (detail * w_detail.unsqueeze(1)).sum(0)
    ctx.report(4, 4, "recombined")
    return MethodOutput(fused=fused, labels=labels, weights=w_base)
