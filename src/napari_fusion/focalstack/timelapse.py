"""Time-lapse focal stacks ``(T, Z, Y, X[, C])``: one fusion per time point, lazily.

:func:`fuse_timelapse` builds dask arrays whose every time point is one
delayed task running :func:`~.pipeline.fuse_focal_stack` on that time point
only; nothing is computed until the arrays are (napari computes the time
point on screen). With ``lazy=False`` all time points are computed now.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import FusionInputError
from .pipeline import fuse_focal_stack


@dataclass
class TimelapseResult:
    """Per-time-point outputs stacked along a leading T axis (dask or numpy)."""

    fused: Any  # (T, Y, X[, C]) input dtype
    labels: Any  # (T, Y, X) 0-based
    height: Any  # (T, Y, X) float32


def fuse_timelapse(
    data: Any,
    *,
    time_axis: int = 0,
    stack_axis: int = 1,
    channel_axis: int | None = None,
    lazy: bool = True,
    **options: Any,
) -> TimelapseResult:
    """Fuse every time point of ``data`` with :func:`fuse_focal_stack` (same ``options``).

    ``options`` are those of :func:`fuse_focal_stack` (``method``, ``params``,
    ``align``, ``z_step``, ``reference_channel``, ``slab``...); ``crop`` is
    not allowed since time points must keep one shape. The method must give
    labels (``focus_measure``, ``laplacian_pyramid``...) for the label and
    height outputs; with ``height=False`` the height array is all zeros.
    """
    import dask
    import dask.array as da

    if options.get("crop"):
        raise FusionInputError("crop is not available for time-lapse data (time points must keep one shape)")
    nd = data.ndim
    if nd not in (4, 5):
        raise FusionInputError(
            f"time-lapse data must be (T, Z, Y, X) or (T, Z, Y, X, C); got shape {tuple(data.shape)}"
        )
    ta, sa = time_axis % nd, stack_axis % nd
    if ta == sa:
        raise FusionInputError("time_axis and stack_axis must differ")
    order = [ta, sa] + [
        a for a in range(nd) if a not in (ta, sa) and a != (channel_axis % nd if channel_axis is not None else -1)
    ]
    if channel_axis is not None:
        order.append(channel_axis % nd)
    arr = data.transpose(order) if hasattr(data, "transpose") else np.transpose(data, order)
    t, _, h, w = arr.shape[:4]
    chan = arr.shape[4:] if arr.ndim == 5 else ()
    dtype = np.dtype(arr.dtype)

    def one(frame):
        r = fuse_focal_stack(np.asarray(frame), **options)
        lab = r.labels if r.labels is not None else np.zeros((h, w), np.uint8)
        hei = r.height if r.height is not None else np.zeros((h, w), np.float32)
        return r.fused, lab.astype(np.uint32), hei.astype(np.float32)

    if not lazy:
        outs = [one(arr[i]) for i in range(t)]
        return TimelapseResult(*(np.stack(o) for o in zip(*outs)))
    fused, labels, heights = [], [], []
    for i in range(t):
        task = dask.delayed(one, pure=True)(arr[i])
        fused.append(da.from_delayed(task[0], shape=(h, w, *chan), dtype=dtype))
        labels.append(da.from_delayed(task[1], shape=(h, w), dtype=np.uint32))
        heights.append(da.from_delayed(task[2], shape=(h, w), dtype=np.float32))
    return TimelapseResult(da.stack(fused), da.stack(labels), da.stack(heights))


__all__ = ["TimelapseResult", "fuse_timelapse"]
