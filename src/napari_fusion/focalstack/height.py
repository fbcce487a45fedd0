"""Height maps in physical units, refined below one slice (shape from focus).

The decision of the ``focus_measure`` method (the slice where each pixel is
sharpest) is a height map quantised to the z-step. Following shape-from-focus
practice (Nayar & Nakagawa, "Shape from focus", IEEE TPAMI 16(8), 1994, who
interpolate the focus measure around its peak with a Gaussian; a parabola is
the other common choice, see Pertuz et al., Pattern Recognition 46(5), 2013),
the focus measure at the winning slice ``k`` and at its neighbours ``k - 1``
and ``k + 1`` is fitted, and the peak of the fit gives a fractional slice
index in ``[k - 0.5, k + 0.5]``. The index is converted to physical units by
linear interpolation of the slices' z positions.

Everything streams over slices: the focus maps are computed one slice at a
time (the very function the ``focus_measure`` method uses), and only a few
``(H, W)`` maps are kept, so memory does not grow with the number of slices;
lazy (dask) stacks are read one slice at a time. Labels use the smallest
unsigned dtype that holds the slice count (no 255-slice cap).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .._engine import check_z_positions, check_z_step, label_dtype
from ..errors import FusionInputError
from ..methods.focus_measure import MEASURES, focus_map
from ..ops.regions import mode_filter
from ._stack import check_slices, grey_tensor, load, slices

REFINE = ("parabola", "gaussian", "none")


@dataclass
class HeightMap:
    """Result of :func:`height_map`.

    ``height`` is in the units of ``z_positions`` (e.g. microns); ``index`` is
    the fractional slice index; ``labels`` the integer decision (0-based);
    ``focus`` the focus measure at the winning slice (a confidence: low values
    mean no texture to judge focus by).
    """

    height: np.ndarray  # (H, W) float32
    index: np.ndarray  # (H, W) float32 fractional slice index
    labels: np.ndarray  # (H, W) unsigned int, 0-based
    focus: np.ndarray  # (H, W) float32
    z_positions: np.ndarray  # (N,) float64
    params: dict[str, Any] = field(default_factory=dict)


def z_positions_for(n: int, *, z_step: float | None = None, z_positions: Sequence[float] | None = None) -> np.ndarray:
    """Slice positions: ``z_positions`` as given, else ``k * z_step`` (``z_step`` 1: slice units)."""
    if z_positions is not None:
        if z_step is not None:
            raise FusionInputError("give z_step or z_positions, not both")
        return check_z_positions(z_positions, n)
    step = 1.0 if z_step is None else check_z_step(z_step)
    return np.arange(n, dtype=np.float64) * step


def index_to_z(index: np.ndarray, z_positions: np.ndarray) -> np.ndarray:
    """Fractional slice index -> position, linear between slices."""
    n = len(z_positions)
    idx = np.clip(np.asarray(index, dtype=np.float64), 0, n - 1)
    lo = np.floor(idx).astype(np.intp)
    hi = np.minimum(lo + 1, n - 1)
    frac = idx - lo
    return (z_positions[lo] * (1 - frac) + z_positions[hi] * frac).astype(np.float32)


def peak_offset(before: torch.Tensor, centre: torch.Tensor, after: torch.Tensor, fit: str = "parabola") -> torch.Tensor:
    """Sub-slice position of the focus peak relative to the centre slice, in [-0.5, 0.5].

    ``before``/``after`` are the measures at slices ``k - 1``/``k + 1``
    (``NaN`` where that slice does not exist). Where the three values are not
    concave (no interior peak), the offset is 0.
    """
    if fit == "gaussian":
        tiny = 1e-30
        before, centre, after = (torch.log(t.clamp_min(tiny)) for t in (before, centre, after))
    den = before - 2 * centre + after
    ok = torch.isfinite(den) & (den < 0)
    safe = torch.where(ok, den, torch.full_like(den, -1.0))
    off = torch.where(ok, 0.5 * (before - after) / safe, torch.zeros_like(den))
    off = torch.nan_to_num(off, nan=0.0)
    return off.clamp(-0.5, 0.5)


def _focus_maps(
    items: Sequence[Any],
    *,
    measure: str,
    window: int,
    smooth: float,
    halo_control: bool,
    device: torch.device,
    value_range: tuple[float, float] | None,
):
    """Yield ``(k, focus map)`` for each slice, computing one slice at a time."""
    for k, it in enumerate(items):
        g = grey_tensor(load(it), device)
        if value_range is not None:
            lo, hi = value_range
            g = (g - lo) / (hi - lo if hi > lo else 1.0)
        yield k, focus_map(g, measure=measure, window=window, smooth=smooth, halo_control=halo_control)


def _grey_range(items: Sequence[Any]) -> tuple[float, float]:
    """Min and max of the (dtype-scaled) luminance over the stack, one slice at a time."""
    lo, hi = math.inf, -math.inf
    for it in items:
        g = grey_tensor(load(it))
        lo = min(lo, float(g.min()))
        hi = max(hi, float(g.max()))
    return lo, hi


def decide(
    images: Any,
    *,
    measure: str = "sml",
    window: int = 4,
    smooth: float = 2.0,
    consistency: int = 3,
    halo_control: bool = False,
    refine: str = "parabola",
    stack_axis: int = 0,
    channel_axis: int | None = None,
    device: str | torch.device = "cpu",
    progress: Callable[[float, float, str], Any] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Decision labels, fractional index and winning focus of a stack (streaming).

    Same decision as the ``focus_measure`` method with the same parameters.
    Returns ``(labels (H, W) int64, index (H, W) float32, focus (H, W) float32)``.
    """
    if measure not in MEASURES:
        raise FusionInputError(f"measure must be one of {', '.join(MEASURES)}; got {measure!r}")
    if refine not in REFINE:
        raise FusionInputError(f"refine must be one of {', '.join(REFINE)}; got {refine!r}")
    items = slices(images, stack_axis=stack_axis, channel_axis=channel_axis)
    n, (h, w) = check_slices(items)
    dev = torch.device(device)
    vr = _grey_range(items) if halo_control else None
    kw = dict(measure=measure, window=window, smooth=smooth, halo_control=halo_control, device=dev, value_range=vr)
    nan = torch.full((h, w), math.nan, device=dev)
    best = torch.full((h, w), -math.inf, device=dev)
    labels = torch.zeros((h, w), dtype=torch.long, device=dev)
    before, after, prev = nan.clone(), nan.clone(), nan.clone()
    with torch.inference_mode():
        for k, fm in _focus_maps(items, **kw):
            # the slice after the current winner: its measure is the 'after' value
            after = torch.where(labels == k - 1, fm, after)
            better = fm > best
            labels = torch.where(better, torch.full_like(labels, k), labels)
            best = torch.where(better, fm, best)
            before = torch.where(better, prev, before)
            after = torch.where(better, nan, after)
            prev = fm
            if progress is not None:
                progress(k + 1, n, f"focus measure, slice {k + 1}/{n}")
        centre = best
        if consistency > 0:
            filtered = mode_filter(labels, consistency)
            changed = filtered != labels
            labels = filtered
            if refine != "none" and bool(changed.any()):
                before, centre, after = _gather(items, labels, **kw)
        if refine == "none":
            offset = torch.zeros_like(centre)
        else:
            offset = peak_offset(before, centre, after, refine)
        index = labels.float() + offset
    return labels.cpu().numpy(), index.cpu().numpy().astype(np.float32), centre.cpu().numpy().astype(np.float32)


