"""Exceptions raised by napari-fusion.

Every problem with user input is reported as a :class:`FusionInputError` (a
``ValueError``) whose message names the problem, so callers never see a
traceback from deep inside torch or numpy.
"""

from __future__ import annotations


class FusionError(Exception):
    """Base class of all napari-fusion errors."""


class FusionInputError(FusionError, ValueError):
    """The images, method name or parameters given to a fusion call are invalid."""


class FusionCancelled(FusionError):
    """Raised from a progress callback to stop a fusion run early."""


class WeightsUnavailableError(FusionError, RuntimeError):
    """A learned method's weights cannot be found; the message says how to get them."""


class FusionOutputError(FusionError, ValueError):
    """An output cannot be written safely: it would overwrite an input or an existing file,
    lies inside an input, or its folder cannot be written. Raised before any work is done."""
