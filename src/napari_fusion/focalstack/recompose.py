"""Rebuild a fused image from (edited) decision labels, without focus measures.

This is the "retouch" step: the user repaints the decision Labels layer
(which slice wins where) and the fused image is recomposed from the slices
the labels name, with the chosen blending. No focus measure is recomputed;
only the slices that appear in the labels are read, one at a time, so lazy
(dask) stacks work and memory stays at a few single-slice arrays.

Label convention
----------------
``labels`` here are **0-based slice indices** (0 = first slice), the same as
:attr:`napari_fusion.FusionResult.labels`. A napari Labels layer reserves 0
for "background / unpainted", so the widget shows ``labels + 1`` and converts
back with :func:`labels_from_napari` (subtract 1; pixels left at 0 take the
previous decision). :func:`labels_to_napari` does the forward conversion.

Blending
--------
``"none"``: each pixel is copied from its slice (exact source values);
``"gaussian"``: soft transitions, each slice weighted by its Gaussian-blurred
indicator (sigma in pixels; the same rule as the ``focus_measure`` method's
``blend`` parameter, so recomposing unedited labels reproduces that method);
``"pyramid"``: multiresolution spline of Burt & Adelson ("A multiresolution
spline with application to image mosaics", ACM TOG 2(4), 1983): Laplacian
pyramid of each slice weighted by the Gaussian pyramid of its indicator;
seams vanish at every scale.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from ..errors import FusionInputError
from ..ops.filters import gaussian_filter
from ..ops.pyramids import gaussian_pyramid, laplacian_pyramid, pyramid_levels, reconstruct_laplacian_pyramid
from ._stack import check_slices, load, slices

BLENDS = ("none", "gaussian", "pyramid")


def labels_to_napari(labels: np.ndarray) -> np.ndarray:
    """0-based labels -> napari Labels data (index + 1; 0 stays free for 'unpainted')."""
    lab = np.asarray(labels)
    if lab.size and lab.min() < 0:
        raise FusionInputError("labels must be non-negative 0-based slice indices")
    out_dtype = np.uint16 if lab.size == 0 or lab.max() < 65535 else np.uint32
    if lab.size and lab.max() < 255:
        out_dtype = np.uint8
    return (lab.astype(np.int64) + 1).astype(out_dtype)


def labels_from_napari(data: np.ndarray, *, previous: np.ndarray | None = None) -> np.ndarray:
    """napari Labels data (index + 1, 0 = unpainted) -> 0-based labels.

    Pixels at 0 (erased or never painted) take ``previous`` (the 0-based
    decision before editing); without ``previous`` they are an error.
    """
    d = np.asarray(data).astype(np.int64)
    out = d - 1
    unpainted = d == 0
    if unpainted.any():
        if previous is None:
            raise FusionInputError(
                f"{int(unpainted.sum())} pixels are unpainted (0); paint them or pass the previous labels"
            )
        prev = np.asarray(previous)
        if prev.shape != d.shape:
            raise FusionInputError(f"previous labels have shape {prev.shape}, the layer is {d.shape}")
        out = np.where(unpainted, prev.astype(np.int64), out)
    if (out < 0).any():
        raise FusionInputError("napari labels must be >= 0")
    return out


def _as_tensor(a: np.ndarray, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``(C, H, W)`` float tensor of a slice (grey -> C = 1; float64 unless ``dtype`` says otherwise)."""
    f = np.asarray(a, dtype=np.float32 if dtype == torch.float32 else np.float64)
    if f.ndim == 2:
        f = f[None]
    else:
        f = np.moveaxis(f, -1, 0)
    return torch.from_numpy(np.ascontiguousarray(f))


