"""Checks of slice positions and z steps (numpy only, so the command line can use them without torch)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import FusionInputError


def check_z_positions(z_positions: Any, n: int) -> np.ndarray:
    """Slice positions as float64 ``(n,)``: finite and strictly increasing or strictly decreasing.

    The one check of slice positions used by :func:`napari_fusion.fuse`, the
    tiled path and the focal-stack pipeline (through :mod:`._engine`, which
    re-exports it with :func:`check_z_step` and adds ``slice_positions``).
    """
    z = np.asarray(z_positions, dtype=np.float64).ravel()
    if z.size != n:
        raise FusionInputError(f"z_positions has {z.size} values for {n} images")
    if not np.isfinite(z).all():
        raise FusionInputError("z_positions must be finite")
    d = np.diff(z)
    if n > 1 and not ((d > 0).all() or (d < 0).all()):
        raise FusionInputError("z_positions must be strictly increasing or strictly decreasing (no repeats)")
    return z


def check_z_step(z_step: Any) -> float:
    """A distance between slices: a finite number > 0."""
    try:
        step = float(z_step)
    except (TypeError, ValueError):
        raise FusionInputError(f"z step must be a number, got {z_step!r}") from None
    if not np.isfinite(step) or step <= 0:
        raise FusionInputError(
            f"z step must be a finite distance > 0, got {z_step!r} "
            "(for a stack acquired top-down give z_positions in decreasing order)"
        )
    return step
