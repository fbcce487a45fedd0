"""Differentiable MEF-SSIM for training (the MEF-Net variant), in torch.

:func:`napari_fusion.metrics.mef_ssim` reproduces the authors' MATLAB
``mef_ms_ssim.m`` (float64, 0-255, three scales) for evaluation. Learned
multi-exposure fusion is trained with a simpler, differentiable variant
introduced with MEF-Net (K. Ma, Z. Duanmu, H. Zhu, Y. Fang, Z. Wang, "Deep
guided learning for fast multi-exposure image fusion", IEEE TIP 29, 2020)
and used as the loss of CSC-MEFN. At every pixel, with Gaussian-windowed
local statistics of the fused image ``x`` and of each exposure ``y_k``:

* structure/contrast: ``cs_k = (2 s_xy_k + C2) / (s_x^2 + s_yk^2 + C2)``,
  taken from the exposure with the largest local variance;
* luminance: ``l = (2 mu_x mu_y + C1) / (mu_x^2 + mu_y^2 + C1)`` against the
  desired mean ``mu_y = sum_k L_k mu_yk / sum_k L_k`` with
  ``L_k = exp(-(m_k - 0.5)^2 / (2 sigma_g^2)) * exp(-(mu_yk - 0.5)^2 / (2 sigma_l^2))``
  (``m_k`` the global mean of exposure k): well-exposed exposures decide
  the target brightness.

``Q = mean(l * cs)``; single scale; values in [0, 1] for intensities in
[0, 1]; C1 = 0.01^2, C2 = 0.03^2, window 11 with sigma 11/6, sigma_g =
sigma_l = 0.2 (the settings the CSC-MEFN authors used). Windows use
reflected borders.
"""

from __future__ import annotations

import torch

from ..ops.filters import gaussian_kernel1d, separable_filter


def mef_ssim_loss_terms(
    fused: torch.Tensor,
    sources: torch.Tensor,
    *,
    window: int = 11,
    sigma: float | None = None,
    sigma_g: float = 0.2,
    sigma_l: float = 0.2,
    c1: float = 0.01**2,
    c2: float = 0.03**2,
    luminance: bool = True,
) -> torch.Tensor:
    """Quality map ``(B, H, W)`` of grey ``fused (B, H, W)`` against ``sources (B, K, H, W)``."""
    if (
        fused.ndim != 3
        or sources.ndim != 4
        or sources.shape[0] != fused.shape[0]
        or sources.shape[-2:] != fused.shape[-2:]
    ):
        raise ValueError(
            f"expected fused (B, H, W) and sources (B, K, H, W); got {tuple(fused.shape)}, {tuple(sources.shape)}"
        )
    sigma = window / 6.0 if sigma is None else sigma
    g = gaussian_kernel1d(sigma, window // 2, device=fused.device, dtype=fused.dtype)

    def blur(t):
        return separable_filter(t, g)

    x = fused.unsqueeze(1)  # (B, 1, H, W)
    y = sources
    mu_y = blur(y)
    var_y = (blur(y * y) - mu_y * mu_y).clamp_min(0)
    mu_x = blur(x)
    var_x = (blur(x * x) - mu_x * mu_x).clamp_min(0)
    cov = blur(x * y) - mu_x * mu_y
    cs_all = (2 * cov + c2) / (var_x + var_y + c2)  # (B, K, H, W)
    idx = var_y.argmax(dim=1, keepdim=True)
    cs = cs_all.gather(1, idx)[:, 0]
    if not luminance:
        return cs
    m = y.mean(dim=(-2, -1), keepdim=True)
    lk = torch.exp(-((m - 0.5) ** 2) / (2 * sigma_g**2)) * torch.exp(-((mu_y - 0.5) ** 2) / (2 * sigma_l**2))
    target = (lk * mu_y).sum(1) / lk.sum(1).clamp_min(1e-12)
    mx = mu_x[:, 0]
    lum = (2 * mx * target + c1) / (mx * mx + target * target + c1)
    return lum * cs


def mef_ssim_torch(fused: torch.Tensor, sources: torch.Tensor, **kw) -> torch.Tensor:
    """MEF-Net-style MEF-SSIM per batch item ``(B,)`` (differentiable); see the module docstring."""
    return mef_ssim_loss_terms(fused, sources, **kw).mean(dim=(-2, -1))


__all__ = ["mef_ssim_torch", "mef_ssim_loss_terms"]
