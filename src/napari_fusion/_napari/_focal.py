"""The "Focal stack" dock widget: alignment, height map in physical units, retouching.

A second widget beside the generic "Image fusion" one, for the focal-stack lab
workflow of :mod:`napari_fusion.focalstack` (see docs/focalstack.md):

* **Inputs**: one stack Image layer (3+ dimensions, numpy or dask) and its
  stack axis; for multichannel data either a *channel axis* of that layer or
  *separate channel layers* (same shape; the stack layer is the reference
  channel). The decision is made on the reference channel and applied to all.
* **Alignment** (none / translation / similarity) by
  :func:`~napari_fusion.focalstack.fuse_focal_stack`; magnifications and shifts
  are shown under the buttons (tooltip: per slice) and stored in the output
  layers' metadata (``metadata["napari_fusion"]["alignment"]``).
* **Outputs** (updated in place on re-runs): ``fused`` (one ``fused [name]``
  layer per channel for multichannel data), ``decision`` (Labels, slice index
  + 1), ``height`` (float32, in the units of the stack layer's z scale) and
  optionally ``height surface`` (3-D Surface textured with the fused image).
* **Recompose**: after painting the ``decision`` layer with napari's brush
  (label = slice index + 1; 0 / erased = keep the previous decision), rebuild
  the fused image from the edited labels with the method's blending
  (:func:`~napari_fusion.focalstack.recompose`), without computing any focus
  measure; the height map takes the painted slice's position where the label
  changed and keeps its refined value elsewhere. Only the slices the labels
  name are read (lazy stacks stay lazy).

Input layers are never modified.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from qtpy.QtCore import QTimer, Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLineEdit,
    QListWidget,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from .._defaults import DEFAULT_METHOD
from ..errors import FusionCancelled, FusionError, FusionInputError
from ..focalstack._stack import load, slices
from ..focalstack.align import Alignment, apply_alignment
from ..focalstack.height import REFINE, height_surface
from ..focalstack.pipeline import OWN_HEIGHT_METHODS, FocalStackResult, default_blend, fuse_focal_stack
from ..focalstack.recompose import (
    BLENDS,
    SlicePyramids,
    labels_from_napari,
    labels_to_napari,
    pyramid_blend_box,
    recompose,
    retouch_pyramids,
)
from ..memory import limited_to
from ..registry import get_method, list_methods
from . import _layers
from ._common import (
    WorkerControls,
    check_exactly,
    checkable_item,
    checked_layers,
    connect_layer_events,
    decision_legend,
    drop_layer,
    fill_decision_legend,
    fill_layer_combo,
    layer_index,
    limit_bytes,
    make_compact,
    memory_limit_box,
    scrolling_layout,
    start_on_default_stack_axis,
    text_label,
    viewer_data_point,
    z_step_row,
)
from ._params import ParamPanel

#: Quiet time (ms) after the last paint event before a live recompose runs (a drag sends many).
LIVE_DELAY_MS = 150
CHANNELS_NONE = "none (grey or RGB)"
CHANNELS_AXIS = "channel axis of the layer"
CHANNELS_LAYERS = "separate channel layers"
ALIGN_MODES = ("none", "translation", "similarity")
BLEND_METHOD = "method's blending"
DEFAULT_FOCAL_METHOD = DEFAULT_METHOD


# ---------------------------------------------------------------------------- job (no Qt)
class _ChannelStack:
    """Slices of several same-shape channel layers, stacked on access: ``[k] -> (Y, X, C)``.

    Indexable and sized, so :func:`napari_fusion.focalstack._stack.slices` keeps it
    as a sequence that is read one slice at a time (lazy layers stay lazy).
    """

    def __init__(self, arrays: Sequence[Any]):
        self.arrays = list(arrays)

    def __len__(self) -> int:
        return int(self.arrays[0].shape[0])

    def __getitem__(self, k: int) -> np.ndarray:
        return np.stack([load(a[k]) for a in self.arrays], -1)


@dataclass
class FocalJob:
    """What one focal-stack run reads, gathered from the layers on the GUI thread."""

    images: Any  # stack array (numpy/dask) or a _ChannelStack
    stack_axis: int
    channel_axis: int | None
    reference_channel: int | None
    channel_names: list[str] | None  # one per channel for multichannel output, else None
    channel_layers: list[Any]  # layers whose colormaps the per-channel outputs copy
    z_positions: np.ndarray
    z_unit: str
    reference: Any  # the stack layer (geometry, metadata)
    n: int
    names: list[str] = field(default_factory=list)
    pixel_yx: tuple[float, float] | None = None  # output pixel size (None: the layer's xy scale)
    unit: str | None = None  # unit of heights and output pixels (None: the layer's units)
    note: str = ""  # what the run does that the user may not expect ("; ..."), for the status line

    @classmethod
    def for_array(cls, images: Any, *, channel_axis: int | None = None) -> FocalJob:
        """A job for a bare stack array, slices on axis 0, z in slice units, no layer (scripts)."""
        n = int(images.shape[0])
        return cls(
            images=images,
            stack_axis=0,
            channel_axis=channel_axis,
            reference_channel=None,
            channel_names=None,
            channel_layers=[],
            z_positions=np.arange(float(n)),
            z_unit="pixel",
            reference=None,
            n=n,
        )


def _fixed_index(layer, keep: Sequence[int], data_point) -> tuple[tuple, dict[int, int]]:
    """Index fixing every non-spatial axis not in ``keep`` at the viewer position."""
    index: list[Any] = []
    fixed: dict[int, int] = {}
    spatial_from = layer.ndim - 2  # napari's ndim excludes an RGB colour axis (kept last)
    for ax in range(layer.ndim):
        if ax in keep or ax >= spatial_from:
            index.append(slice(None))
        else:
            size = layer.data.shape[ax]
            pos = 0 if data_point is None else int(round(float(data_point[ax])))
            pos = min(max(pos, 0), size - 1)
            fixed[ax] = pos
            index.append(pos)
    return tuple(index), fixed


def _kept_axes(layer, stack_axis: int, channel_axis: int | None) -> list[int]:
    """The stack axis (and channel axis) of ``layer``, checked; every other non-spatial axis is fixed."""
    if not _layers.is_image_layer(layer):
        raise FusionInputError(f"layer {getattr(layer, 'name', layer)!r} is not a single-scale Image layer")
    nonspatial = list(range(max(layer.ndim - 2, 0)))  # layer.ndim excludes an RGB axis
    if not nonspatial:
        raise FusionInputError(f"layer {layer.name!r} is 2-D; a focal stack needs a third (z) axis")
    if stack_axis not in nonspatial:
        raise FusionInputError(f"stack axis {stack_axis} is not valid for {layer.name!r}; choose one of {nonspatial}")
    keep = [stack_axis]
    if channel_axis is not None:
        if layer.rgb:
            raise FusionInputError(f"layer {layer.name!r} is RGB; its colour axis is the channel axis already")
        if channel_axis not in nonspatial or channel_axis == stack_axis:
            raise FusionInputError(
                f"channel axis {channel_axis} must be a non-spatial axis other than the stack axis "
                f"({[a for a in nonspatial if a != stack_axis]})"
            )
        keep.append(channel_axis)
    return keep


def _channel_layer_stack(
    layer, data, index: tuple, sa: int, channel_layers: Sequence[Any]
) -> tuple[_ChannelStack, list[Any]]:
    """``(stack along its first axis, channel layers)`` of ``layer`` (the reference) and the other layers."""
    if layer.rgb:
        raise FusionInputError("separate channel layers need a grey stack layer, not RGB")
    others = [ly for ly in channel_layers if ly is not layer]
    arrays = [data]
    for ly in others:
        if not _layers.is_image_layer(ly) or ly.rgb:
            raise FusionInputError(f"channel layer {ly.name!r} must be a grey single-scale Image layer")
        if tuple(ly.data.shape) != tuple(layer.data.shape):
            raise FusionInputError(
                f"channel layer {ly.name!r} has shape {tuple(ly.data.shape)}, the stack layer {tuple(layer.data.shape)}"
            )
        if np.dtype(ly.data.dtype) != np.dtype(layer.data.dtype):
            raise FusionInputError(f"channel layer {ly.name!r} is {ly.data.dtype}, the stack layer {layer.data.dtype}")
        arrays.append(ly.data[index])
    if sa != 0:
        arrays = [
            np.moveaxis(a, sa, 0)
            if isinstance(a, np.ndarray)
            else a.transpose([sa] + [i for i in range(a.ndim) if i != sa])
            for a in arrays
        ]
    return _ChannelStack(arrays), [layer, *others]


def make_focal_job(
    layer,
    *,
    stack_axis: int = 0,
    z_step: float | None = None,
    channel_axis: int | None = None,
    reference_channel: int | None = None,
    channel_layers: Sequence[Any] = (),
    data_point: Sequence[float] | None = None,
    pixel_size: float | None = None,
    unit: str | None = None,
) -> FocalJob:
    """Gather a focal-stack run from a stack layer (and optional channel axis / layers).

    ``z_step`` / ``pixel_size`` / ``unit`` override the layer's scale along the stack
    axis, its xy scale (column pitch; rows keep the layer's aspect) and its units.
    """
    keep = _kept_axes(layer, stack_axis, channel_axis)
    index, _ = _fixed_index(layer, keep, data_point)
    data = layer.data[index]
    # positions of the kept axes after the integer indexing
    remaining = [ax for ax, ix in enumerate(index) if isinstance(ix, slice)]
    sa = remaining.index(stack_axis)
    ca = remaining.index(channel_axis) if channel_axis is not None else None
    n = int(layer.data.shape[stack_axis])
    step = float(layer.scale[stack_axis]) if z_step is None else float(z_step)
    zpos = float(layer.translate[stack_axis]) + step * np.arange(n, dtype=np.float64)
    channel_names = None
    chan_layers: list[Any] = []
    data, alpha_note = _layers.without_alpha(data, layer)  # RGBA: fused as RGB, and said
    images, note = _layers.supported_dtype(data, layer)  # float16, bool, 64-bit integers: converted lazily
    note = alpha_note + note
    ref_c = reference_channel
    if ca is not None:
        nchan = int(data.shape[ca])
        channel_names = [f"{layer.name} [c{c}]" for c in range(nchan)]
        if ref_c is not None and not 0 <= ref_c < nchan:
            raise FusionInputError(f"reference channel {ref_c} is out of range for {nchan} channels")
        if ref_c is None:
            ref_c = 0
    elif channel_layers:
        images, chan_layers = _channel_layer_stack(layer, data, index, sa, channel_layers)
        note = ""
        sa = 0  # _ChannelStack slices along its first axis
        channel_names = [ly.name for ly in chan_layers]
        ref_c = 0  # the stack layer is the reference channel
    elif not layer.rgb:
        ref_c = None
    return FocalJob(
        images=images,
        stack_axis=sa,
        channel_axis=ca,
        reference_channel=ref_c,
        channel_names=channel_names,
        channel_layers=chan_layers,
        z_positions=zpos,
        z_unit=unit or _layers.unit_name(layer, stack_axis),
        reference=layer,
        n=n,
        names=[f"{layer.name} [{k}]" for k in range(n)],
        pixel_yx=_pixel_yx(layer, pixel_size),
        unit=unit,
        note=note,
    )


def _pixel_yx(layer, pixel_size: float | None) -> tuple[float, float] | None:
    """Output ``(row, col)`` pixel size for a column pitch ``pixel_size`` (the layer's aspect kept)."""
    if pixel_size is None:
        return None
    sy, sx = (float(v) for v in tuple(layer.scale)[-2:])
    return (sy * float(pixel_size) / sx if sx > 0 else float(pixel_size), float(pixel_size))


def napari_unit(text: str | None) -> str | None:
    """``text`` if napari accepts it as a layer unit (a pint length or ``pixel``), else None."""
    if not text or not text.strip():
        return None
    import pint

    try:
        unit = pint.get_application_registry().parse_expression(text.strip()).units
    except (pint.errors.PintError, ValueError, TypeError, AttributeError):
        return None
    return None if unit.dimensionless else str(unit)


def output_geometry(job: FocalJob, result: FocalStackResult | None) -> dict[str, Any]:
    """Layer kwargs of the 2-D outputs: the job's pixel size and unit, shifted by the crop offset.

    After an aligned, cropped run the outputs cover ``Alignment.valid_box()`` of the
    input, so their translate is the input's plus that box's corner times the pixel size.
    """
    geo = _layers.geometry(job.reference)
    if job.pixel_yx is not None:
        geo["scale"] = tuple(job.pixel_yx)
    unit = napari_unit(job.unit)
    if unit is not None:
        geo["units"] = (unit, unit)
    al = None if result is None else result.alignment
    if al is not None and result.options.get("crop"):
        r0, _, c0, _ = al.valid_box()
        sy, sx = (float(v) for v in geo["scale"])
        ty, tx = (float(v) for v in geo["translate"])
        geo["translate"] = (ty + r0 * sy, tx + c0 * sx)
    return geo


class _AlignedSlices:
    """Slice ``k`` of a stack, aligned (and cropped) on access: only the slices asked for are read."""

    def __init__(self, items: Sequence[Any], alignment: Alignment | None, box: tuple[int, int, int, int] | None):
        self.items, self.alignment, self.box = items, alignment, box

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, k: int) -> np.ndarray:
        a = load(self.items[k])
        if self.alignment is not None:
            al = self.alignment
            one = Alignment(al.matrices[k : k + 1], 0, al.mode, tuple(al.shape), np.ones(0))
            a = apply_alignment([a], one)[0]
        if self.box is not None:
            r0, r1, c0, c1 = self.box
            a = np.ascontiguousarray(a[r0:r1, c0:c1])
        return a


class _CroppedSlices:
    """The ``(y0, y1, x0, x1)`` box of each slice, cut on access (nothing is read before it is used)."""

    def __init__(self, items: Sequence[Any], box: tuple[int, int, int, int]):
        self.items, self.box = items, box

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, k: int) -> Any:
        y0, y1, x0, x1 = self.box
        # a numpy slice gives a view and a dask slice stays lazy (read when recompose loads it);
        # an aligned slice is warped here
        return self.items[k][y0:y1, x0:x1]


