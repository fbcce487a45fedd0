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


def chroma_sums(ycc: torch.Tensor) -> torch.Tensor:
    """Per source, the sum of ``|Cb - 0.5| + |Cr - 0.5|`` of an ``(N, 3, H, W)`` YCbCr stack.

    In float64, so that the sums over the parts of an image add up to the whole image's
    (a whole-image statistic of tiled runs, see :mod:`napari_fusion.whole_image`).
    """
    return (ycc[:, 1:] - 0.5).abs().to(torch.float64).sum(dim=(1, 2, 3))


def most_colourful(sums: torch.Tensor) -> int:
    """Index of the source with the largest :func:`chroma_sums` (e.g. the visible image of an
    infrared/visible pair: an infrared image given as RGB is grey, so it has no chroma)."""
    return int(torch.as_tensor(sums).argmax())


def visible_source(stack: torch.Tensor) -> int:
    """Index of the source with the most chroma in a colour ``(N, 3, H, W)`` RGB stack."""
    return most_colourful(chroma_sums(rgb_to_ycbcr(stack, channel_dim=1)))
