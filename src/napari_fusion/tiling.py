"""Lazy, tiled fusion of stacks larger than memory, on one machine or a dask cluster.

:func:`napari_fusion.fuse` comes here when ``images`` is a dask (or zarr)
array, or when ``chunks=`` is given. Nothing is fused at call time: the
result's ``fused``, ``labels`` and ``depth`` are dask arrays whose blocks are
the tiles, so napari (or ``.compute()``, or :func:`napari_fusion.io.write_lazy`)
computes only the tiles it needs, on the threaded scheduler or on whatever
``dask.distributed`` client is active.

How a tile is computed
----------------------
The image plane is cut into a grid of *cores* (the tile size). Each core is
computed from a *block*: the core grown by the method's halo
(:meth:`MethodSpec.halo_for`) on every side, clipped at the image border.
The method runs on the whole block with its usual border handling and only
the core is kept. Where the block reaches the image border, the method sees
the same border as in an untiled run; elsewhere the halo is at least the
method's receptive field, so whatever the method's padding does at the block
edge cannot reach the core. The result is therefore the untiled result, up to
float rounding (box filters use cumulative sums, whose rounding depends on
where a block starts; see ``docs/lazy.md`` for measured differences).

Global steps are handled as follows:

* intensity scaling (``_inputs``: the whole stack's min/max mapped to [0, 1])
  uses global statistics computed first, in one dask reduction, then every
  tile is scaled with them, exactly as the untiled path does;
* pyramid methods with a fixed number of levels (a ``levels`` parameter) get
  tile origins aligned to ``2**(levels - 1)`` so every pyramid level of every
  tile samples the same global grid;
* a method's own whole-image steps (``ctx.whole_image_map`` / ``_stat``:
  region removal, percentiles, histograms, the coarse levels of a pyramid whose
  depth follows the image size) are computed in collect passes over the tiles
  before the lazy result is made (:func:`collect_steps`,
  :mod:`napari_fusion.whole_image`);
* a two-input method folded over N slices gets its halo times the fold's chained steps
  (N - 1 sequentially, ceil(log2 N) as a tree);
* methods whose halo is ``None`` (global with these parameters) are refused
  with a clear message, unless one tile covers the whole image.

Device and memory: each tile is moved to the requested device (``"auto"`` is
resolved on the machine that runs the tile, so GPU workers use their GPU).
When a tile runs out of device memory it is split into four sub-tiles (each
with the same halo, cut from the block already in memory) and retried,
recursively, down to :data:`MIN_RETRY_TILE` pixels.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import operator
import sys
import threading
import uuid
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from ._engine import fold_height, label_dtype, output_planes, run_method, slice_positions
from ._inputs import (
    PreparedStack,
    check_items,
    intensity_mapping,
    non_finite_message,
    scale_stack,
    split_stack,
)
from ._tile_inputs import ChunkRead, InputChunks, cache_bytes
from .device import resolve_device
from .errors import FusionCancelled, FusionError, FusionInputError
from .ops.pyramids import SPLIT_LEVEL
from .ops.tiles import (
    free_device_memory,
    is_out_of_memory,
    keep_large_allocations_mapped,
    release_freed_memory,
    threads_per_tile,
    torch_threads,
)
from .registry import FOLD_DEFAULT, FOLD_PARAM, FusionContext, MethodSpec, get_method
from .results import FusionResult
from .whole_image import MAX_PASSES, Collected, CollectedMany, KnownMap, StepResults, TileSteps, unpacked

log = logging.getLogger(__name__)

#: Tile size used for ``chunks="auto"`` and for in-memory inputs given ``chunks=True``.
DEFAULT_TILE = 1024
#: An out-of-memory tile is split until its core is smaller than this (pixels per side).
MIN_RETRY_TILE = 32
#: Prefix of the dask keys of tile tasks (progress callbacks count these).
TILE_KEY_PREFIX = "napari-fusion-tile"

#: Tile-origin alignment per method name, for methods whose tiles must start on a
#: coarser grid than the generic ``levels`` rule gives. ``name -> f(params) -> int``.
TILE_ALIGN: dict[str, Callable[[dict[str, Any]], int]] = {
    # patches on a grid of ``stride`` pixels from the image origin: tiles must start on it
    "veshki_cdl": lambda p: int(p.get("stride", 1)),
    # the CNN scores 16x16 patches at a stride of 2 pixels from the image origin
    "liu2017_cnn": lambda p: 2,
    "liu2017_cnn_nway": lambda p: 2,
    # VGG19 features down to conv4_1 are on a grid of 8 pixels from the image origin
    "li2018_vgg19": lambda p: 8,
    # levels=0: the depth follows the image; tiles compute the finest SPLIT_LEVEL band levels
    "laplacian_pyramid": lambda p: _pyramid_alignment(p["levels"]),
    "mertens": lambda p: _pyramid_alignment(p["levels"]),
}


def _pyramid_alignment(levels: int) -> int:
    """Tile origins of a ``levels``-level pyramid: on its coarsest level's grid; with ``levels=0``
    (split at :data:`~napari_fusion.ops.pyramids.SPLIT_LEVEL`, the coarser levels from the whole
    image) on the split level's grid."""
    return 2 ** (levels - 1) if levels > 1 else (2**SPLIT_LEVEL if levels == 0 else 1)


# --------------------------------------------------------------------------- detection


def _is_dask(x: Any) -> bool:
    return type(x).__module__.split(".")[0] == "dask" and hasattr(x, "chunks") and hasattr(x, "dask")


def _is_zarr(x: Any) -> bool:
    return type(x).__module__.split(".")[0] == "zarr" and hasattr(x, "shape") and hasattr(x, "dtype")


def is_lazy(images: Any) -> bool:
    """True for a dask or zarr array, or a sequence of them (these are fused lazily)."""
    if _is_dask(images) or _is_zarr(images):
        return True
    if isinstance(images, (list, tuple)) and images:
        return any(_is_dask(a) or _is_zarr(a) for a in images)
    return False


def wants_tiling(images: Any, chunks: Any) -> bool:
    """Whether :func:`napari_fusion.fuse` should take the lazy, tiled path."""
    return chunks is not None or is_lazy(images)


# --------------------------------------------------------------------------- tile grid


@dataclass(frozen=True)
class Tile:
    """One tile: its grid index, its core and its block (core + halo), in image pixels."""

    index: tuple[int, int]
    core: tuple[int, int, int, int]  # y0, y1, x0, x1
    block: tuple[int, int, int, int]

    @property
    def core_in_block(self) -> tuple[slice, slice]:
        y0, y1, x0, x1 = self.core
        by0, _, bx0, _ = self.block
        return slice(y0 - by0, y1 - by0), slice(x0 - bx0, x1 - bx0)


