"""The fusion engine shared by :mod:`.api`, :mod:`.tiling` and :mod:`.focalstack`.

One place for what every path that runs a method needs:

* :func:`run_method` / :func:`fold_pairwise` - run a method on a prepared
  ``(N, C, H, W)`` tensor, folding two-input methods over a stack;
* :func:`label_dtype` - the smallest unsigned dtype of 0-based source labels;
* :func:`slice_positions` (with :func:`check_z_positions` / :func:`check_z_step`)
  - the one validation of slice positions;
* :func:`output_planes` / :func:`build_result` - a method's tensors turned back
  into the user's arrays (untiled results, and every tile of a tiled one).

Import graph: ``api -> tiling -> _engine``, ``api -> _engine``,
``focalstack -> _engine``. This module imports neither ``api`` nor ``tiling``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ._inputs import PreparedStack, ScaledSlices
from ._zpositions import check_z_positions, check_z_step
from .registry import FusionContext, MethodOutput, MethodSpec
from .results import FusionResult

# --------------------------------------------------------------------------- running a method


def run_method(
    spec: MethodSpec, stack: torch.Tensor | ScaledSlices, *, ctx: FusionContext, params: dict[str, Any]
) -> MethodOutput:
    """Run ``spec`` on a prepared ``(N, C, H, W)`` tensor, folding pairwise methods over N.

    A :class:`~._inputs.ScaledSlices` view is given only to N-way methods registered with
    ``streams_slices=True`` (``register_method`` refuses it for pairwise ones).
    """
    n = stack.shape[0]
    if spec.mode == "nway" or n == 2:
        return spec.run(stack, ctx=ctx, **params)
    if not isinstance(stack, torch.Tensor):
        raise TypeError("pairwise methods are folded over a materialised stack, not a slice view")
    return fold_pairwise(spec, stack, ctx=ctx, params=params)


def fold_pairwise(spec: MethodSpec, stack: torch.Tensor, *, ctx: FusionContext, params: dict[str, Any]) -> MethodOutput:
    """Fuse a stack with a two-input method: ((I0 + I1) + I2) + ...

    After each step, pixels the pair method takes from the new slice get that
    slice's index; the others keep the label they carried, so every output
    pixel still names its source slice. Weights compose the same way, except
    in a tile of a tiled run, whose outputs have no weights (an ``(N, H, W)``
    float32 map per tile saved: 74 MB for a 1358^2 block of ten slices).
    """
    n = stack.shape[0]
    acc = stack[0]
    labels = torch.zeros(stack.shape[-2:], dtype=torch.long, device=stack.device)
    weights = None
    extras: dict[str, torch.Tensor] = {}
    for k in range(1, n):
        out = spec.run(torch.stack([acc, stack[k]]), ctx=ctx.sub(k - 1, n - 1), **params)
        acc = out.fused
        if out.labels is not None:
            labels = torch.where(out.labels.to(labels.device) == 1, torch.full_like(labels, k), labels)
        if out.weights is not None and not ctx.tiled:
            weights = _compose_weights(weights, out.weights, k, stack)
        extras = out.extras
        del out  # the step's labels and weights, before the next step runs
    has_labels = "labels" in spec.outputs
    return MethodOutput(fused=acc, labels=labels if has_labels else None, weights=weights, extras=extras)


def _compose_weights(weights: torch.Tensor | None, pair: torch.Tensor, k: int, stack: torch.Tensor) -> torch.Tensor:
    """Fold the ``k``-th pair step's weights into the ``(N, H, W)`` stack weights (in place)."""
    if weights is None:
        weights = torch.zeros((stack.shape[0], *stack.shape[-2:]), dtype=torch.float32, device=stack.device)
        weights[0] = 1.0
    w = pair.to(weights)
    weights[:k] *= w[0]
    weights[k] = w[1]
    return weights


# --------------------------------------------------------------------------- labels and positions


def label_dtype(n_sources: int) -> np.dtype:
    """Smallest unsigned integer dtype that holds source indices 0..n-1."""
    if n_sources <= 256:
        return np.dtype(np.uint8)
    if n_sources <= 65536:
        return np.dtype(np.uint16)
    return np.dtype(np.uint32)


def slice_positions(z_positions: Sequence[float] | None, n: int) -> np.ndarray:
    """Float32 ``(n,)`` positions of the slices: ``z_positions`` checked, or the slice index."""
    if z_positions is None:
        return np.arange(n, dtype=np.float32)
    return check_z_positions(z_positions, n).astype(np.float32)


# --------------------------------------------------------------------------- results


def output_planes(
    spec: MethodSpec,
    out: MethodOutput,
    prepared: PreparedStack,
    positions: np.ndarray,
    *,
    core: tuple[slice, slice] = (slice(None), slice(None)),
    with_labels: bool = True,
) -> dict[str, np.ndarray]:
    """``fused`` and, when the method gave labels, ``labels`` and ``depth``, over ``core``.

    ``fused`` is in the inputs' dtype and layout (``prepared.restore``);
    ``labels`` are 0-based source indices in :func:`label_dtype`; ``depth`` is
    ``positions[labels]`` for methods that declare a depth output. These are
    the planes a tile of a tiled run produces too (``core`` crops a block to
    its core; ``with_labels=False`` leaves labels and depth out).
    """
    cy, cx = core
    planes = {"fused": prepared.restore(out.fused[:, cy, cx])}
    if with_labels and out.labels is not None:
        labels = out.labels[cy, cx].detach().cpu().numpy().astype(label_dtype(prepared.n))
        planes["labels"] = labels
        if "depth" in spec.outputs:
            planes["depth"] = _depth(out, labels, positions, core)
    return planes


def _depth(out: MethodOutput, labels: np.ndarray, positions: np.ndarray, core: tuple[slice, slice]) -> np.ndarray:
    """``positions[labels]``, or the method's own fractional slice index (``extras["index"]``) mapped
    linearly between the positions of neighbouring slices (e.g. ``focus_pyramid``'s weighted height)."""
    index = out.extras.get("index")
    if index is None:
        return positions[labels.astype(np.intp)]
    idx = index[core].detach().to("cpu", torch.float64).numpy()
    return np.interp(idx, np.arange(len(positions), dtype=np.float64), positions).astype(positions.dtype)


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float32).numpy()


def build_result(
    spec: MethodSpec,
    out: MethodOutput,
    prepared: PreparedStack,
    positions: np.ndarray,
    params: dict[str, Any],
) -> FusionResult:
    """The :class:`FusionResult` of an untiled run: planes, weights and extras as numpy arrays."""
    planes = output_planes(spec, out, prepared, positions)
    return FusionResult(
        fused=planes["fused"],
        labels=planes.get("labels"),
        weights=None if out.weights is None else _to_numpy(out.weights),
        depth=planes.get("depth"),
        method=spec.name,
        params=dict(params),
        extras={k: _to_numpy(v) for k, v in out.extras.items()},
    )


__all__ = [
    "build_result",
    "check_z_positions",
    "check_z_step",
    "fold_pairwise",
    "label_dtype",
    "output_planes",
    "run_method",
    "slice_positions",
]
