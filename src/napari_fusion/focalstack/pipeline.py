"""One focal stack end to end: optional alignment, decision, fused image, height map.

:func:`fuse_focal_stack` is what the napari widget and the ``batch`` command
call. For grey and RGB stacks the chosen method fuses as usual (RGB decided
on luminance). For multichannel stacks (e.g. fluorescence channels) the
decision is made on one *reference channel* and applied to every channel by
:func:`~napari_fusion.focalstack.recompose.recompose`, so all channels come
from the same slice at each pixel and the height map is that channel's.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._cpu_threads import threads_for_current_load
from .._defaults import DEFAULT_METHOD
from .._engine import label_dtype
from ..api import fuse  # the public entry point (memory guard, lazy path); api never imports focalstack
from ..errors import FusionInputError
from ..registry import MethodSpec, get_method
from ._stack import check_slices, load, slices
from .align import Alignment, align_stack, apply_alignment, estimate_alignment, progress_halves
from .height import REFINE, height_map, index_to_z, z_positions_for
from .recompose import recompose


@dataclass
class FocalStackResult:
    """Outputs of :func:`fuse_focal_stack`.

    ``labels`` are 0-based slice indices (napari layers show them + 1);
    ``height`` is in the units of the z positions (``None`` when the method
    makes no decision); ``alignment`` is ``None`` when alignment was off.
    """

    fused: np.ndarray
    labels: np.ndarray | None
    height: np.ndarray | None
    index: np.ndarray | None  # fractional slice index behind ``height``
    alignment: Alignment | None
    method: str
    params: dict[str, Any]
    options: dict[str, Any]
    z_positions: np.ndarray
    blend: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def record(self) -> dict[str, Any]:
        """Everything needed to reproduce the result, JSON-serialisable."""
        import numpy
        import scipy
        import torch

        from .. import __version__

        return {
            "method": self.method,
            "params": _jsonable(self.params),
            "options": _jsonable(self.options),
            "channel_blend": _jsonable(self.blend),
            "z_positions": [round(float(z), 9) for z in self.z_positions],
            "alignment": None if self.alignment is None else self.alignment.as_dict(),
            "outputs": {
                "fused": {"shape": list(self.fused.shape), "dtype": str(self.fused.dtype)},
                "labels": None
                if self.labels is None
                else {
                    "shape": list(self.labels.shape),
                    "dtype": str(self.labels.dtype),
                    "convention": "0-based slice index",
                },
                "height": None
                if self.height is None
                else {"min": float(np.min(self.height)), "max": float(np.max(self.height)), "dtype": "float32"},
            },
            "seconds": round(self.seconds, 3),
            "versions": {
                "napari_fusion": __version__,
                "python": platform.python_version(),
                "numpy": numpy.__version__,
                "scipy": scipy.__version__,
                "torch": torch.__version__,
            },
        }


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return v


#: Built-in methods whose height is their own ``extras["index"]`` (``refine`` does not apply to them).
OWN_HEIGHT_METHODS = frozenset({"focus_pyramid"})


def default_blend(method: str, params: dict[str, Any]) -> dict[str, Any]:
    """How labels are turned back into an image for ``method`` (multichannel, slabs, retouch).

    ``focus_measure`` uses its own ``blend`` sigma (so recomposition
    reproduces it exactly); methods that fuse in a pyramid use the pyramid
    spline; others copy the chosen pixels.
    """
    if method == "focus_measure":
        sigma = float(params.get("blend", 0.0))
        return {"blend": "gaussian", "sigma": sigma} if sigma > 0 else {"blend": "none"}
    if method in ("laplacian_pyramid", "focus_pyramid"):
        return {"blend": "pyramid"}
    return {"blend": "none"}


def _height_kwargs(method: str, params: dict[str, Any]) -> dict[str, Any]:
    """Focus-measure settings of the height refinement (the method's own for focus_measure)."""
    if method == "focus_measure":
        return {k: params[k] for k in ("measure", "window", "smooth", "halo_control") if k in params}
    return {}


def fuse_focal_stack(
    images: Any,
    *,
    method: str = DEFAULT_METHOD,
    params: dict[str, Any] | None = None,
    align: str | None = None,
    align_options: dict[str, Any] | None = None,
    crop: bool = False,
    z_step: float | None = None,
    z_positions: Sequence[float] | None = None,
    height: bool = True,
    refine: str = "parabola",
    stack_axis: int = 0,
    channel_axis: int | None = None,
    reference_channel: int | None = None,
    blend: dict[str, Any] | None = None,
    slab: int | None = None,
    device: str = "auto",
    progress: Callable[[float, float, str], Any] | None = None,
) -> FocalStackResult:
    """Align (optional), fuse, and map the height of one focal stack.

    Parameters
    ----------
    images:
        ``(Z, Y, X)``, ``(Z, Y, X, C)`` (or axes given by ``stack_axis`` /
        ``channel_axis``), a sequence of slices, numpy or dask.
    method, params:
        Fusion method and its parameters (defaults filled and validated).
    align:
        ``None`` (default: no alignment), ``"translation"`` or ``"similarity"``.
        ``align_options`` go to :func:`~.align.estimate_alignment`; ``crop``
        crops to the region every aligned slice covers.
    z_step, z_positions:
        Physical slice spacing or positions for the height map (default: slice units).
    height, refine:
        Compute the height map, and how to refine it below one slice
        (``"parabola"``, ``"gaussian"``, ``"none"``). Methods that give their
        own fractional height (``extras["index"]``, e.g. ``focus_pyramid``'s
        weight-averaged slice position, see :data:`OWN_HEIGHT_METHODS`) use it
        instead, and ``refine`` does not apply; ``options["height_from"]``
        records which was used.
    reference_channel:
        Channel the decision is made on for multichannel data. Default: RGB
        data is decided on luminance, other channel counts on channel 0.
    blend:
        How labels are applied to the channels (``{"blend": ..., "sigma": ...}``,
        see :func:`~.recompose.recompose`); default :func:`default_blend`.
    slab:
        Fuse very deep stacks in sub-stacks of this many slices, then fuse the
        sub-stack results (see :mod:`~.slabs`).

    Returns
    -------
    FocalStackResult
        ``fused`` in the slices' dtype, ``labels`` (0-based slice per pixel),
        ``height`` (float32, in the units of ``z_step``), alignment and
        :meth:`~FocalStackResult.record` with every parameter used.

    Examples
    --------
    >>> from napari_fusion.focalstack import fuse_focal_stack
    >>> from napari_fusion.synthetic import render_focal_stack
    >>> from skimage import data
    >>> stack = render_focal_stack(data.camera()[:128, :128], n_slices=4, seed=0)
    >>> res = fuse_focal_stack(stack.slices, z_step=0.5)
    >>> res.fused.shape, res.height.dtype
    ((128, 128), dtype('float32'))
    >>> 0.0 <= float(res.height.min()) and float(res.height.max()) <= 1.5
    True
    """
    t0 = time.perf_counter()
    spec = get_method(method)
    resolved = spec.resolve_params(dict(params or {}))
    if refine not in REFINE:
        raise FusionInputError(f"refine must be one of {', '.join(REFINE)}; got {refine!r}")
    items = list(slices(images, stack_axis=stack_axis, channel_axis=channel_axis))
    n, _ = check_slices(items)
    zpos = z_positions_for(n, z_step=z_step, z_positions=z_positions)
    nchan, ref_c = _reference_channel(items, reference_channel)
    stage = _stages(progress, align=align not in (None, "none", ""), height=height)
    items, alignment = _align(items, align, align_options, crop=crop, ref_c=ref_c, progress=stage("align"))
    blend_used = dict(blend) if blend else default_blend(method, resolved)
    ref_items = [load(s)[..., ref_c] for s in items] if ref_c is not None else items
    run = dict(spec=spec, params=resolved, blend=blend_used, device=device, progress=stage("fuse"))
    if slab is not None and slab < n:
        fused, labels, blend_used, soft_index = _fuse_in_slabs(items, ref_items, slab=slab, **run)
    elif ref_c is not None:
        fused, labels, blend_used, soft_index = _fuse_on_reference(items, ref_items, **run)
    else:
        fused, labels, blend_used, soft_index = _fuse_directly(items, **run)
    hmap = index = None
    if height and soft_index is not None:  # the method's own (weight-averaged) height, e.g. focus_pyramid
        index = soft_index.astype(np.float32)
        hmap = index_to_z(index, zpos).astype(np.float32)
    elif height and labels is not None:
        hmap, index = _height(ref_items, labels, zpos, refine=refine, method=method, params=resolved)
    if progress is not None:
        progress(1.0, 1.0, "done")
    options = {
        "align": align,
        "align_options": align_options or {},
        "crop": crop,
        "refine": refine,
        "height_from": None if hmap is None else ("method" if soft_index is not None else "refine"),
        "reference_channel": ref_c,
        "slab": slab,
        "device": device,
        "n_slices": n,
        "channels": nchan,
    }
    return FocalStackResult(
        fused=fused,
        labels=None if labels is None else labels.astype(label_dtype(n)),
        height=hmap,
        index=index,
        alignment=alignment,
        method=method,
        params=resolved,
        options=options,
        z_positions=zpos,
        blend=blend_used,
        seconds=time.perf_counter() - t0,
    )


# --------------------------------------------------------------------------- steps of fuse_focal_stack
#: Each fusing step returns ``(fused, labels or None, blend used, fractional slice index or None)``;
#: the index is the method's own height (``extras["index"]``) when it gives one.
Fused = tuple[np.ndarray, "np.ndarray | None", dict[str, Any], "np.ndarray | None"]


def _reference_channel(items: Sequence[Any], reference_channel: int | None) -> tuple[int, int | None]:
    """``(channel count, reference channel)``; the reference is None for grey/RGB decided as a whole."""
    nchan = 1 if items[0].ndim == 2 else int(items[0].shape[-1])
    multichannel = nchan not in (1, 3) or reference_channel is not None
    if reference_channel is not None and not -nchan <= reference_channel < nchan:
        raise FusionInputError(f"reference_channel {reference_channel} is out of range for {nchan} channels")
    if not multichannel:
        return nchan, None
    return nchan, 0 if reference_channel is None else reference_channel % nchan


#: Share of the progress bar each stage of :func:`fuse_focal_stack` takes (when it runs).
STAGE_WEIGHTS = {"align": 0.3, "fuse": 1.0, "height": 0.1}


def _stages(progress: Callable[[float, float, str], Any] | None, *, align: bool, height: bool):
    """``stage(name)``: a progress callback mapping that stage's ``(done, total)`` onto its share."""
    used = {"align": align, "fuse": True, "height": height}
    weights = {k: w for k, w in STAGE_WEIGHTS.items() if used[k]}
    total = sum(weights.values())
    starts, acc = {}, 0.0
    for k, w in weights.items():
        starts[k] = acc
        acc += w

    def stage(name: str):
        if progress is None or name not in weights:
            return None
        start, span = starts[name], weights[name]
        return lambda done, count, message: progress(
            start + span * (min(max(done / count, 0.0), 1.0) if count > 0 else 1.0), total, message
        )

    return stage


def _align(
    items: list,
    align: str | None,
    align_options: dict[str, Any] | None,
    *,
    crop: bool,
    ref_c: int | None,
    progress: Callable[[float, float, str], Any] | None = None,
) -> tuple[list, Alignment | None]:
    """Align the slices (on the reference channel if any), optionally cropped to the common area."""
    if align is None or align in ("none", ""):
        return items, None
    est = dict(align_options or {})
    with threads_for_current_load():  # as the in-memory fusion: the cores other processes leave free
        if ref_c is not None:
            half = progress_halves(progress)
            alignment = estimate_alignment([load(s)[..., ref_c] for s in items], mode=align, progress=half(0), **est)
            items = apply_alignment(items, alignment, progress=half(1))
        else:
            items, alignment = align_stack(items, mode=align, progress=progress, **est)
    if crop:
        r0, r1, c0, c1 = alignment.valid_box()
        items = [np.ascontiguousarray(load(a)[r0:r1, c0:c1]) for a in items]
    return items, alignment


def _height(ref_items, labels: np.ndarray, zpos: np.ndarray, *, refine: str, method: str, params: dict[str, Any]):
    """``(height, fractional index)`` of the decision, refined on the reference slices."""
    hm = height_map(ref_items, labels, z_positions=zpos, refine=refine, **_height_kwargs(method, params))
    return hm.height, hm.index


def _fuse_in_slabs(
    items,
    ref_items,
    *,
    slab: int,
    spec: MethodSpec,
    params: dict[str, Any],
    blend: dict[str, Any],
    device: str,
    progress=None,
) -> Fused:
    """Deep stacks: decide in sub-stacks (:mod:`.slabs`), then recompose every channel."""
    from .slabs import decide_in_slabs

    if "labels" not in spec.outputs:
        raise FusionInputError(f"method {spec.name!r} makes no labels; slabs need a method that does")
    labels = decide_in_slabs(ref_items, slab=slab, method=spec.name, params=params, device=device, progress=progress)
    return recompose(items, labels, **blend), labels, blend, None


def _fuse_on_reference(
    items, ref_items, *, spec: MethodSpec, params: dict[str, Any], blend: dict[str, Any], device: str, progress
) -> Fused:
    """Multichannel: decide on the reference channel, apply the labels (or weights) to every channel."""
    res = fuse([load(s) for s in ref_items], method=spec.name, device=device, progress=progress, **params)
    if res.labels is not None:
        labels = res.labels.astype(np.int64)
        return recompose(items, labels, **blend), labels, blend, res.extras.get("index")
    if res.weights is not None:
        return _apply_weights(items, res.weights), None, {"blend": "weights"}, None
    raise FusionInputError(f"method {spec.name!r} gives neither labels nor weights to apply to the other channels")


def _fuse_directly(
    items, *, spec: MethodSpec, params: dict[str, Any], blend: dict[str, Any], device: str, progress
) -> Fused:
    """Grey or RGB: the method fuses the slices itself (RGB decided on luminance)."""
    res = fuse([load(s) for s in items], method=spec.name, device=device, progress=progress, **params)
    labels = None if res.labels is None else res.labels.astype(np.int64)
    return res.fused, labels, {"blend": "method"}, res.extras.get("index")


def _apply_weights(items: Sequence[Any], weights: np.ndarray) -> np.ndarray:
    """``sum_k w_k * slice_k`` for every channel, in the slices' dtype."""
    acc = None
    low, high = np.inf, -np.inf
    for k, it in enumerate(items):
        s = load(it)
        low, high = min(low, float(s.min())), max(high, float(s.max()))
        wk = weights[k][..., None] if s.ndim == 3 else weights[k]
        term = wk.astype(np.float64) * s
        acc = term if acc is None else acc + term
    total = weights.sum(0)
    total = np.where(total > 1e-12, total, 1.0)
    acc = acc / (total[..., None] if acc.ndim == 3 else total)
    dtype = np.dtype(load(items[0]).dtype)
    acc = np.clip(acc, low, high)
    if np.issubdtype(dtype, np.integer):
        acc = np.rint(acc)
    return acc.astype(dtype)


__all__ = ["OWN_HEIGHT_METHODS", "FocalStackResult", "default_blend", "fuse_focal_stack"]
