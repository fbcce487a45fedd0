"""Linear filters on torch tensors: box, Gaussian, Laplacian, Sobel.

Borders are handled by reflection (``'reflect'``, mirror without repeating the
edge pixel) by default, or replication; images smaller than the filter fall
back to replication, which is defined for any size.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F


def _as4d(x: torch.Tensor) -> tuple[torch.Tensor, torch.Size]:
    shape = x.shape
    if x.ndim < 2:
        raise ValueError("expected an image tensor with at least 2 dimensions")
    return x.reshape(-1, 1, shape[-2], shape[-1]), shape


def _pad(x4: torch.Tensor, pads: tuple[int, int, int, int], mode: str) -> torch.Tensor:
    """Pad a (B,1,H,W) tensor by (left, right, top, bottom)."""
    if not any(pads):
        return x4
    if mode == "reflect":
        h, w = x4.shape[-2:]
        if max(pads[0], pads[1]) >= w or max(pads[2], pads[3]) >= h:
            mode = "replicate"
    if mode == "zeros":
        return F.pad(x4, pads, mode="constant", value=0.0)
    return F.pad(x4, pads, mode=mode)


def box_filter(x: torch.Tensor, radius: int, *, border: str = "reflect") -> torch.Tensor:
    """Mean over a ``(2r+1) x (2r+1)`` window, computed with cumulative sums.

    Cost does not depend on the radius. ``border`` is ``'reflect'``,
    ``'replicate'`` or ``'zeros'`` (zero padding, still divided by the full
    window size, as MATLAB's ``imfilter`` with a normalised kernel).

    On the CPU (outside autograd) the sums run in cache-sized blocks (whole
    planes, or strips of rows with ``radius`` rows of context), written into
    one output: the float64 temporaries of a whole large image cost more in
    memory traffic and page faults than the sums themselves.
    """
    radius = int(radius)
    if radius <= 0:
        return x.clone()
    x4, shape = _as4d(x)
    if x4.device.type != "cpu" or _tracks_grad(x4):
        return _box_sums(x4, radius, _border_mode(x4, radius, border)).to(x4.dtype).reshape(shape)
    return _box_filter_blocked(x4, radius, border).reshape(shape)


#: Float64 elements of one block of the CPU box filter (4 MiB): its passes run in cache.
BOX_BLOCK_ELEMENTS = 1 << 19


def _border_mode(x4: torch.Tensor, radius: int, border: str) -> str:
    """``border``, or ``'replicate'`` where a reflection is undefined (radius not below the image side)."""
    h, w = x4.shape[-2:]
    return "replicate" if border == "reflect" and (radius >= w or radius >= h) else border


def _box_sums(x4: torch.Tensor, radius: int, mode: str) -> torch.Tensor:
    """Window means of the whole ``(B, 1, H, W)`` ``x4``: float32 on a GPU, float64 on the CPU."""
    work = x4.double() if x4.device.type == "cpu" else x4.float()
    k = 2 * radius + 1
    c = _window_sums(_pad(work, (radius, radius, radius, radius), mode).cumsum(-1), k, -1)
    c = _window_sums(c.cumsum(-2), k, -2)
    return c / (k * k) if _tracks_grad(c) else c.div_(k * k)


def _box_filter_blocked(x4: torch.Tensor, radius: int, border: str) -> torch.Tensor:
    """:func:`box_filter` of ``(B, 1, H, W)`` on the CPU, block by block into one output: several
    whole planes at a time, or one plane in strips of rows (with ``radius`` rows of context)."""
    b, _, h, w = x4.shape
    mode = _border_mode(x4, radius, border)
    out = torch.empty_like(x4, memory_format=torch.contiguous_format)
    k = 2 * radius + 1
    plane = (h + 2 * radius) * (w + 2 * radius)
    planes = BOX_BLOCK_ELEMENTS // plane
    if planes >= 1:  # whole planes per block: the plain sums (fewer calls; small images are common)
        for i in range(0, b, planes):
            out[i : i + planes].copy_(_box_sums(x4[i : i + planes], radius, mode))
        return out
    rows = max(4 * radius, BOX_BLOCK_ELEMENTS // (w + 2 * radius) - 2 * radius)
    for i in range(b):
        for y0 in range(0, h, rows):
            y1 = min(h, y0 + rows)
            strip = _rows_with_context(x4[i : i + 1], y0, y1, radius, mode).double()
            c = _window_sums(_pad(strip, (radius, radius, 0, 0), mode).cumsum(-1), k, -1)
            c = _window_sums(running_sums_down(c), k, -2)
            out[i : i + 1, :, y0:y1].copy_(c.div_(k * k))
    return out


def running_sums_down(x: torch.Tensor) -> torch.Tensor:
    """``x.cumsum(-2)``, the same values bit for bit, in place, one row added to the next.

    On the CPU ``cumsum(-2)`` walks the image column by column; adding whole rows
    is 1.7x faster on a cache-sized block of 245 x 2048 float64.
    """
    for above, row in itertools.pairwise(x.unbind(-2)):
        row.add_(above)
    return x


def _rows_with_context(x4: torch.Tensor, y0: int, y1: int, radius: int, mode: str) -> torch.Tensor:
    """Rows ``y0 - radius`` to ``y1 + radius`` of ``x4``, those outside the image made by ``mode``
    (a view where all lie inside)."""
    h = x4.shape[-2]
    if y0 - radius >= 0 and y1 + radius <= h:
        return x4[..., y0 - radius : y1 + radius, :]
    idx = torch.arange(y0 - radius, y1 + radius)
    if mode == "reflect":
        idx = idx.abs()
        idx = torch.where(idx > h - 1, 2 * (h - 1) - idx, idx)
    rows = x4.index_select(-2, idx.clamp(0, h - 1))
    if mode == "zeros":
        rows[..., (idx < 0) | (idx > h - 1), :] = 0
    return rows


def _tracks_grad(t: torch.Tensor) -> bool:
    """Whether autograd records ops on ``t`` (then no ``out=`` and no in-place ops: training)."""
    return t.requires_grad and torch.is_grad_enabled()


def _window_sums(c: torch.Tensor, k: int, dim: int) -> torch.Tensor:
    """Sums of ``k`` consecutive samples along ``dim`` from the running sums ``c``: ``c[j + k - 1] -
    c[j - 1]`` (the first window is ``c[k - 1]`` itself), in one pass, without padding ``c``."""
    n = c.shape[dim] - k + 1
    if _tracks_grad(c):
        return torch.cat([c.narrow(dim, k - 1, 1), c.narrow(dim, k, n - 1) - c.narrow(dim, 0, n - 1)], dim)
    shape = list(c.shape)
    shape[dim] = n
    out = c.new_empty(shape)
    out.narrow(dim, 0, 1).copy_(c.narrow(dim, k - 1, 1))
    torch.sub(c.narrow(dim, k, n - 1), c.narrow(dim, 0, n - 1), out=out.narrow(dim, 1, n - 1))
    return out


def gaussian_kernel1d(sigma: float, radius: int | None = None, *, device=None, dtype=torch.float32):
    """Normalised 1-D Gaussian kernel; radius defaults to ``ceil(3 sigma)``."""
    if radius is None:
        radius = max(1, int(math.ceil(3.0 * float(sigma))))
    t = torch.arange(-radius, radius + 1, device=device, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / float(sigma)) ** 2)
    return (k / k.sum()).to(dtype)


#: Longest 1-D kernel filtered by shifted sums on the CPU (longer ones use ``conv2d``).
SHIFTED_SUM_MAX_TAPS = 81

#: Elements of one row block of the CPU separable filter (4 MiB of float32): both passes over a
#: block run while it is still in cache.
FILTER_BLOCK_ELEMENTS = 1 << 20


def _shifted_sum(padded: torch.Tensor, taps: list[float], size: int, dim: int, *, out=None) -> torch.Tensor:
    """``sum_i taps[i] * padded[i : i + size]`` along ``dim`` (a correlation, like ``conv2d``)."""
    out = torch.mul(padded.narrow(dim, 0, size), taps[0], out=out)
    for i in range(1, len(taps)):
        out.add_(padded.narrow(dim, i, size), alpha=taps[i])
    return out


def _separable_blocked(x4: torch.Tensor, taps: list[float], border: str) -> torch.Tensor:
    """Rows then columns by shifted sums, in blocks of rows that stay in cache (same values).

    The image is padded on all four sides first (padding rows commutes with
    filtering along them), then each block of output rows is filtered along the
    rows, with the ``2r`` extra rows the column pass needs, and along the
    columns at once. Every output element sums the same products in the same
    order as filtering the whole image pass by pass, so the result is
    bit-identical; the gain is memory traffic (2-4x on 2048^2 planes).
    """
    r = len(taps) // 2
    b, _, h, w = x4.shape
    planes = _pad(_pad(x4, (r, r, 0, 0), border), (0, 0, r, r), border)[:, 0]  # (B, H + 2r, W + 2r)
    out = torch.empty((b, h, w), dtype=x4.dtype, device=x4.device)
    # a block holds the same rows of every plane: many small planes (a batch of patches) stay one block
    rows = max(1, min(h, FILTER_BLOCK_ELEMENTS // max(1, b * (w + 2 * r))))
    scratch = torch.empty((b, rows + 2 * r, w), dtype=x4.dtype, device=x4.device)
    for r0 in range(0, h, rows):
        n = min(rows, h - r0)
        across = _shifted_sum(planes.narrow(1, r0, n + 2 * r), taps, w, 2, out=scratch[:, : n + 2 * r])
        _shifted_sum(across, taps, n, 1, out=out[:, r0 : r0 + n])
    return out[:, None]


def separable_filter(x: torch.Tensor, kernel: torch.Tensor, *, border: str = "reflect") -> torch.Tensor:
    """Filter rows then columns with the same odd-length 1-D ``kernel``.

    On the CPU, kernels up to :data:`SHIFTED_SUM_MAX_TAPS` taps are applied as
    sums of shifted views (one multiply-add over the image per tap), in blocks
    of rows that stay in cache: for the single-channel planes used here this is
    10-20x faster than ``conv2d`` (``benchmarks/vs_focus_stack.py``) and gives
    the same values to float rounding. Elsewhere (CUDA, MPS) ``conv2d`` is used.
    """
    x4, shape = _as4d(x)
    r = kernel.numel() // 2
    k = kernel.to(device=x4.device, dtype=x4.dtype)
    if x4.device.type == "cpu" and kernel.numel() <= SHIFTED_SUM_MAX_TAPS and not x4.requires_grad:
        return _separable_blocked(x4, [float(v) for v in k.tolist()], border).reshape(shape)
    y = F.conv2d(_pad(x4, (r, r, 0, 0), border), k.view(1, 1, 1, -1))
    y = F.conv2d(_pad(y, (0, 0, r, r), border), k.view(1, 1, -1, 1))
    return y.reshape(shape)


def gaussian_filter(
    x: torch.Tensor, sigma: float, *, radius: int | None = None, border: str = "reflect"
) -> torch.Tensor:
    """Gaussian blur with standard deviation ``sigma`` (pixels); ``sigma <= 0`` copies."""
    if sigma <= 0:
        return x.clone()
    k = gaussian_kernel1d(sigma, radius, device=x.device, dtype=x.dtype)
    return separable_filter(x, k, border=border)


def conv2d_same(x: torch.Tensor, kernel: torch.Tensor, *, border: str = "reflect") -> torch.Tensor:
    """Correlate every ``(H, W)`` plane with a small odd-sized 2-D ``kernel``."""
    x4, shape = _as4d(x)
    kh, kw = kernel.shape
    ry, rx = kh // 2, kw // 2
    k = kernel.to(device=x4.device, dtype=x4.dtype).view(1, 1, kh, kw)
    return F.conv2d(_pad(x4, (rx, rx, ry, ry), border), k).reshape(shape)


def laplacian(x: torch.Tensor, *, border: str = "reflect") -> torch.Tensor:
    """Discrete 4-neighbour Laplacian."""
    if x.device.type == "cpu" and not x.requires_grad:
        x4, shape = _as4d(x)
        h, w = x4.shape[-2:]
        p = _pad(x4, (1, 1, 1, 1), border)
        out = p[..., 1 : h + 1, 1 : w + 1] * -4.0
        out.add_(p[..., 0:h, 1 : w + 1]).add_(p[..., 2 : h + 2, 1 : w + 1])
        out.add_(p[..., 1 : h + 1, 0:w]).add_(p[..., 1 : h + 1, 2 : w + 2])
        return out.reshape(shape)
    k = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])
    return conv2d_same(x, k, border=border)


def sobel_gradients(x: torch.Tensor, *, border: str = "reflect") -> tuple[torch.Tensor, torch.Tensor]:
    """Sobel derivatives ``(gx, gy)`` (x along columns, y along rows)."""
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
    return conv2d_same(x, kx, border=border), conv2d_same(x, kx.T.contiguous(), border=border)
