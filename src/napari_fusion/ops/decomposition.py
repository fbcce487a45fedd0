"""Two-scale (base + detail) image decompositions.

:func:`tikhonov_split` separates an image into a smooth base layer and a
detail layer by solving, per image plane,

    B = argmin_B ||I - B||^2 + lam * (||g_x * B||^2 + ||g_y * B||^2),

with first-difference filters ``g_x = [-1, 1]`` and ``g_y = [-1, 1]^T``. The
normal equations ``(1 + lam * (G_x^T G_x + G_y^T G_y)) B = I`` are diagonal in
the Fourier domain, so

    B = F^-1[ F(I) / (1 + lam |G_x|^2 + lam |G_y|^2) ],

computed on the image padded symmetrically (edge pixel repeated, as MATLAB's
``padarray(..., 'symmetric')``) by ``pad`` pixels on every side, which keeps
the circular wrap-around of the FFT away from the image. The padded problem is
exactly the periodic one on the padded grid; the result is cropped back.
This is the base/detail split used by Li, Wu & Kittler 2018 (lam = 5,
pad = 16; the authors' code calls it ``lowpass``), and is shared by other
two-scale methods.
"""

from __future__ import annotations

import math

import torch


def _symmetric_index(n: int, pad_before: int, pad_after: int, device) -> torch.Tensor:
    """Source indices of a symmetric (edge-repeating) extension of ``n`` samples.

    The extension is the periodic continuation of ``x[0..n-1], x[n-1..0]``, so
    it is defined for pads larger than ``n`` (as numpy's ``'symmetric'``).
    """
    i = torch.arange(-pad_before, n + pad_after, device=device)
    period = 2 * n
    i = torch.remainder(i, period)
    return torch.where(i >= n, period - 1 - i, i)


def pad_symmetric(x: torch.Tensor, pad: int | tuple[int, int, int, int]) -> torch.Tensor:
    """Pad the last two dimensions by mirroring with the edge pixel repeated.

    ``pad`` is one int for every side or ``(left, right, top, bottom)``.
    ``abcd`` padded by 2 gives ``ba|abcd|dc`` (numpy ``'symmetric'``, MATLAB
    ``padarray(..., 'symmetric')``); pads larger than the image keep mirroring.
    Returns a new tensor.
    """
    if isinstance(pad, int):
        pad = (pad, pad, pad, pad)
    left, right, top, bottom = (int(p) for p in pad)
    if min(left, right, top, bottom) < 0:
        raise ValueError("padding must be non-negative")
    if x.ndim < 2:
        raise ValueError("expected a tensor with at least 2 dimensions")
    h, w = x.shape[-2:]
    rows = _symmetric_index(h, top, bottom, x.device)
    cols = _symmetric_index(w, left, right, x.device)
    return x.index_select(-2, rows).index_select(-1, cols)


def tikhonov_denominator(height: int, width: int, lam: float, *, device=None, dtype=torch.float64) -> torch.Tensor:
    """``1 + lam |G_x|^2 + lam |G_y|^2`` on the ``rfft2`` grid of a ``height x width`` plane.

    For the difference filter ``[-1, 1]``, ``|G(w)|^2 = 2 - 2 cos(w)``.
    """
    ky = torch.arange(height, device=device, dtype=dtype)
    kx = torch.arange(width // 2 + 1, device=device, dtype=dtype)
    gy = 2.0 - 2.0 * torch.cos(2.0 * math.pi * ky / height)
    gx = 2.0 - 2.0 * torch.cos(2.0 * math.pi * kx / width)
    return 1.0 + lam * gy[:, None] + lam * gx[None, :]


def tikhonov_base(x: torch.Tensor, *, lam: float = 5.0, pad: int = 16) -> torch.Tensor:
    """Base layer of every ``(H, W)`` plane of ``x`` (see the module docstring).

    Computed in float64 on the CPU and float32 elsewhere; returned in ``x``'s
    dtype. ``lam = 0`` returns a copy of ``x``.
    """
    if lam < 0:
        raise ValueError("lam must be non-negative")
    if pad < 0:
        raise ValueError("pad must be non-negative")
    if x.ndim < 2:
        raise ValueError("expected a tensor with at least 2 dimensions")
    if lam == 0:
        return x.clone()
    h, w = x.shape[-2:]
    work_dtype = torch.float64 if x.device.type == "cpu" else torch.float32
    xp = pad_symmetric(x.to(work_dtype), pad)
    hp, wp = xp.shape[-2:]
    denom = tikhonov_denominator(hp, wp, float(lam), device=x.device, dtype=work_dtype)
    spec = torch.fft.rfft2(xp) / denom
    base = torch.fft.irfft2(spec, s=(hp, wp))
    return base[..., pad : pad + h, pad : pad + w].to(x.dtype)


def tikhonov_split(x: torch.Tensor, *, lam: float = 5.0, pad: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """``(base, detail)`` with ``base = tikhonov_base(x)`` and ``detail = x - base``."""
    base = tikhonov_base(x, lam=lam, pad=pad)
    return base, x - base


__all__ = ["pad_symmetric", "tikhonov_denominator", "tikhonov_base", "tikhonov_split"]
