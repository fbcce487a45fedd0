"""Optional alignment of the slices of a focal stack before fusion.

Two models, both estimated between *neighbouring* slices (whose blur differs
least) and chained to one reference slice:

* ``"translation"`` - a shift per slice, by phase correlation (Kuglin &
  Hines, "The phase correlation image alignment method", IEEE Conf.
  Cybernetics and Society, 1975), peak located to sub-pixel precision by a
  parabola through the peak and its neighbours;
* ``"similarity"`` - isotropic scale about the image centre plus a shift, for
  macro / inspection-microscope stacks whose magnification changes with the
  focus distance (focus "breathing"). The scale is found by a small search:
  the moving slice is resampled at candidate scales and phase-correlated with
  its neighbour; the scale with the highest normalised correlation peak wins,
  refined by a parabola through the best three scores (the idea of scanning
  scale with phase correlation is that of Reddy & Chatterji, IEEE TIP 5(8),
  1996, who do it in log-polar coordinates; an explicit search is more
  accurate for the sub-percent changes of focal stacks).

Estimation runs on luminance, block-averaged so the longer side is at most
``max_size`` pixels, with a Hann window against border effects. Transforms are
3x3 matrices in ``(row, col)`` pixel coordinates of the full-size images that
map a pixel of the aligned output (the reference slice's frame) to the
position it is read from in each slice: ``aligned_k(x) = slice_k(M_k x)``.

Nothing is aligned unless asked: microscope stacks are usually registered.
Functions return new arrays and never modify their inputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from ..errors import FusionInputError
from ._stack import load, slices

MODES = ("translation", "similarity")


@dataclass
class Alignment:
    """Estimated transforms of a stack onto its reference slice.

    ``matrices[k]`` maps ``(row, col, 1)`` of the aligned output to slice
    ``k``'s pixel coordinates. ``pair_scores[k]`` is the normalised phase
    correlation peak between slices ``k`` and ``k + 1`` (1 = identical up to
    the transform; below about 0.02 the estimate is unreliable).
    """

    matrices: np.ndarray  # (N, 3, 3) float64
    reference: int
    mode: str
    shape: tuple[int, int]  # (H, W) of the slices
    pair_scores: np.ndarray  # (N - 1,)

    @property
    def n(self) -> int:
        return self.matrices.shape[0]

    @property
    def scales(self) -> np.ndarray:
        """Magnification of each slice relative to the reference.

        > 1: objects appear larger in slice ``k`` than in the reference (the
        slice shows a smaller field of view).
        """
        a = self.matrices[:, :2, :2]
        return np.sqrt(np.abs(np.linalg.det(a)))

    @property
    def shifts(self) -> np.ndarray:
        """``(N, 2)`` displacement (rows, cols) of the image centre, in pixels of each slice.

        Where the reference's centre appears in slice ``k``, minus the centre:
        for a pure translation, slice ``k`` shows the scene moved by this much.
        """
        h, w = self.shape
        c = np.array([(h - 1) / 2.0, (w - 1) / 2.0, 1.0])
        return (self.matrices @ c)[:, :2] - c[:2]

    def valid_box(self) -> tuple[int, int, int, int]:
        """``(row0, row1, col0, col1)`` of the output region every slice covers (half-open)."""
        h, w = self.shape
        lo = np.array([0.0, 0.0])
        hi = np.array([h - 1.0, w - 1.0])
        for m in self.matrices:
            a, t = m[:2, :2], m[:2, 2]
            # axis-aligned models: each output axis maps to the same input axis
            for ax in range(2):
                s = a[ax, ax]
                b0 = (0.0 - t[ax]) / s
                b1 = ((h - 1.0 if ax == 0 else w - 1.0) - t[ax]) / s
                lo[ax] = max(lo[ax], min(b0, b1))
                hi[ax] = min(hi[ax], max(b0, b1))
        r0, c0 = int(np.ceil(lo[0] - 1e-6)), int(np.ceil(lo[1] - 1e-6))
        r1, c1 = int(np.floor(hi[0] + 1e-6)) + 1, int(np.floor(hi[1] + 1e-6)) + 1
        return max(r0, 0), min(r1, h), max(c0, 0), min(c1, w)

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly record (matrices, scales, shifts, scores)."""
        return {
            "mode": self.mode,
            "reference": int(self.reference),
            "shape": [int(v) for v in self.shape],
            "matrices": self.matrices.round(8).tolist(),
            "magnification": self.scales.round(8).tolist(),
            "shifts_rows_cols": self.shifts.round(4).tolist(),
            "pair_scores": self.pair_scores.round(6).tolist(),
            "valid_box": list(self.valid_box()),
            "convention": "aligned_k[r, c] = slice_k[M_k @ (r, c, 1)]",
        }

    @classmethod
    def identity(cls, n: int, shape: tuple[int, int], reference: int = 0) -> Alignment:
        return cls(np.tile(np.eye(3), (n, 1, 1)), reference, "none", tuple(shape), np.ones(max(n - 1, 0)))


