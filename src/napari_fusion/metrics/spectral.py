"""Full-reference metrics for multiband images (hyperspectral / multispectral
super-resolution and pansharpening): per-band PSNR and SSIM, SAM and ERGAS.

Inputs are arrays or tensors of the same shape, ``(H, W)`` or ``(H, W, B)``
(``band_axis=-1``, the default) or ``(B, H, W)`` (``band_axis=0``), in any
units; ``data_range`` is the peak value for PSNR/SSIM (default: the maximum
of the ground truth). Computed in float64.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from ..errors import FusionInputError
from .vifb import ssim_valid_plane


def _bands(x: Any, band_axis: int, name: str) -> torch.Tensor:
    t = x.detach().cpu() if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))
    t = t.to(torch.float64)
    if t.ndim == 2:
        t = t.unsqueeze(0)
    elif t.ndim == 3:
        t = t.movedim(band_axis, 0)
    else:
        raise FusionInputError(f"{name}: expected (H, W) or a 3-D multiband image, got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise FusionInputError(f"{name}: contains NaN or infinite values")
    return t


def _pair(fused, gt, band_axis):
    f = _bands(fused, band_axis, "fused")
    g = _bands(gt, band_axis, "ground truth")
    if f.shape != g.shape:
        raise FusionInputError(
            f"fused image {tuple(f.shape)} and ground truth {tuple(g.shape)} differ in shape (bands first)"
        )
    return f, g


def _range(g: torch.Tensor, data_range: float | None) -> float:
    r = float(g.max()) if data_range is None else float(data_range)
    if not r > 0:
        raise FusionInputError("data_range must be positive (the ground truth is all zero?)")
    return r


def psnr_bands(fused: Any, gt: Any, *, data_range: float | None = None, band_axis: int = -1) -> float:
    """Mean over bands of ``10 log10(data_range^2 / MSE_b)`` in dB (the usual hyperspectral PSNR)."""
    f, g = _pair(fused, gt, band_axis)
    r = _range(g, data_range)
    mse = ((f - g) ** 2).flatten(1).mean(1)
    vals = [math.inf if m == 0 else 10 * math.log10(r * r / float(m)) for m in mse]
    return float(np.mean(vals))


def ssim_bands(fused: Any, gt: Any, *, data_range: float | None = None, band_axis: int = -1) -> float:
    """Mean over bands of SSIM (Wang et al. 2004; Gaussian 11, sigma 1.5, K = 0.01/0.03, 'valid' region)."""
    f, g = _pair(fused, gt, band_axis)
    if min(f.shape[-2:]) < 11:
        raise FusionInputError(f"SSIM needs images of at least 11x11 pixels, got {tuple(f.shape[-2:])}")
    r = _range(g, data_range)
    return float(torch.stack([ssim_valid_plane(fb, gb, data_range=r) for fb, gb in zip(f, g)]).mean())


def sam(fused: Any, gt: Any, *, band_axis: int = -1) -> float:
    """Spectral angle mapper: mean over pixels of the angle (degrees) between the
    fused and the true spectrum, ``arccos(<f, g> / (|f| |g|))`` (Yuhas, Goetz &
    Boardman 1992). Pixels where either spectrum is all zero are skipped. Lower is better."""
    f, g = _pair(fused, gt, band_axis)
    f = f.flatten(1)
    g = g.flatten(1)
    nf = f.norm(dim=0)
    ng = g.norm(dim=0)
    ok = (nf > 0) & (ng > 0)
    if not bool(ok.any()):
        raise FusionInputError("SAM is undefined: every pixel has a zero spectrum")
    cos = (f[:, ok] * g[:, ok]).sum(0) / (nf[ok] * ng[ok])
    return float(torch.rad2deg(torch.arccos(cos.clamp(-1.0, 1.0))).mean())


def ergas(fused: Any, gt: Any, *, scale: float, band_axis: int = -1) -> float:
    """ERGAS (Wald 2000): ``100 / scale * sqrt(mean_b(RMSE_b^2 / mean(gt_b)^2))``; ``scale`` = resolution ratio
    (high / low, e.g. 4). Lower is better."""
    f, g = _pair(fused, gt, band_axis)
    mse = ((f - g) ** 2).flatten(1).mean(1)
    mu = g.flatten(1).mean(1)
    if bool((mu == 0).any()):
        raise FusionInputError("ERGAS is undefined for a band whose ground-truth mean is zero")
    return float(100.0 / float(scale) * torch.sqrt((mse / mu**2).mean()))


__all__ = ["psnr_bands", "ssim_bands", "sam", "ergas"]