def job_slices(job: FocalJob, result: FocalStackResult | None = None) -> Sequence[Any]:
    """The job's slices as fused: channels last, aligned and cropped like ``result`` (read on access)."""
    items = slices(job.images, stack_axis=job.stack_axis, channel_axis=job.channel_axis)
    al = None if result is None else result.alignment
    box = al.valid_box() if (al is not None and result.options.get("crop")) else None
    if al is None and box is None:
        return items
    return _AlignedSlices(items, al, box)


def retouch_blend(result: FocalStackResult, choice: str) -> dict[str, Any]:
    """Blending for recomposition: the method's own (``choice`` = BLEND_METHOD) or an explicit one."""
    if choice == BLEND_METHOD:
        return default_blend(result.method, result.params)
    if choice not in BLENDS:
        raise FusionInputError(f"blend must be {BLEND_METHOD!r} or one of {BLENDS}; got {choice!r}")
    if choice == "gaussian":
        sigma = float(result.params.get("blend", 0.0)) or 2.0
        return {"blend": "gaussian", "sigma": sigma}
    return {"blend": choice}


#: Pyramid depth of a retouch with pyramid blending (levels are local, so a painted box can be redone alone).
RETOUCH_PYRAMID_LEVELS = 4


def _retouch_reach(blend: dict[str, Any]) -> tuple[float, int]:
    """``(feather sigma, margin)`` of a retouch: how far a painted pixel's recomposition reaches."""
    kind = blend.get("blend", "none")
    if kind == "gaussian":
        sigma = float(blend.get("sigma", 2.0))
        return sigma, int(math.ceil(3 * sigma)) + 1
    if kind == "pyramid":
        return 4.0, 4 * 2**RETOUCH_PYRAMID_LEVELS
    return 0.0, 0


