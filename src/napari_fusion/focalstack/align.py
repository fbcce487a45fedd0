"""Optional alignment of the slices of a focal stack before fusion, that does no harm.

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
  accurate for the sub-percent changes of focal stacks). The search is coarse
  to fine: the scan runs at half the estimation size, only the last parabola
  at the estimation size.

Every neighbour estimate is *checked* before it is used. The normalised
cross-correlation (NCC) of the gradients of the two slices over their common
area is computed at identity, with the translation estimate and (similarity)
with the similarity estimate. A model is kept only when it stays within bounds
(shift under ``max_shift`` of the image size, accumulated magnification within
``scale_bounds``) and removes at least ``min_gain`` of the decorrelation left by
the simpler model, ``(ncc - ncc_simpler) / (1 - ncc_simpler)``; otherwise the
pair falls back to the simpler model, down to identity, and a warning names
the slices. A registered stack therefore stays exactly as it is, and a slice
that does not match its neighbour (pure noise, a different field) is not
moved. Each pair's estimate, scores and decision are kept in the result.

Estimation runs on luminance, block-averaged so the longer side is at most
``max_size`` pixels, with a Hann window against border effects. Transforms are
3x3 matrices in ``(row, col)`` pixel coordinates of the full-size images that
map a pixel of the aligned output (the reference slice's frame) to the
position it is read from in each slice: ``aligned_k(x) = slice_k(M_k x)``.

Nothing is aligned unless asked: microscope stacks are usually registered.
Functions return new arrays and never modify their inputs.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import FusionInputError
from ._stack import load, slices

MODES = ("translation", "similarity")
#: Models in order of complexity; a pair keeps the simplest one that is not clearly beaten.
MODELS = ("identity", "translation", "similarity")


@dataclass
class PairCheck:
    """Estimate and checks for one neighbour pair ``(k, k + 1)``.

    ``estimate`` is the best transform of the alignment's mode (full-size
    coordinates of slice ``k`` -> slice ``k + 1``), ``used`` what the
    alignment uses after the checks. ``ncc`` holds the gradient NCC of the
    pair over their common area for each model tried (``"identity"``,
    ``"translation"``, ``"similarity"``); ``peak`` is the normalised phase
    correlation peak of the estimate; ``model`` the model kept; ``reason``
    why a more complex model was refused (empty when the estimate was kept).
    """

    estimate: np.ndarray
    used: np.ndarray
    peak: float
    ncc: dict[str, float]
    model: str
    reason: str = ""

    @property
    def gain(self) -> float:
        """Decorrelation removed by the model kept, relative to identity (0 for identity)."""
        if self.model == "identity":
            return 0.0
        n0 = self.ncc.get(f"identity~{self.model}", self.ncc.get("identity", 1.0))
        return float(_gain(self.ncc.get(self.model, n0), n0))

    def as_dict(self, k: int) -> dict[str, Any]:
        s = float(np.sqrt(abs(np.linalg.det(self.estimate[:2, :2]))))
        return {
            "slices": [k, k + 1],
            "model": self.model,
            "reason": self.reason,
            "phase_peak": round(float(self.peak), 6),
            "ncc": {m: round(float(v), 6) for m, v in self.ncc.items()},
            "gain": round(self.gain, 6),
            "estimate_magnification": round(s, 8),
            "estimate_translation": self.estimate[:2, 2].round(4).tolist(),
        }


@dataclass
class Alignment:
    """Estimated transforms of a stack onto its reference slice.

    ``matrices[k]`` maps ``(row, col, 1)`` of the aligned output to slice
    ``k``'s pixel coordinates. ``pair_scores[k]`` is the normalised phase
    correlation peak between slices ``k`` and ``k + 1`` (1 = identical up to
    the transform; below about 0.02 the estimate is unreliable).
    ``checks[k]`` (:class:`PairCheck`) holds that pair's raw estimate, NCC
    scores and the model kept; :attr:`fallback` lists the pairs whose estimate
    was refused.
    """

    matrices: np.ndarray  # (N, 3, 3) float64
    reference: int
    mode: str
    shape: tuple[int, int]  # (H, W) of the slices
    pair_scores: np.ndarray  # (N - 1,)
    checks: list[PairCheck] = field(default_factory=list)

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

    @property
    def fallback(self) -> list[tuple[int, int]]:
        """Neighbour pairs ``(k, k + 1)`` whose estimate was refused (a simpler model used)."""
        return [(k, k + 1) for k, c in enumerate(self.checks) if c.model != self.mode]

    @property
    def confidence(self) -> np.ndarray:
        """``(N,)`` per slice: decorrelation removed by the link towards the reference (reference: 1)."""
        out = np.ones(self.n)
        for k in range(self.n):
            if k != self.reference and self.checks:
                out[k] = self.checks[k - 1 if k > self.reference else k].gain
        return out

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
        """JSON-friendly record (matrices, scales, shifts, scores, per-pair checks)."""
        return {
            "mode": self.mode,
            "reference": int(self.reference),
            "shape": [int(v) for v in self.shape],
            "matrices": self.matrices.round(8).tolist(),
            "magnification": self.scales.round(8).tolist(),
            "shifts_rows_cols": self.shifts.round(4).tolist(),
            "pair_scores": self.pair_scores.round(6).tolist(),
            "confidence": self.confidence.round(6).tolist(),
            "pairs": [c.as_dict(k) for k, c in enumerate(self.checks)],
            "fallback_pairs": [list(p) for p in self.fallback],
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


def _half(a: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(a[None, None], 2)[0, 0]


def _scan(r: torch.Tensor, mov: torch.Tensor, win: torch.Tensor, scales: np.ndarray, refine: int = 1):
    """Shifts and peaks of ``mov`` resampled at each scale against the prepared ``r``."""
    return _phase_corr_batch(r, _prep(_scaled(mov, torch.as_tensor(scales)), win), refine=refine)


def _similarity(ref: torch.Tensor, mov: torch.Tensor, scale_range: float, scale_steps: int):
    """``(scale, shift, peak)`` of ``mov`` against ``ref``: coarse scan at half size, parabola at full."""
    h, w = ref.shape
    rc, mc = (_half(ref), _half(mov)) if min(h, w) >= 128 else (ref, mov)
    win_c = _hann(*rc.shape)
    r_c = _prep(rc, win_c)
    grid = 1.0 + np.linspace(-scale_range, scale_range, scale_steps)
    _, peaks = _scan(r_c, mc, win_c, grid)
    centre, step = grid[int(peaks.argmax())], grid[1] - grid[0]
    for _ in range(2):  # two rounds of local refinement around the best scale
        cand = centre + np.array([-step, -step / 2, 0.0, step / 2, step]) / 2
        _, pk = _scan(r_c, mc, win_c, cand)
        centre, step = cand[int(pk.argmax())], step / 2
    win = _hann(h, w)
    r = _prep(ref, win)
    _, pk = _scan(r, mov, win, centre + np.array([-step / 2, 0.0, step / 2]))
    pk = pk.numpy()
    den = pk[0] - 2 * pk[1] + pk[2]
    off = 0.0 if den >= 0 else float(np.clip(0.5 * (pk[0] - pk[2]) / den, -1, 1))
    s_best = float(centre + off * step / 2)
    d, peak = _scan(r, mov, win, np.array([s_best]), refine=2)
    return s_best, d[0].numpy(), float(peak[0])


def _matrix(s: float, d: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Pair matrix ``P`` with ``mov(P x) ~= ref(x)`` for ``mov`` scaled by ``s`` about the centre, then shifted by ``d``."""
    c = np.array([(shape[0] - 1) / 2.0, (shape[1] - 1) / 2.0])
    m = np.eye(3)
    m[0, 0] = m[1, 1] = s
    m[:2, 2] = c - s * c + s * np.asarray(d, dtype=np.float64)
    return m


