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

The slices are streamed in two passes: the running most-salient slice
(labels), then per slice the two guided filters and the base/detail layers,
added into running weighted sums and weight totals that are divided at the
end (the normalisation across slices). Only the ``(N, H, W)`` base weights
(the ``weights`` output) and a few single-slice maps are held. Labels and
weights are those of the whole-stack formulation exactly; the fused image up
to float32 rounding.
"""

from __future__ import annotations

import torch

from ..ops.blend import luminance_stack, normalise_weights_
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
    streams_slices=True,
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
    n, c, h, w = stack.shape
    labels = _gff_labels(stack, ctx, sigma=saliency_sigma, radius=saliency_radius)
    weights = torch.empty((n, h, w), dtype=stack.dtype, device=stack.device)
    num_base = torch.zeros((c, h, w), dtype=stack.dtype, device=stack.device)
    num_detail = torch.zeros_like(num_base)
    total_detail = torch.zeros((h, w), dtype=stack.dtype, device=stack.device)
    for k in range(n):
        image = stack[k]  # read once: ``stack`` may be a slice view that converts on reading
        grey = _grey(image)
        p = (labels == k).to(stack.dtype)  # the binary weight map P_k
        weights[k] = guided_filter(grey, p, r1, eps1)  # normalised below, in place
        w_detail = guided_filter(grey, p, r2, eps2).clamp_min_(0)
        base = _base_layer(image, base_radius)
        num_base.addcmul_(base, weights[k].clamp_min(0))
        num_detail.addcmul_(torch.sub(image, base, out=base), w_detail)  # the detail layer
        total_detail += w_detail
        del image, grey, p, w_detail, base
        ctx.report(n + k + 1, 2 * n + 1, f"weights and layers of slice {k + 1}/{n}")
    total_base = weights.clamp_min_(0).sum(0)  # the total normalise_weights takes
    normalise_weights_(weights)
    fused = _gff_recombine(stack, num_base, total_base, num_detail, total_detail, base_radius)
    ctx.report(1, 1, "recombined")
    return MethodOutput(fused=fused, labels=labels, weights=weights)


def _grey(image: torch.Tensor) -> torch.Tensor:
    """Luminance of one ``(C, H, W)`` slice."""
    return luminance_stack(image[None])[0]


def _base_layer(image: torch.Tensor, radius: int) -> torch.Tensor:
    """The ``(C, H, W)`` base layer (box mean), one channel at a time to keep the filter's buffers small."""
    return torch.stack([box_filter(plane, radius) for plane in image])


def _gff_labels(stack: torch.Tensor, ctx: FusionContext, *, sigma: float, radius: int) -> torch.Tensor:
    """Index of the most salient slice per pixel (ties: the first), streaming over slices."""
    n, _, h, w = stack.shape
    best = None
    labels = torch.zeros((h, w), dtype=torch.long, device=stack.device)
    for k in range(n):
        s = gff_saliency(_grey(stack[k]), sigma=sigma, radius=radius)
        if best is None:
            best = s
        else:
            better = s > best  # strict: ties keep the first slice, as argmax does
            best = torch.where(better, s, best)
            labels.masked_fill_(better, k)
        ctx.report(k + 1, 2 * n + 1, f"saliency of slice {k + 1}/{n}")
    return labels


def _gff_recombine(stack, num_base, total_base, num_detail, total_detail, base_radius, eps=1e-12):
    """``sum_k B_k W^B_k + sum_k D_k W^D_k`` from the running weighted sums and weight totals.

    Where a total is 0 the weights are uniform (as :func:`normalise_weights`):
    those pixels take the mean base / detail layer, computed only if needed.
    """
    fused = num_base.div_(total_base.clamp_min(eps)) + num_detail.div_(total_detail.clamp_min(eps))
    flat_base, flat_detail = ~(total_base > eps), ~(total_detail > eps)
    if bool(flat_base.any()) or bool(flat_detail.any()):
        mean = stack[0].clone()  # the mean slice, summed one slice at a time
        for k in range(1, len(stack)):
            mean += stack[k]
        mean /= len(stack)
        mean_base = box_filter(mean, base_radius)
        base_part = torch.where(flat_base, mean_base, num_base)
        detail_part = torch.where(flat_detail, mean - mean_base, num_detail)
        fused = base_part + detail_part
    return fused