def _gather(items, labels, **kw):
    """Measures at ``labels - 1``, ``labels``, ``labels + 1`` (NaN outside the stack), streaming."""
    h, w = labels.shape
    nan = torch.full((h, w), math.nan, device=labels.device)
    before, centre, after = nan.clone(), nan.clone(), nan.clone()
    for k, fm in _focus_maps(items, **kw):
        before = torch.where(labels == k + 1, fm, before)
        centre = torch.where(labels == k, fm, centre)
        after = torch.where(labels == k - 1, fm, after)
    return before, centre, after


def height_map(
    images: Any,
    labels: np.ndarray | None = None,
    *,
    z_step: float | None = None,
    z_positions: Sequence[float] | None = None,
    measure: str = "sml",
    window: int = 4,
    smooth: float = 2.0,
    consistency: int = 3,
    halo_control: bool = False,
    refine: str = "parabola",
    stack_axis: int = 0,
    channel_axis: int | None = None,
    device: str | torch.device = "cpu",
    progress: Callable[[float, float, str], Any] | None = None,
) -> HeightMap:
    """Height of every pixel in physical units, from focus.

    Parameters
    ----------
    images:
        The focal stack: a sequence of ``(H, W)`` / ``(H, W, 3)`` slices or a
        stack array (numpy or dask, read one slice at a time). Use the
        reference channel of multichannel data (see ``channels``).
    labels:
        Optional 0-based decision (e.g. edited by the user, or from another
        method). If given, only the sub-slice refinement is computed (one pass
        of focus measures); else the ``focus_measure`` decision is made with
        the parameters below.
    z_step, z_positions:
        Slice spacing (e.g. microns; a napari layer's z scale) or the position
        of every slice; default: slice index.
    measure, window, smooth, consistency, halo_control:
        As in the ``focus_measure`` method.
    refine:
        ``"parabola"`` (default), ``"gaussian"`` (parabola on the log of the
        measure, Nayar & Nakagawa 1994) or ``"none"`` (height of the integer
        decision).
    """
    items = slices(images, stack_axis=stack_axis, channel_axis=channel_axis)
    n, shape = check_slices(items)
    z = z_positions_for(n, z_step=z_step, z_positions=z_positions)
    params = dict(
        measure=measure,
        window=int(window),
        smooth=float(smooth),
        consistency=int(consistency),
        halo_control=bool(halo_control),
        refine=refine,
    )
    if labels is None:
        lab, index, focus = decide(
            items,
            measure=measure,
            window=window,
            smooth=smooth,
            consistency=consistency,
            halo_control=halo_control,
            refine=refine,
            device=device,
            progress=progress,
        )
    else:
        lab = _check_labels(labels, n, shape)
        if refine not in REFINE:
            raise FusionInputError(f"refine must be one of {', '.join(REFINE)}; got {refine!r}")
        index, focus = _refine_labels(
            items,
            lab,
            measure=measure,
            window=window,
            smooth=smooth,
            halo_control=halo_control,
            refine=refine,
            device=device,
        )
        params["consistency"] = None  # the given labels are used as they are
    height = index_to_z(index, z)
    return HeightMap(height, index, np.asarray(lab).astype(label_dtype(n)), focus, z, params)


