"""Slice access shared by the focal-stack tools: lazy arrays are read one slice at a time."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .._inputs import as_image_list
from ..errors import FusionInputError


def is_lazy(a: Any) -> bool:
    """True for array-likes that are not numpy arrays (dask, zarr...)."""
    return hasattr(a, "shape") and hasattr(a, "ndim") and hasattr(a, "dtype") and not isinstance(a, np.ndarray)


def slices(images: Any, *, stack_axis: int = 0, channel_axis: int | None = None) -> Sequence[Any]:
    """The slices of ``images`` as an indexable sequence, without loading a lazy stack.

    ``images`` is a sequence of ``(H, W)`` / ``(H, W, C)`` arrays, or one
    stack array (numpy, dask...) with the slices along ``stack_axis`` and,
    optionally, channels along ``channel_axis`` (moved last).
    """
    if is_lazy(images):
        arr = images
        if arr.ndim < 3:
            raise FusionInputError(f"a stack array needs 3 or 4 dimensions, got shape {tuple(arr.shape)}")
        sa = stack_axis % arr.ndim
        order = [sa] + [a for a in range(arr.ndim) if a != sa]
        if channel_axis is not None:
            ca = channel_axis % arr.ndim
            order = [a for a in order if a != ca] + [ca]
        if order != list(range(arr.ndim)):
            arr = arr.transpose(order)
        return [arr[i] for i in range(arr.shape[0])]
    if isinstance(images, np.ndarray):
        arr = images
        if arr.ndim < 3:
            raise FusionInputError(f"a stack array needs 3 or 4 dimensions, got shape {tuple(arr.shape)}")
        arr = np.moveaxis(arr, stack_axis, 0)
        if channel_axis is not None:
            ca = channel_axis % images.ndim
            sa = stack_axis % images.ndim
            ca = ca - (1 if ca > sa else 0) + 1
            arr = np.moveaxis(arr, ca, -1)
        return [arr[i] for i in range(arr.shape[0])]
    if isinstance(images, (str, bytes)):
        raise FusionInputError("images must be arrays; to read files use napari_fusion.io.read_stack")
    if hasattr(images, "__len__") and hasattr(images, "__getitem__"):
        # a sequence of slices (possibly computed on access): kept as is, read one at a time
        if channel_axis is not None or stack_axis != 0:
            return as_image_list(images, stack_axis=stack_axis, channel_axis=channel_axis)
        return images
    return as_image_list(images, stack_axis=stack_axis, channel_axis=channel_axis)


def load(a: Any) -> np.ndarray:
    """A numpy array from a slice (computes a dask slice, without dask's global callbacks).

    ``callbacks=()`` keeps this compute out of dask's process-wide callbacks:
    napari registers its chunk cache there while it slices a layer on the GUI
    thread, and a compute in a worker thread that picked it up shared the
    cache's bookkeeping with napari's and failed with a ``KeyError`` on a graph
    key (seen in the Focal stack widget on a lazy stack). With a
    dask.distributed client, whose ``compute`` takes no ``callbacks``, the
    plain call is used.
    """
    if hasattr(a, "compute") and not isinstance(a, np.ndarray):
        try:
            return np.asarray(a.compute(callbacks=()))
        except TypeError:
            return np.asarray(a.compute())
    return np.asarray(a)


def value_scale(dtype: np.dtype) -> float:
    """Divisor bringing integer data to about [0, 1] (1 for floats)."""
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.integer):
        return float(np.iinfo(dtype).max)
    return 1.0


def grey_tensor(a: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """``(H, W)`` float32 tensor of a grey or colour slice (BT.601 luma of RGB), scaled by its dtype."""
    arr = np.asarray(a)
    f = arr.astype(np.float32) / np.float32(value_scale(arr.dtype))
    if f.ndim == 3:
        if f.shape[-1] == 3:
            f = f @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        elif f.shape[-1] == 1:
            f = f[..., 0]
        else:
            raise FusionInputError(f"slice has {f.shape[-1]} channels; pick a reference channel for the decision")
    if f.ndim != 2:
        raise FusionInputError(f"slice has shape {arr.shape}; expected (H, W) or (H, W, 3)")
    if not np.isfinite(f).all():
        raise FusionInputError("slice contains non-finite values (NaN or inf)")
    return torch.from_numpy(np.ascontiguousarray(f)).to(device)


def check_slices(items: Sequence[Any], minimum: int = 2) -> tuple[int, tuple[int, int]]:
    """Number of slices and their (H, W); raises for too few slices or mixed sizes."""
    n = len(items)
    if n < minimum:
        raise FusionInputError(f"a focal stack needs at least {minimum} slices, got {n}")
    shape = tuple(np.shape(items[0])[:2])
    for i in range(n):
        s_shape = tuple(np.shape(items[i])[:2])
        if s_shape != shape:
            raise FusionInputError(f"slice {i} is {s_shape}, slice 0 is {shape}; all slices must have one size")
    return n, shape
