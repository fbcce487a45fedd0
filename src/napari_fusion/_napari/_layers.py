"""From napari layers to :func:`napari_fusion.fuse` inputs, and from its result back to layers.

Input layers are only read: their data arrays are handed to ``fuse`` (which never
modifies its inputs) and nothing is assigned to them.

Output layers (owned by one widget, updated in place on every run):

* ``fused`` - :class:`napari.layers.Image`, same dtype as the inputs;
* ``decision`` - :class:`napari.layers.Labels`, value = source index + 1 (0 = none); its
  ``features`` table has one row per source: ``index`` (the label value), ``source``
  (layer name or ``"<stack> [k]"``), ``slice`` (0-based index) and ``z`` (its position);
* ``depth`` - :class:`napari.layers.Image`, float32, the chosen source's position in the
  units of the stack axis (``z_positions[label]``).

All three carry the input's spatial scale, translate, units and axis labels, and its
metadata plus a ``"napari_fusion"`` entry recording method, parameters and sources.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..api import label_dtype
from ..errors import FusionInputError
from ..results import FusionResult


@dataclass
class FusionJob:
    """Everything a fusion run needs, gathered from layers on the main thread."""

    images: Any  # a list of 2-D arrays, or one (N, Y, X[, 3]) array (numpy or dask)
    names: list[str]  # one per source
    z_positions: np.ndarray  # (N,) position of each source along the stack axis
    z_unit: str  # unit of z_positions ("pixel" when unknown)
    reference: Any  # the layer whose geometry and metadata the outputs copy
    rgb: bool
    base_name: str
    stack_axis: int | None = None  # axis in the stack layer, None for separate layers
    fixed_indices: dict[int, int] = field(default_factory=dict)  # other axes of a stack layer
    note: str = ""  # what the run does that the user may not expect ("; ..."), for the status line

    @property
    def n(self) -> int:
        return len(self.names)


def _spatial(values: Sequence[Any]) -> tuple:
    return tuple(values)[-2:]


def unit_name(layer, axis: int) -> str:
    """The unit of ``layer`` along ``axis`` (``"pixel"`` when the layer has none)."""
    units = getattr(layer, "units", None)
    if not units:
        return "pixel"
    try:
        return str(units[axis])
    except (IndexError, TypeError):  # pragma: no cover - defensive
        return "pixel"


def is_image_layer(layer) -> bool:
    from napari.layers import Image

    return isinstance(layer, Image) and not getattr(layer, "multiscale", False)


def is_lazy_array(data: Any) -> bool:
    """Whether ``data`` is a dask or zarr array (read or computed on demand)."""
    from ..tiling import is_lazy

    return data is not None and is_lazy(data)


def is_lazy_layer(layer) -> bool:
    """Whether a layer's data is lazy (dask/zarr), so fusing it whole would load it all."""
    return is_lazy_array(getattr(layer, "data", None))


def without_alpha(data: Any, layer) -> tuple[Any, str]:
    """An RGBA layer's data without its alpha channel (a view; lazy stays lazy), and a note saying so."""
    if bool(layer.rgb) and data.shape[-1] == 4:
        return data[..., :3], f"; the alpha channel of {layer.name!r} is ignored"
    return data, ""


def supported_dtype(data: Any, layer) -> tuple[Any, str]:
    """Layer data of a dtype the fusion refuses but that converts without loss (float16 -> float32,
    bool -> uint8; 64-bit integers -> float64, exact below 2**53), and a note saying so; other data
    unchanged. The conversion is lazy (a dask array), so it runs in the worker, not on the Qt thread."""
    dtype = np.dtype(data.dtype)
    if dtype == np.float16:
        target: Any = np.float32
    elif dtype == np.bool_:
        target = np.uint8
    elif dtype.kind in "iu" and dtype.itemsize == 8:
        target = np.float64
    else:
        return data, ""
    import dask.array as da

    lazy = data if is_lazy_array(data) else da.from_array(data, chunks=-1)
    exact = "; exact below 2**53" if dtype.kind in "iu" else ", no values changed"
    return lazy.astype(target), f"; {layer.name!r} read as {np.dtype(target).name} (from {dtype.name}{exact})"