#: Share of the available memory the kept retouch pyramids may take (else strokes recompute them).
RETOUCH_PYRAMIDS_SHARE = 0.25


def retouch_pyramids_for(
    job: FocalJob, result: FocalStackResult, *, budget_bytes: int | None = None
) -> SlicePyramids | None:
    """Pyramids to keep between the strokes of a retouch of ``result``, or None when they would
    take more than ``budget_bytes`` (default: :data:`RETOUCH_PYRAMIDS_SHARE` of the available
    memory)."""
    if budget_bytes is None:
        from ..memory import available_memory

        budget_bytes = int(RETOUCH_PYRAMIDS_SHARE * available_memory())
    return retouch_pyramids(job_slices(job, result), levels=RETOUCH_PYRAMID_LEVELS, budget_bytes=budget_bytes)


def changed_box(changed: np.ndarray, margin: int) -> tuple[int, int, int, int] | None:
    """Bounding box ``(y0, y1, x0, x1)`` of the True pixels grown by ``margin``, or None."""
    rows, cols = np.flatnonzero(changed.any(1)), np.flatnonzero(changed.any(0))
    if rows.size == 0:
        return None
    h, w = changed.shape
    return (
        max(0, rows[0] - margin),
        min(h, rows[-1] + 1 + margin),
        max(0, cols[0] - margin),
        min(w, cols[-1] + 1 + margin),
    )


