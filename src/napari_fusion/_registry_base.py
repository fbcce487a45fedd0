"""A small name -> item registry shared by the method, metric (and other) catalogues.

Every catalogue in the package has the same four needs: add an entry once
(a second entry under one name is a mistake), find an entry by name with a
clear error that lists what exists, list the entries, and, in tests and
plugins, remove an entry again. :class:`Registry` does exactly that::

    _THINGS: Registry[Thing] = Registry("thing")
    _THINGS.register("a", thing)          # ValueError if "a" is taken
    _THINGS.get("b")                      # FusionInputError: unknown thing 'b'; available things: a
    with _THINGS.temporarily("b", other): # registered inside the block only
        ...

``loader`` (optional) is called before every look-up and listing: it imports
the modules whose import registers the built-in entries (for methods, the
``methods`` package), so a catalogue fills itself on first use.

Existing public dicts stay valid: :attr:`Registry.entries` *is* the live
dict, so ``METRICS = registry.entries`` keeps ``METRICS[name]``,
``METRICS.items()`` and insertion order working.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from .errors import FusionInputError

T = TypeVar("T")

#: Default text of the error for an unknown name; ``{kind}``, ``{plural}``, ``{name}``
#: (already ``repr``-quoted) and ``{names}`` (comma-separated, or "none") are filled in.
UNKNOWN_MESSAGE = "unknown {kind} {name}; available {plural}: {names}"


class Registry(Generic[T]):
    """Entries of one kind, by name (insertion order kept).

    Parameters
    ----------
    kind:
        What an entry is, for messages ("method", "metric").
    plural:
        Plural of ``kind`` (default ``kind + "s"``).
    loader:
        Called before look-ups and listings to register the built-in entries.
    sort_names:
        List names alphabetically in the unknown-name error (else in
        registration order).
    unknown_message:
        Template of the unknown-name error (see :data:`UNKNOWN_MESSAGE`).
    """

    def __init__(
        self,
        kind: str,
        *,
        plural: str | None = None,
        loader: Callable[[], None] | None = None,
        sort_names: bool = True,
        unknown_message: str = UNKNOWN_MESSAGE,
    ):
        self.kind = kind
        self.plural = plural or f"{kind}s"
        self._loader = loader
        self._sort_names = sort_names
        self._unknown_message = unknown_message
        #: The live ``name -> item`` dict (read it freely; add through :meth:`register`).
        self.entries: dict[str, T] = {}

    # ------------------------------------------------------------------ changes

    def register(self, name: str, item: T) -> T:
        """Add ``item`` under ``name``; a name already taken raises ``ValueError``."""
        if name in self.entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self.entries[name] = item
        return item

    def unregister(self, name: str) -> T | None:
        """Remove and return the entry ``name`` (None if there is none)."""
        return self.entries.pop(name, None)

    @contextlib.contextmanager
    def temporarily(self, name: str, item: T) -> Iterator[T]:
        """Register ``item`` under ``name`` for the ``with`` block only (tests, experiments)."""
        self.register(name, item)
        try:
            yield item
        finally:
            if self.entries.get(name) is item:
                self.unregister(name)

    # ------------------------------------------------------------------ look-ups

    def ensure_loaded(self) -> None:
        """Register the built-in entries (runs the loader; cheap after the first call)."""
        if self._loader is not None:
            self._loader()

    def get(self, name: str) -> T:
        """The entry ``name``; an unknown name raises :class:`FusionInputError` listing the known ones."""
        self.ensure_loaded()
        try:
            return self.entries[name]
        except KeyError:
            raise FusionInputError(self.unknown(name)) from None

    def unknown(self, name: str) -> str:
        """The error text for an unknown ``name``."""
        names = sorted(self.entries) if self._sort_names else list(self.entries)
        return self._unknown_message.format(
            kind=self.kind, plural=self.plural, name=repr(name), names=", ".join(names) or "none"
        )

    def names(self) -> list[str]:
        """Registered names, in registration order."""
        self.ensure_loaded()
        return list(self.entries)

    def values(self) -> list[T]:
        """Registered entries, in registration order."""
        self.ensure_loaded()
        return list(self.entries.values())

    def __contains__(self, name: object) -> bool:
        self.ensure_loaded()
        return name in self.entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        self.ensure_loaded()
        return len(self.entries)

    def __repr__(self) -> str:  # pragma: no cover - cosmetic
        return f"Registry({self.kind!r}, {len(self.entries)} entries)"


__all__ = ["Registry", "UNKNOWN_MESSAGE"]
