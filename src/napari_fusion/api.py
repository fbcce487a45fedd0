"""The public entry point :func:`fuse`."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch

from ._inputs import check_z_positions, prepare
from .device import resolve_device
from .errors import FusionInputError
from .memory import guard_untiled
from .registry import FusionContext, MethodOutput, MethodSpec, get_method
from .results import FusionResult

#: Method used when none is named: fast, N-way, gives labels and depth.
DEFAULT_METHOD = "focus_measure"

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
    """
    from .tiling import fuse_lazy, wants_tiling

    if wants_tiling(images, chunks):
        return fuse_lazy(images, method, stack_axis=stack_axis, channel_axis=channel_axis, z_positions=z_positions,
                         device=device, progress=progress, chunks=chunks, **params)
    spec = get_method(method)
    resolved = spec.resolve_params(params)
    tiled = guard_untiled(images, spec, resolved, stack_axis=stack_axis, channel_axis=channel_axis,
                          z_positions=z_positions, device=device, progress=progress, params=params)
    if tiled is not None:  # too large for memory: fused tile by tile (else guard_untiled raised or passed)
        return tiled
    prepared = prepare(
        images, stack_axis=stack_axis, channel_axis=channel_axis, intensity=spec.intensity,
        mixed_colour=spec.mixed_colour,
    )
    n = prepared.n
    if z_positions is None:
        positions = np.arange(n, dtype=np.float32)
    else:
        positions = check_z_positions(z_positions, n).astype(np.float32)
    dev = resolve_device(device)
    stack = prepared.to_tensor(dev)
    ctx = FusionContext(dev, progress, total=1.0)
    with torch.inference_mode():
        out = run_method(spec, stack, ctx=ctx, params=resolved)
    if progress is not None:
        progress(1.0, 1.0, "done")
    return _to_result(spec, out, prepared, positions, resolved)


def run_method(
    spec: MethodSpec, stack: torch.Tensor, *, ctx: FusionContext, params: dict[str, Any]
) -> MethodOutput:
    """Run ``spec`` on a prepared ``(N, C, H, W)`` tensor, folding pairwise methods over N."""
    n = stack.shape[0]
    if spec.mode == "nway" or n == 2:
        return spec.run(stack, ctx=ctx, **params)
    return fold_pairwise(spec, stack, ctx=ctx, params=params)


def fold_pairwise(
    spec: MethodSpec, stack: torch.Tensor, *, ctx: FusionContext, params: dict[str, Any]
) -> MethodOutput:
    """Fuse a stack with a two-input method: ((I0 + I1) + I2) + ...

    After each step, pixels the pair method takes from the new slice get that
    slice's index; the others keep the label they carried, so every output
    pixel still names its source slice. Weights compose the same way.
    """
    n = stack.shape[0]
    acc = stack[0]
    labels = torch.zeros(stack.shape[-2:], dtype=torch.long, device=stack.device)
    weights = None
    extras: dict[str, torch.Tensor] = {}
    for k in range(1, n):
        pair = torch.stack([acc, stack[k]])
        out = spec.run(pair, ctx=ctx.sub(k - 1, n - 1), **params)
        acc = out.fused
        if out.labels is not None:
            labels = torch.where(out.labels.to(labels.device) == 1, torch.full_like(labels, k), labels)
        if out.weights is not None:
            if weights is None:
                weights = torch.zeros((n, *stack.shape[-2:]), dtype=torch.float32, device=stack.device)
                weights[0] = 1.0
            w = out.weights.to(weights)
            weights[:k] *= w[0]
            weights[k] = w[1]
        extras = out.extras
    has_labels = "labels" in spec.outputs
    return MethodOutput(fused=acc, labels=labels if has_labels else None, weights=weights, extras=extras)


def label_dtype(n_sources: int) -> np.dtype:
    """Smallest unsigned integer dtype that holds source indices 0..n-1."""
    if n_sources <= 256:
        return np.dtype(np.uint8)
    if n_sources <= 65536:
        return np.dtype(np.uint16)
    return np.dtype(np.uint32)


def _to_result(
    spec: MethodSpec,
    out: MethodOutput,
    prepared,
    positions: np.ndarray,
    params: dict[str, Any],
) -> FusionResult:
    fused = prepared.restore(out.fused)
    labels = None
    depth = None
    if out.labels is not None:
        labels = out.labels.detach().cpu().numpy().astype(label_dtype(prepared.n))
        if "depth" in spec.outputs:
            depth = positions[labels.astype(np.intp)]
    weights = None
    if out.weights is not None:
        weights = out.weights.detach().to("cpu", torch.float32).numpy()
    extras = {k: v.detach().to("cpu", torch.float32).numpy() for k, v in out.extras.items()}
    return FusionResult(
        fused=fused,
        labels=labels,
        weights=weights,
        depth=depth,
        method=spec.name,
        params=dict(params),
        extras=extras,
    )