def _geometry_note(layers: Sequence[Any], ref) -> str:
    """A note when separate layers are not on one pixel grid (they are fused pixel by pixel)."""

    def grid(layer):
        return tuple(float(v) for v in layer.scale[-2:]) + tuple(float(v) for v in layer.translate[-2:])

    if len({grid(layer) for layer in layers}) <= 1:
        return ""
    listed = ", ".join(
        f"{layer.name!r} scale {tuple(round(float(v), 6) for v in layer.scale[-2:])} "
        f"translate {tuple(round(float(v), 6) for v in layer.translate[-2:])}"
        for layer in layers
    )
    return (
        f"; note: the layers are not on one pixel grid ({listed}): they were fused pixel by pixel and the "
        f"outputs take {ref.name!r}'s geometry"
    )


def job_from_image_layers(layers: Sequence[Any], *, z_step: float = 1.0, mixed_colour: bool = False) -> FusionJob:
    """Fuse several 2-D (grey or RGB) Image layers, in the given order.

    Grey and RGB layers together are refused unless ``mixed_colour`` (the
    chosen method accepts them, e.g. grey infrared + colour visible); the
    outputs then copy the first RGB layer's geometry and are RGB.
    """
    layers = list(layers)
    if len(layers) < 2:
        raise FusionInputError(
            f"select at least two image layers to fuse (got {len(layers)}); "
            "for a stack in one layer choose 'stack layer' mode"
        )
    for layer in layers:
        if not is_image_layer(layer):
            raise FusionInputError(f"layer {layer.name!r} is not a single-scale Image layer")
        if layer.ndim != 2:
            raise FusionInputError(
                f"layer {layer.name!r} has {layer.ndim} dimensions; separate inputs must be 2-D "
                "(grey or RGB) - fuse a stack with 'stack layer' mode"
            )
    ref = layers[0]
    rgbs = {bool(layer.rgb) for layer in layers}
    if len(rgbs) > 1 and mixed_colour:
        ref = next(layer for layer in layers if layer.rgb)
    elif len(rgbs) > 1:
        raise FusionInputError(
            "grey and RGB layers are mixed: "
            + ", ".join(f"{layer.name!r} ({'RGB' if layer.rgb else 'grey'})" for layer in layers)
            + " (only methods for grey infrared + colour visible images, e.g. csc_ivfn, accept that)"
        )
    n = len(layers)
    images, notes = zip(*(without_alpha(layer.data, layer) for layer in layers))
    images, dtype_notes = zip(*(supported_dtype(a, layer) for a, layer in zip(images, layers)))
    notes = notes + dtype_notes
    return FusionJob(
        images=list(images),
        names=[layer.name for layer in layers],
        z_positions=(np.arange(n, dtype=np.float64) * float(z_step)).astype(np.float32),
        z_unit="slice" if z_step == 1.0 else "",
        reference=ref,
        rgb=bool(ref.rgb),
        base_name=ref.name,
        note="".join(notes) + _geometry_note(layers, ref),
    )


def stack_axes(layer) -> list[int]:
    """Axes of a layer that can be the stack axis (all but the last two spatial ones)."""
    return list(range(max(layer.ndim - 2, 0)))


def default_stack_axis(layer) -> int:
    """The stack axis a newly chosen layer starts with: the one just before Y and X, where the
    z axis sits in the usual microscopy orders (ZYX, CZYX, TZYX, TCZYX)."""
    return max(layer.ndim - 3, 0)