def _refine_labels(
    items: Sequence[Any],
    labels: np.ndarray,
    *,
    measure: str,
    window: int,
    smooth: float,
    halo_control: bool,
    refine: str,
    device: str | torch.device,
) -> tuple[np.ndarray, np.ndarray]:
    """``(fractional index, focus)`` of given 0-based ``labels``: one streaming pass of focus measures."""
    dev = torch.device(device)
    lab_t = torch.from_numpy(labels.astype(np.int64)).to(dev)
    vr = _grey_range(items) if halo_control else None
    with torch.inference_mode():
        b, c, a = _gather(
            items,
            lab_t,
            measure=measure,
            window=window,
            smooth=smooth,
            halo_control=halo_control,
            device=dev,
            value_range=vr,
        )
        off = torch.zeros_like(c) if refine == "none" else peak_offset(b, c, a, refine)
    index = (lab_t.float() + off).cpu().numpy().astype(np.float32)
    return index, c.cpu().numpy().astype(np.float32)


def height_surface(
    height: np.ndarray, *, step: int = 1, scale: tuple[float, float] = (1.0, 1.0)
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A triangle mesh of a height map, for a 3-D surface textured with the fused image.

    Returns ``(vertices (V, 3) as (z, row, col) in world units, faces (F, 3)
    int, texcoords (V, 2))``; ``step`` subsamples the grid, ``scale`` is the
    pixel size ``(row, col)``. Texture coordinates follow the OpenGL / OBJ
    convention napari's Surface layer uses (it flips the texture vertically):
    ``(u, v) = (col / (W - 1), 1 - row / (H - 1))``. In napari:
    ``viewer.add_surface((vertices, faces), texture=fused, texcoords=texcoords)``.
    """
    h = np.asarray(height, dtype=np.float32)
    if h.ndim != 2:
        raise FusionInputError(f"height must be 2-D, got shape {h.shape}")
    step = max(1, int(step))
    rows = np.arange(0, h.shape[0], step)
    cols = np.arange(0, h.shape[1], step)
    if rows[-1] != h.shape[0] - 1:
        rows = np.append(rows, h.shape[0] - 1)
    if cols[-1] != h.shape[1] - 1:
        cols = np.append(cols, h.shape[1] - 1)
    rr, cc = np.meshgrid(rows, cols, indexing="ij")
    verts = np.stack([h[rr, cc], rr * float(scale[0]), cc * float(scale[1])], -1).reshape(-1, 3)
    nr, nc = rr.shape
    idx = np.arange(nr * nc).reshape(nr, nc)
    a, b = idx[:-1, :-1].ravel(), idx[:-1, 1:].ravel()
    c, d = idx[1:, :-1].ravel(), idx[1:, 1:].ravel()
    faces = np.concatenate([np.stack([a, b, c], 1), np.stack([b, d, c], 1)])
    tex = np.stack([cc / max(h.shape[1] - 1, 1), 1.0 - rr / max(h.shape[0] - 1, 1)], -1).reshape(-1, 2)
    return verts.astype(np.float32), faces.astype(np.int64), tex.astype(np.float32)


def _check_labels(labels: Any, n: int, shape: tuple[int, int]) -> np.ndarray:
    lab = np.asarray(labels)
    if lab.shape != tuple(shape):
        raise FusionInputError(f"labels have shape {lab.shape}, the slices are {tuple(shape)}")
    if not np.issubdtype(lab.dtype, np.integer) and not np.all(np.equal(np.mod(lab, 1), 0)):
        raise FusionInputError("labels must be whole numbers (0-based slice indices)")
    if lab.size and (lab.min() < 0 or lab.max() >= n):
        raise FusionInputError(
            f"labels must be 0-based slice indices in [0, {n - 1}]; got values in [{lab.min()}, {lab.max()}]"
            " (napari Labels layers hold index + 1: subtract 1, see labels_from_napari)"
        )
    return lab.astype(np.int64)


__all__ = [
    "HeightMap",
    "REFINE",
    "decide",
    "height_map",
    "height_surface",
    "index_to_z",
    "peak_offset",
    "z_positions_for",
]
