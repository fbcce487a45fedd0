"""Old home of the ``fuse`` subcommand, now :mod:`napari_fusion.cli.fuse`.

Kept only because :func:`napari_fusion.demo.run_demo` imports ``_TqdmProgress``
from here; delete this file once demo.py imports
``napari_fusion.cli._progress.TqdmProgress``.
"""

from .cli._progress import TqdmProgress as _TqdmProgress

__all__ = ["_TqdmProgress"]