def job_from_stack_layer(
    layer,
    *,
    axis: int = 0,
    z_step: float | None = None,
    data_point: Sequence[float] | None = None,
) -> FusionJob:
    """Fuse the slices of one Image layer along ``axis``.

    Other non-spatial axes (e.g. time) are taken at ``data_point`` (the viewer's
    current position in the layer's data coordinates; index 0 when not given).
    ``z_step`` defaults to the layer's scale along ``axis``; positions start at
    the layer's translate along ``axis``.
    """
    if not is_image_layer(layer):
        raise FusionInputError(f"layer {layer.name!r} is not a single-scale Image layer")
    axes = stack_axes(layer)
    if not axes:
        raise FusionInputError(
            f"layer {layer.name!r} is 2-D; a stack layer needs a third axis holding the images "
            "(or select several 2-D layers instead)"
        )
    if axis not in axes:
        raise FusionInputError(
            f"stack axis {axis} is not valid for layer {layer.name!r} with {layer.ndim} dimensions; "
            f"choose one of {axes}"
        )
    data = layer.data
    index: list[Any] = []
    fixed: dict[int, int] = {}
    for ax in range(layer.ndim):
        if ax == axis or ax >= layer.ndim - 2:
            index.append(slice(None))
        else:
            size = data.shape[ax]
            pos = 0 if data_point is None else int(round(float(data_point[ax])))
            pos = min(max(pos, 0), size - 1)
            fixed[ax] = pos
            index.append(pos)
    # every other non-spatial axis is fixed, so the stack axis comes first after indexing
    images, note = without_alpha(data[tuple(index)], layer)
    images, dtype_note = supported_dtype(images, layer)
    note += dtype_note
    n = int(data.shape[axis])
    step = float(layer.scale[axis]) if z_step is None else float(z_step)
    origin = float(layer.translate[axis])
    names = [f"{layer.name} [{k}]" for k in range(n)]
    return FusionJob(
        images=images,
        names=names,
        z_positions=(origin + step * np.arange(n, dtype=np.float64)).astype(np.float32),
        z_unit=unit_name(layer, axis),
        reference=layer,
        rgb=bool(layer.rgb),
        base_name=layer.name,
        stack_axis=axis,
        fixed_indices=fixed,
        note=note,
    )


def provenance(job: FusionJob, result: FusionResult, *, device: str, seconds: float) -> dict[str, Any]:
    """JSON-friendly record of a run, stored in the output layers' metadata."""
    return {
        "method": result.method,
        "params": {k: (v.item() if hasattr(v, "item") else v) for k, v in result.params.items()},
        "sources": list(job.names),
        "stack_axis": job.stack_axis,
        "fixed_indices": {str(k): v for k, v in job.fixed_indices.items()},
        "z_positions": [float(z) for z in job.z_positions],
        "z_unit": job.z_unit,
        "device": device,
        "seconds": round(float(seconds), 3),
    }


def geometry(ref) -> dict[str, Any]:
    """Layer kwargs (scale, translate, units, axis labels) that put an output on ``ref``'s last two axes."""
    geo: dict[str, Any] = {
        "scale": _spatial(ref.scale),
        "translate": _spatial(ref.translate),
    }
    units = getattr(ref, "units", None)
    if units is not None and len(units) >= 2:
        geo["units"] = _spatial(units)
    labels = getattr(ref, "axis_labels", None)
    if labels is not None and len(labels) >= 2:
        geo["axis_labels"] = _spatial(labels)
    return geo


def display_limits(data: Any, *, rgb: bool = False, max_samples: int = 1_000_000) -> tuple[float, float] | None:
    """Contrast limits from ``data``'s own 0.5-99.9 percentiles; None for RGB, lazy or flat data.

    Meant for the worker thread (a percentile of a large image takes longer than the
    Qt thread may be held); large images are subsampled to about ``max_samples`` values.
    """
    if data is None or rgb or is_lazy_array(data):
        return None
    a = np.asarray(data).ravel()
    if a.size == 0:
        return None
    if a.size > max_samples:
        a = a[:: int(np.ceil(a.size / max_samples))]
    if a.dtype.kind == "f":
        a = a[np.isfinite(a)]
        if a.size == 0:
            return None
    lo, hi = (float(v) for v in np.percentile(a, (0.5, 99.9)))
    if hi <= lo:
        lo, hi = float(a.min()), float(a.max())
    return (lo, hi) if hi > lo else None


def arrange_outputs(viewer, bottom_to_top: Sequence[Any]) -> None:
    """Move the given output layers to the top of the layer list, in this order (last on top).

    Nothing is moved when they are there already (each move re-renders the canvas).
    """
    present = [layer for layer in bottom_to_top if layer is not None and layer in viewer.layers]
    if [viewer.layers[i] for i in range(len(viewer.layers) - len(present), len(viewer.layers))] == present:
        return
    for layer in present:
        viewer.layers.move(viewer.layers.index(layer), len(viewer.layers))


