"""The input chunks of a tiled run, read by the tiles themselves through a small bounded cache.

A tile's block (its core and halo) overlaps several chunks of the input, and each chunk is
shared with the neighbouring tiles. Given as dask dependencies, a chunk stays in memory until
every tile that reads it has run: with tiles computed row after row, a band of chunks as wide as
the image. On a 10 x 8192^2 uint16 stack in 512 px chunks, fused in 448 px tiles, dask held up to
330 MiB of input chunks (734 of them) at once, and a long run's resident size crept up tile after
tile (2026-12-02). Here each tile task reads the chunks it needs itself (:class:`InputChunks`):
a chunk is kept only in a least-recently-used cache sized for the tiles computed side by side
(:func:`cache_bytes`), so the next tile along a row finds the chunks it shares with the last
one, and the input held is bounded by the tile size, whatever the image size.

Each chunk is computed from the input's own dask graph (culled to that chunk), so any dask
array works: files read in parts, zarr, arrays made in memory. Chunks of tiles in other rows
are read again when their row comes (measured in ``docs/lazy.md``).
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


def span_bytes(
    block: tuple[int, int],
    *,
    chunks: tuple[int, int],
    shape: tuple[int, int],
    plane_bytes: int,
) -> int:
    """Bytes of the input chunks a block of ``block`` pixels can overlap at most: at most
    ``ceil(side / chunk) + 1`` chunks along each axis (a block that does not start on a chunk
    edge), and never more than the image. ``plane_bytes`` is the bytes of one pixel of every
    slice and channel (slices x channels x itemsize)."""
    sides = []
    for b, c, s in zip(block, chunks, shape):
        c = max(1, int(c))
        sides.append(min((math.ceil(int(b) / c) + 1) * c, int(s)))
    return sides[0] * sides[1] * int(plane_bytes)


def cache_bytes(
    block: tuple[int, int],
    *,
    chunks: tuple[int, int],
    shape: tuple[int, int],
    plane_bytes: int,
    workers: int,
) -> int:
    """Bytes of input chunks a tiled run keeps: those of ``workers`` blocks (the tiles computed
    side by side), and never more than the whole input."""
    whole = int(shape[0]) * int(shape[1]) * int(plane_bytes)
    return min(max(1, int(workers)) * span_bytes(block, chunks=chunks, shape=shape, plane_bytes=plane_bytes), whole)


class InputChunks:
    """Reads chunks of one dask array by key, each through a least-recently-used cache of
    ``max_bytes`` shared by the threads of the run (a chunk larger than that is not kept).

    Thread-safe. Two threads that miss the same chunk at once both read it (no lock is held
    while reading). ``reads`` counts the chunks read (cache misses), for tests and benchmarks.
    """

    def __init__(self, array: Any, max_bytes: int):
        self.name = array.name
        self.max_bytes = int(max_bytes)
        self._graph = dict(array.__dask_graph__())
        self._items: OrderedDict[Any, np.ndarray] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.reads = 0
        self.held_peak = 0

    def read(self, keys: Sequence[Any]) -> list[np.ndarray]:
        """The chunks of ``keys`` (dask keys of the array), in that order."""
        return [self._chunk(key) for key in keys]

    def _chunk(self, key: Any) -> np.ndarray:
        with self._lock:
            hit = self._items.get(key)
            if hit is not None:
                self._items.move_to_end(key)
                return hit
        value = self._compute(key)
        with self._lock:
            self.reads += 1
            if value.nbytes <= self.max_bytes and key not in self._items:
                self._items[key] = value
                self._bytes += value.nbytes
                while self._bytes > self.max_bytes:
                    _, old = self._items.popitem(last=False)
                    self._bytes -= old.nbytes
                self.held_peak = max(self.held_peak, self._bytes)
        return value

    def _compute(self, key: Any) -> np.ndarray:
        from dask.local import get_sync
        from dask.optimization import cull

        graph, _ = cull(self._graph, [key])
        # callbacks=[]: none of dask's process-wide callbacks (napari's chunk cache registers
        # one), and none swapped out of the global set, which other threads are using
        return np.asarray(get_sync(graph, key, callbacks=[]))

    def clear(self) -> None:
        """Drop the cached chunks (at the end of a compute: the memory goes back)."""
        with self._lock:
            self._items.clear()
            self._bytes = 0

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_items"] = OrderedDict()
        state["_bytes"] = 0
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()


@dataclass(frozen=True)
class ChunkRead:
    """A tile task's input: the keys of the chunks it reads through ``chunks`` (an opaque
    argument to dask, so the keys are not dependencies of the task)."""

    chunks: InputChunks
    keys: tuple[Any, ...]

    def read(self) -> list[np.ndarray]:
        return self.chunks.read(self.keys)


__all__ = ["ChunkRead", "InputChunks", "cache_bytes", "span_bytes"]
