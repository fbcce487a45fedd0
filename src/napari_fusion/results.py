"""The value returned by :func:`napari_fusion.fuse`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class FusionResult:
    """Outputs of one fusion run.

    Attributes
    ----------
    fused:
        The fused image, same dtype as the inputs (uint8, uint16 or float32) and
        the same layout: ``(H, W)`` for grey inputs, ``(H, W, C)`` for colour.
    labels:
        ``(H, W)`` integer map naming the source each pixel came from (0-based
        index into the inputs), or ``None`` for methods that do not choose
        (e.g. plain averaging).
    weights:
        Optional ``(N, H, W)`` float32 per-source weight maps.
    depth:
        Optional ``(H, W)`` float32 map of the chosen slice's position, computed
        from ``labels`` and the slice positions (slice index by default).
    method:
        Registry name of the method that produced the result.
    params:
        The full parameter set used (defaults filled in), for provenance.
    extras:
        Method-specific additional maps, e.g. a focus map.
    """

    fused: Any
    labels: Any | None = None
    weights: Any | None = None
    depth: Any | None = None
    method: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:  # pragma: no cover - cosmetic
        def desc(a):
            if a is None:
                return "None"
            return f"{type(a).__name__}{tuple(a.shape)} {a.dtype}"

        return (
            f"FusionResult(method={self.method!r}, fused={desc(self.fused)}, "
            f"labels={desc(self.labels)}, weights={desc(self.weights)}, "
            f"depth={desc(self.depth)})"
        )

    @property
    def n_sources_used(self) -> int:
        """Number of distinct sources that appear in ``labels`` (0 if no labels)."""
        if self.labels is None:
            return 0
        return int(np.unique(np.asarray(self.labels)).size)