#: Opacity of the map layers (depth/height, decision) under the fused image.
MAP_OPACITY = 0.5


def output_layer_data(
    job: FusionJob,
    result: FusionResult,
    record: dict[str, Any],
    limits: tuple[float, float] | None = None,
    *,
    decision: np.ndarray | None = None,
) -> dict[str, tuple]:
    """``{"fused"|"decision"|"depth": (data, kwargs, layer_type)}`` for the outputs the method gave.

    ``limits``: the fused image's contrast limits (:func:`display_limits`, computed in the
    worker); without them napari computes its own, the input's limits are never copied.
    ``decision``: a ready decision layer array (labels + 1, e.g. a buffer being filled
    tile by tile), used as it is instead of ``result.labels``.
    """
    ref = job.reference
    geo = geometry(ref)
    meta = dict(ref.metadata or {})
    meta["napari_fusion"] = dict(record)
    out: dict[str, tuple] = {}
    fused_kw: dict[str, Any] = {"name": "fused", "rgb": job.rgb, "metadata": meta, **geo}
    if not job.rgb:
        fused_kw["colormap"] = ref.colormap.name
        if limits is not None:
            fused_kw["contrast_limits"] = tuple(limits)
    out["fused"] = (result.fused, fused_kw, "image")
    if result.labels is not None or decision is not None:
        if decision is not None:
            dec = decision
        else:
            # lazy (dask) outputs stay lazy: the arithmetic below builds a graph, computes nothing
            labels = result.labels if is_lazy_array(result.labels) else np.asarray(result.labels)
            dec = (labels.astype(label_dtype(job.n + 1)) + 1).astype(label_dtype(job.n + 1))
        features = {
            "index": np.arange(1, job.n + 1),
            "source": list(job.names),
            "slice": np.arange(job.n),
            "z": np.asarray(job.z_positions, dtype=np.float64),
        }
        dec_kw = {
            "name": "decision",
            "features": features,
            "metadata": meta,
            "opacity": MAP_OPACITY,
            "colormap": slice_colormap(job.n),
            **geo,
        }
        out["decision"] = (dec, dec_kw, "labels")
    if result.depth is not None:
        depth = (
            result.depth.astype(np.float32)
            if is_lazy_array(result.depth)
            else np.asarray(result.depth, dtype=np.float32)
        )
        zmin, zmax = float(np.min(job.z_positions)), float(np.max(job.z_positions))
        depth_meta = dict(meta)
        depth_meta["napari_fusion"] = {**record, "depth_unit": job.z_unit}
        depth_kw: dict[str, Any] = {
            "name": "depth",
            "colormap": "viridis",
            "metadata": depth_meta,
            "opacity": MAP_OPACITY,
            **geo,
        }
        if zmax > zmin:
            depth_kw["contrast_limits"] = (zmin, zmax)
        out["depth"] = (depth, depth_kw, "image")
    return out


#: Outputs whose plane is larger than this on a side are shown as a display pyramid.
PYRAMID_ABOVE = 2048
#: The coarsest level of a display pyramid is at most this on a side.
PYRAMID_TOP = 1024


