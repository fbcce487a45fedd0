"""Constants needed both by the library and by the command line's parsers.

This module imports nothing, so ``napari-fusion --help`` and argument errors
can use these values without importing torch (see :mod:`napari_fusion.cli`).
"""

#: Method used by :func:`napari_fusion.fuse`, :func:`napari_fusion.focalstack.fuse_focal_stack`,
#: ``napari-fusion fuse``, ``demo``, ``batch`` and the Focal stack widget when none is named.
#: Chosen on the physical ground-truth benchmark of microscope stacks and checked on the
#: photographic one (``benchmarks/microscopy_gt.py``, ``docs/focalstack.md``); it was
#: ``focus_measure`` before.
DEFAULT_METHOD = "focus_pyramid"
