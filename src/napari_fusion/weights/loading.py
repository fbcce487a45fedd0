"""Load weights once: verified, built into what a method runs, cached.

Methods ask by name and say how to turn the verified tensors into what they
run (a ``build`` callable)::

    net = load_shipped("csc_mefn", device=dev, build=_build, path=user_path,
                       expect={"method": "csc_mefn"}, how_to_get=how_to_train("csc_mefn"))

``load_shipped`` finds the file (the user's ``path``, else the package's
``trained_weights/<name>.pt``), verifies it (:func:`~.verified.load_verified_weights`:
manifest sha256, the in-code table for package files, ``expect``), calls
``build(LoadedWeights)`` once and caches the result by (path, modification
time, size, device, name). :func:`load_catalogued` does the same for the
downloadable weights of the catalogue (:mod:`.catalogue`, e.g. torchvision's
VGG19), which are verified against their spec instead of a manifest.

``build`` runs outside inference mode and without autograd, so the cached
object holds ordinary tensors that later calls (in or outside inference mode)
can use. The cache keeps the :data:`MAX_ENTRIES` most recently used objects.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from .catalogue import WeightsSpec, load_state_dict, locate_weights
from .verified import load_verified_weights, shipped_path

T = TypeVar("T")

#: How many built objects the cache keeps (least recently used ones go first).
MAX_ENTRIES = 8

_LOCK = threading.RLock()
_CACHE: OrderedDict[tuple, tuple[tuple[int, int], Any]] = OrderedDict()


@dataclass(frozen=True)
class LoadedWeights:
    """What a ``build`` callable gets: verified tensors, their manifest, their file, the device."""

    state: dict[str, Any]
    manifest: dict[str, Any]  # empty for catalogue weights (they have none)
    path: Path
    device: Any  # torch.device


def how_to_train(model: str, *, options: str = "--config cpu", param: str = "weights") -> str:
    """The usual hint appended to errors about missing or refused trained weights."""
    return (
        f"Train them with `napari-fusion train {model} {options} --install` "
        f"or pass {param}=<path to a .pt with its .json manifest>."
    )


def clear_cache() -> None:
    """Forget every loaded object (the next request reads and verifies its file again)."""
    with _LOCK:
        _CACHE.clear()


def _stamp(path: Path) -> tuple[int, int]:
    st = path.stat()
    return (st.st_mtime_ns, st.st_size)


def _freeze(expect: dict[str, Any] | None) -> tuple:
    return tuple(sorted((k, repr(v)) for k, v in (expect or {}).items()))


def _cached(key: tuple, path: Path, make: Callable[[], T]) -> T:
    import torch

    stamp = _stamp(path)
    with _LOCK:
        hit = _CACHE.get(key)
        if hit is not None and hit[0] == stamp:
            _CACHE.move_to_end(key)
            return hit[1]
        with torch.inference_mode(False), torch.no_grad():
            value = make()
        _CACHE[key] = (stamp, value)
        _CACHE.move_to_end(key)
        while len(_CACHE) > MAX_ENTRIES:
            _CACHE.popitem(last=False)
        return value


def load_weights(
    path: str | Path,
    *,
    build: Callable[[LoadedWeights], T],
    device: Any = "cpu",
    expect: dict[str, Any] | None = None,
    how_to_get: str = "",
    name: str = "",
) -> T:
    """``build`` applied to the verified released weights at ``path``, cached."""
    import torch

    p = Path(path).expanduser()
    dev = torch.device(device)
    if not p.is_file():  # raises the loader's "not found" message
        load_verified_weights(p, how_to_get=how_to_get, expect=expect)
    key = ("released", str(p.resolve()), str(dev), name, _freeze(expect))

    def make() -> T:
        state, manifest = load_verified_weights(p, how_to_get=how_to_get, expect=expect)
        return build(LoadedWeights(state, manifest, p, dev))

    return _cached(key, p, make)


def load_shipped(
    name: str,
    *,
    build: Callable[[LoadedWeights], T],
    device: Any = "cpu",
    path: str | Path | None = None,
    expect: dict[str, Any] | None = None,
    how_to_get: str = "",
) -> T:
    """The shipped weights ``name`` (or the file ``path`` when given), verified, built and cached."""
    p = Path(path).expanduser() if path else shipped_path(name)
    return load_weights(p, build=build, device=device, expect=expect, how_to_get=how_to_get, name=name)


def load_catalogued(
    spec: str | WeightsSpec,
    path: str | Path | None = None,
    *,
    build: Callable[[LoadedWeights], T],
    device: Any = "cpu",
) -> T:
    """Catalogue weights (located and sha256-checked against their spec), built and cached."""
    import torch

    loc = locate_weights(spec, path)
    dev = torch.device(device)
    key = ("catalogue", str(loc.path.resolve()), str(dev), loc.sha256)

    def make() -> T:
        return build(LoadedWeights(load_state_dict(loc.path), {}, loc.path, dev))

    return _cached(key, loc.path, make)


__all__ = [
    "LoadedWeights",
    "MAX_ENTRIES",
    "how_to_train",
    "clear_cache",
    "load_weights",
    "load_shipped",
    "load_catalogued",
]
