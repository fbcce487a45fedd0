"""napari-fusion: image fusion for scientists.

Core library with no napari or Qt import::

    import napari_fusion as nf
    result = nf.fuse(stack, method="focus_measure")
    result.fused, result.labels, result.depth

See :func:`fuse`, :func:`list_methods` and ``docs/architecture.md``.
"""

from .api import DEFAULT_METHOD, fuse
from .errors import FusionCancelled, FusionError, FusionInputError, FusionOutputError, WeightsUnavailableError
from .registry import MethodSpec, Param, get_method, list_methods
from .results import FusionResult
from .upsample import UPSAMPLE_METHODS, guided_upsample

__version__ = "0.1.0"

__all__ = [
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