# --------------------------------------------------------------------------- helpers


def _grey(img: np.ndarray) -> np.ndarray:
    a = np.asarray(img, dtype=np.float64)
    if a.ndim == 3:
        a = a[..., :3] @ np.array([0.299, 0.587, 0.114]) if a.shape[-1] >= 3 else a[..., 0]
    return a


def _block_mean(a: np.ndarray, f: int) -> np.ndarray:
    if f <= 1:
        return a.astype(np.float32)
    h, w = (a.shape[0] // f) * f, (a.shape[1] // f) * f
    return a[:h, :w].reshape(h // f, f, w // f, f).mean((1, 3)).astype(np.float32)


def _hann(h: int, w: int) -> torch.Tensor:
    return torch.outer(
        torch.hann_window(h, periodic=False, dtype=torch.float64),
        torch.hann_window(w, periodic=False, dtype=torch.float64),
    ).float()


def _prep(a: torch.Tensor, win: torch.Tensor) -> torch.Tensor:
    """Zero-mean, windowed image for phase correlation."""
    a = a - a.mean(dim=(-2, -1), keepdim=True)
    return a * win


def _subpixel(v_m: torch.Tensor, v_0: torch.Tensor, v_p: torch.Tensor) -> torch.Tensor:
    den = v_m - 2 * v_0 + v_p
    off = torch.where(
        den < 0, 0.5 * (v_m - v_p) / torch.where(den < 0, den, torch.ones_like(den)), torch.zeros_like(den)
    )
    return off.clamp(-0.5, 0.5)


def _peak(surf: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sub-pixel argmax ``(B, 2)`` (wrapped to +-size/2) and height of ``(B, H, W)`` surfaces."""
    b, h, w = surf.shape
    peak, idx = surf.reshape(b, -1).max(1)
    py, px = idx // w, idx % w
    ar = torch.arange(b)
    oy = _subpixel(surf[ar, (py - 1) % h, px], peak, surf[ar, (py + 1) % h, px])
    ox = _subpixel(surf[ar, py, (px - 1) % w], peak, surf[ar, py, (px + 1) % w])
    dy = py.to(surf.dtype) + oy
    dx = px.to(surf.dtype) + ox
    dy = torch.where(dy > h / 2, dy - h, dy)
    dx = torch.where(dx > w / 2, dx - w, dx)
    return torch.stack([dy, dx], 1), peak


def _phase_corr_batch(ref: torch.Tensor, movs: torch.Tensor, *, refine: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Shifts ``(B, 2)`` and peaks ``(B,)`` of windowed ``movs (B, H, W)`` against ``ref (H, W)``.

    The integer peak is refined with a parabola, then ``refine`` times more by
    undoing the current estimate with a Fourier phase ramp and locating the
    residual peak near the origin (removes most of the parabola's bias).
    """
    h, w = ref.shape
    fr = torch.fft.rfft2(ref)
    fm = torch.fft.rfft2(movs)
    cross = fm * fr.conj()
    cross = cross / cross.abs().clamp_min(1e-12)
    d, peak = _peak(torch.fft.irfft2(cross, s=(h, w)))
    ky = torch.fft.fftfreq(h, dtype=torch.float32).view(1, h, 1) * (2 * np.pi)
    kx = torch.fft.rfftfreq(w, dtype=torch.float32).view(1, 1, -1) * (2 * np.pi)
    for _ in range(refine):
        dd = d.float()
        ramp = torch.polar(torch.ones(()), ky * dd[:, 0].view(-1, 1, 1) + kx * dd[:, 1].view(-1, 1, 1))
        res, pk = _peak(torch.fft.irfft2(cross * ramp, s=(h, w)))
        ok = res.abs().amax(1) < 1.0  # the residual must be sub-pixel
        d = torch.where(ok[:, None], d + res, d)
        peak = torch.where(ok, torch.maximum(peak, pk), peak)
    return d, peak


def phase_correlation(reference: np.ndarray, moving: np.ndarray) -> tuple[np.ndarray, float]:
    """Sub-pixel translation between two grey images by phase correlation.

    Returns ``(d, peak)`` with ``d = (d_row, d_col)`` such that
    ``moving[x + d] ~= reference[x]`` (the content at ``x`` in ``reference``
    is found at ``x + d`` in ``moving``), and the normalised correlation peak
    (1 for identical images, near 0 for unrelated ones).
    """
    ref = torch.from_numpy(_grey(reference).astype(np.float32))
    mov = torch.from_numpy(_grey(moving).astype(np.float32))
    if ref.shape != mov.shape:
        raise FusionInputError(f"images have different shapes {tuple(ref.shape)} and {tuple(mov.shape)}")
    win = _hann(*ref.shape)
    d, p = _phase_corr_batch(_prep(ref, win), _prep(mov, win)[None])
    return d[0].numpy(), float(p[0])


def _scaled(mov: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """``out_s(x) = mov(c + s (x - c))`` for each scale (bilinear, edges replicated)."""
    h, w = mov.shape
    yy = torch.linspace(-1, 1, h, dtype=torch.float32)
    xx = torch.linspace(-1, 1, w, dtype=torch.float32)
    gy, gx = torch.meshgrid(yy, xx, indexing="ij")
    base = torch.stack([gx, gy], -1)  # grid_sample wants (x, y)
    grid = base[None] * scales.view(-1, 1, 1, 1).float()
    src = mov[None, None].expand(len(scales), 1, h, w)
    return F.grid_sample(src, grid, mode="bilinear", padding_mode="border", align_corners=True)[:, 0]


def _pair_transform(
    ref: torch.Tensor, mov: torch.Tensor, mode: str, scale_range: float, scale_steps: int
) -> tuple[np.ndarray, float]:
    """3x3 matrix ``P`` with ``mov(P x) ~= ref(x)`` (small-image coordinates) and its score."""
    h, w = ref.shape
    win = _hann(h, w)
    r = _prep(ref, win)
    c = np.array([(h - 1) / 2.0, (w - 1) / 2.0])
    if mode == "translation":
        d, peak = _phase_corr_batch(r, _prep(mov, win)[None])
        s_best, d_best, p_best = 1.0, d[0].numpy(), float(peak[0])
    else:

        def score(scales: np.ndarray, refine: int = 1):
            movs = _prep(_scaled(mov, torch.as_tensor(scales)), win)
            return _phase_corr_batch(r, movs, refine=refine)

        grid = 1.0 + np.linspace(-scale_range, scale_range, scale_steps)
        _, peaks = score(grid)
        i = int(peaks.argmax())
        step = grid[1] - grid[0]
        # two rounds of local refinement around the best scale
        centre = grid[i]
        for _ in range(2):
            cand = centre + np.array([-step, -step / 2, 0.0, step / 2, step]) / 2
            _, pk = score(cand)
            j = int(pk.argmax())
            centre = cand[j]
            step = step / 2
        trio = centre + np.array([-step / 2, 0.0, step / 2])
        _, pk = score(trio)
        pk = pk.numpy()
        den = pk[0] - 2 * pk[1] + pk[2]
        off = 0.0 if den >= 0 else float(np.clip(0.5 * (pk[0] - pk[2]) / den, -1, 1))
        s_best = float(centre + off * step / 2)
        d, peak = score(np.array([s_best]), refine=2)
        d_best, p_best = d[0].numpy(), float(peak[0])
    m = np.eye(3)
    m[0, 0] = m[1, 1] = s_best
    m[:2, 2] = c - s_best * c + s_best * d_best
    return m, p_best


def estimate_alignment(
    images: Any,
    *,
    mode: str = "translation",
    reference: int | str = "middle",
    max_size: int = 512,
    scale_range: float = 0.05,
    scale_steps: int = 11,
    stack_axis: int = 0,
    channel_axis: int | None = None,
) -> Alignment:
    """Estimate how each slice maps onto the reference slice, chaining neighbour pairs.

    Parameters
    ----------
    images:
        Sequence of ``(H, W)`` / ``(H, W, 3)`` arrays, or one stack array
        (numpy or dask; read one slice at a time).
    mode:
        ``"translation"`` or ``"similarity"`` (isotropic scale + translation).
    reference:
        Index of the slice that keeps its geometry, or ``"middle"`` (default,
        halves the chain length), ``"first"``, ``"last"``.
    max_size:
        Estimation runs on block-averaged images whose longer side is at most this.
    scale_range, scale_steps:
        Relative scale change searched between *neighbouring* slices (+-range, steps).
    """
    if mode not in MODES:
        raise FusionInputError(f"alignment mode must be one of {', '.join(MODES)}; got {mode!r}")
    items = _items(images, stack_axis, channel_axis)
    n = len(items)
    if n < 2:
        raise FusionInputError(f"alignment needs at least two slices, got {n}")
    ref_idx = _reference_index(reference, n)
    if not 0 < scale_range < 0.5:
        raise FusionInputError("scale_range must be in (0, 0.5)")
    if scale_steps < 3:
        raise FusionInputError("scale_steps must be at least 3")
    h, w = np.shape(items[0])[:2]
    f = max(1, int(np.ceil(max(h, w) / float(max_size))))
    # small <-> full coordinates: x_full = f * x_small + (f - 1) / 2
    to_full = np.diag([f, f, 1.0])
    to_full[:2, 2] = (f - 1) / 2.0
    to_small = np.linalg.inv(to_full)
    pairs = []
    scores = []
    prev = torch.from_numpy(_block_mean(_grey(load(items[0])), f))
    with torch.inference_mode():
        for k in range(1, n):
            cur = torch.from_numpy(_block_mean(_grey(load(items[k])), f))
            if cur.shape != prev.shape:
                raise FusionInputError("slices have different sizes; alignment needs one size")
            p_small, sc = _pair_transform(prev, cur, mode, scale_range, scale_steps)
            pairs.append(to_full @ p_small @ to_small)  # coords in slice k-1 -> slice k
            scores.append(sc)
            prev = cur
    mats = np.zeros((n, 3, 3))
    mats[ref_idx] = np.eye(3)
    for k in range(ref_idx + 1, n):
        mats[k] = pairs[k - 1] @ mats[k - 1]
    for k in range(ref_idx - 1, -1, -1):
        mats[k] = np.linalg.inv(pairs[k]) @ mats[k + 1]
    return Alignment(mats, ref_idx, mode, (int(h), int(w)), np.asarray(scores))


def apply_alignment(
    images: Any,
    alignment: Alignment,
    *,
    order: int = 1,
    stack_axis: int = 0,
    channel_axis: int | None = None,
) -> list[np.ndarray]:
    """Resample every slice into the reference frame; returns new arrays of the input dtype.

    Pixels that fall outside a slice take the nearest edge value; use
    :meth:`Alignment.valid_box` to crop to the region every slice covers.
    """
    items = _items(images, stack_axis, channel_axis)
    if len(items) != alignment.n:
        raise FusionInputError(f"alignment is for {alignment.n} slices, got {len(items)}")
    out = []
    for img, m in zip(items, alignment.matrices):
        a = load(img)
        if a.shape[:2] != tuple(alignment.shape):
            raise FusionInputError(f"slice of shape {a.shape[:2]} does not match alignment shape {alignment.shape}")
        if np.allclose(m, np.eye(3)):
            out.append(a.copy())
            continue
        work = a.astype(np.float64 if a.dtype == np.float64 else np.float32)
        planes = [work] if a.ndim == 2 else [work[..., i] for i in range(a.shape[-1])]
        res = [ndimage.affine_transform(p, m[:2, :2], offset=m[:2, 2], order=order, mode="nearest") for p in planes]
        r = res[0] if a.ndim == 2 else np.stack(res, -1)
        if np.issubdtype(a.dtype, np.integer):
            info = np.iinfo(a.dtype)
            r = np.clip(np.rint(r), info.min, info.max)
        out.append(r.astype(a.dtype))
    return out


def align_stack(
    images: Any,
    *,
    mode: str = "translation",
    reference: int | str = "middle",
    crop: bool = False,
    stack_axis: int = 0,
    channel_axis: int | None = None,
    **kwargs: Any,
) -> tuple[list[np.ndarray], Alignment]:
    """Estimate and apply alignment; returns ``(aligned slices, alignment)``.

    ``crop=True`` crops every aligned slice to :meth:`Alignment.valid_box`.
    Other keyword arguments go to :func:`estimate_alignment`.
    """
    al = estimate_alignment(
        images, mode=mode, reference=reference, stack_axis=stack_axis, channel_axis=channel_axis, **kwargs
    )
    aligned = apply_alignment(images, al, stack_axis=stack_axis, channel_axis=channel_axis)
    if crop:
        r0, r1, c0, c1 = al.valid_box()
        aligned = [np.ascontiguousarray(a[r0:r1, c0:c1]) for a in aligned]
    return aligned, al


def _reference_index(reference: int | str, n: int) -> int:
    if isinstance(reference, str):
        table = {"middle": (n - 1) // 2, "first": 0, "last": n - 1}
        if reference not in table:
            raise FusionInputError(f"reference must be a slice index or one of {', '.join(table)}; got {reference!r}")
        return table[reference]
    idx = int(reference)
    if idx < 0:
        idx += n
    if not 0 <= idx < n:
        raise FusionInputError(f"reference slice {reference} is out of range for {n} slices")
    return idx


def _items(images: Any, stack_axis: int, channel_axis: int | None) -> Sequence[Any]:
    return slices(images, stack_axis=stack_axis, channel_axis=channel_axis)


__all__ = ["Alignment", "MODES", "align_stack", "apply_alignment", "estimate_alignment", "phase_correlation"]
