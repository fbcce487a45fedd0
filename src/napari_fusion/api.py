"""The public entry point :func:`fuse`.

``fuse`` only chooses the path: lazy and tiled (:mod:`.tiling`), tiled
because the stack does not fit in memory (:func:`.memory.guard_untiled`), or
in memory (:func:`fuse_in_memory`). Running a method and building the result
live in :mod:`._engine`, shared with the tiled path and the focal-stack tools.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from ._cpu_threads import threads_for_current_load
from ._defaults import DEFAULT_METHOD  # re-exported: one home, shared with the torch-free CLI
from ._engine import build_result, fold_pairwise, label_dtype, run_method, slice_positions
from ._inputs import prepare
from .device import resolve_device
from .errors import FusionInputError
from .memory import guard_untiled
from .registry import FusionContext, MethodSpec, get_method
from .results import FusionResult
from .tiling import fuse_lazy, wants_tiling

ProgressCallback = Callable[[float, float, str], Any]


def fuse(
    images: Any,
    method: str = DEFAULT_METHOD,
    *,
    stack_axis: int = 0,
    channel_axis: int | None = None,
    z_positions: Sequence[float] | None = None,
    device: str | torch.device | None = "auto",
    progress: ProgressCallback | None = None,
    chunks: Any = None,
    **params: Any,
) -> FusionResult:
    """Fuse two or more registered images into one.

    Parameters
    ----------
    images:
        A sequence of 2-D grey ``(H, W)`` or colour ``(H, W, 3)`` arrays of one
        dtype (uint8, uint16, int8/16/32, uint32, float32 or float64), or one
        array holding the images along ``stack_axis``.
    method:
        Registry name (see :func:`napari_fusion.list_methods`).
    stack_axis, channel_axis:
        Where the images and, for a colour stack array, the channels lie.
    z_positions:
        Position of each slice (e.g. microns); the depth map reports these.
        Defaults to the slice index.
    device:
        ``"auto"`` (CUDA, then MPS, then CPU), ``"cpu"``, ``"cuda"``...
    progress:
        ``progress(done, total, message)`` called as work advances; raising
        :class:`napari_fusion.FusionCancelled` from it stops the run.
    chunks:
        Tile size (int, ``(rows, cols)`` or ``"auto"``) for lazy, tiled fusion.
        Given, or when ``images`` is a dask/zarr array, the result holds dask
        arrays computed tile by tile (see :mod:`napari_fusion.tiling`).
    **params:
        The method's parameters (defaults from the registry).

    Returns
    -------
    FusionResult
        ``fused`` has the inputs' dtype and layout; ``labels`` are 0-based
        source indices; ``depth`` is ``z_positions[labels]``.

    Colour inputs are decided on luminance and the decision is applied to
    every channel (methods marked ``colour='native'``, such as exposure
    fusion, use the colour channels themselves). Grey and RGB images together
    are refused, except by methods registered with ``mixed_colour=True``
    (e.g. ``csc_ivfn``: grey infrared + colour visible): there each grey image
    gets three equal channels and the result is RGB.

    Examples
    --------
    A synthetic focal stack of four slices, 0.5 microns apart:

    >>> import napari_fusion as nf
    >>> from napari_fusion.synthetic import render_focal_stack
    >>> from skimage import data
    >>> stack = render_focal_stack(data.camera()[:128, :128], n_slices=4, seed=0)
    >>> result = nf.fuse(stack.slices, method="focus_measure", z_positions=[0.0, 0.5, 1.0, 1.5])
    >>> result.fused.dtype, result.fused.shape
    (dtype('uint8'), (128, 128))
    >>> sorted(set(result.labels.ravel().tolist()))  # which slice each pixel came from
    [0, 1, 2, 3]
    >>> float(result.depth.max())
    1.5
    """
    if progress is not None and not callable(progress):
        raise FusionInputError(
            f"progress must be a callable (done, total, message) or None, got {type(progress).__name__}"
        )
    if wants_tiling(images, chunks):
        return fuse_lazy(
            images,
            method,
            stack_axis=stack_axis,
            channel_axis=channel_axis,
            z_positions=z_positions,
            device=device,
            progress=progress,
            chunks=chunks,
            **params,
        )
    spec = get_method(method)
    resolved = spec.resolve_params(params)
    tiled = guard_untiled(
        images,
        spec,
        resolved,
        stack_axis=stack_axis,
        channel_axis=channel_axis,
        z_positions=z_positions,
        device=device,
        progress=progress,
        params=params,
        fuse_tiled=fuse_lazy,
    )
    if tiled is not None:  # too large for memory: fused tile by tile (else guard_untiled raised or passed)
        return tiled
    return fuse_in_memory(
        images,
        spec,
        resolved,
        stack_axis=stack_axis,
        channel_axis=channel_axis,
        z_positions=z_positions,
        device=device,
        progress=progress,
    )


def fuse_in_memory(
    images: Any,
    spec: MethodSpec,
    params: dict[str, Any],
    *,
    stack_axis: int = 0,
    channel_axis: int | None = None,
    z_positions: Sequence[float] | None = None,
    device: str | torch.device | None = "auto",
    progress: ProgressCallback | None = None,
) -> FusionResult:
    """The untiled path of :func:`fuse`: the whole stack as one tensor; ``params`` already resolved.

    A method registered with ``streams_slices=True`` gets a :class:`~._inputs.ScaledSlices`
    view instead: each slice is converted to float32 when the method reads it (the same values),
    so no float32 copy of the whole stack is held.
    """
    prepared = prepare(
        images,
        stack_axis=stack_axis,
        channel_axis=channel_axis,
        intensity=spec.intensity,
        mixed_colour=spec.mixed_colour,
        materialise=not spec.streams_slices,
    )
    positions = slice_positions(z_positions, prepared.n)
    dev = resolve_device(device)
    stack = prepared.slice_view(dev) if spec.streams_slices else prepared.to_tensor(dev)
    ctx = FusionContext(dev, progress, total=1.0)
    # fewer torch threads while other processes keep the CPUs busy (tiled runs share the threads
    # out between their tiles instead: ops.tiles.threads_per_tile)
    with torch.inference_mode(), threads_for_current_load():
        out = run_method(spec, stack, ctx=ctx, params=params)
    if progress is not None:
        progress(1.0, 1.0, "done")
    return build_result(spec, out, prepared, positions, params)


# re-exported from ._engine, where they live (tests and older code import them from here)
__all__ = ["DEFAULT_METHOD", "fuse", "fuse_in_memory", "fold_pairwise", "label_dtype", "run_method"]
