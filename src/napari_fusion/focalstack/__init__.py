"""Focal-stack workflow: alignment, height maps in physical units, retouching
by recomposition from edited labels, multichannel / time-lapse / deep stacks,
and batch processing. Core only (no napari import); see docs/focalstack.md.

One job per module:

* :mod:`.align` - optional translation / similarity alignment, chained between neighbours;
* :mod:`.height` - streaming decision and sub-slice height map in physical units;
* :mod:`.recompose` - fused image from (edited) 0-based labels, napari label conversion;
* :mod:`.pipeline` - one stack end to end (align, decide on a reference channel, fuse, height);
* :mod:`.slabs` - very deep stacks decided in sub-stacks, labels carried to original slices;
* :mod:`.timelapse` - ``(T, Z, Y, X[, C])`` data, one lazy task per time point;
* :mod:`.batch` - the ``napari-fusion batch`` command.
"""

from .align import Alignment, align_stack, apply_alignment, estimate_alignment, phase_correlation
from .height import HeightMap, decide, height_map, height_surface, index_to_z, z_positions_for
from .pipeline import FocalStackResult, default_blend, fuse_focal_stack
from .recompose import BLENDS, labels_from_napari, labels_to_napari, recompose
from .slabs import decide_in_slabs, slab_bounds
from .timelapse import TimelapseResult, fuse_timelapse

__all__ = [
    "Alignment",
    "align_stack",
    "apply_alignment",
    "estimate_alignment",
    "phase_correlation",
    "HeightMap",
    "decide",
    "height_map",
    "height_surface",
    "index_to_z",
    "z_positions_for",
    "FocalStackResult",
    "default_blend",
    "fuse_focal_stack",
    "BLENDS",
    "labels_from_napari",
    "labels_to_napari",
    "recompose",
    "decide_in_slabs",
    "slab_bounds",
    "TimelapseResult",
    "fuse_timelapse",
]