def retouched(
    job: FocalJob,
    result: FocalStackResult,
    napari_labels: np.ndarray,
    *,
    blend: dict[str, Any],
    pyramids: SlicePyramids | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``(fused, labels 0-based, height)`` after the user's edits of the napari Labels data.

    Only what the edit touches is recomputed: the bounding box of the pixels
    whose slice changed, grown by the blend's reach, is recomposed from those
    slices (``blend``; pyramids with :data:`RETOUCH_PYRAMID_LEVELS` levels) and
    faded into the previous fused image with a weight that is 1 on the changed
    pixels and falls off over the blend's sigma (0 with ``blend="none"``, so
    exactly the painted pixels change). Everything else, including the soft
    blending of a method like ``focus_pyramid``, is kept. No focus measure is
    computed: changed pixels take their new slice's z position, the others
    keep their height. With pyramid blending, ``pyramids`` (from
    :func:`retouch_pyramids_for`) keeps the slices' Laplacian pyramids between
    strokes, so a stroke no longer recomputes them; the box's origin is then
    moved onto the coarsest level's grid.
    """
    if result.labels is None:
        raise FusionInputError(f"method {result.method!r} makes no decision to retouch")
    data = np.asarray(napari_labels)
    if data.shape != result.labels.shape:
        raise FusionInputError(f"the decision layer is {data.shape}, the fused image {result.labels.shape}")
    if data.size and int(data.max()) > job.n:
        raise FusionInputError(
            f"labels go up to {int(data.max())} but the stack has {job.n} slices (label = slice index + 1)"
        )
    previous = np.asarray(result.labels)
    changed = _changed_pixels(data, previous, job.n)
    sigma, margin = _retouch_reach(blend)
    box = changed_box(changed, margin)
    # new arrays (the result's are never changed), in the previous dtype where the slices fit it
    fits = np.issubdtype(previous.dtype, np.integer) and np.iinfo(previous.dtype).max >= job.n - 1
    labels = previous.copy() if fits else previous.astype(np.int64)
    fused = np.array(result.fused, copy=True)
    height = None if result.height is None else np.array(result.height, dtype=np.float32, copy=True)
    if box is None:
        return fused, labels, height
    use_kept = pyramids is not None and blend.get("blend") == "pyramid"
    if use_kept:
        grid = 2 ** (RETOUCH_PYRAMID_LEVELS - 1)
        box = (box[0] // grid * grid, box[1], box[2] // grid * grid, box[3])
    y0, y1, x0, x1 = box
    labels[y0:y1, x0:x1] = labels_from_napari(data[y0:y1, x0:x1], previous=previous[y0:y1, x0:x1])
    if use_kept:
        assert pyramids is not None
        redone = pyramid_blend_box(pyramids, labels[y0:y1, x0:x1], (y0, x0))
    else:
        crops = _CroppedSlices(job_slices(job, result), box)
        kw = dict(blend, levels=RETOUCH_PYRAMID_LEVELS) if blend.get("blend") == "pyramid" else dict(blend)
        redone = recompose(crops, labels[y0:y1, x0:x1], **kw)
    mask = changed[y0:y1, x0:x1]
    fused[y0:y1, x0:x1] = _faded(fused[y0:y1, x0:x1], redone, mask, sigma)
    if height is not None:
        z_box = np.asarray(result.z_positions, dtype=np.float32)[labels[y0:y1, x0:x1]]  # whole slices: a lookup
        height[y0:y1, x0:x1] = np.where(mask, z_box, height[y0:y1, x0:x1])
    return fused, labels, height


def _changed_pixels(data: np.ndarray, previous: np.ndarray, n: int) -> np.ndarray:
    """Pixels whose napari label (slice + 1; 0 = erased, keeps the previous) names another slice.

    Compared in the smallest integer type that holds both arrays and ``n`` (a uint8 layer stays
    uint8: no int64 copy of the whole image).
    """
    work = np.promote_types(np.result_type(data.dtype, previous.dtype), np.min_scalar_type(n))
    return (data != 0) & (data != np.add(previous, 1, dtype=work))


def _faded(old: np.ndarray, redone: np.ndarray, mask: np.ndarray, sigma: float) -> np.ndarray:
    """``old`` faded into ``redone`` with weight 1 on ``mask``, falling off over ``sigma`` around it.

    The weight is ``max(mask, clip(2 G_sigma * mask, 0, 1))``; float32 arithmetic (float64 for
    float64 images), rounded and clipped for integer images.
    """
    work = np.float64 if old.dtype == np.float64 else np.float32
    weight = mask.astype(work)
    if sigma > 0:
        import torch

        from ..ops.filters import gaussian_filter

        with torch.inference_mode():
            feather = gaussian_filter(torch.from_numpy(mask.astype(np.float32)), sigma).numpy()
        weight = np.maximum(weight, np.clip(2.0 * feather, 0.0, 1.0, dtype=work))
    if old.ndim == 3:
        weight = weight[..., None]
    base = old.astype(work)
    mixed = base + weight * (redone.astype(work, copy=False) - base)
    if np.issubdtype(old.dtype, np.integer):
        info = np.iinfo(old.dtype)
        mixed = np.clip(np.rint(mixed), info.min, info.max)
    return mixed.astype(old.dtype)


def _texture(fused: np.ndarray, layer) -> np.ndarray:
    """Float RGB texture in [0, 1] of a fused image, using the layer's contrast limits."""
    f = np.asarray(fused, dtype=np.float32)
    if layer is not None and not getattr(layer, "rgb", False):
        lo, hi = (float(v) for v in layer.contrast_limits)
    elif np.issubdtype(np.asarray(fused).dtype, np.integer):
        lo, hi = 0.0, float(np.iinfo(np.asarray(fused).dtype).max)
    else:
        lo, hi = float(f.min()), float(f.max())
    t = np.clip((f - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
    if t.ndim == 2:
        t = np.repeat(t[..., None], 3, -1)
    return np.ascontiguousarray(t[..., :3])


def surface_data(
    height: np.ndarray, fused: np.ndarray, geo: dict[str, Any], *, fused_layer=None, max_vertices: int = 250_000
) -> tuple[tuple[np.ndarray, np.ndarray], dict[str, Any]]:
    """``((vertices, faces), kwargs)`` for a Surface layer of the height map textured with ``fused``.

    Vertices are ``(z, row, col)`` in world units (the pixel size from ``geo``'s scale
    and the origin from its translate); the grid is subsampled to about
    ``max_vertices`` vertices.
    """
    h, w = height.shape
    step = max(1, int(np.ceil(np.sqrt(h * w / max_vertices))))
    scale = tuple(float(s) for s in geo.get("scale", (1.0, 1.0)))
    verts, faces, tex = height_surface(height, step=step, scale=scale)
    translate = geo.get("translate", (0.0, 0.0))
    verts = verts + np.array([0.0, float(translate[0]), float(translate[1])], dtype=np.float32)
    kwargs = {"name": "height surface", "texture": _texture(fused, fused_layer), "texcoords": tex, "shading": "none"}
    return (verts, faces), kwargs


_CALIBRATIONS: dict[str, Any] = {}


def _file_calibration(layer):
    """The calibration of the file ``layer`` was opened from (cached), or None."""
    path = getattr(getattr(layer, "source", None), "path", None)
    if not path:
        return None
    if path not in _CALIBRATIONS:
        from ..io import read_calibration

        try:
            _CALIBRATIONS[path] = read_calibration(path)
        except Exception:  # noqa: BLE001 - an unreadable header means "no calibration"
            _CALIBRATIONS[path] = None
    return _CALIBRATIONS[path]


def layer_calibration(layer, axis: int) -> tuple[float, float, str, str]:
    """``(z step, pixel size, unit, where from)`` of a stack layer along ``axis``.

    The layer's scale and units when they say anything (not all 1 and ``pixel``),
    else its file's calibration (:func:`napari_fusion.io.read_calibration`), else
    slices and pixels.
    """
    z, px = float(layer.scale[axis]), float(layer.scale[-1])
    zunit, xyunit = _layers.unit_name(layer, axis), _layers.unit_name(layer, layer.ndim - 1)
    if zunit != "pixel" or xyunit != "pixel" or z != 1.0 or px != 1.0:
        unit = zunit if zunit != "pixel" else xyunit
        flipped = "; the layer's scale is negative (a flipped display): its size is used" if z < 0 or px < 0 else ""
        z, px = abs(z) or 1.0, abs(px) or 1.0
        return z, px, unit, f"from the layer: z step {z:g}, pixel {px:g} {unit}{flipped}"
    cal = _file_calibration(layer)
    if cal is not None and cal.known:
        z = float(cal.z_step) if cal.z_step else z
        px = float(cal.pixel_size_yx[1]) if cal.pixel_size_yx else px
        return z, px, cal.unit or "pixel", f"from the file: {cal.describe()}"
    return z, px, "pixel", "calibration missing: sizes in pixels/slices"


# ---------------------------------------------------------------------------- the widget
class FocalStackWidget(WorkerControls, QWidget):
    """Dock widget for focal stacks: align, fuse, height map, 3-D surface, retouch."""

    #: Emitted when a run ends, with "done", "cancelled" or "error".
    run_finished = Signal(str)

    def __init__(self, napari_viewer, parent: QWidget | None = None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.job: FocalJob | None = None
        self.result: FocalStackResult | None = None
        self.output_layers: dict[str, Any] = {}
        self._init_worker_state()
        self._z_from_layer = True
        self._recompose_again = False  # a stroke ended while work was running
        self._kept: KeptPyramids | None = None  # slice pyramids kept between retouch strokes
        self._preparing = False  # the running worker computes them (strokes wait for it)
        self._running_fusion = False  # the running worker fuses (its end prepares live retouch)

        layout = scrolling_layout(self)
        layout.addWidget(self._build_inputs_box())
        layout.addWidget(self._build_method_box())
        layout.addWidget(self._build_options_box())
        layout.addLayout(self._build_run_row())
        self.alignment_label = text_label()
        layout.addWidget(self.alignment_label)
        self.status = text_label()
        layout.addWidget(self.status)
        self.legend = decision_legend()
        layout.addWidget(self.legend)
        layout.addStretch(1)

        self._connect_controls()
        connect_layer_events(self.viewer, self.refresh_layers)
        index = self.method.findData(DEFAULT_FOCAL_METHOD)
        self.method.setCurrentIndex(max(index, 0))
        self._on_method()
        self.refresh_layers()
        self._on_channels()
        make_compact(self)

    # ---------------------------------------------------------------- building
    def _build_inputs_box(self) -> QGroupBox:
        """Stack layer, stack axis, z step and the channel choices."""
        box = QGroupBox("Focal stack")
        form = QFormLayout(box)
        self.stack_layer = QComboBox()
        self.stack_layer.setToolTip("Image layer holding the focal stack (3 or more dimensions; dask works).")
        self.stack_axis = QSpinBox()
        self.stack_axis.setToolTip("Axis of the layer along which the focal slices lie (last two axes: Y, X).")
        self.z_step, self.z_unit, zrow = z_step_row(
            1e-9, "Distance between slices (the layer's scale along the stack axis; edit to override)."
        )
        form.addRow("layer", self.stack_layer)
        form.addRow("stack axis", self.stack_axis)
        form.addRow("z step", zrow)
        self._add_calibration_rows(form)
        self._add_channel_rows(form)
        return box

    def _add_calibration_rows(self, form: QFormLayout) -> None:
        """Pixel size and unit (from the layer's scale and units, or its file's calibration)."""
        self.pixel_size = QDoubleSpinBox()
        self.pixel_size.setDecimals(6)
        self.pixel_size.setRange(1e-9, 1e9)
        self.pixel_size.setValue(1.0)
        self.pixel_size.setToolTip(
            "Column pitch of the outputs (the layer's x scale; rows keep the layer's aspect). Edit to override."
        )
        self.unit = QLineEdit("pixel")
        self.unit.setToolTip(
            "Unit of the z step, the pixel size and the heights (e.g. um, nm); the output layers get it\n"
            "when napari knows it. Taken from the layer's units or its file's calibration."
        )
        self.calibration_label = text_label("Where the pixel size and z step come from.")
        form.addRow("pixel size", self.pixel_size)
        form.addRow("unit", self.unit)
        form.addRow(self.calibration_label)

    def _add_channel_rows(self, form: QFormLayout) -> None:
        self.channels = QComboBox()
        self.channels.addItems([CHANNELS_NONE, CHANNELS_AXIS, CHANNELS_LAYERS])
        self.channels.setToolTip(
            "Multichannel data: the decision is made on one reference channel and applied to all.\n"
            "channel axis: the layer has a channel axis (e.g. Z, C, Y, X).\n"
            "separate channel layers: other layers of the same shape; the stack layer is the reference."
        )
        self.channel_axis = QSpinBox()
        self.channel_axis.setToolTip("Axis of the layer holding the channels.")
        self.reference_channel = QSpinBox()
        self.reference_channel.setRange(0, 1023)
        self.reference_channel.setToolTip("Channel the decision and the height map are computed on.")
        self.channel_list = QListWidget()
        self.channel_list.setToolTip("Check the other channel layers (same shape and dtype as the stack layer).")
        self.channel_list.setMaximumHeight(80)
        form.addRow("channels", self.channels)
        form.addRow("channel axis", self.channel_axis)
        form.addRow("reference channel", self.reference_channel)
        form.addRow("channel layers", self.channel_list)

    def _build_method_box(self) -> QGroupBox:
        """Multi-focus methods that make a decision, and their parameters."""
        box = QGroupBox("Method")
        mform = QVBoxLayout(box)
        self.method = QComboBox()
        for s in list_methods("multi-focus"):
            if "labels" in s.outputs:
                self.method.addItem(f"{s.title}  [{s.name}]", s.name)
        self.method.setToolTip("Multi-focus methods that make a decision (needed for the height map and retouching).")
        mform.addWidget(self.method)
        self.params = ParamPanel()
        mform.addWidget(self.params)
        return box

    def _build_options_box(self) -> QGroupBox:
        """Alignment, crop, height refinement, which outputs, and the retouch blending."""
        box = QGroupBox("Options")
        oform = QFormLayout(box)
        self.align = QComboBox()
        self.align.addItems(list(ALIGN_MODES))
        self.align.setToolTip(
            "none: the stack is registered (microscopes).\n"
            "translation: phase correlation between neighbouring slices.\n"
            "similarity: scale + translation, for macro stacks whose magnification changes with focus."
        )
        self.paint_from_view = QCheckBox("paint from the viewed slice")
        self.paint_from_view.setToolTip(
            "Retouching: the brush of the 'decision' layer takes the slice shown by the viewer's slider\n"
            "over the input stack (label = slice + 1), so you paint with the slice you are looking at."
        )
        self.crop = QCheckBox("crop to the region every slice covers")
        self.refine = QComboBox()
        self.refine.addItems(list(REFINE))
        self.refine.setToolTip("Height below one slice: fit of the focus measure around its peak.")
        self.make_height = QCheckBox("height map")
        self.make_height.setChecked(True)
        self.make_surface = QCheckBox("3-D surface (textured)")
        self.make_surface.setToolTip(
            "A Surface layer of the height map textured with the fused image (toggle 3-D view)."
        )
        hrow = QHBoxLayout()
        hrow.addWidget(self.make_height)
        hrow.addWidget(self.make_surface)
        self.blend = QComboBox()
        self.blend.addItems([BLEND_METHOD, *BLENDS])
        self.blend.setToolTip(
            "How Recompose turns the edited labels into an image.\n"
            "none: each pixel copied from its slice (exact values); gaussian: soft seams;\n"
            "pyramid: multiresolution spline (Burt & Adelson 1983)."
        )
        oform.addRow("align", self.align)
        oform.addRow(self.crop)
        oform.addRow("refine", self.refine)
        oform.addRow(self.paint_from_view)
        oform.addRow(hrow)
        oform.addRow("retouch blend", self.blend)
        oform.addRow(self._build_live_retouch())
        self.memory_limit = memory_limit_box(
            "Memory the fusion may use (the command line's --memory-limit): a stack that does not\n"
            "fit in it is fused tile by tile, in tiles that fit. auto: the memory this machine has\n"
            "available, and for tiles about 1.5 GiB in all (larger tiles run in sub-tiles)."
        )
        oform.addRow("memory limit", self.memory_limit)
        return box

    def memory_limit_bytes(self) -> int | None:
        """The memory limit chosen, in bytes (None: what the machine has available)."""
        return limit_bytes(self.memory_limit)

    def _build_live_retouch(self) -> QCheckBox:
        """'live recompose': each paint stroke on the decision layer recomposes its box (debounced)."""
        self.live_recompose = QCheckBox("live recompose after each stroke")
        self.live_recompose.setToolTip(
            "Recompose the painted region as soon as a stroke ends (only its bounding box is redone;\n"
            "napari's undo on the decision layer still works)."
        )
        self._live_timer = QTimer(self)
        self._live_timer.setSingleShot(True)
        self._live_timer.setInterval(LIVE_DELAY_MS)
        self._live_timer.timeout.connect(self._live_recompose)
        self._painted_layer = None
        self.live_recompose.toggled.connect(self._on_live_toggled)
        return self.live_recompose

    def _on_live_toggled(self, on: bool) -> None:
        """On: prepare the kept pyramids; off: retouching is over, their memory is given back."""
        if on:
            self.prepare_retouch()
        else:
            self._kept = None  # a worker still using them holds its own reference

    def _watch_paint(self, layer) -> None:
        """Listen to paint strokes of the current decision layer (once per layer object)."""
        if layer is self._painted_layer:
            return
        if self._painted_layer is not None:
            with contextlib.suppress(TypeError, ValueError, RuntimeError):  # already gone
                self._painted_layer.events.paint.disconnect(self._on_paint)
        layer.events.paint.connect(self._on_paint)
        self._painted_layer = layer

    def _on_paint(self, *_args) -> None:
        if self.live_recompose.isChecked():
            self._live_timer.start()  # restarted by every paint event of a drag: runs once, after it

    def _live_recompose(self) -> None:
        if self.result is None:
            return
        if self.worker is None:
            self.recompose()
        elif self._preparing:  # the stroke is recomposed once the pyramids are ready
            self._recompose_again = True
        # (not while a fusion runs: its new result replaces the decision being painted)

    def _build_run_row(self) -> QHBoxLayout:
        """Run, Cancel and Recompose (enabled once a run has made a decision)."""
        self.recompose_button = QPushButton("Recompose")
        self.recompose_button.setEnabled(False)
        self.recompose_button.setToolTip(
            "Paint the 'decision' layer (label = slice index + 1; 0 keeps the previous choice),\n"
            "then rebuild the fused image and height map from it (no focus measure is recomputed)."
        )
        return self._build_run_buttons(self.recompose_button)

    def _connect_controls(self) -> None:
        self.stack_layer.currentIndexChanged.connect(self._on_stack_layer_chosen)
        self.stack_axis.valueChanged.connect(self._on_stack_choice)
        self.z_step.valueChanged.connect(self._on_z_edited)
        self.pixel_size.valueChanged.connect(self._on_z_edited)
        self.unit.textEdited.connect(self._on_z_edited)
        self.channels.currentIndexChanged.connect(self._on_channels)
        self.method.currentIndexChanged.connect(self._on_method)
        self.run_button.clicked.connect(self.run)
        self.cancel_button.clicked.connect(self.cancel)
        self.recompose_button.clicked.connect(self.recompose)
        self.viewer.dims.events.current_step.connect(self._follow_viewed_slice)
        self.paint_from_view.toggled.connect(self._follow_viewed_slice)

    # ---------------------------------------------------------------- inputs
    def refresh_layers(self, *_args) -> None:
        current = self.stack_layer.currentData()
        checked = {id(ly) for ly in self.checked_channel_layers()}
        stacks = [ly for ly in self.viewer.layers if _layers.is_image_layer(ly) and ly.ndim >= 3]
        fill_layer_combo(self.stack_layer, stacks, current)
        self.channel_list.clear()
        for ly in stacks:
            if not ly.rgb:
                self.channel_list.addItem(checkable_item(ly.name, ly, id(ly) in checked))
        if self.stack_layer.currentData() is not current:
            self._z_from_layer = True
        self._on_stack_layer()

    def checked_channel_layers(self) -> list:
        return checked_layers(self.channel_list)

    def set_stack_layer(self, layer, axis: int | None = None) -> None:
        """Choose ``layer`` (object or name) as the focal stack, along ``axis`` (None: the axis
        just before Y and X, as when the layer is picked in the list)."""
        index = layer_index(self.stack_layer, layer)
        self._z_from_layer = True
        self.stack_layer.setCurrentIndex(index)
        chosen = self.stack_layer.currentData()
        self._on_stack_layer()  # the axis range of this layer
        self.stack_axis.setValue(_layers.default_stack_axis(chosen) if axis is None else axis)
        self._on_stack_layer()

    def set_channel_layers(self, layers) -> None:
        """Use separate channel layers: check exactly ``layers`` (objects or names)."""
        check_exactly(self.channel_list, layers)
        self.channels.setCurrentText(CHANNELS_LAYERS)

    def _on_stack_choice(self, *_args) -> None:
        self._z_from_layer = True
        self._on_stack_layer()

    def _on_stack_layer_chosen(self, *_args) -> None:
        # a new layer starts on the axis just before Y and X (z in ZYX, CZYX, TZYX)
        self._on_stack_layer()  # the axis range of the new layer
        start_on_default_stack_axis(self.stack_axis, self.stack_layer.currentData())
        self._on_stack_choice()

    def _on_z_edited(self, *_args) -> None:
        self._z_from_layer = False
        self.z_unit.setText(self.unit.text())

    def _on_stack_layer(self) -> None:
        layer = self.stack_layer.currentData()
        top = max(layer.ndim - 3, 0) if layer is not None else 0
        for spin in (self.stack_axis, self.channel_axis):
            spin.blockSignals(True)
            spin.setRange(0, top)
            spin.blockSignals(False)
        if layer is None:
            self.z_unit.setText("")
            self.calibration_label.setText("")
            return
        if not self._z_from_layer:
            return
        z, px, unit, origin = layer_calibration(layer, self.stack_axis.value())
        for spin, value in ((self.z_step, z), (self.pixel_size, px)):
            spin.blockSignals(True)
            spin.setValue(value)
            spin.blockSignals(False)
        self.unit.setText(unit)
        self.z_unit.setText(unit)
        self.calibration_label.setText(origin)

    def _on_channels(self, *_args) -> None:
        mode = self.channels.currentText()
        self.channel_axis.setEnabled(mode == CHANNELS_AXIS)
        self.reference_channel.setEnabled(mode == CHANNELS_AXIS)
        self.channel_list.setEnabled(mode == CHANNELS_LAYERS)

    def viewed_slice(self) -> int | None:
        """The slice of the input stack the viewer shows now (None without a stack layer)."""
        layer = self.stack_layer.currentData()
        if layer is None:
            return None
        point = viewer_data_point(self.viewer, layer)
        axis = self.stack_axis.value()
        if point is None or not 0 <= axis < len(point):
            return None
        n = layer.data.shape[axis]
        return int(min(max(round(float(point[axis])), 0), n - 1))

    def _follow_viewed_slice(self, *_args) -> None:
        """With "paint from the viewed slice": the decision brush label = viewed slice + 1."""
        dec = self.output_layers.get("decision")
        if not self.paint_from_view.isChecked() or dec is None or dec not in self.viewer.layers:
            return
        k = self.viewed_slice()
        if k is not None and k + 1 <= int(np.max(dec.features["index"])):
            dec.selected_label = k + 1

    def _fill_legend(self, z: np.ndarray, unit: str | None) -> None:
        fill_decision_legend(self.legend, _layers.slice_colours(len(z)), z, unit)

    def _on_method(self, *_args) -> None:
        name = self.method.currentData()
        self.params.set_method(get_method(name) if name else None)
        own = name in OWN_HEIGHT_METHODS
        self.refine.setEnabled(not own)
        self.refine.setToolTip(
            f"{name} gives its own height (the weight-averaged slice position): refine does not apply."
            if own
            else "Height below one slice: fit of the focus measure around its peak."
        )

    def make_job(self) -> FocalJob:
        layer = self.stack_layer.currentData()
        if layer is None:
            raise FusionInputError("no stack layer: add an Image layer with 3 or more dimensions")
        point = viewer_data_point(self.viewer, layer)
        mode = self.channels.currentText()
        kwargs: dict[str, Any] = {}
        if mode == CHANNELS_AXIS:
            kwargs = {"channel_axis": self.channel_axis.value(), "reference_channel": self.reference_channel.value()}
        elif mode == CHANNELS_LAYERS:
            others = self.checked_channel_layers()
            if not [ly for ly in others if ly is not layer]:
                raise FusionInputError("check at least one other channel layer (or choose channels: none)")
            kwargs = {"channel_layers": others}
        return make_focal_job(
            layer,
            stack_axis=self.stack_axis.value(),
            z_step=self.z_step.value(),
            data_point=point,
            pixel_size=self.pixel_size.value(),
            unit=self.unit.text().strip() or None,
            **kwargs,
        )

    # ---------------------------------------------------------------- run
    def run(self):
        """Start fuse_focal_stack in a thread worker; returns the worker (None on bad input)."""
        if self.worker is not None:
            return self.worker
        try:
            job = self.make_job()
            method = self.method.currentData()
            if method is None:
                raise FusionInputError("no multi-focus method with a decision is registered")
            params = get_method(method).resolve_params(self.params.values())
        except FusionError as exc:
            self._fail(str(exc))
            return None
        options = {
            "method": method,
            "params": params,
            "align": None if self.align.currentText() == "none" else self.align.currentText(),
            "crop": self.crop.isChecked(),
            "refine": self.refine.currentText(),
            "height": self.make_height.isChecked() or self.make_surface.isChecked(),
        }
        self._begin_run(f"fusing {job.n} slices ({method})...")
        self.recompose_button.setEnabled(False)
        self._running_fusion = True
        return self._start_worker(
            _compute,
            job,
            options,
            self._progress_callback,
            self._cancel,
            self.memory_limit_bytes(),
            progress=f"Focal stack: {job.n} slices",
        )

    def _on_returned(self, value) -> None:
        if value[0] == "recomposed":
            self._show_recomposed(*value[1:])
            return
        if value[0] == "prepared":
            self.status.setText(value[1])
            self._outcome = "done"
            return
        job, result, limits = value
        self._kept = None  # a new result: the previous one's pyramids are dropped
        self.job, self.result = job, result
        self._show(job, result, result.fused, result.labels, result.height, limits=limits)
        self.alignment_label.setText(alignment_summary(result.alignment))
        self.alignment_label.setToolTip(alignment_table(result.alignment))
        extra = ""
        if result.labels is not None:
            extra = f", {len(np.unique(result.labels))} of {job.n} slices used"
        self.status.setText(
            f"{result.method}: done in {result.seconds:.2f} s{extra}{fallback_warning(result.alignment)}{job.note}"
        )
        self._outcome = "done"

    def _on_worker_finished(self) -> None:
        ran = self._running_fusion and self._outcome == "done"
        self._preparing = self._running_fusion = False
        self.recompose_button.setEnabled(self.result is not None and self.result.labels is not None)
        self._finish_run()
        if self._recompose_again:
            self._recompose_again = False
            if self.live_recompose.isChecked():
                self._live_timer.start()
        elif ran and self.live_recompose.isChecked():  # a new result while live retouch is on
            QTimer.singleShot(0, self.prepare_retouch)

    # ---------------------------------------------------------------- outputs
    def _record(self, job: FocalJob, result: FocalStackResult, **extra) -> dict[str, Any]:
        rec = result.record()
        rec.pop("versions", None)
        rec.update(
            {
                "sources": list(job.names),
                "z_unit": job.z_unit,
                "channels": job.channel_names,
                "widget": "focal stack",
                **extra,
            }
        )
        return rec

    def _put(self, key: str, data, kwargs: dict[str, Any], layer_type: str):
        layer = _layers.update_or_add(self.viewer, self.output_layers.get(key), data, kwargs, layer_type)
        self.output_layers[key] = layer
        return layer

    def _show_fused(self, job: FocalJob, fused, geo: dict[str, Any], meta: dict[str, Any], limits) -> list[str]:
        """The fused layer(s), with contrast limits from the fused values; returns their keys."""
        ref = job.reference
        fused_keys = []
        if job.channel_names is None:
            kw: dict[str, Any] = {"name": "fused", "rgb": bool(ref.rgb), "metadata": meta, **geo}
            if not ref.rgb:
                kw["colormap"] = ref.colormap.name
                if limits[0] is not None:
                    kw["contrast_limits"] = limits[0]
            self._put("fused", fused, kw, "image")
            fused_keys.append("fused")
        else:
            colormaps = ["magenta", "green", "cyan", "yellow", "red", "blue", "gray"]
            for c, cname in enumerate(job.channel_names):
                key = f"fused [{cname}]"
                cmap = job.channel_layers[c].colormap.name if job.channel_layers else colormaps[c % len(colormaps)]
                kw = {"name": key, "colormap": cmap, "blending": "additive", "metadata": meta, **geo}
                if limits[c] is not None:
                    kw["contrast_limits"] = limits[c]
                self._put(key, np.ascontiguousarray(fused[..., c]), kw, "image")
                fused_keys.append(key)
        for key in [k for k in self.output_layers if k.startswith("fused") and k not in fused_keys]:
            drop_layer(self.viewer, self.output_layers, key)
        return fused_keys

    def _show(
        self,
        job: FocalJob,
        result: FocalStackResult,
        fused,
        labels,
        height,
        *,
        limits=None,
        keep_decision=False,
        **extra,
    ) -> None:
        ref = job.reference
        geo = output_geometry(job, result)
        record = self._record(job, result, **extra)
        meta = dict(ref.metadata or {})
        meta["napari_fusion"] = record
        limits = fused_limits(job, fused) if limits is None else limits
        fused_keys = self._show_fused(job, fused, geo, meta, limits)
        if labels is not None:
            features = {
                "index": np.arange(1, job.n + 1),
                "source": list(job.names),
                "slice": np.arange(job.n),
                "z": np.asarray(job.z_positions if result is None else result.z_positions, dtype=np.float64),
            }
            dec_kw = {"name": "decision", "features": features, "metadata": meta, "opacity": _layers.MAP_OPACITY}
            dec_kw["colormap"] = _layers.slice_colormap(job.n)
            new_labels = labels_to_napari(labels)
            dec = self.output_layers.get("decision")
            if keep_decision and dec is not None and dec in self.viewer.layers and np.array_equal(dec.data, new_labels):
                dec.metadata = meta  # the user's painting stays, with its undo history
            else:
                dec = self._put("decision", new_labels, {**dec_kw, **geo}, "labels")
            self._watch_paint(dec)
            self._fill_legend(features["z"], job.z_unit)
        want_height = height is not None and self.make_height.isChecked()
        if want_height:
            hmeta = dict(meta)
            hmeta["napari_fusion"] = {**record, "height_unit": job.z_unit}
            zmin, zmax = float(np.min(result.z_positions)), float(np.max(result.z_positions))
            hkw: dict[str, Any] = {
                "name": "height",
                "colormap": "viridis",
                "metadata": hmeta,
                "opacity": _layers.MAP_OPACITY,
                **geo,
            }
            if zmax > zmin:
                hkw["contrast_limits"] = (zmin, zmax)
            layer = self._put("height", np.asarray(height, dtype=np.float32), hkw, "image")
            layer.visible = False
        else:
            self._drop("height")
        if height is not None and self.make_surface.isChecked():
            self._show_surface(job, fused, height, geo, record, fused_keys)
        else:
            self._drop("surface")
        if not keep_decision:  # a run's first view: the fused image(s) on top, the translucent maps beneath
            below = [self.output_layers.get(k) for k in ("height", "decision")]
            _layers.arrange_outputs(self.viewer, below + [self.output_layers.get(k) for k in fused_keys])
        # (a retouch keeps the user's order: the decision they paint on may be on top)

    def _show_surface(
        self, job: FocalJob, fused, height, geo: dict[str, Any], record: dict[str, Any], fused_keys: list[str]
    ) -> None:
        """Replace the ``height surface`` layer (a Surface cannot be updated in place), keeping its place."""
        fused_layer = self.output_layers.get(fused_keys[0])
        texture_src = fused if job.channel_names is None else fused[..., job.reference_channel or 0]
        (verts, faces), skw = surface_data(
            np.asarray(height, np.float32),
            texture_src,
            geo,
            fused_layer=fused_layer
            if job.channel_names is None
            else self.output_layers.get(fused_keys[job.reference_channel or 0]),
        )
        skw["metadata"] = {"napari_fusion": {**record, "height_unit": job.z_unit}}
        unit = napari_unit(job.unit) or napari_unit(job.z_unit)
        if unit is not None:  # z and xy in one unit, like the 2-D outputs (no "Inconsistent units")
            skw["units"] = (unit, unit, unit)
        old = self.output_layers.get("surface")
        index = None
        if old is not None and old in self.viewer.layers:
            index = self.viewer.layers.index(old)
            self.viewer.layers.remove(old)
        from napari.layers import Surface

        surf = Surface((verts, faces), **skw)
        if index is None:
            self.viewer.add_layer(surf)
        else:
            self.viewer.layers.insert(index, surf)
        surf.visible = self.viewer.dims.ndisplay == 3
        self.output_layers["surface"] = surf

    def _drop(self, key: str) -> None:
        drop_layer(self.viewer, self.output_layers, key)

    # ---------------------------------------------------------------- retouch
    def recompose(self):
        """Rebuild the fused image (and height) from the edited ``decision`` layer, in a worker.

        Returns the worker (None when there is nothing to recompose, or when
        other work is running: a live stroke is then recomposed after it).
        The decision is copied here, so painting on may go on meanwhile.
        """
        job, result = self.job, self.result
        dec = self.output_layers.get("decision")
        if job is None or result is None or dec is None or dec not in self.viewer.layers:
            self._fail("run the fusion first (the decision layer is missing)")
            return None
        if self.worker is not None:
            self._recompose_again = True
            return None
        try:
            blend = retouch_blend(result, self.blend.currentText())
        except FusionError as exc:
            self._fail(str(exc))
            return None
        edited = np.array(dec.data, copy=True)
        kept = self._kept_for(job, result) if blend.get("blend") == "pyramid" else None
        self._begin_run("recomposing...")
        self.recompose_button.setEnabled(False)
        return self._start_worker(_recompose, job, result, edited, blend, self._cancel, kept)

    def _kept_for(self, job: FocalJob, result: FocalStackResult) -> KeptPyramids:
        if self._kept is None or not self._kept.matches(job, result):
            self._kept = KeptPyramids(job, result.alignment, bool(result.options.get("crop")))
        return self._kept

    def prepare_retouch(self):
        """Compute the slices' retouch pyramids in a worker before the first stroke (pyramid blending).

        Started when "live recompose" is switched on, so that the first stroke is
        as quick as the later ones. Returns the worker, or None when there is
        nothing to prepare (no decision, another blend, already prepared, or other
        work running).
        """
        job, result = self.job, self.result
        if job is None or result is None or result.labels is None or self.worker is not None:
            return None
        try:
            blend = retouch_blend(result, self.blend.currentText())
        except FusionError:
            return None
        if blend.get("blend") != "pyramid":
            return None
        kept = self._kept_for(job, result)
        if kept.ready():
            return None
        self._begin_run(f"preparing live retouch: pyramids of {job.n} slices...")
        self.recompose_button.setEnabled(False)
        self._preparing = True
        return self._start_worker(
            _prepare_retouch, kept, result, self._progress_callback, progress="Focal stack: retouch pyramids"
        )

    def _shown_limits(self, job: FocalJob) -> list[tuple[float, float] | None] | None:
        """The fused layers' contrast limits as shown now (a retouch keeps the user's contrast, and
        no percentile of the whole image runs on the Qt thread); None if a layer is gone."""
        keys = ["fused"] if job.channel_names is None else [f"fused [{c}]" for c in job.channel_names]
        limits: list[tuple[float, float] | None] = []
        for key in keys:
            layer = self.output_layers.get(key)
            if layer is None or layer not in self.viewer.layers:
                return None
            limits.append(None if getattr(layer, "rgb", False) else tuple(layer.contrast_limits))
        return limits

    def _show_recomposed(self, job: FocalJob, new: FocalStackResult, changed: int, seconds: float) -> None:
        if job is not self.job:  # a new run replaced the result meanwhile
            return
        self.result = new
        blend = new.blend
        self._show(
            job,
            new,
            new.fused,
            new.labels,
            new.height,
            limits=self._shown_limits(job),
            keep_decision=True,
            retouched={"pixels_changed": changed, "blend": blend},
        )
        self.status.setText(
            f"recomposed ({blend['blend']}) in {seconds:.2f} s: {changed} pixels now come from another slice"
        )
        self._outcome = "done"


@dataclass
class KeptPyramids:
    """The retouch pyramids of one fusion (job, alignment and crop), decided and filled in workers.

    Made on the GUI thread at the first pyramid-blended stroke; the first stroke's
    worker checks the memory budget (:func:`retouch_pyramids_for`) and each slice's
    pyramid is computed when a stroke first needs it. One worker at a time uses it.
    """

    job: Any
    alignment: Any
    crop: bool
    pyramids: SlicePyramids | None = None
    decided: bool = False

    def matches(self, job: FocalJob, result: FocalStackResult) -> bool:
        return self.job is job and self.alignment is result.alignment and self.crop == bool(result.options.get("crop"))

    def get(self, result: FocalStackResult) -> SlicePyramids | None:
        """The pyramids, or None when they would not fit in memory (worker thread)."""
        if not self.decided:
            self.pyramids, self.decided = retouch_pyramids_for(self.job, result), True
        return self.pyramids

    def ready(self) -> bool:
        """Decided, and every slice's pyramid computed (or too large to keep)."""
        return self.decided and (self.pyramids is None or self.pyramids.complete())


def _prepare_retouch(kept: KeptPyramids, result: FocalStackResult, progress) -> tuple[str, str]:
    """Worker-thread body of :meth:`FocalStackWidget.prepare_retouch`; returns the status line."""
    pyramids = kept.get(result)
    if pyramids is None:
        mib = SlicePyramids(job_slices(kept.job, result), levels=RETOUCH_PYRAMID_LEVELS).nbytes() / 2**20
        return "prepared", (
            f"live retouch: the slices' pyramids ({mib:.0f} MiB) exceed {RETOUCH_PYRAMIDS_SHARE:.0%} of the "
            "available memory, so each stroke recomputes them"
        )
    pyramids.warm(progress)
    return (
        "prepared",
        f"live retouch ready: pyramids of {len(pyramids)} slices kept ({pyramids.nbytes() / 2**20:.0f} MiB)",
    )


def _recompose(
    job: FocalJob,
    result: FocalStackResult,
    edited: np.ndarray,
    blend: dict[str, Any],
    cancel,
    kept: KeptPyramids | None = None,
):
    """Worker-thread body of Recompose: :func:`retouched` on a copy of the edited decision."""
    start = time.perf_counter()
    pyramids = None if kept is None else kept.get(result)
    fused, labels, height = retouched(job, result, edited, blend=blend, pyramids=pyramids)
    if cancel.is_set():
        raise FusionCancelled("recompose cancelled by the user")
    changed = int(np.count_nonzero(labels != result.labels))
    new = dataclasses.replace(
        result, fused=fused, labels=labels.astype(result.labels.dtype), height=height, blend=blend
    )
    return "recomposed", job, new, changed, time.perf_counter() - start


def alignment_summary(al: Alignment | None) -> str:
    if al is None:
        return "alignment: none"
    mags = al.scales
    shift = float(np.max(np.hypot(al.shifts[:, 0], al.shifts[:, 1]))) if al.n else 0.0
    text = (
        f"alignment ({al.mode}, reference slice {al.reference}): magnification "
        f"{mags.min():.4f}-{mags.max():.4f}, centre shift up to {shift:.1f} px"
    )
    if al.fallback:
        text += f"; {len(al.fallback)} pair(s) fell back to a simpler model"
    return text + " (hover for each slice)"


def fallback_warning(al: Alignment | None) -> str:
    """Status text warning about refused pair estimates (``Alignment.fallback``), or ``""``."""
    if al is None or not al.fallback:
        return ""
    pairs = ", ".join(f"{a}-{b}" for a, b in al.fallback[:6]) + (", ..." if len(al.fallback) > 6 else "")
    models = sorted({al.checks[a].model for a, _ in al.fallback})
    return (
        f". WARNING: alignment fallback on {len(al.fallback)} slice pair(s) ({pairs}): "
        f"their {al.mode} estimate was refused, {'/'.join(models)} used; check those slices (hover the alignment line)"
    )


def alignment_table(al: Alignment | None) -> str:
    """One row per slice: magnification, shift and confidence (fallback pairs marked)."""
    if al is None:
        return ""
    conf = al.confidence
    fell = {b if b > al.reference else a for a, b in al.fallback}
    lines = ["slice  magnification  shift (rows, cols) px  confidence"]
    for k in range(al.n):
        dy, dx = al.shifts[k]
        mark = "  FALLBACK" if k in fell else ""
        lines.append(f"{k:5d}  {al.scales[k]:.5f}  ({dy:+.2f}, {dx:+.2f})  {conf[k]:.3f}{mark}")
    return "\n".join(lines)


def _compute(
    job: FocalJob, options: dict[str, Any], progress, cancel: threading.Event, memory_limit: int | None = None
):
    """Worker-thread body: :func:`fuse_focal_stack` on the job (``progress`` raises on cancel),
    within ``memory_limit`` bytes (None: what the machine has; this worker thread only)."""
    if cancel.is_set():
        raise FusionCancelled("fusion cancelled by the user")
    with limited_to(memory_limit):
        result = fuse_focal_stack(
            job.images,
            stack_axis=job.stack_axis,
            channel_axis=job.channel_axis,
            reference_channel=job.reference_channel,
            z_positions=job.z_positions,
            progress=progress,
            **options,
        )
    if cancel.is_set():
        raise FusionCancelled("fusion cancelled by the user")
    return job, result, fused_limits(job, result.fused)


def fused_limits(job: FocalJob, fused) -> list[tuple[float, float] | None]:
    """Contrast limits of each fused channel from its own values (call off the Qt thread)."""
    if job.channel_names is None:
        return [_layers.display_limits(fused, rgb=bool(job.reference.rgb))]
    f = np.asarray(fused)
    return [_layers.display_limits(f[..., c]) for c in range(len(job.channel_names))]
