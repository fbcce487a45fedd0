"""Colour conversions (ITU-R BT.601, full range, chroma offset 0.5 for [0, 1] data)."""

from __future__ import annotations

import torch

_Y = (0.299, 0.587, 0.114)


def luminance(x: torch.Tensor, *, channel_dim: int = -3) -> torch.Tensor:
    """BT.601 luma of a colour tensor; a single-channel tensor is returned squeezed."""
    c = x.shape[channel_dim]
    if c == 1:
        return x.squeeze(channel_dim)
    if c != 3:
        raise ValueError(f"expected 1 or 3 channels, got {c}")
    r, g, b = x.unbind(channel_dim)
    return _Y[0] * r + _Y[1] * g + _Y[2] * b


def rgb_to_ycbcr(x: torch.Tensor, *, channel_dim: int = -3) -> torch.Tensor:
    """RGB in [0, 1] to YCbCr with Cb, Cr centred on 0.5."""
    r, g, b = x.unbind(channel_dim)
    y = _Y[0] * r + _Y[1] * g + _Y[2] * b
    cb = (b - y) * 0.564 + 0.5
    cr = (r - y) * 0.713 + 0.5
    return torch.stack([y, cb, cr], dim=channel_dim)


def ycbcr_to_rgb(x: torch.Tensor, *, channel_dim: int = -3) -> torch.Tensor:
    """Inverse of :func:`rgb_to_ycbcr`."""
    y, cb, cr = x.unbind(channel_dim)
    r = y + (cr - 0.5) / 0.713
    b = y + (cb - 0.5) / 0.564
    g = (y - _Y[0] * r - _Y[2] * b) / _Y[1]
    return torch.stack([r, g, b], dim=channel_dim)