def display_pyramid(data: np.ndarray, *, rgb: bool = False) -> np.ndarray | list[np.ndarray]:
    """``data`` itself, or (for a plane above :data:`PYRAMID_ABOVE` px on a side) a list of
    strided views ``[data, data[::2, ::2], data[::4, ::4], ...]`` for a napari multiscale layer.

    The levels are views of the same buffer (no copy), so tiles written into
    ``data`` appear in every level. napari then uploads only the visible part
    of the level that matches the zoom: a refresh or a pan moves about a
    screenful of pixels, where a plain 4096^2 layer re-uploads 64 MB (0.15-0.5 s
    on this machine's software OpenGL, measured in benchmarks/gui_responsiveness.py)
    and a 16384^2 one exceeds most GPUs' texture size. Zoomed out, a level shows
    every 2^k-th pixel, as napari's nearest interpolation does for a plain layer.
    """
    spatial = data.shape[-3:-1] if rgb else data.shape[-2:]
    if max(spatial) <= PYRAMID_ABOVE:
        return data
    levels = [data]
    step = 1
    while max(-(-n // step) for n in spatial) > PYRAMID_TOP:
        step *= 2
        index = (Ellipsis, slice(None, None, step), slice(None, None, step))
        levels.append(data[index + ((slice(None),) if rgb else ())])
    return levels


def full_resolution(data: Any) -> Any:
    """A layer's data at full resolution: level 0 of a multiscale layer, else the data."""
    if isinstance(data, (list, tuple)) or type(data).__name__ == "MultiScaleData":
        return data[0]
    return data


def slice_colours(n: int) -> np.ndarray:
    """``(n, 4)`` RGBA colours of slices 0..n-1: viridis sampled in slice order (neighbours look alike)."""
    from napari.utils.colormaps import ensure_colormap

    return np.asarray(ensure_colormap("viridis").map(np.linspace(0.0, 1.0, max(n, 1))[:n]), dtype=np.float32)


def slice_colormap(n: int):
    """Labels colormap of a decision layer: label k + 1 (slice k) gets colour k of :func:`slice_colours`; 0 none.

    Random label colours are unreadable for 40 slices; a sequential map shows
    the decision as a coarse depth map and makes a painted slice easy to find.
    """
    from napari.utils.colormaps import DirectLabelColormap

    clear = (0.0, 0.0, 0.0, 0.0)
    colours = {k + 1: tuple(float(v) for v in c) for k, c in enumerate(slice_colours(n))}
    return DirectLabelColormap(color_dict={None: clear, 0: clear, **colours})


def _compatible(layer, data: np.ndarray, kwargs: dict[str, Any], layer_type: str) -> bool:
    from napari.layers import Image, Labels

    # isinstance, not private attributes: plugin widgets see layers through napari's proxy
    if not isinstance(layer, Image if layer_type == "image" else Labels):
        return False
    multiscale = isinstance(data, list)
    if bool(layer.multiscale) != multiscale:
        return False
    same_ndim = np.ndim(full_resolution(layer.data)) == np.ndim(full_resolution(data))
    if layer_type == "image":
        return bool(layer.rgb) == bool(kwargs.get("rgb", False)) and same_ndim
    return same_ndim


def _same_value(current: Any, wanted: Any) -> bool:
    """Whether a layer's ``scale``/``translate``/``units``/``axis_labels`` already is ``wanted``."""
    if current is None or wanted is None:
        return current is wanted
    try:
        if len(current) != len(wanted):
            return False
        if all(isinstance(v, (int, float, np.number)) for v in (*current, *wanted)):
            return bool(np.array_equal(np.asarray(current, float), np.asarray(wanted, float)))
        return [str(v) for v in current] == [str(v) for v in wanted]
    except TypeError:
        return False


def update_or_add(viewer, existing, data, kwargs: dict[str, Any], layer_type: str):
    """Replace ``existing``'s data in place (same layer object) or add a new layer.

    A layer is recreated at the same place in the list only when it cannot hold
    the new data (e.g. a switch between grey and RGB inputs).
    """
    from napari.layers import Image, Labels

    if existing is not None and existing in viewer.layers:
        if _compatible(existing, data, kwargs, layer_type):
            for key in ("scale", "translate", "units", "axis_labels"):
                if key in kwargs and not _same_value(getattr(existing, key, None), kwargs[key]):
                    setattr(existing, key, kwargs[key])  # (each change re-renders: only real ones)
            existing.data = data
            for key in ("metadata", "colormap", "features", "opacity"):
                if key in kwargs:
                    setattr(existing, key, kwargs[key])
            if "contrast_limits" in kwargs:
                existing.contrast_limits = kwargs["contrast_limits"]
            elif layer_type == "image":
                existing.reset_contrast_limits()
            existing.refresh()
            return existing
        index = viewer.layers.index(existing)
        viewer.layers.remove(existing)
        cls = Image if layer_type == "image" else Labels
        layer = cls(data, **kwargs)
        viewer.layers.insert(index, layer)
        return layer
    cls = Image if layer_type == "image" else Labels
    return viewer.add_layer(cls(data, **kwargs))
