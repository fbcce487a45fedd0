"""Guided filter (He, Sun & Tang, "Guided Image Filtering", ECCV 2010 / TPAMI 2013).

Used by guided-filtering fusion (Li, Kang & Hu 2013), by the CNN focus-map
method (Liu et al. 2017) and by the sparse-coding networks.
"""

from __future__ import annotations

import torch

from .filters import box_filter


def guided_filter(
    guide: torch.Tensor,
    src: torch.Tensor,
    radius: int,
    eps: float,
    *,
    border: str = "reflect",
) -> torch.Tensor:
    """Edge-preserving smoothing of ``src`` steered by ``guide``.

    ``guide`` is either grey, broadcastable to ``src`` (``(..., H, W)``), or a
    colour guide ``(..., 3, H, W)`` whose leading dimensions match ``src``'s
    (the colour form of He et al., with a 3x3 covariance per window). ``src``
    is ``(..., H, W)``. Window radius ``radius``, regularisation ``eps``.
    """
    if guide.ndim >= 3 and guide.shape[-3] == 3 and guide.shape[:-3] == src.shape[:-2]:
        return _guided_filter_colour(guide, src, radius, eps, border)
    guide, src = torch.broadcast_tensors(guide, src)
    mean = lambda t: box_filter(t, radius, border=border)  # noqa: E731
    mean_i = mean(guide)
    mean_p = mean(src)
    cov_ip = mean(guide * src) - mean_i * mean_p
    var_i = mean(guide * guide) - mean_i * mean_i
    a = cov_ip / (var_i + eps)
    b = mean_p - a * mean_i
    return mean(a) * guide + mean(b)


def guided_filter_of(guide: torch.Tensor, radius: int, eps: float, *, border: str = "reflect"):
    """The grey guided filter steered by ``guide`` ``(H, W)``, as a function of the source.

    The guide's window statistics are computed once, so filtering many sources
    (one map per slice of a stack) costs four box filters each and a few
    ``(H, W)`` maps, where :func:`guided_filter` on an ``(N, H, W)`` source
    broadcasts the guide and keeps ``(N, H, W)`` intermediates.
    """
    mean = lambda t: box_filter(t, radius, border=border)  # noqa: E731
    mean_i = mean(guide)
    var_i = mean(guide * guide) - mean_i * mean_i

    def apply(src: torch.Tensor) -> torch.Tensor:
        mean_p = mean(src)
        a = (mean(guide * src) - mean_i * mean_p) / (var_i + eps)
        b = mean_p - a * mean_i
        return mean(a) * guide + mean(b)

    return apply


def _guided_filter_colour(guide, src, radius, eps, border):
    mean = lambda t: box_filter(t, radius, border=border)  # noqa: E731
    p = src.unsqueeze(-3)  # (..., 1, H, W)
    mean_i = mean(guide)  # (..., 3, H, W)
    mean_p = mean(p)
    cov_ip = mean(guide * p) - mean_i * mean_p  # (..., 3, H, W)
    # 3x3 covariance of the guide per pixel
    idx = [(0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2)]
    var = {}
    for i, j in idx:
        v = mean(guide[..., i, :, :] * guide[..., j, :, :]) - mean_i[..., i, :, :] * mean_i[..., j, :, :]
        var[(i, j)] = var[(j, i)] = v
    sigma = torch.stack(
        [torch.stack([var[(i, j)] for j in range(3)], dim=-1) for i in range(3)], dim=-2
    )  # (..., H, W, 3, 3)
    eye = torch.eye(3, device=guide.device, dtype=guide.dtype)
    sigma = sigma + eps * eye
    cov = cov_ip.movedim(-3, -1).unsqueeze(-1)  # (..., H, W, 3, 1)
    a = torch.linalg.solve(sigma, cov).squeeze(-1).movedim(-1, -3)  # (..., 3, H, W)
    b = mean_p.squeeze(-3) - (a * mean_i).sum(-3)
    return (mean(a) * guide).sum(-3) + mean(b)


def fast_guided_filter(
    guide_low: torch.Tensor,
    src_low: torch.Tensor,
    guide_high: torch.Tensor,
    radius: int,
    eps: float,
    *,
    border: str = "reflect",
) -> torch.Tensor:
    """Guided-filter upsampling (fast guided filter, Wu, Zheng, Zhang & Huang, CVPR 2018;
    the subsampled form of He & Sun, arXiv:1505.00996, 2015).

    The local linear model ``src ~ a * guide + b`` is fitted at low resolution
    from ``guide_low`` and ``src_low`` (``(N, C, h, w)``, grey guide broadcast
    over ``C`` when it has one channel), the coefficient maps are box-averaged,
    bilinearly upsampled to the size of ``guide_high`` (``(N, C or 1, H, W)``)
    and applied there: ``mean(a)_up * guide_high + mean(b)_up``. Works for
    any ``H/h`` and ``W/w`` (non-square, non-integer) and is differentiable.
    """
    import torch.nn.functional as F

    if guide_low.shape[-2:] != src_low.shape[-2:]:
        raise ValueError(
            f"guide_low {tuple(guide_low.shape[-2:])} and src_low {tuple(src_low.shape[-2:])} differ in size"
        )
    guide_low, src_low = torch.broadcast_tensors(guide_low, src_low)
    mean = lambda t: box_filter(t, radius, border=border)  # noqa: E731
    mean_i = mean(guide_low)
    mean_p = mean(src_low)
    cov_ip = mean(guide_low * src_low) - mean_i * mean_p
    var_i = mean(guide_low * guide_low) - mean_i * mean_i
    a = cov_ip / (var_i + eps)
    b = mean_p - a * mean_i
    size = tuple(guide_high.shape[-2:])
    lead = a.shape[:-2]
    a4 = mean(a).reshape(-1, 1, *a.shape[-2:]) if a.ndim != 4 else mean(a)
    b4 = mean(b).reshape(-1, 1, *b.shape[-2:]) if b.ndim != 4 else mean(b)
    a_up = F.interpolate(a4, size=size, mode="bilinear", align_corners=False)
    b_up = F.interpolate(b4, size=size, mode="bilinear", align_corners=False)
    a_up = a_up.reshape(*lead, *size)
    b_up = b_up.reshape(*lead, *size)
    return a_up * guide_high + b_up