def _candidates(ref: torch.Tensor, mov: torch.Tensor, mode: str, scale_range: float, scale_steps: int):
    """``{model: (P, peak)}`` in small-image coordinates, from identity up to ``mode``."""
    h, w = ref.shape
    win = _hann(h, w)
    d, peak = _phase_corr_batch(_prep(ref, win), _prep(mov, win)[None])
    out = {"identity": (np.eye(3), 1.0), "translation": (_matrix(1.0, d[0].numpy(), (h, w)), float(peak[0]))}
    if mode == "similarity":
        s, d, p = _similarity(ref, mov, scale_range, scale_steps)
        out["similarity"] = (_matrix(s, d, (h, w)), p)
    return out


def _gradients(a: torch.Tensor) -> torch.Tensor:
    """``(2, H, W)`` central-difference gradients (rows, cols), edges replicated."""
    p = F.pad(a[None, None], (1, 1, 1, 1), mode="replicate")[0, 0]
    return torch.stack([(p[2:, 1:-1] - p[:-2, 1:-1]) / 2, (p[1:-1, 2:] - p[1:-1, :-2]) / 2])


def _warp(feat: torch.Tensor, m: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """``out(x) = feat(m x)`` (bilinear) and the mask of ``x`` whose source lies inside the image."""
    _, h, w = feat.shape
    rr, cc = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    p = torch.as_tensor(m, dtype=torch.float32)
    sr = p[0, 0] * rr + p[0, 1] * cc + p[0, 2]
    sc = p[1, 0] * rr + p[1, 1] * cc + p[1, 2]
    grid = torch.stack([2 * sc / max(w - 1, 1) - 1, 2 * sr / max(h - 1, 1) - 1], -1)[None]
    out = F.grid_sample(feat[None], grid, mode="bilinear", padding_mode="border", align_corners=True)[0]
    return out, (sr >= 0) & (sr <= h - 1) & (sc >= 0) & (sc <= w - 1)


def _ncc(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    """Normalised cross-correlation of two ``(C, H, W)`` feature images over ``mask``."""
    m = mask.to(a.dtype)
    n = float(m.sum())
    if n < 16:
        return 0.0
    a = (a - (a * m).sum((1, 2), keepdim=True) / n) * m
    b = (b - (b * m).sum((1, 2), keepdim=True) / n) * m
    den = float(torch.sqrt((a * a).sum(dtype=torch.float64) * (b * b).sum(dtype=torch.float64)))
    return float((a * b).sum(dtype=torch.float64)) / den if den > 0 else 0.0


def _corner_displacement(m1: np.ndarray, m2: np.ndarray, shape: tuple[int, int]) -> float:
    """Largest distance between where ``m1`` and ``m2`` send the image corners (pixels)."""
    h, w = shape
    corners = np.array([[0, 0, 1], [0, w - 1, 1], [h - 1, 0, 1], [h - 1, w - 1, 1]], dtype=np.float64).T
    return float(np.abs((m1 - m2) @ corners)[:2].max())


@dataclass
class _Rules:
    """The checks a pair estimate must pass (see :func:`estimate_alignment`)."""

    min_gain: float = 0.1
    min_peak: float = 0.02
    max_shift: float = 0.1
    scale_bounds: tuple[float, float] = (0.9, 1.1)
    tolerance: float = 0.5  # full-size pixels: a refused estimate closer than this is no warning

    def out_of_bounds(self, m: np.ndarray, shape: tuple[int, int]) -> str:
        """Why the (pair or accumulated) transform ``m`` is out of bounds, or ``""``."""
        h, w = shape
        s = float(np.sqrt(abs(np.linalg.det(m[:2, :2]))))
        if not self.scale_bounds[0] <= s <= self.scale_bounds[1]:
            return f"magnification {s:.4f} outside [{self.scale_bounds[0]:g}, {self.scale_bounds[1]:g}]"
        c = np.array([(h - 1) / 2.0, (w - 1) / 2.0, 1.0])
        dr, dc = (m @ c)[:2] - c[:2]
        if abs(dr) > self.max_shift * h or abs(dc) > self.max_shift * w:
            return f"shift ({dr:+.1f}, {dc:+.1f}) px beyond {self.max_shift:.0%} of the size"
        return ""


def _interp_blur(feat: torch.Tensor, var: tuple[float, float]) -> torch.Tensor:
    """Symmetric 3-tap blur of the given variance per axis: the smoothing bilinear resampling adds."""
    p = F.pad(feat[None], (1, 1, 1, 1), mode="replicate")[0]
    a, b = var[0] / 2, var[1] / 2
    rows = a * p[:, :-2, :] + (1 - 2 * a) * p[:, 1:-1, :] + a * p[:, 2:, :]
    return b * rows[:, :, :-2] + (1 - 2 * b) * rows[:, :, 1:-1] + b * rows[:, :, 2:]


def _warp_var(m: np.ndarray, shape: tuple[int, int]) -> tuple[float, float]:
    """Mean variance per axis of the bilinear kernel ``m`` resamples with: ``frac * (1 - frac)``."""
    h, w = shape
    rr, cc = np.meshgrid(np.arange(0, h, max(1, h // 64)), np.arange(0, w, max(1, w // 64)), indexing="ij")
    sr = m[0, 0] * rr + m[0, 1] * cc + m[0, 2]
    sc = m[1, 0] * rr + m[1, 1] * cc + m[1, 2]
    fr, fc = sr - np.floor(sr), sc - np.floor(sc)
    return float(np.mean(fr * (1 - fr))), float(np.mean(fc * (1 - fc)))


def _gain(ncc: float, base: float) -> float:
    return (ncc - base) / max(1.0 - base, 1e-12)


def _admissible(cands: dict, rules: _Rules, shape: tuple[int, int]) -> tuple[dict, str]:
    """Candidates within bounds and with a clear phase-correlation peak, and why others were refused."""
    reasons, ok = [], {"identity": cands["identity"]}
    for model in MODELS[1:]:
        if model not in cands:
            continue
        m, peak = cands[model]
        why = "" if peak >= rules.min_peak else f"phase-correlation peak {peak:.3f} below {rules.min_peak:g}"
        why = why or rules.out_of_bounds(m, shape)
        if why:
            reasons.append(f"{model}: {why}")
        else:
            ok[model] = cands[model]
    return ok, reasons


def erode_cross(mask: torch.Tensor, *, iterations: int = 1) -> torch.Tensor:
    """Binary erosion of a 2-D boolean ``mask`` by the 3 x 3 cross, ``iterations`` times, with
    the outside of the image counted as False: ``scipy.ndimage.binary_erosion(mask,
    iterations=...)`` (its default structure and border), without importing SciPy (~0.2 s)."""
    m = mask.to(torch.uint8)
    for _ in range(int(iterations)):
        p = F.pad(m[None, None], (1, 1, 1, 1), value=0)[0, 0]
        m = p[1:-1, 1:-1] & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return m.bool()


def _check_pair(ref: torch.Tensor, mov: torch.Tensor, cands: dict, rules: _Rules) -> tuple[str, str, dict]:
    """``(model kept, why models were refused, ncc per model)`` of one neighbour pair.

    Bilinear resampling smooths, which alone raises the correlation of two
    differently blurred slices; each model is therefore compared with identity
    smoothed by the same amount (``ncc["identity~model"]``).
    """
    shape = tuple(ref.shape)
    ok, reasons = _admissible(cands, rules, shape)
    fr, fm = _gradients(ref), _gradients(mov)
    warped = {model: _warp(fm, m) for model, (m, _) in ok.items()}
    mask = torch.ones(shape, dtype=torch.bool)
    for _, valid in warped.values():
        mask &= valid
    mask = erode_cross(mask, iterations=2)
    ncc = {model: _ncc(fr, wf, mask) for model, (wf, _) in warped.items()}
    kept = "identity"
    for model in MODELS[1:]:
        if model not in ncc:
            continue
        if kept == "identity":
            ncc[f"identity~{model}"] = base = _ncc(fr, _interp_blur(fm, _warp_var(ok[model][0], shape)), mask)
        else:
            base = ncc[kept]
        gain = _gain(ncc[model], base)
        if gain > rules.min_gain:
            kept = model
        else:
            reasons.append(f"{model}: correlation gain {gain:+.3f} below {rules.min_gain:g}")
    return kept, "; ".join(reasons), ncc


def estimate_alignment(
    images: Any,
    *,
    mode: str = "translation",
    reference: int | str = "middle",
    max_size: int = 512,
    scale_range: float = 0.05,
    scale_steps: int = 11,
    min_gain: float = 0.1,
    min_peak: float = 0.02,
    max_shift: float = 0.1,
    scale_bounds: tuple[float, float] = (0.9, 1.1),
    stack_axis: int = 0,
    channel_axis: int | None = None,
    progress: Callable[[float, float, str], Any] | None = None,
) -> Alignment:
    """Estimate how each slice maps onto the reference slice, chaining checked neighbour pairs.

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
    min_gain:
        A model is kept for a pair only if it removes at least this fraction of
        the gradient decorrelation left by the simpler model (identity <
        translation < similarity); otherwise the simpler model is used.
    min_peak:
        Estimates whose normalised phase-correlation peak is lower are refused.
    max_shift, scale_bounds:
        Bounds on each pair's and each slice's accumulated transform: centre
        shift at most ``max_shift`` of the height / width, magnification
        within ``scale_bounds``. A pair beyond them falls back to identity.

    progress:
        ``progress(done, total, message)`` after every neighbour pair (may raise
        to cancel).

    Refused estimates that would have moved a slice by more than half a pixel
    are reported with a :class:`UserWarning` naming the slices; every pair's
    estimate and scores are in :attr:`Alignment.checks`.
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
    if not scale_bounds[0] <= 1.0 <= scale_bounds[1] or not 0 < max_shift <= 1:
        raise FusionInputError("scale_bounds must contain 1 and max_shift be in (0, 1]")
    rules = _Rules(min_gain=min_gain, min_peak=min_peak, max_shift=max_shift, scale_bounds=tuple(scale_bounds))
    h, w = np.shape(items[0])[:2]
    checks = _estimate_pairs(items, mode, rules, max_size, scale_range, scale_steps, progress)
    mats = _chain(checks, ref_idx, rules, (int(h), int(w)))
    _warn_refused(checks, mode, rules, (int(h), int(w)))
    scores = np.asarray([c.peak for c in checks])
    return Alignment(mats, ref_idx, mode, (int(h), int(w)), scores, checks)


def _estimate_pairs(
    items: Sequence[Any],
    mode: str,
    rules: _Rules,
    max_size: int,
    scale_range: float,
    scale_steps: int,
    progress: Callable[[float, float, str], Any] | None = None,
) -> list[PairCheck]:
    """Estimate and check each neighbour pair ``(k, k + 1)`` on block-averaged luminance."""
    h, w = np.shape(items[0])[:2]
    f = max(1, int(np.ceil(max(h, w) / float(max_size))))
    # small <-> full coordinates: x_full = f * x_small + (f - 1) / 2
    to_full = np.diag([f, f, 1.0])
    to_full[:2, 2] = (f - 1) / 2.0
    to_small = np.linalg.inv(to_full)
    full = lambda m: to_full @ m @ to_small  # noqa: E731
    checks = []
    prev = torch.from_numpy(_block_mean(_grey(load(items[0])), f))
    with torch.inference_mode():
        for k in range(1, len(items)):
            cur = torch.from_numpy(_block_mean(_grey(load(items[k])), f))
            if cur.shape != prev.shape:
                raise FusionInputError("slices have different sizes; alignment needs one size")
            cands = _candidates(prev, cur, mode, scale_range, scale_steps)
            kept, reason, ncc = _check_pair(prev, cur, cands, rules)
            est, peak = cands[mode]
            checks.append(PairCheck(full(est), full(cands[kept][0]), peak, ncc, kept, reason if kept != mode else ""))
            prev = cur
            if progress is not None:
                progress(k, len(items) - 1, f"alignment, slices {k}-{k + 1}")
    return checks


def _chain(checks: list[PairCheck], ref_idx: int, rules: _Rules, shape: tuple[int, int]) -> np.ndarray:
    """Accumulate the pair transforms outwards from the reference; a slice out of bounds breaks its link."""
    n = len(checks) + 1
    mats = np.zeros((n, 3, 3))
    mats[ref_idx] = np.eye(3)
    order = [(k, k - 1, k - 1) for k in range(ref_idx + 1, n)] + [(k, k + 1, k) for k in range(ref_idx - 1, -1, -1)]
    for k, nb, p in order:
        c = checks[p]
        step = c.used if k > nb else np.linalg.inv(c.used)
        m = step @ mats[nb]
        why = rules.out_of_bounds(m, shape)
        if why:
            c.used, c.model, c.reason = np.eye(3), "identity", f"slice {k} accumulated {why}"
            m = mats[nb]
        mats[k] = m
    return mats


def _warn_refused(checks: list[PairCheck], mode: str, rules: _Rules, shape: tuple[int, int]) -> None:
    """One warning naming the pairs whose refused estimate would have moved a slice noticeably."""
    bad = [
        (k, c)
        for k, c in enumerate(checks)
        if c.model != mode and _corner_displacement(c.estimate, c.used, shape) > rules.tolerance
    ]
    if not bad:
        return
    names = ", ".join(f"{k}-{k + 1}" for k, _ in bad)
    detail = "; ".join(f"slices {k}-{k + 1} kept {c.model} ({c.reason})" for k, c in bad[:3])
    more = f"; ... ({len(bad) - 3} more)" if len(bad) > 3 else ""
    warnings.warn(
        f"{mode} alignment: unreliable estimate for neighbour slices {names}; a simpler model "
        f"(identity at worst) is used there: {detail}{more}. Per-pair scores: Alignment.checks.",
        UserWarning,
        stacklevel=3,
    )


def apply_alignment(
    images: Any,
    alignment: Alignment,
    *,
    order: int = 1,
    stack_axis: int = 0,
    channel_axis: int | None = None,
    progress: Callable[[float, float, str], Any] | None = None,
) -> list[np.ndarray]:
    """Resample every slice into the reference frame; returns new arrays of the input dtype.

    Pixels that fall outside a slice take the nearest edge value; use
    :meth:`Alignment.valid_box` to crop to the region every slice covers.
    ``progress(done, total, message)`` after every slice (may raise to cancel).
    """
    items = _items(images, stack_axis, channel_axis)
    if len(items) != alignment.n:
        raise FusionInputError(f"alignment is for {alignment.n} slices, got {len(items)}")
    out: list[np.ndarray] = []
    for img, m in zip(items, alignment.matrices):
        if progress is not None and out:
            progress(len(out), alignment.n, f"warping slice {len(out) + 1}/{alignment.n}")
        a = load(img)
        if a.shape[:2] != tuple(alignment.shape):
            raise FusionInputError(f"slice of shape {a.shape[:2]} does not match alignment shape {alignment.shape}")
        if np.allclose(m, np.eye(3)):
            out.append(a.copy())
            continue
        work = a.astype(np.float64 if a.dtype == np.float64 else np.float32)
        if order == 1:
            r = warp_bilinear(work, m)
        else:
            planes = [work] if a.ndim == 2 else [work[..., i] for i in range(a.shape[-1])]
            from scipy import ndimage  # only here: importing it costs ~0.2 s of every run

            res = [ndimage.affine_transform(p, m[:2, :2], offset=m[:2, 2], order=order, mode="nearest") for p in planes]
            r = res[0] if a.ndim == 2 else np.stack(res, -1)
        if np.issubdtype(a.dtype, np.integer):
            info = np.iinfo(a.dtype)
            r = np.clip(np.rint(r), info.min, info.max)
        out.append(r.astype(a.dtype))
    if progress is not None:
        progress(alignment.n, alignment.n, "slices warped")
    return out


def warp_bilinear(image: np.ndarray, m: np.ndarray) -> np.ndarray:
    """``image`` (``(H, W)`` or ``(H, W, C)`` float) resampled at ``m @ (row, col, 1)``, bilinear,
    edge values beyond the border; the same as ``ndimage.affine_transform(..., order=1,
    mode="nearest")`` per channel, computed with torch's ``affine_grid``/``grid_sample`` (4-5x
    faster on a 2048x1536 RGB slice; coordinates in float32, so values may differ by a few
    hundredths of a grey level).
    """
    h, w = image.shape[:2]
    # normalised (x, y) in [-1, 1] (align_corners=True) <-> pixel (row, col)
    n2p = np.array([[0.0, (h - 1) / 2, (h - 1) / 2], [(w - 1) / 2, 0.0, (w - 1) / 2], [0.0, 0.0, 1.0]])
    p2n = np.array([[0.0, 2 / max(w - 1, 1), -1.0], [2 / max(h - 1, 1), 0.0, -1.0], [0.0, 0.0, 1.0]])
    dtype = torch.float64 if image.dtype == np.float64 else torch.float32
    theta = torch.from_numpy((p2n @ np.asarray(m, dtype=np.float64) @ n2p)[:2]).to(dtype)[None]
    planes = image[None] if image.ndim == 2 else np.moveaxis(image, -1, 0)
    x = torch.from_numpy(np.ascontiguousarray(planes)).to(dtype)[None]
    with torch.inference_mode():
        grid = F.affine_grid(theta, list(x.shape), align_corners=True)
        out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=True)[0].numpy()
    return out[0] if image.ndim == 2 else np.moveaxis(out, 0, -1)


def align_stack(
    images: Any,
    *,
    mode: str = "translation",
    reference: int | str = "middle",
    crop: bool = False,
    stack_axis: int = 0,
    channel_axis: int | None = None,
    progress: Callable[[float, float, str], Any] | None = None,
    **kwargs: Any,
) -> tuple[list[np.ndarray], Alignment]:
    """Estimate and apply alignment; returns ``(aligned slices, alignment)``.

    ``crop=True`` crops every aligned slice to :meth:`Alignment.valid_box`.
    ``progress(done, total, message)``: estimation is the first half, warping
    the second. Other keyword arguments go to :func:`estimate_alignment`.
    """
    half = progress_halves(progress)
    al = estimate_alignment(
        images,
        mode=mode,
        reference=reference,
        stack_axis=stack_axis,
        channel_axis=channel_axis,
        progress=half(0),
        **kwargs,
    )
    aligned = apply_alignment(images, al, stack_axis=stack_axis, channel_axis=channel_axis, progress=half(1))
    if crop:
        r0, r1, c0, c1 = al.valid_box()
        aligned = [np.ascontiguousarray(a[r0:r1, c0:c1]) for a in aligned]
    return aligned, al


def progress_halves(progress: Callable[[float, float, str], Any] | None):
    """``half(i)``: a progress callback for the ``i``-th half (0 or 1) of ``progress``'s work, or None."""

    def half(i: int):
        if progress is None:
            return None
        return lambda done, total, message: progress(0.5 * (i + (done / total if total > 0 else 1.0)), 1.0, message)

    return half


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


__all__ = [
    "Alignment",
    "MODES",
    "PairCheck",
    "align_stack",
    "apply_alignment",
    "estimate_alignment",
    "phase_correlation",
]