def recompose(
    images: Any,
    labels: np.ndarray,
    *,
    blend: str = "none",
    sigma: float = 2.0,
    levels: int = 0,
    stack_axis: int = 0,
    channel_axis: int | None = None,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Fused image from the slices named by 0-based ``labels``.

    Parameters
    ----------
    images:
        The stack: sequence of ``(H, W)`` / ``(H, W, C)`` slices, or a stack
        array (numpy or dask) with ``stack_axis`` / ``channel_axis``. Any
        number of channels (labels apply to all of them).
    labels:
        ``(H, W)`` integer slice index per pixel, 0-based (napari layer data
        minus 1; see :func:`labels_from_napari`).
    blend:
        ``"none"``, ``"gaussian"`` (``sigma`` pixels) or ``"pyramid"``
        (``levels``; 0 = as many as fit).

    Returns
    -------
    numpy.ndarray
        ``(H, W)`` or ``(H, W, C)`` in the slices' dtype; blended values are
        rounded for integer data and clipped to the range of the slices used.
    """
    if blend not in BLENDS:
        raise FusionInputError(f"blend must be one of {', '.join(BLENDS)}; got {blend!r}")
    items = slices(images, stack_axis=stack_axis, channel_axis=channel_axis)
    lab, used = _checked_labels(items, labels)
    if blend == "none" or (blend == "gaussian" and sigma <= 0):
        return _copy_from_slices(items, lab, used)
    dev = torch.device(device)
    lab_t = torch.from_numpy(lab.astype(np.int64)).to(dev)
    with torch.inference_mode():
        if blend == "gaussian":
            fused, low, high = _gaussian_blend(items, lab_t, used, float(sigma))
        else:
            fused, low, high = _pyramid_blend(items, lab_t, used, levels or pyramid_levels(*lab.shape))
    return _to_slice_layout(fused, low, high, np.dtype(items[0].dtype), grey=items[0].ndim == 2)


def _checked_labels(items: list, labels: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """``labels`` as an array after checking shape, dtype and range; and the slice indices used."""
    n, (h, w) = check_slices(items, minimum=1)
    lab = np.asarray(labels)
    if lab.shape != (h, w):
        raise FusionInputError(f"labels have shape {lab.shape}; the slices are {h}x{w}")
    if not np.issubdtype(lab.dtype, np.integer):
        raise FusionInputError(f"labels must be integers (0-based slice indices), got {lab.dtype}")
    if lab.size == 0:
        return lab, []
    lo, hi = int(lab.min()), int(lab.max())
    if lo < 0 or hi >= n:
        raise FusionInputError(
            f"labels must be 0-based slice indices in [0, {n - 1}]; got values in [{lo}, {hi}]. "
            "napari Labels layers hold index + 1: convert with labels_from_napari"
        )
    # the slices present, by counting (np.unique sorts: 10x slower on a retouch box)
    return lab, np.flatnonzero(np.bincount(lab.ravel(), minlength=n)).tolist()


def _copy_from_slices(items: list, lab: np.ndarray, used: list[int]) -> np.ndarray:
    """Each pixel copied from its labelled slice (no blending)."""
    out = None
    for k in used:
        s = load(items[k])
        if out is None:
            out = np.empty_like(s)
        m = lab == k
        out[m] = s[m]
    return out


def _gaussian_blend(items: list, lab_t: torch.Tensor, used: list[int], sigma: float):
    """Slices weighted by their Gaussian-smoothed label masks; returns (fused, low, high)."""
    low, high = np.inf, -np.inf
    acc = None
    total = torch.zeros(lab_t.shape, dtype=torch.float64, device=lab_t.device)
    for k in used:
        s = load(items[k])
        low, high = min(low, float(s.min())), max(high, float(s.max()))
        wk = gaussian_filter((lab_t == k).double(), sigma)
        x = _as_tensor(s).to(lab_t.device)
        acc = wk * x if acc is None else acc + wk * x
        total += wk
    return acc / total.clamp_min(1e-12), low, high


def _pyramid_blend(items: list, lab_t: torch.Tensor, used: list[int], nlev: int):
    """Laplacian pyramids of the slices blended by Gaussian pyramids of their masks; (fused, low, high).

    float32 (the result is rounded to the slices' dtype; float64 changed about 0.2 % of uint16
    pixels by one count and took 1.3x longer), accumulated in place, one slice at a time.
    Each slice's pyramids are computed only over its own part of the image: the bounding box of
    its pixels grown by :func:`pyramid_reach` (aligned to the coarsest level's grid), where its
    mask's Gaussian pyramid is not zero. Outside that box the slice's term is exactly zero, and
    inside it the border reflections of the smaller box do not reach the mask's support, so the
    result equals the whole-image computation up to float rounding; a slice that occupies a band
    of a retouched box costs the band, not the box.
    """
    low, high = np.inf, -np.inf
    height, width = lab_t.shape
    shapes = [(height, width)]
    for _ in range(nlev - 1):
        shapes.append(((shapes[-1][0] + 1) // 2, (shapes[-1][1] + 1) // 2))
    acc: list[torch.Tensor] | None = None
    reach, grid = pyramid_reach(nlev), 2 ** (nlev - 1)
    for k in used:
        s = load(items[k])
        low, high = min(low, float(s.min())), max(high, float(s.max()))
        mask = lab_t == k
        rows = torch.nonzero(mask.any(1)).flatten()
        cols = torch.nonzero(mask.any(0)).flatten()
        if rows.numel() == 0:
            continue
        y0 = max(0, int(rows[0]) - reach) // grid * grid
        x0 = max(0, int(cols[0]) - reach) // grid * grid
        y1, x1 = min(height, int(rows[-1]) + 1 + reach), min(width, int(cols[-1]) + 1 + reach)
        gm = gaussian_pyramid(mask[y0:y1, x0:x1].float(), nlev)
        lp = laplacian_pyramid(_as_tensor(s[y0:y1, x0:x1], torch.float32).to(lab_t.device), nlev)
        if acc is None:  # (C, h, w) per level, C from the first slice
            acc = [lp[0].new_zeros((lp[0].shape[0], *shape)) for shape in shapes]
        for lv, (g, band) in enumerate(zip(gm, lp)):
            r, c = y0 >> lv, x0 >> lv
            acc[lv][:, r : r + g.shape[-2], c : c + g.shape[-1]].addcmul_(g, band)
    assert acc is not None
    return reconstruct_laplacian_pyramid(acc).double(), low, high


#: Mask elements whose Gaussian pyramids :func:`pyramid_blend_box` computes in one batch (~32 MB).
MASK_BATCH_ELEMENTS = 1 << 23


class SlicePyramids:
    """Whole-slice Laplacian pyramids kept between retouches, each computed once, on first use.

    A retouch recomposes a box around each stroke from the Laplacian pyramids of
    the slices present there (Burt & Adelson's spline, as ``blend="pyramid"``).
    Recomputing those pyramids is most of a stroke's cost (with 7 RGB slices in
    a 640^2 box, ~100 of ~190 ms on 2 cores); kept here, a stroke costs its masks'
    Gaussian pyramids and one weighted sum per slice and level
    (:func:`pyramid_blend_box`). Values are those of the whole-image spline (the
    bands are the whole slice's, not a box's with reflected borders).

    ``items`` are the slices as fused (``(H, W)`` or ``(H, W, C)``, read on
    access). Memory: :meth:`nbytes` (float32, about 4/3 of N x C x H x W x 4
    bytes); :func:`retouch_pyramids` checks it against a budget first. Safe to
    use from one worker thread while another warms it (:meth:`warm`).
    """

    def __init__(self, items: Sequence[Any], *, levels: int, device: str | torch.device = "cpu"):
        self.items, self.levels, self.device = items, int(levels), torch.device(device)
        if len(items) == 0:
            raise FusionInputError("no slices to keep pyramids of")
        first = items[0]  # one slice is looked at (an aligned slice is warped on access); the others when used
        shape = np.shape(first)
        self.height, self.width = int(shape[0]), int(shape[1])
        self.grey = len(shape) == 2
        self.channels = 1 if self.grey else int(shape[2])
        self.dtype = np.dtype(first.dtype)
        self._bands: dict[int, list[torch.Tensor]] = {}
        self._ranges: dict[int, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.items)

    def nbytes(self) -> int:
        """Bytes the pyramids of all slices take (float32, every level)."""
        h, w, per = self.height, self.width, 0
        for _ in range(self.levels):
            per += h * w
            h, w = (h + 1) // 2, (w + 1) // 2
        return len(self) * self.channels * per * 4

    def bands(self, k: int) -> tuple[list[torch.Tensor], tuple[float, float]]:
        """Slice ``k``'s Laplacian pyramid (``(C, h_l, w_l)`` per level) and its value range."""
        with self._lock:
            if k not in self._bands:
                s = load(self.items[k])
                want = (self.height, self.width) + (() if self.grey else (self.channels,))
                if s.shape != want:
                    raise FusionInputError(f"slice {k} has shape {s.shape}, slice 0 {want}; all slices must match")
                self._ranges[k] = (float(s.min()), float(s.max()))
                with torch.inference_mode():
                    x = _as_tensor(s, torch.float32).to(self.device)
                    self._bands[k] = [b.contiguous() for b in laplacian_pyramid(x, self.levels)]
            return self._bands[k], self._ranges[k]

    def complete(self) -> bool:
        """Every slice's pyramid is computed."""
        return len(self._bands) == len(self)

    def warm(self, progress: Callable[[float, float, str], Any] | None = None) -> None:
        """Compute every slice's pyramid now (for a worker started before the first stroke)."""
        n = len(self)
        for k in range(n):
            if progress is not None:
                progress(k, n, f"retouch pyramids: slice {k + 1}/{n}")
            self.bands(k)
        if progress is not None:
            progress(n, n, "retouch pyramids ready")


def retouch_pyramids(
    items: Sequence[Any], *, levels: int, budget_bytes: int, device: str | torch.device = "cpu"
) -> SlicePyramids | None:
    """A :class:`SlicePyramids` for ``items``, or None when it would need more than ``budget_bytes``."""
    pyramids = SlicePyramids(items, levels=levels, device=device)
    return pyramids if pyramids.nbytes() <= budget_bytes else None


def pyramid_blend_box(pyramids: SlicePyramids, labels: np.ndarray, origin: tuple[int, int]) -> np.ndarray:
    """The pyramid blend (``recompose(..., blend="pyramid")``) of a box, from kept whole-slice pyramids.

    Returns the box in the slices' dtype and layout, clipped to the value range of
    the slices used (whole slices) and rounded for integer data.

    ``labels`` are the box's 0-based labels and ``origin`` its top-left corner
    ``(y0, x0)`` in the image, a multiple of ``2 ** (levels - 1)`` so that every
    level of the box lies on the whole image's grid. The masks' Gaussian
    pyramids are the box's own (all slices at once); near the box's border they
    see reflected labels, which is why a retouch box is its stroke grown by
    :func:`pyramid_reach`.
    """
    fused, low, high = _blend_from_kept(pyramids, labels, origin)
    return _to_slice_layout(fused, low, high, pyramids.dtype, grey=pyramids.grey)


def _blend_from_kept(
    pyramids: SlicePyramids, labels: np.ndarray, origin: tuple[int, int]
) -> tuple[torch.Tensor, float, float]:
    """:func:`pyramid_blend_box` as ``(fused (C, h, w) float64, low, high)``."""
    y0, x0 = origin
    grid = 2 ** (pyramids.levels - 1)
    if y0 % grid or x0 % grid:
        raise FusionInputError(f"box origin {origin} is not on the {grid}-pixel grid of level {pyramids.levels - 1}")
    lab = np.asarray(labels)
    if lab.ndim != 2 or lab.size == 0 or y0 < 0 or x0 < 0:
        raise FusionInputError(f"labels of a box must be a non-empty 2-D array at (y, x) >= 0; got {lab.shape}")
    if y0 + lab.shape[0] > pyramids.height or x0 + lab.shape[1] > pyramids.width:
        raise FusionInputError(
            f"a {lab.shape[0]}x{lab.shape[1]} box at {origin} leaves the {pyramids.height}x{pyramids.width} slices"
        )
    if int(lab.min()) < 0 or int(lab.max()) >= len(pyramids):
        raise FusionInputError(f"labels must be 0-based slice indices in [0, {len(pyramids) - 1}]")
    used = np.flatnonzero(np.bincount(lab.ravel(), minlength=len(pyramids))).tolist()
    low, high = np.inf, -np.inf
    group = max(1, MASK_BATCH_ELEMENTS // max(1, lab.size))  # masks' pyramids for this many slices at once
    acc: list[torch.Tensor] | None = None
    with torch.inference_mode():
        lab_t = torch.from_numpy(lab.astype(np.int64, copy=False)).to(pyramids.device)
        for start in range(0, len(used), group):
            part = used[start : start + group]
            gm = gaussian_pyramid(torch.stack([lab_t == k for k in part]).float(), pyramids.levels)
            if acc is None:
                acc = [g.new_zeros((pyramids.channels, *g.shape[-2:])) for g in gm]
            for i, k in enumerate(part):
                bands, (lo, hi) = pyramids.bands(k)
                low, high = min(low, lo), max(high, hi)
                for lv, (g, band) in enumerate(zip(gm, bands)):
                    r, c = y0 >> lv, x0 >> lv
                    acc[lv].addcmul_(g[i], band[:, r : r + g.shape[-2], c : c + g.shape[-1]])
        assert acc is not None  # a box has at least one pixel, so one slice
        return reconstruct_laplacian_pyramid(acc).double(), low, high


def pyramid_reach(levels: int) -> int:
    """Pixels beyond which a pixel does not affect a ``levels``-level Burt-Adelson blend (generous).

    A level-l Gaussian sample spans 2 (2^l - 1) pixels of the image each side, the
    Laplacian band a further level's expansion, and the reconstruction as much
    again; 4 * 2^levels bounds the sum with room to spare.
    """
    return 4 * 2**levels


def _to_slice_layout(fused: torch.Tensor, low: float, high: float, dtype: np.dtype, *, grey: bool) -> np.ndarray:
    """Clip to the slices' range, round for integers, and return in the slices' dtype and layout."""
    out = np.clip(fused.cpu().numpy(), low, high)
    if np.issubdtype(dtype, np.integer):
        out = np.rint(out)
    out = out.astype(dtype)
    return out[0] if grey else np.ascontiguousarray(np.moveaxis(out, 0, -1))


__all__ = [
    "BLENDS",
    "SlicePyramids",
    "labels_from_napari",
    "labels_to_napari",
    "pyramid_blend_box",
    "recompose",
    "retouch_pyramids",
]
