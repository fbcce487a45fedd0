"""napari-fusion: image fusion for scientists.

Core library with no napari or Qt import::

    import napari_fusion as nf
    result = nf.fuse(stack, method="focus_measure")
    result.fused, result.labels, result.depth

See :func:`fuse`, :func:`list_methods` and ``docs/architecture.md``.

The public names below are imported on first use (PEP 562), so that
``import napari_fusion`` (and with it the command line's ``--help``) does not
import torch; only the light error classes are imported eagerly.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import (
    FusionCancelled,
    FusionError,
    FusionInputError,
    FusionOutputError,
    WeightsUnavailableError,
)

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from ._defaults import DEFAULT_METHOD
    from .api import fuse
    from .registry import MethodSpec, Param, get_method, list_methods
    from .results import FusionResult
    from .upsample import UPSAMPLE_METHODS, guided_upsample

__version__ = "0.1.0"

#: public name -> module that defines it, imported on first access
_LAZY = {
    "fuse": ".api",
    "list_methods": ".registry",
    "get_method": ".registry",
    "FusionResult": ".results",
    "guided_upsample": ".upsample",
    "UPSAMPLE_METHODS": ".upsample",
    "MethodSpec": ".registry",
    "Param": ".registry",
    "DEFAULT_METHOD": "._defaults",
}

__all__ = [  # noqa: RUF022 - public API order, as documented
    "fuse",
    "list_methods",
    "get_method",
    "FusionResult",
    "guided_upsample",
    "UPSAMPLE_METHODS",
    "MethodSpec",
    "Param",
    "DEFAULT_METHOD",
    "FusionError",
    "FusionInputError",
    "FusionOutputError",
    "FusionCancelled",
    "WeightsUnavailableError",
    "__version__",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
