"""Full-reference metrics: the fused image against a ground truth (e.g. an all-in-focus image)."""

from __future__ import annotations

from typing import Any

import torch

from ..errors import FusionInputError
from ._common import as_tensor255, channel_planes
from .vifb import ssim_valid_plane


def _pair(fused: Any, gt: Any, device=None):
    if gt is None:
        raise FusionInputError("this metric needs a ground-truth image")
    f = as_tensor255(fused, name="fused", device=device)
    g = as_tensor255(gt, name="ground truth", device=f.device)
    if f.shape[-2:] != g.shape[-2:]:
        raise FusionInputError(
            f"ground truth has size {tuple(g.shape[-2:])} but the fused image has {tuple(f.shape[-2:])}"
        )
    if f.shape[0] != g.shape[0]:
        raise FusionInputError(f"ground truth has {g.shape[0]} channels but the fused image has {f.shape[0]}")
    return f, g


def mse(fused: Any, gt: Any, *, device=None) -> float:
    """Mean squared error against the ground truth, over all pixels and channels, on the 0-255 scale. Lower is better."""
    f, g = _pair(fused, gt, device)
    return float(((f - g) ** 2).mean())


def psnr(fused: Any, gt: Any, *, device=None) -> float:
    """PSNR = 10 log10(255^2 / MSE) in dB against the ground truth (inf for identical images)."""
    m = mse(fused, gt, device=device)
    return float("inf") if m == 0 else float(10 * torch.log10(torch.tensor(255.0**2 / m, dtype=torch.float64)))


def ssim(fused: Any, gt: Any, *, device=None) -> float:
    """SSIM (Wang et al., IEEE TIP 2004) against the ground truth: Gaussian 11, sigma 1.5, K = (0.01, 0.03),
    L = 255, mean over the 'valid' region, averaged over colour channels."""
    f, g = _pair(fused, gt, device)
    vals = [ssim_valid_plane(s[0], fp) for s, fp in channel_planes(f, [g])]
    return float(torch.stack(vals).mean())
