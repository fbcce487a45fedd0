"""Constants needed both by the library and by the command line's parsers.

This module imports nothing, so ``napari-fusion --help`` and argument errors
can use these values without importing torch (see :mod:`napari_fusion.cli`).
"""

#: Method used by :func:`napari_fusion.fuse`, ``napari-fusion fuse``, ``demo`` and ``batch``
#: when none is named.
DEFAULT_METHOD = "focus_measure"
