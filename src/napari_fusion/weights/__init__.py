"""Weights of the learned methods, shipped and fetched alike: find, verify, load once.

* :mod:`.catalogue`: downloadable weights (e.g. torchvision's VGG19), each
  described by a :class:`WeightsSpec`; located (user path, environment
  variable, package, torch hub cache), checked against the spec's SHA-256,
  fetched with ``napari-fusion weights fetch <name>``.
* :mod:`.verified`: weights trained here and released with a JSON manifest;
  the package's own (:data:`PACKAGE_WEIGHTS_DIR`) are also checked against the
  in-code table :mod:`napari_fusion.shipped_weights`; read with
  ``weights_only=True`` so a tampered file cannot run code.
* :mod:`.loading`: what methods call, by name: :func:`load_shipped` /
  :func:`load_catalogued` verify, build (a method's callable) and cache by
  (path, modification time, size, device).

A method never falls back to random weights. Inference code imports this
package, never :mod:`napari_fusion.training` (which imports the verification
from here for its own checks).
"""

from __future__ import annotations

from . import catalogue, loading, verified  # noqa: F401  (submodules, e.g. for monkeypatching in tests)
from .catalogue import *  # noqa: F401,F403
from .catalogue import __all__ as _catalogue_all
from .loading import *  # noqa: F401,F403
from .loading import __all__ as _loading_all
from .verified import *  # noqa: F401,F403
from .verified import __all__ as _verified_all

__all__ = [*_catalogue_all, *_verified_all, *_loading_all]
