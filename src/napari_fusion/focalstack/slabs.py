"""Decisions for very deep stacks, in slabs.

A stack of ``N`` slices is cut into consecutive sub-stacks ("slabs") of about
``slab`` slices; each slab is fused on its own (only its slices are in memory
as the method's float32 working copy), then the slab results are fused in
turn (recursively when there are more than ``slab`` of them). The final
decision names, at every pixel, the slab result that won, and through it the
original slice that the slab took the pixel from: labels are carried back to
original slice indices, so height maps and recomposition work as for a
direct fusion.

For a selection method such as ``focus_measure`` the slab result at a pixel
is a copy of one slice, so the second stage compares the same focus evidence
as a direct run would (up to the windowed measure seeing neighbouring pixels
from other slices near decision boundaries).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .._defaults import DEFAULT_METHOD
from ..api import fuse
from ..errors import FusionInputError
from ._stack import load


def slab_bounds(n: int, slab: int) -> list[tuple[int, int]]:
    """Consecutive ``[start, stop)`` ranges of ``slab`` to ``2 * slab - 1`` slices (one range if ``n < 2 * slab``)."""
    if slab < 2:
        raise FusionInputError(f"slab must be at least 2 slices, got {slab}")
    parts = max(1, n // slab)
    edges = np.linspace(0, n, parts + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]


def decide_in_slabs(
    images: Sequence[Any],
    *,
    slab: int,
    method: str = DEFAULT_METHOD,
    params: dict[str, Any] | None = None,
    device: str = "auto",
    progress: Callable[[float, float, str], Any] | None = None,
) -> np.ndarray:
    """0-based labels (original slice indices) of a deep stack decided slab by slab.

    ``progress(done, total, message)`` as the slabs advance (may raise to cancel).
    """
    params = dict(params or {})
    n = len(images)
    if n < 2:
        raise FusionInputError(f"a focal stack needs at least 2 slices, got {n}")
    if n < 2 * slab:
        res = fuse([load(s) for s in images], method=method, device=device, progress=progress, **params)
        if res.labels is None:
            raise FusionInputError(f"method {method!r} makes no labels; slabs need a method that does")
        return res.labels.astype(np.int64)
    fused, carried = [], []
    bounds = slab_bounds(n, slab)
    parts = len(bounds) + 1  # the slabs, then the fusion of their results

    def part(i: int):
        if progress is None:
            return None
        return lambda done, total, message: progress(i + (done / total if total > 0 else 1.0), parts, message)

    for i, (a, b) in enumerate(bounds):
        res = fuse([load(s) for s in images[a:b]], method=method, device=device, progress=part(i), **params)
        if res.labels is None:
            raise FusionInputError(f"method {method!r} makes no labels; slabs need a method that does")
        fused.append(res.fused)
        carried.append(res.labels.astype(np.int64) + a)
    top = decide_in_slabs(fused, slab=slab, method=method, params=params, device=device, progress=part(parts - 1))
    stack = np.stack(carried)
    return np.take_along_axis(stack, top[None], 0)[0]


__all__ = ["decide_in_slabs", "slab_bounds"]