def block_of(core: tuple[int, int, int, int], halo: int, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """The core grown by ``halo`` on each side, clipped to the image."""
    y0, y1, x0, x1 = core
    h, w = shape
    return max(0, y0 - halo), min(h, y1 + halo), max(0, x0 - halo), min(w, x1 + halo)


@dataclass(frozen=True)
class TileGrid:
    """The tiles covering an ``(H, W)`` image with cores of ``tile`` pixels."""

    shape: tuple[int, int]
    tile: tuple[int, int]
    halo: int
    align: int = 1

    @property
    def row_edges(self) -> list[int]:
        return list(range(0, self.shape[0], self.tile[0])) + [self.shape[0]]

    @property
    def col_edges(self) -> list[int]:
        return list(range(0, self.shape[1], self.tile[1])) + [self.shape[1]]

    @property
    def grid_shape(self) -> tuple[int, int]:
        return len(self.row_edges) - 1, len(self.col_edges) - 1

    @property
    def n_tiles(self) -> int:
        r, c = self.grid_shape
        return r * c

    def tiles(self) -> Iterator[Tile]:
        re, ce = self.row_edges, self.col_edges
        for i in range(len(re) - 1):
            for j in range(len(ce) - 1):
                core = (re[i], re[i + 1], ce[j], ce[j + 1])
                yield Tile((i, j), core, block_of(core, self.halo, self.shape))

    @property
    def chunks(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Dask chunks of the outputs (one block per tile)."""
        re, ce = self.row_edges, self.col_edges
        return tuple(np.diff(re).tolist()), tuple(np.diff(ce).tolist())


def tile_alignment(spec: MethodSpec, params: dict[str, Any]) -> int:
    """Pixels that tile origins must be a multiple of for ``spec`` to tile seamlessly.

    Pyramid methods (a ``levels`` parameter > 0) decimate by 2 per level, so a
    tile must start on a multiple of ``2**(levels - 1)`` for its coarse levels
    to sample the same pixels as the untiled pyramid. Other methods: 1.
    Override per method in :data:`TILE_ALIGN`.
    """
    if spec.name in TILE_ALIGN:
        return max(1, int(TILE_ALIGN[spec.name](params)))
    levels = params.get("levels")
    if isinstance(levels, int) and not isinstance(levels, bool) and levels > 1:
        return 2 ** (levels - 1)
    return 1


def _round_up(value: int, multiple: int) -> int:
    return int(math.ceil(value / multiple) * multiple)


def normalise_tile(chunks: Any, shape: tuple[int, int], input_chunks: tuple[int, int] | None) -> tuple[int, int]:
    """Tile (core) size from the user's ``chunks``: int, ``(rows, cols)``, ``"auto"``, or None."""
    if chunks is None or chunks is True:
        if input_chunks is not None:
            return input_chunks
        chunks = "auto"
    if isinstance(chunks, str):
        if chunks != "auto":
            raise FusionInputError(f"chunks must be an int, (rows, cols) or 'auto'; got {chunks!r}")
        return min(DEFAULT_TILE, shape[0]), min(DEFAULT_TILE, shape[1])
    if isinstance(chunks, (int, np.integer)) and not isinstance(chunks, bool):
        pair = (int(chunks), int(chunks))
    elif isinstance(chunks, (tuple, list)) and len(chunks) == 2:
        pair = tuple(chunks)
    else:
        raise FusionInputError(f"chunks must be an int, (rows, cols) or 'auto'; got {chunks!r}")
    out = []
    for v in pair:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise FusionInputError(f"chunks must be positive whole numbers of pixels; got {chunks!r}")
        out.append(int(v))
    return out[0], out[1]


# --------------------------------------------------------------------------- OOM handling


def _split_range(a: int, b: int, align: int) -> list[tuple[int, int]]:
    """Halve ``[a, b)`` at an aligned point, or return it whole if it cannot be split."""
    size = b - a
    if size < 2 * MIN_RETRY_TILE:
        return [(a, b)]
    mid = a + (size // 2) // align * align
    if mid <= a or mid >= b:
        return [(a, b)]
    return [(a, mid), (mid, b)]


def _split_range_into(a: int, b: int, size: int, align: int) -> list[tuple[int, int]]:
    """``[a, b)`` cut into the fewest parts of at most ``size`` (rounded down to a multiple of
    ``align``, at least ``align``), of nearly equal aligned lengths; the last part takes the rest."""
    size = max(align, size // align * align)
    parts = -(-(b - a) // size)
    step = min(size, _round_up(-(-(b - a) // parts), align))
    edges = list(range(a, b, step)) + [b]
    return list(itertools.pairwise(edges))


# --------------------------------------------------------------------------- the tile job


@dataclass
class TileJob:
    """Everything a worker needs to fuse one tile (picklable; sent to dask workers)."""

    spec: MethodSpec
    params: dict[str, Any]
    shape: tuple[int, int]
    halo: int
    align: int
    n: int
    colour: bool
    dtype: np.dtype
    offset: float
    scale: float
    out_low: float
    out_high: float
    positions: np.ndarray
    device: str
    want_labels: bool
    want_depth: bool
    #: Unique per lazy result: the key of its tiles in :data:`TILE_CACHE` (never shared between fusions).
    run_id: str = ""
    #: Whole-image steps found by the collect passes (None: the method has none with these params).
    steps: StepResults | None = None
    #: A collect pass: tiles return their parts of the next unknown whole-image steps.
    collecting: bool = False
    #: In a collect pass of a folded two-input method: the deepest fold step (pair steps chained
    #: beneath it) the tiles compute, the one their context covers (None: no limit).
    depth_limit: int | None = None
    #: Torch threads of a tile computed side by side with others, and the count to restore after
    #: it (None: the caller's count; set by :func:`_tile_graph` from
    #: :func:`~napari_fusion.ops.tiles.threads_per_tile`).
    threads: tuple[int, int] | None = None
    #: Compute each tile as sub-tiles of at most ``(rows, cols)`` core pixels, each grown by its own
    #: halo, and join their outputs: the tile's working set fitted to the run's memory budget while
    #: the output keeps the tile's chunks (set by :func:`fuse_lazy` from :func:`sub_tile_for`;
    #: None: whole tiles).
    sub_tile: tuple[int, int] | None = None

    def __call__(self, block: np.ndarray, block_box: tuple, core: tuple) -> dict[str, np.ndarray]:
        """Fuse ``block`` (the stack over ``block_box``) and return the outputs over ``core``.

        Boxes are ``(y0, y1, x0, x1)`` in image pixels. The memory the tile freed goes back to the
        system when it ends (:func:`~napari_fusion.ops.tiles.release_freed_memory`), and large
        allocations are unmapped when freed (:func:`~napari_fusion.ops.tiles.keep_large_allocations_mapped`).
        The tile runs with :attr:`threads` torch threads in the calling thread.
        """
        keep_large_allocations_mapped()
        try:
            with torch_threads(self.threads):
                return self.run(np.asarray(block), tuple(block_box), tuple(core))
        finally:
            release_freed_memory()

    def run(self, block: np.ndarray, block_box, core, *, split: bool = False) -> dict[str, np.ndarray]:
        """The tile's outputs: those of its sub-tiles (:attr:`sub_tile`) joined, if it has any; on
        running out of memory, those of its quarters (``split``), and so on."""
        if not split and self.sub_tile is not None:
            rows = _split_range_into(core[0], core[1], self.sub_tile[0], self.align)
            cols = _split_range_into(core[2], core[3], self.sub_tile[1], self.align)
            if len(rows) > 1 or len(cols) > 1:
                return self._run_parts(block, block_box, rows, cols)
        try:
            return self._run_once(block, block_box, core, split=split)
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            reason = f"{type(exc).__name__}: {exc}"
        # Retry outside the except clause: the failed attempt's traceback, and with it the
        # tensors its frames hold, is released only once the clause is left.
        free_device_memory()
        y0, y1, x0, x1 = core
        rows = _split_range(y0, y1, self.align)
        cols = _split_range(x0, x1, self.align)
        if len(rows) == 1 and len(cols) == 1:
            raise FusionError(
                f"out of memory on {self.device!r} even for a tile of {y1 - y0}x{x1 - x0} pixels "
                f"(plus a halo of {self.halo}); use a smaller stack depth, device='cpu', or free memory "
                f"({reason})"
            )
        log.info("out of memory on a %dx%d tile; retrying as %d sub-tiles", y1 - y0, x1 - x0, len(rows) * len(cols))
        return self._run_parts(block, block_box, rows, cols)

    def _run_parts(self, block: np.ndarray, block_box, rows, cols) -> dict[str, np.ndarray]:
        """The outputs of the sub-tiles ``rows x cols`` (core ranges) of ``block``, joined."""
        parts = []
        for ry0, ry1 in rows:
            row = []
            for rx0, rx1 in cols:
                sub_core = (ry0, ry1, rx0, rx1)
                sub_box = block_of(sub_core, self.halo, self.shape)
                sub = block[
                    :,
                    sub_box[0] - block_box[0] : sub_box[1] - block_box[0],
                    sub_box[2] - block_box[2] : sub_box[3] - block_box[2],
                ]
                row.append(self.run(sub, sub_box, sub_core, split=True))
            parts.append(row)
        return _merge_parts(parts)

    def _run_once(self, block: np.ndarray, block_box, core, *, split: bool = False) -> dict[str, np.ndarray]:
        data = scale_stack(block, colour=self.colour, offset=self.offset, scale=self.scale)
        prepared = PreparedStack(data, self.dtype, self.colour, self.offset, self.scale, self.out_low, self.out_high)
        dev = resolve_device(self.device)
        y0, y1, x0, x1 = core
        cy = slice(y0 - block_box[0], y1 - block_box[0])
        cx = slice(x0 - block_box[2], x1 - block_box[2])
        # a tile knows it is one: a whole-image step no pass collected is an error, never silently
        # computed on the tile alone; a block that is the whole image (one tile) runs as untiled
        whole = tuple(block_box) == (0, self.shape[0], 0, self.shape[1])
        steps = None
        if self.steps is not None or self.collecting or not whole:
            known = self.steps if self.steps is not None else StepResults()
            limit = self.depth_limit if self.collecting else None
            steps = TileSteps(known, tuple(block_box), tuple(core), self.shape, depth_limit=limit)
        live = _LIVE.get(self.run_id)  # reports from inside the tile (and cancel) when run in this process
        ctx = FusionContext(dev, _tile_reporter(live, self.run_id), steps=steps)
        with torch.inference_mode():
            stack = prepared.to_tensor(dev)
            try:
                out = run_method(self.spec, stack, ctx=ctx, params=self.params)
            except (Collected, CollectedMany) as found:
                parts = found.parts if isinstance(found, CollectedMany) else [found]
                if not self.collecting:
                    key = parts[0].key if parts else None
                    if split and self.steps is None:  # one tile for the whole image, split for memory
                        raise FusionError(
                            f"out of memory on {self.device!r} fusing the whole image as one tile, and method "
                            f"{self.spec.name!r} has a whole-image step ({key!r}), which a part of the image "
                            "cannot compute alone: give smaller chunks (its whole-image steps are then "
                            "computed in passes over the tiles), or device='cpu'"
                        ) from None
                    raise FusionError(
                        f"method {self.spec.name!r} has a whole-image step {key!r} that no pass "
                        "collected: it must declare collect_halo= in register_method"
                    ) from None
                # drop the tracebacks: their frames hold the tile's whole working set (every
                # tile's result is kept until the pass ends)
                for part in (found, *parts):
                    part.__traceback__, part.__context__ = None, None
                return {"__collected__": parts}
            if self.collecting:
                return {"__done__": np.ones(1)}
            if self.want_labels and out.labels is None:
                raise FusionError(f"method {self.spec.name!r} declares labels but returned none")
            return output_planes(self.spec, out, prepared, self.positions, core=(cy, cx), with_labels=self.want_labels)


@dataclass
class _LiveRun:
    """A run being computed in this process: its progress callback and finished tiles, so that a
    tile reports from inside (``FusionContext.report``) and a cancelling callback stops it there."""

    progress: Callable[[float, float, str], Any]
    total: int
    what: str = "tile"
    done: int = 0

    #: ``(done, fraction)``: the furthest a tile has reported since ``done`` last changed (tiles
    #: computed at the same time report their own fractions; the bar must not move back)
    furthest: tuple[int, float] = (-1, 0.0)

    def inside(self, done: float, total: float, message: str = "") -> None:
        frac = 0.0 if total <= 0 else min(max(done / total, 0.0), 0.99)
        if self.furthest[0] == self.done:
            frac = max(frac, self.furthest[1])
        self.furthest = (self.done, frac)
        text = f"{self.what} {min(self.done + 1, self.total)}/{self.total}: {message or 'running'}"
        self.progress(self.done + frac, self.total, text)


#: Runs being computed in this process, by run id (tiles in other processes report per tile only).
_LIVE: dict[str, _LiveRun] = {}

#: Run ids whose tiles have started in this process, and those :func:`stop_running_tiles` stopped.
_STARTED_RUNS: set[str] = set()
_STOPPED_RUNS: set[str] = set()


def stop_running_tiles() -> None:
    """Stop the tiles of every run started so far in this process at their next progress report
    (within about two seconds on this machine), with :class:`~napari_fusion.FusionCancelled`; runs
    started later are not affected. The command line calls it when interrupted: dask's threads
    cannot be stopped otherwise, and the process waited for the tiles under way (~40 s for a
    ``csc_ivfn`` tile) before it exited."""
    _STOPPED_RUNS.update(_STARTED_RUNS)


def _tile_reporter(live: _LiveRun | None, run_id: str) -> Callable[..., None]:
    """A tile's progress callback: stops it once :func:`stop_running_tiles` stopped its run, and
    passes its reports on to ``live`` (the run's progress in this process), if any."""
    _STARTED_RUNS.add(run_id)

    def report(done: float, total: float, message: str = "") -> None:
        if run_id in _STOPPED_RUNS:
            raise FusionCancelled("the run was interrupted")
        if live is not None:
            live.inside(done, total, message)

    return report


@contextlib.contextmanager
def _live(run_id: str, live: _LiveRun | None):
    if live is None or not run_id:
        yield
        return
    _LIVE[run_id] = live
    try:
        yield
    finally:
        if _LIVE.get(run_id) is live:
            del _LIVE[run_id]


def _merge_parts(parts: list[list[dict[str, Any]]]) -> dict[str, Any]:
    """Join the results of sub-tiles (rows of columns): planes and map parts side by side,
    statistics combined, the rest taken from the first."""
    first = parts[0][0]
    merged: dict[str, Any] = {}
    for key, value in first.items():
        if key == "__collected__":
            merged[key] = [_merge_collected([[p[key][k] for p in row] for row in parts]) for k in range(len(value))]
        elif key == "__done__":
            merged[key] = value
        else:  # planes (h, w[, 3])
            merged[key] = np.concatenate([np.concatenate([p[key] for p in row], axis=1) for row in parts], axis=0)
    return merged


def _merge_collected(parts: list[list[Collected]]) -> Collected:
    """One whole-image step's parts from sub-tiles (rows of columns), joined as one tile's."""
    first = parts[0][0]
    if first.kind == "stat":
        flat = [c.part for row in parts for c in row]
        total = flat[0]
        for part in flat[1:]:
            total = first.combine(total, part)
        joined = total
    else:  # maps (..., h, w); boolean ones travel packed
        full = np.concatenate([np.concatenate([unpacked(c.part) for c in row], axis=-1) for row in parts], axis=-2)
        joined = KnownMap.of(full) if full.dtype == np.bool_ else full
    return Collected(first.key, first.kind, joined, first.finish, first.combine, first.scale)


class _TileGraph:
    """A dask collection holding only the tile tasks (keys ``(prefix, i, j)``)."""

    def __init__(self, hlg, keys):
        self._hlg = hlg
        self._keys = keys

    def __dask_graph__(self):
        return self._hlg

    def __dask_keys__(self):
        return self._keys

    def __dask_layers__(self):
        return (self._keys[0][0],)


def _assemble_block(shape, dtype, pieces, *chunks) -> np.ndarray:
    """Paste the needed parts of input chunks (or of those a :class:`ChunkRead` reads) into one
    ``(N, h, w[, C])`` block."""
    if len(chunks) == 1 and isinstance(chunks[0], ChunkRead):
        chunks = tuple(chunks[0].read())
    out = np.empty(shape, dtype=dtype)
    for (dst, src), chunk in zip(pieces, chunks):
        out[dst] = np.asarray(chunk)[src]
    return out


#: Bytes of finished tiles kept per process, so the outputs of one fusion computed separately
#: (napari's fused, decision and depth layers each ask for their own tiles) fuse each tile once.
TILE_CACHE_BYTES = 256 * 2**20


class _TileCache:
    """A small thread-safe LRU of tile results keyed by ``(key prefix, run id, core box)``.

    The run id is unique per lazy result (:class:`TileJob`), so a hit is the
    same tile of the same fusion, asked for again by another of its outputs.
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple, dict[str, np.ndarray]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._bypassed: dict[str, int] = {}  # run id -> computes of all its outputs together
        self.computed = 0  # tiles fused (not served from the cache), for tests and benchmarks

    @contextlib.contextmanager
    def bypassed(self, run_id: str) -> Iterator[None]:
        """Keep no tiles of run ``run_id`` while this is entered: a compute of all its outputs
        together (a write, ``compute()``, the widget's tiles) needs each tile once, and the
        cache would only hold up to :data:`TILE_CACHE_BYTES` more memory through the run."""
        with self._lock:
            self._bypassed[run_id] = self._bypassed.get(run_id, 0) + 1
        try:
            yield
        finally:
            with self._lock:
                self._bypassed[run_id] -= 1
                if not self._bypassed[run_id]:
                    del self._bypassed[run_id]

    def get(self, key: tuple) -> dict[str, np.ndarray] | None:
        with self._lock:
            hit = self._items.get(key)
            if hit is not None:
                self._items.move_to_end(key)
            return hit

    def put(self, key: tuple, planes: dict[str, np.ndarray]) -> None:
        size = sum(int(np.asarray(v).nbytes) for v in planes.values())
        with self._lock:
            self.computed += 1
            if size > self.max_bytes or key in self._items or key[1] in self._bypassed:
                return
            self._items[key] = planes
            self._bytes += size
            while self._bytes > self.max_bytes and self._items:
                _, old = self._items.popitem(last=False)
                self._bytes -= sum(int(np.asarray(v).nbytes) for v in old.values())

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0


TILE_CACHE = _TileCache(TILE_CACHE_BYTES)


def _run_tile_task(job: TileJob, prefix: str, block_box, core, shape, dtype, pieces, *chunks):
    key = (prefix, job.run_id, tuple(core))
    hit = TILE_CACHE.get(key)
    if hit is not None:
        return hit
    planes = job(_assemble_block(shape, dtype, pieces, *chunks), block_box, core)
    TILE_CACHE.put(key, planes)
    return planes


def _run_collect_task(job: TileJob, prefix: str, block_box, core, shape, dtype, pieces, *chunks):
    """A tile of a collect pass (never cached: its result is a part of a whole-image step)."""
    return job(_assemble_block(shape, dtype, pieces, *chunks), block_box, core)


def _tile_graph(
    stack,
    grid: TileGrid,
    job: TileJob,
    prefix: str,
    task: Callable = _run_tile_task,
    reader: InputChunks | None = None,
) -> _TileGraph:
    """One task per tile that reads the input chunks its block overlaps and fuses them.

    With a ``reader`` (:mod:`napari_fusion._tile_inputs`), each task reads its chunks through it
    and the input is not part of the graph: the memory the input takes is bounded by the reader's
    cache. Without one, tasks depend on the input's chunk keys (dask then holds each chunk until
    the last tile that reads it has run); a dask.distributed run does so, its workers sharing
    chunks among themselves. Either way building the graph costs O(tiles x chunks per tile)
    whatever the size of the input graph.
    """
    from dask.highlevelgraph import HighLevelGraph

    # tiles computed side by side share the cores: one team of torch threads each would oversubscribe them
    job = replace(job, threads=threads_per_tile(_tiles_side_by_side(grid.n_tiles)))
    edges = [np.cumsum((0,) + tuple(c)).tolist() for c in stack.chunks]
    layer = {}
    keys = []
    for t in grid.tiles():
        by0, by1, bx0, bx1 = t.block
        want = [(0, stack.shape[0]), (by0, by1), (bx0, bx1)] + [(0, s) for s in stack.shape[3:]]
        spans = []
        for ax, (lo, hi) in enumerate(want):
            e = edges[ax]
            spans.append(
                [(k, max(lo, e[k]), min(hi, e[k + 1]), e[k]) for k in range(len(e) - 1) if e[k] < hi and e[k + 1] > lo]
            )
        pieces, deps = [], []
        for combo in itertools.product(*spans):
            dst = tuple(slice(a - lo, b - lo) for (_, a, b, _), (lo, _) in zip(combo, want))
            src = tuple(slice(a - start, b - start) for (_, a, b, start) in combo)
            pieces.append((dst, src))
            deps.append((stack.name,) + tuple(k for k, _, _, _ in combo))
        shape = tuple(hi - lo for lo, hi in want)
        key = (prefix, *t.index)
        inputs = deps if reader is None else [ChunkRead(reader, tuple(deps))]
        layer[key] = (task, job, prefix, t.block, t.core, shape, stack.dtype, pieces, *inputs)
        keys.append(key)
    hlg = HighLevelGraph.from_collections(prefix, layer, dependencies=[stack] if reader is None else [])
    return _TileGraph(hlg, keys)


# --------------------------------------------------------------------------- inputs


def _as_dask(x: Any):
    import dask.array as da

    if _is_dask(x):
        return x
    if _is_zarr(x):
        return da.from_zarr(x)
    return da.from_array(np.asarray(x), chunks=-1)


def lazy_stack(images: Any, *, stack_axis: int = 0, channel_axis: int | None = None, mixed_colour: bool = False):
    """Validate ``images`` from metadata alone and return ``(stack, dtype, colour)``.

    ``stack`` is a dask array ``(N, H, W)`` or ``(N, H, W, 3)``. The checks and
    error messages are those of the in-memory path (``_inputs``); no pixel is
    read.
    """
    import dask.array as da

    if isinstance(images, (str, bytes)):
        raise FusionInputError("images must be arrays; to read files lazily use napari_fusion.io.open_lazy_stack")
    if (
        _is_dask(images)
        or _is_zarr(images)
        or hasattr(images, "__array__")
        or (hasattr(images, "shape") and hasattr(images, "dtype"))
    ):
        items = split_stack(_as_dask(images), stack_axis=stack_axis, channel_axis=channel_axis)
    else:
        try:
            items = [_as_dask(a) for a in images]
        except TypeError:
            raise FusionInputError(
                f"images must be a sequence of arrays or one stack array, got {type(images).__name__}"
            ) from None
    items, dtype, colour = check_items(items, mixed_colour=mixed_colour)
    return da.stack(items), dtype, colour


def global_statistics(stack, *, dtype: np.dtype) -> tuple[float, float]:
    """Min and max of the whole stack (and the non-finite check for floats), in one dask pass."""
    import dask.array as da

    floating = np.issubdtype(dtype, np.floating)
    todo = [stack.min(), stack.max()]
    if floating:
        todo.append((~da.isfinite(stack)).sum(axis=tuple(range(1, stack.ndim))))
    values = compute_quietly(*todo)
    if floating:
        bad = np.asarray(values[2])
        for i, count in enumerate(bad.tolist()):
            if count:
                raise FusionInputError(non_finite_message(i, int(count)))
    return float(values[0]), float(values[1])


# --------------------------------------------------------------------------- result


@dataclass(repr=False)
class LazyFusionResult(FusionResult):
    """A :class:`FusionResult` whose ``fused``, ``labels`` and ``depth`` are dask arrays.

    Each dask block is one tile. ``weights`` and ``extras`` are not produced
    lazily (they would multiply the memory per tile by the stack depth).
    ``compute()`` returns an in-memory :class:`FusionResult`, computing every
    tile once for all outputs.
    """

    grid: TileGrid | None = None
    progress: Callable[[float, float, str], Any] | None = None
    key_prefix: str = TILE_KEY_PREFIX
    run_id: str = ""
    #: The reader the tiles read the input through (None: as dask dependencies); see
    #: :meth:`releasing_inputs`.
    input_chunks: InputChunks | None = None
    #: The whole-image steps the collect passes found (None: the method has none here); a zarr
    #: output keeps them for a resumed run (:func:`napari_fusion.whole_image.save_steps`).
    whole_image_steps: StepResults | None = None

    def arrays(self) -> dict[str, Any]:
        """The lazy outputs that exist, by name."""
        return {
            k: v for k, v in (("fused", self.fused), ("labels", self.labels), ("depth", self.depth)) if v is not None
        }

    def compute(self, *, progress: Callable[[float, float, str], Any] | None = None, **kwargs) -> FusionResult:
        """Compute all outputs together (each tile once) and return them as numpy arrays."""
        import dask

        arrays = self.arrays()
        with tile_progress(self, progress), self.releasing_inputs():
            values = dask.compute(*arrays.values(), **kwargs)
        out = dict(zip(arrays, values))
        return FusionResult(
            fused=out["fused"],
            labels=out.get("labels"),
            depth=out.get("depth"),
            method=self.method,
            params=dict(self.params),
        )

    def iter_tiles(
        self,
        order: Sequence[tuple[int, int]] | None = None,
        *,
        batch: int = 1,
        progress: Callable[[float, float, str], Any] | None = None,
    ) -> Iterator[tuple[tuple[slice, slice], dict[str, np.ndarray]]]:
        """Compute the tiles a few at a time: yields ``((rows, cols), {output: core})`` per tile.

        Each tile is computed once for all outputs (one task feeds the three
        blocks). ``order``: grid indices ``(i, j)`` to compute, in this order
        (default: row by row); ``batch``: tiles computed together (in dask's
        threads) after the first one, which comes alone so it arrives soonest.
        The computes bypass dask's process-wide callbacks (see
        :func:`napari_fusion.focalstack._stack.load`), so this may run in a
        worker thread while napari slices layers. ``progress`` gets the
        reports from inside the tiles being computed (``done`` counts the tiles
        yielded so far; a callback that raises stops the tile there); the caller
        reports finished tiles itself.
        """

        if self.grid is None:
            raise ValueError("this lazy result has no tile grid")
        arrays = self.arrays()
        rows, cols = self.grid.row_edges, self.grid.col_edges
        if order is None:
            order = [(i, j) for i in range(len(rows) - 1) for j in range(len(cols) - 1)]
        order = list(order)
        groups = [order[:1]] + [order[k : k + max(1, batch)] for k in range(1, len(order), max(1, batch))]
        live = None if progress is None else _LiveRun(progress, len(order))
        with self.releasing_inputs():
            for group in groups:
                blocks = [a.blocks[i, j] for i, j in group for a in arrays.values()]
                if not blocks:
                    continue
                with _live(self.run_id, live), TILE_CACHE.bypassed(self.run_id):
                    values = compute_quietly(*blocks)
                per = len(arrays)
                for k, (i, j) in enumerate(group):
                    planes = dict(zip(arrays, values[k * per : (k + 1) * per]))
                    if live is not None:
                        live.done += 1
                    yield (slice(rows[i], rows[i + 1]), slice(cols[j], cols[j + 1])), planes

    @contextlib.contextmanager
    def releasing_inputs(self) -> Iterator[None]:
        """Drop the input chunks the tiles kept (:attr:`input_chunks`) when the block ends: a
        compute of the whole result, or of a batch of tiles, reads no more of them."""
        try:
            yield
        finally:
            if self.input_chunks is not None:
                self.input_chunks.clear()

    def __repr__(self) -> str:  # pragma: no cover - cosmetic
        tiles = f", tiles={self.grid.n_tiles} of {self.grid.tile}, halo={self.grid.halo}" if self.grid else ""
        return super().__repr__()[:-1] + tiles + ")"


def compute_quietly(*arrays: Any, callbacks: tuple = ()) -> tuple:
    """``dask.compute(*arrays)`` without dask's process-wide callbacks (only ``callbacks``, dask
    ``Callback`` objects), on :func:`local_scheduler`.

    napari registers its chunk cache as a global dask callback; a compute in a
    worker thread that picks it up shares the cache's locks and bookkeeping
    with napari's slicing on the GUI thread (a ``KeyError`` race, and GIL
    convoys that stalled the viewer for 0.3 s). With a dask.distributed client,
    whose ``compute`` takes no ``callbacks``, the plain call is used.
    """
    import dask

    if _in_distributed_client():
        return dask.compute(*arrays)
    # the local schedulers take each callback as its tuple of hooks
    hooks = [cb._callback for cb in callbacks]
    return dask.compute(*arrays, callbacks=hooks, scheduler=local_scheduler(), optimize_graph=False)


def local_scheduler() -> str | None:
    """``"threads"`` unless a dask.distributed client or a configured scheduler should be used (None).

    (dask still imports ``distributed`` on its first compute to look for a
    client; the widgets pay that once when their dock opens, see
    ``_napari._common.warm_up``. Passing ``dask.threaded.get`` itself avoids
    the import but made the background-tiling GUI gaps worse in our tests.)
    """
    import dask

    if dask.config.get("scheduler", None) is not None or _in_distributed_client():
        return None
    return "threads"


def _tiles_side_by_side(n_tiles: int) -> int:
    """How many of ``n_tiles`` tiles dask's local threaded scheduler computes at once in this
    process; 1 for another scheduler (synchronous: one at a time; processes or a dask.distributed
    cluster: their workers' threads are theirs to set)."""
    import dask

    from .memory import tiles_at_once

    if dask.config.get("scheduler", None) not in (None, "threads", "threading") or _in_distributed_client():
        return 1
    return min(tiles_at_once(), int(n_tiles))


def _in_distributed_client() -> bool:
    """Whether a dask.distributed client is the default scheduler (never imports distributed:
    without it imported there is no client, and importing it costs ~0.5 s, holding the GIL)."""
    if "distributed" not in sys.modules:
        return False
    try:
        from distributed import default_client

        default_client()
        return True
    except Exception:
        return False


@contextlib.contextmanager
def tile_progress(result: LazyFusionResult, progress: Callable[[float, float, str], Any] | None = None):
    """Report finished tiles to ``progress(done, total, message)`` while computing ``result``.

    Works with dask's local schedulers (threads, processes, synchronous). A
    :class:`napari_fusion.FusionCancelled` (or any exception) raised by the
    callback stops the scheduler from starting further tiles; tiles already
    running finish. With a ``dask.distributed`` client use its dashboard or
    ``distributed.progress`` instead (no callback is made).

    Its callers compute all outputs of ``result`` together, so meanwhile no tile
    of it is kept in :data:`TILE_CACHE` (see :meth:`_TileCache.bypassed`).
    """
    progress = progress or result.progress
    with TILE_CACHE.bypassed(result.run_id):
        cb = None if result.grid is None else _tile_callback(result.key_prefix, result.grid.n_tiles, progress)
        if cb is None:
            yield None
            return
        import dask

        # low-level fusion would merge a tile task into its only consumer under another key
        with dask.config.set({"optimization.fuse.active": False}), cb, _live(result.run_id, cb.live):
            yield cb


def _tile_callback(prefix: str, total: int, progress, what: str = "tile", start: int = 0):
    """A dask callback calling ``progress(done, total, "<what> done/total")`` as tasks
    ``(prefix, i, j)`` finish (``done`` counting from ``start``), with the :class:`_LiveRun` its
    tiles report through from inside (``.live``); None without ``progress`` or with a distributed
    client."""
    if progress is None or _in_distributed_client():
        return None
    from dask.callbacks import Callback

    live = _LiveRun(progress, total, what, start)

    class _TileCallback(Callback):
        def __init__(self):
            super().__init__()
            self.seen: set[tuple[int, int]] = set()
            self.live = live

        def _posttask(self, key, value, dsk, state, worker_id):
            if isinstance(key, tuple) and len(key) == 3 and key[0] == prefix and key[1:] not in self.seen:
                self.seen.add(key[1:])
                live.done = start + len(self.seen)
                progress(live.done, total, f"{what} {live.done}/{total}")

    return _TileCallback()


# --------------------------------------------------------------------------- entry point


def fuse_lazy(
    images: Any,
    method: str | MethodSpec = "focus_measure",
    *,
    stack_axis: int = 0,
    channel_axis: int | None = None,
    z_positions: Sequence[float] | None = None,
    device: str | torch.device | None = "auto",
    progress: Callable[[float, float, str], Any] | None = None,
    chunks: Any = None,
    halo: int | None = None,
    whole_image_steps: StepResults | None = None,
    **params: Any,
) -> LazyFusionResult:
    """Lazy, tiled :func:`napari_fusion.fuse` (called by it for dask/zarr inputs or ``chunks=``).

    ``chunks`` is the tile (core) size: an int, ``(rows, cols)``, ``"auto"``
    (1024), or None for the input's own spatial chunks. ``halo`` overrides the
    method's declared halo (for experiments; a halo smaller than the method's
    receptive field makes seams). ``progress`` is used when the result is
    computed through :meth:`LazyFusionResult.compute` or
    :func:`napari_fusion.io.write_lazy`. Everything else is as in ``fuse``.

    The input is validated from its metadata; the global intensity range
    (and, for floats, the non-finite check) is computed here in one pass over
    the data. The returned arrays are not computed.

    ``whole_image_steps``: the whole-image steps of an earlier run of this same fusion (its
    :attr:`LazyFusionResult.whole_image_steps`, or read back from its zarr output by
    :func:`napari_fusion.io.read_zarr_steps`); the passes then compute only the steps missing
    from them. Steps of a different fusion give wrong results: the caller must know they match.
    """
    spec = method if isinstance(method, MethodSpec) else get_method(method)
    resolved = spec.resolve_params(params)
    stack, dtype, colour = lazy_stack(
        images, stack_axis=stack_axis, channel_axis=channel_axis, mixed_colour=spec.mixed_colour
    )
    n, h, w = stack.shape[:3]
    positions = slice_positions(z_positions, n)
    dev = resolve_device(device)  # validates here; "auto" is resolved again on each worker
    device_name = "auto" if device is None or device == "auto" else str(dev)
    input_chunks = (stack.chunks[1][0], stack.chunks[2][0]) if _is_dask(images) or _is_zarr(images) else None
    grid = plan_grid(spec, resolved, (h, w), chunks=chunks, input_chunks=input_chunks, halo=halo, n=n)
    channels = stack.shape[3] if colour else 1
    # the chunks the tiles read are counted unless they are views of arrays already in memory
    grid = fit_grid_to_memory(grid, spec, n=n, channels=channels, dtype=dtype, device=dev, input_chunks=input_chunks)
    sub_tile = sub_tile_for(grid, spec, resolved, n=n, channels=channels, dtype=dtype, device=dev,
                            input_chunks=input_chunks)  # fmt: skip
    reader = input_reader(stack, grid)
    offset, scale, out_low, out_high = intensity_mapping(dtype, *global_statistics(stack, dtype=dtype), spec.intensity)
    want_labels = "labels" in spec.outputs
    job = TileJob(
        spec=spec,
        params=resolved,
        shape=(h, w),
        halo=grid.halo,
        align=grid.align,
        n=n,
        colour=colour,
        dtype=dtype,
        offset=offset,
        scale=scale,
        out_low=out_low,
        out_high=out_high,
        positions=positions,
        device=device_name,
        want_labels=want_labels,
        want_depth=want_labels and "depth" in spec.outputs,
        run_id=uuid.uuid4().hex,
        sub_tile=sub_tile,
    )
    job.steps = _whole_image_steps(stack, grid, job, halo=halo, progress=progress, reader=reader,
                                   known=whole_image_steps)  # fmt: skip
    prefix = _key_prefix(stack, job, grid.tile)
    outputs = _lazy_outputs(_tile_graph(stack, grid, job, prefix, reader=reader), grid, job, prefix)
    return LazyFusionResult(
        fused=outputs["fused"],
        labels=outputs["labels"],
        depth=outputs["depth"],
        method=spec.name,
        params=dict(resolved),
        grid=grid,
        progress=progress,
        key_prefix=prefix,
        run_id=job.run_id,
        input_chunks=reader,
        whole_image_steps=job.steps,
    )


def _whole_image_steps(
    stack, grid: TileGrid, job: TileJob, *, halo: int | None, progress, reader, known: StepResults | None
) -> StepResults | None:
    """The method's whole-image steps for this run: ``known`` when it holds all of them (an earlier
    run's: no pass, not even a probe tile), else found by the collect passes (:func:`collect_steps`,
    given what ``known`` holds); None for a method without such steps or a lone tile."""
    collect_halo = job.spec.collect_halo_for(job.params)
    if collect_halo is None or grid.n_tiles <= 1:
        return None
    if known is not None and known.complete:
        return known
    step_halo = job.spec.halo_for(job.params) or 0
    if halo is not None:  # the experiment's halo everywhere
        collect_halo = step_halo = grid.halo
    try:
        return collect_steps(stack, grid, job, collect_halo=collect_halo, step_halo=step_halo, progress=progress,
                             reader=reader, known=known)  # fmt: skip
    finally:
        if reader is not None:
            reader.clear()


def input_reader(stack, grid: TileGrid) -> InputChunks | None:
    """The reader through which the tiles of ``grid`` read the chunks of ``stack``
    (:mod:`napari_fusion._tile_inputs`), its cache sized for the tiles computed side by side; None
    with a dask.distributed client (its workers share the chunks as dask dependencies)."""
    from .memory import tiles_at_once

    if _in_distributed_client():
        return None
    n, h, w = stack.shape[:3]
    plane = int(np.prod(stack.shape[3:], dtype=np.int64)) * n * stack.dtype.itemsize
    block = (min(grid.tile[0] + 2 * grid.halo, h), min(grid.tile[1] + 2 * grid.halo, w))
    chunks = (stack.chunks[1][0], stack.chunks[2][0])
    size = cache_bytes(block, chunks=chunks, shape=(h, w), plane_bytes=plane, workers=tiles_at_once())
    return InputChunks(stack, size)


def plan_grid(
    spec: MethodSpec,
    params: dict[str, Any],
    shape: tuple[int, int],
    *,
    chunks: Any = None,
    input_chunks: tuple[int, int] | None = None,
    halo: int | None = None,
    n: int = 2,
) -> TileGrid:
    """The tile grid of a ``shape`` image for ``spec``: tile size, alignment and halo.

    Tiles and halo are rounded up to the method's :func:`tile_alignment`;
    ``halo`` overrides the declared halo; a global method (halo ``None``) is
    refused unless one tile covers the image. A two-input method folded over
    ``n`` slices reads, at its last step, the previous result within its halo,
    and so on back to the first: its halo is ``(n - 1)`` times the declared one.
    """
    h, w = shape
    tile = normalise_tile(chunks, (h, w), input_chunks)
    align = tile_alignment(spec, params)
    tile = (min(_round_up(tile[0], align), h), min(_round_up(tile[1], align), w))
    declared = spec.halo_for(params)
    if declared is not None and spec.mode == "pairwise" and n > 2:
        declared *= fold_height(n, params.get(FOLD_PARAM, FOLD_DEFAULT))
    if halo is not None:
        declared = _checked_halo(halo)
    if declared is None and not (tile[0] >= h and tile[1] >= w):
        raise FusionInputError(_global_method_message(spec, params, tile, (h, w)))
    return TileGrid((h, w), tile, _round_up(declared or 0, align), align)


def fit_grid_to_memory(
    grid: TileGrid,
    spec: MethodSpec,
    *,
    n: int,
    channels: int,
    dtype: Any,
    device: torch.device,
    input_chunks: tuple[int, int] | None = None,
) -> TileGrid:
    """``grid`` with smaller tiles when its tiles, computed side by side on this machine, would not
    fit in the memory available (:func:`napari_fusion.memory.fit_tile_to_memory`), with a warning.

    The tile the user gave (``chunks``) sets the output's chunking and is kept
    whenever it fits. With a dask.distributed client the tiles run elsewhere
    and nothing is changed. ``input_chunks``: the input's spatial chunks, which the tiles read
    through a cache counted with them (:func:`input_reader`).
    """
    from . import memory

    if _in_distributed_client():
        return grid
    workers = memory.tiles_at_once()
    room = max(memory.available_memory() - memory.headroom(), 0)
    host = "cpu" if device.type == "cpu" else device.type
    costs = dict(halo=grid.halo, shape=grid.shape, n=n, channels=channels, dtype=dtype, method=spec.name,
                 workers=workers, device=host, input_chunks=input_chunks)  # fmt: skip
    tile = memory.fit_tile_to_memory(grid.tile, align=grid.align, room=room, **costs)  # type: ignore[arg-type]
    if tile == grid.tile:
        return grid

    def need(t: tuple[int, int]) -> int:
        return memory.tiles_need(t, **costs)  # type: ignore[arg-type]

    side = lambda t: f"{t[0]}x{t[1]}"  # noqa: E731
    size = memory.size_text
    warnings.warn(
        f"{side(grid.tile)} tiles of {n} slices with {spec.name!r} are estimated to need {size(need(grid.tile))} "
        f"({workers} at a time, each with a {grid.halo} px halo) but {size(room)} is available: "
        f"fusing in {side(tile)} tiles instead"
        + (f", estimated to still need {size(need(tile))} and may run out of memory" if need(tile) > room else "")
        + f" (the command line's --memory-limit or {memory.ENV_VAR} sets the memory this may use)",
        RuntimeWarning,
        stacklevel=2,
    )
    return replace(grid, tile=tile)


def sub_tile_for(
    grid: TileGrid,
    spec: MethodSpec,
    params: dict[str, Any],
    *,
    n: int,
    channels: int,
    dtype: Any,
    device: torch.device,
    input_chunks: tuple[int, int] | None = None,
) -> tuple[int, int] | None:
    """The sub-tiles in which a tile of ``grid`` is computed when no memory limit is set, or None.

    A tiled run is there to bound memory. Unless the user set a limit (the command line's
    ``--memory-limit``, :func:`napari_fusion.memory.limited_to`, ``$NAPARI_FUSION_MEMORY_LIMIT``;
    then :func:`fit_grid_to_memory` fits the tiles to it), the tiles computed side by side get at
    most :data:`napari_fusion.memory.TILED_ROOM` (or the memory available, if less). A tile whose
    estimated working set does not fit is computed as sub-tiles (:attr:`TileJob.sub_tile`), each
    with the method's halo, so its output chunks stay those asked for. Not with a dask.distributed
    client (its workers' memory is theirs), nor for a lone tile of a method with whole-image steps
    (no pass over tiles collects them; the lone tile runs as an untiled fusion). ``input_chunks``:
    the input's spatial chunks, which the tiles read through a cache sized for their whole blocks
    (:func:`input_reader`), taken off the room first.
    """
    from . import memory

    if _in_distributed_client() or memory.limit_is_set():
        return None
    if grid.n_tiles == 1 and spec.collect_halo_for(params) is not None:
        return None
    room = min(max(memory.available_memory() - memory.headroom(), 0), memory.TILED_ROOM)
    costs = dict(halo=grid.halo, shape=grid.shape, n=n, channels=channels, dtype=dtype, method=spec.name,
                 workers=_tiles_side_by_side(grid.n_tiles), device="cpu" if device.type == "cpu" else device.type)  # fmt: skip
    if memory.tiles_need(grid.tile, **costs, input_chunks=input_chunks) <= room:  # type: ignore[arg-type]
        return None
    if input_chunks is not None:  # the cache is sized for the tiles' blocks, whatever their sub-tiles
        room -= memory.tiles_need(grid.tile, **costs, input_chunks=input_chunks) - memory.tiles_need(grid.tile, **costs)  # type: ignore[arg-type]
    # the split into rows x cols sub-tiles that fits with the fewest pixels computed (each sub-tile
    # computes its halo again: a 1024 tile cut in 1 x 2 computes less than in 2 x 2)
    best: tuple[int, tuple[int, int]] | None = None
    for rows in range(1, _MAX_SPLIT + 1):
        for cols in range(1, _MAX_SPLIT + 1):
            sub = (_part(grid.tile[0], rows, grid.align), _part(grid.tile[1], cols, grid.align))
            if memory.tiles_need(sub, **costs) > room:  # type: ignore[arg-type]
                continue
            work = (grid.tile[0] + rows * 2 * grid.halo) * (grid.tile[1] + cols * 2 * grid.halo)
            if best is None or work < best[0]:
                best = (work, sub)
    if best is None:  # nothing fits: the smallest sub-tiles that fitting a tile would give
        return memory.fit_tile_to_memory(grid.tile, align=grid.align, room=room, **costs)  # type: ignore[arg-type]
    return best[1]


#: Most parts a side of a tile is cut into by :func:`sub_tile_for`.
_MAX_SPLIT = 16


def _part(side: int, parts: int, align: int) -> int:
    """The length of the parts when ``side`` is cut into ``parts`` (aligned; the last one shorter)."""
    return min(side, _round_up(-(-side // parts), align))


def collect_steps(
    stack,
    grid: TileGrid,
    job: TileJob,
    *,
    collect_halo: int,
    step_halo: int,
    progress=None,
    reader: InputChunks | None = None,
    known: StepResults | None = None,
) -> StepResults:
    """Run the collect passes of a method with whole-image steps (:mod:`napari_fusion.whole_image`).

    Pass ``p`` runs every tile until the steps not known yet, with the context their local
    parts need: ``collect_halo``, plus, for a folded two-input method, ``p`` times
    ``step_halo``: pass ``p`` computes the fold steps with up to ``p`` pair steps chained beneath
    them (:attr:`TileJob.depth_limit`) and collects every one of them whose whole-image step is
    not known, so a tree fold of N slices needs ceil(log2 N) passes, a sequential one N - 1. The
    parts are joined and finished once per step, then the next pass runs; the passes end when
    the tiles run to the end: each pass starts with one tile computed with the whole method's
    context, and when that one runs to the end no more tiles are run. Steps already ``known``
    (part of an earlier run's) are not computed again. The result is marked
    :attr:`~napari_fusion.whole_image.StepResults.complete`.
    """
    from dask.delayed import Delayed

    known = StepResults(dict(known.maps), dict(known.stats)) if known is not None else StepResults()
    folded = job.spec.mode == "pairwise"
    height = fold_height(stack.shape[0], job.params.get(FOLD_PARAM, FOLD_DEFAULT)) if folded else 0
    for p in range(MAX_PASSES):
        chained = min(p, max(height - 1, 0))
        reach = collect_halo + chained * step_halo
        pass_grid = replace(grid, halo=_round_up(reach, grid.align))
        pass_job = replace(job, halo=pass_grid.halo, steps=known, collecting=True,
                           depth_limit=chained if folded else None)  # fmt: skip
        what = f"whole-image pass {p + 1}: tile"
        # A probe: the first tile, with the context of the whole method (it may run to the end:
        # no more whole-image steps, for this method or for these data, e.g. a grey stack).
        probe_halo = max(pass_grid.halo, grid.halo)
        tile0 = next(replace(grid, halo=probe_halo).tiles())
        block = compute_quietly(stack[:, tile0.block[0] : tile0.block[1], tile0.block[2] : tile0.block[3]])[0]
        with _live(job.run_id, None if progress is None else _LiveRun(progress, grid.n_tiles, what)):
            probe = replace(pass_job, halo=probe_halo)(block, tile0.block, tile0.core)
        if "__done__" in probe:
            known.complete = True
            return known
        found = probe["__collected__"]
        if not found:  # every step the tiles' context covers ran without an unknown whole-image step
            continue
        keys = [c.key for c in found]
        what = _pass_name(p, keys, job.spec.mode, stack.shape[0])
        if progress is not None:
            progress(1, grid.n_tiles, f"{what} 1/{grid.n_tiles}")
        prefix = f"{TILE_KEY_PREFIX}-pass{p}-{uuid.uuid4().hex}"
        graph = _tile_graph(stack, pass_grid, pass_job, prefix, task=_run_collect_task, reader=reader)
        hlg = graph.__dask_graph__()
        cb = _tile_callback(prefix, pass_grid.n_tiles, progress, what=what, start=1)
        tasks = [Delayed(k, hlg, layer=prefix) for k in graph.__dask_keys__()[1:]]
        with _live(job.run_id, None if cb is None else cb.live):
            results = [probe, *compute_quietly(*tasks, callbacks=(cb,) if cb else ())]
        if any([c.key for c in r.get("__collected__", ())] != keys for r in results):
            raise FusionError(f"method {job.spec.name!r}: its tiles reached different whole-image steps")
        for k, first in enumerate(found):  # one step at a time, each tile's part dropped once used
            parts = [(t.core, r["__collected__"][k].part) for t, r in zip(pass_grid.tiles(), results)]
            for r in results:
                r["__collected__"][k].part = None
            known.add(first, parts, grid.shape)
            del parts
        log.info("whole-image steps %r of %s found (pass %d, %d tiles)", keys, job.spec.name, p + 1, len(results))
    raise FusionError(f"method {job.spec.name!r} needs more than {MAX_PASSES} whole-image passes")


def _pass_name(p: int, keys: list[tuple], mode: str, n: int) -> str:
    """``whole-image pass P: tile``; for a folded two-input method also which fold steps the pass
    collects for (the first element of each step's key), so a long run shows how far it is."""
    steps = [k[0] + 1 for k in keys if k and isinstance(k[0], int)]
    if mode == "pairwise" and n > 2 and steps:
        if len(steps) == 1:
            which = f"fold step {steps[0]}"
        elif len(steps) <= 4:
            which = f"fold steps {', '.join(map(str, steps))}"
        else:  # a level of a deep tree: 20 steps of 39 for 40 slices
            which = f"{len(steps)} fold steps"
        return f"whole-image pass {p + 1} ({which} of {n - 1}): tile"
    return f"whole-image pass {p + 1}: tile"


def _checked_halo(halo: Any) -> int:
    if isinstance(halo, bool) or not isinstance(halo, (int, np.integer)) or halo < 0:
        raise FusionInputError(f"halo must be a whole number >= 0, got {halo!r}")
    return int(halo)


def _global_method_message(
    spec: MethodSpec, params: dict[str, Any], tile: tuple[int, int], shape: tuple[int, int]
) -> str:
    h, w = shape
    return (
        f"method {spec.name!r} with these parameters is global (every output pixel may depend on the "
        f"whole image), so it cannot be fused in {tile[0]}x{tile[1]} tiles of a {h}x{w} image. "
        + f"Use chunks >= the image size ({h}x{w}) for one tile, or fuse in memory (a numpy input without chunks=)."
    )


def _key_prefix(stack, job: TileJob, tile: tuple[int, int]) -> str:
    """Dask key prefix of the tile tasks: a token of everything that decides their values."""
    from dask.base import tokenize

    token = tokenize(
        stack.name,
        job.spec.name,
        job.params,
        job.offset,
        job.scale,
        job.out_low,
        job.out_high,
        job.positions,
        tile,
        job.halo,
        job.device,
        job.sub_tile,
    )
    return f"{TILE_KEY_PREFIX}-{job.spec.name}-{token}"


def _lazy_outputs(graph: _TileGraph, grid: TileGrid, job: TileJob, prefix: str) -> dict[str, Any]:
    """``fused``, ``labels`` and ``depth`` as dask arrays whose blocks pick from the tile tasks (None if not made)."""
    import dask.array as da
    from dask.highlevelgraph import HighLevelGraph

    rows, cols = grid.chunks
    outputs = {}
    for name, dt, extra in (
        ("fused", job.dtype, ((3,),) if job.colour else ()),
        ("labels", label_dtype(job.n), ()),
        ("depth", np.dtype(np.float32), ()),
    ):
        if name == "labels" and not job.want_labels or name == "depth" and not job.want_depth:
            outputs[name] = None
            continue
        out_name = f"{prefix}-{name}"
        tail = (0,) * len(extra)
        layer = {
            (out_name, i, j) + tail: (operator.getitem, (prefix, i, j), name)
            for i in range(len(rows))
            for j in range(len(cols))
        }
        hlg = HighLevelGraph.from_collections(out_name, layer, dependencies=[graph])
        outputs[name] = da.Array(hlg, out_name, chunks=(rows, cols) + extra, dtype=dt)
    return outputs


__all__ = [
    "DEFAULT_TILE",
    "MIN_RETRY_TILE",
    "TILE_ALIGN",
    "LazyFusionResult",
    "Tile",
    "TileGrid",
    "TileJob",
    "fit_grid_to_memory",
    "sub_tile_for",
    "fuse_lazy",
    "global_statistics",
    "is_lazy",
    "is_out_of_memory",
    "lazy_stack",
    "normalise_tile",
    "plan_grid",
    "tile_alignment",
    "tile_progress",
    "wants_tiling",
]
