"""Run a local image operator tile by tile, with a halo, inside one method.

Networks and other local operators are evaluated over an image in square
tiles. Each tile's *block* is the tile grown by ``halo`` pixels of real image
on every inner side (clipped at the image border, where the operator's own
border handling applies as in a whole-image pass); only the tile's *core* is
kept. With ``halo`` at least the operator's receptive radius, the result equals
a whole-image pass (up to floating-point summation order).

Why: the working set of a tile fits the CPU caches (a 64-channel network on a
256^2 tile runs 2-3x faster than on a whole 1024^2 image, where every
element-wise step streams hundreds of MB), memory stays bounded, and the
caller can report progress and honour cancellation after every tile.

This is the in-method counterpart of :mod:`napari_fusion.tiling`, which tiles
whole fusions (all steps of a method, with dask) over images larger than memory.
"""

from __future__ import annotations

import contextlib
import functools
import math
import sys
from collections.abc import Callable, Iterator, Sequence

import torch

from .._cgroups import cpus_allowed_by_quota

__all__ = [
    "MIN_SPLIT_TILE",
    "free_device_memory",
    "is_out_of_memory",
    "keep_large_allocations_mapped",
    "map_tiles",
    "release_freed_memory",
    "threads_per_tile",
    "tile_starts",
    "tile_with_unmapped_maps",
    "torch_threads",
]


def tile_starts(size: int, tile: int) -> list[int]:
    """Start offsets of tiles of ``tile`` pixels covering ``size`` pixels."""
    return list(range(0, size, max(1, int(tile))))


def threads_per_tile(tiles_side_by_side: int) -> tuple[int, int] | None:
    """``(threads, restore)``: torch intra-op threads for each of ``tiles_side_by_side`` tiles
    computed at once in threads of their own (dask's local scheduler), and the calling thread's
    count to restore after each tile; None to leave the counts as they are.

    Each calling thread otherwise starts its own team of ``torch.get_num_threads()`` OpenMP
    threads, so two tiles side by side ran four busy threads on two cores: ``focus_pyramid`` on
    20 x 2048^2 RGB in tiles of 512 took 12.4 s wall and 19.4 CPU-s, 10.6 s and 16.8 CPU-s with
    one torch thread per tile (identical output; medians of 3, 2026-12-03, ``docs/lazy.md``). A
    thread that starts while a tile runs begins with the tile's count. None where torch's
    thread count is not per calling thread (a parallel backend other than OpenMP): setting it
    there would change it for every thread. The threads shared out are at most the CPU quota of
    the process's control group (``_cgroups.cpus_allowed_by_quota``), even for one tile.
    """
    if not _threads_are_per_thread():
        return None
    have = torch.get_num_threads()
    quota = cpus_allowed_by_quota()  # a container's CPU quota, which torch's count ignores
    budget = have if quota is None else min(have, quota)
    share = max(1, budget // max(1, int(tiles_side_by_side)))
    return (share, have) if share < have else None


@contextlib.contextmanager
def torch_threads(counts: tuple[int, int] | None) -> Iterator[None]:
    """Run the block with ``threads`` torch intra-op threads in the calling thread, then set
    ``restore`` (``counts`` from :func:`threads_per_tile`; None: unchanged).

    The count to restore is the one of the thread that planned the tiles, not the worker's own:
    torch also keeps the last count set as the one new threads start with, so a worker thread
    started while another tile ran would otherwise restore (and leave behind) the tile's count.
    """
    if counts is None:
        yield
        return
    threads, restore = counts
    torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(int(restore))


@functools.cache
def _threads_are_per_thread() -> bool:
    """True where ``torch.set_num_threads`` sets the count of the calling thread only (OpenMP)."""
    return "parallel backend: OpenMP" in torch.__config__.parallel_info()


#: A tile that runs out of memory is split in four until its side is below this (pixels).
MIN_SPLIT_TILE = 32


def is_out_of_memory(exc: BaseException) -> bool:
    """True for device or host out-of-memory errors raised by torch."""
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    if isinstance(exc, RuntimeError):
        text = str(exc).lower()
        return "out of memory" in text or "can't allocate memory" in text
    return False


def release_freed_memory() -> None:
    """Hand the memory the C allocator holds free back to the system (glibc's ``malloc_trim``;
    nothing where there is none).

    Tiles free hundreds of MiB of tensors each. glibc keeps much of it in its per-thread
    arenas, so the resident size of a long tiled run crept up tile after tile: on 10 x 2048 x 8192
    with ``liu2017_cnn`` (tiles of 1024) the first pass ended at 1113 MiB resident, 1233 MiB peak;
    trimmed after every tile, at 656 and 963 MiB, in the same time.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


#: Allocations of this size or more get their own memory mappings during tiled runs
#: (:func:`keep_large_allocations_mapped`).
LARGE_ALLOCATION_BYTES = 4 * 2**20
#: Free memory glibc may keep at the top of a heap before it gives it back (set with the
#: threshold above; :func:`release_freed_memory` after every tile gives it back anyway). A fixed
#: mmap threshold leaves glibc's trim threshold at 128 KiB, so each heap shrank and grew again
#: around every few-MiB tensor, in fresh pages: ``veshki_cdl`` on one 2 x 1528^2 pair spent
#: 4.2 s in page faults against 11.7 s of work, 1.1 s with 16 MiB kept (2026-12-02).
HEAP_TOP_KEPT_BYTES = 16 * 2**20
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter numbers
_M_TRIM_THRESHOLD = -1


def keep_large_allocations_mapped() -> bool:
    """Have glibc serve every allocation of :data:`LARGE_ALLOCATION_BYTES` or more from its own
    memory mapping, unmapped (given back to the system) when freed. Once per process; True if set.

    By default glibc raises that threshold to the size of each large block it frees (up to
    32 MiB), after which tile-sized tensors (a few MiB each) come from its heaps and fragment
    them: a tiled run's peak then grew pass after pass. ``liu2017_cnn`` folded over 10 slices of
    2048 x 8192 in tiles of 1024 peaked at 746, 978, 1227 and 1305 MiB in its passes 1, 2, 3 and 5,
    even one tile at a time. On 3 x 2048 x 3072 (``benchmarks/pass_memory.py liu2017_cnn --rows
    2048 --cols 3072 --slices 3``): peak 1159 MiB in 116.6 s by default, 687 MiB in 124.9 s with a
    4 MiB threshold. Tiled runs trade those 7 % of time for a bounded peak. Nothing is done where
    the C library is not glibc.
    """
    return _set_mmap_threshold()


def large_allocations_mapped() -> bool:
    """True once :func:`keep_large_allocations_mapped` has taken effect in this process: each
    allocation of :data:`LARGE_ALLOCATION_BYTES` or more then costs fresh pages (page faults)."""
    return _set_mmap_threshold.cache_info().currsize > 0 and _set_mmap_threshold()


def tile_with_unmapped_maps(tile: int, *, channels: int, grow: int, floor: int = 32) -> int:
    """``tile``, or, where large allocations are mapped (:func:`large_allocations_mapped`: tiled
    runs), the largest multiple of 8 at most ``tile`` (and at least ``floor``, unless ``tile`` is
    smaller) whose feature maps, ``channels`` x ``(tile + grow)^2`` float32, stay below
    :data:`LARGE_ALLOCATION_BYTES`.

    For networks run with :func:`map_tiles`: ``grow`` is how much wider than the tile their
    largest feature map is (twice the halo, plus any padding the network adds itself). A network
    allocates a few such maps per layer; each one mapped costs fresh pages, and the page faults
    cost more than the arithmetic (``csc_ivfn``'s encoder: 153 CPU-s, 88 of them in the system,
    with 256 px tiles on 10 x 484 x 740; 94 CPU-s with 136 px; 2026-12-02)."""
    if not large_allocations_mapped():
        return int(tile)
    side = math.isqrt((LARGE_ALLOCATION_BYTES - 1) // (4 * int(channels))) - int(grow)
    return min(int(tile), max(int(floor), side // 8 * 8))


@functools.cache
def _set_mmap_threshold() -> bool:
    mallopt = _mallopt()
    if mallopt is None or mallopt(_M_MMAP_THRESHOLD, LARGE_ALLOCATION_BYTES) != 1:
        return False
    mallopt(_M_TRIM_THRESHOLD, HEAP_TOP_KEPT_BYTES)
    return True


@functools.cache
def _mallopt():
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        return ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return None


@functools.cache
def _malloc_trim():
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        return ctypes.CDLL(None).malloc_trim  # the C library the process already uses
    except (OSError, AttributeError):  # no glibc (musl has no malloc_trim)
        return None


def free_device_memory() -> None:
    """Return cached GPU memory to the device (after an out-of-memory error)."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    mps = getattr(torch, "mps", None)
    if mps is not None and getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        mps.empty_cache()


def _split_box(box: tuple[int, int, int, int], align: int) -> list[tuple[int, int, int, int]]:
    """The four quadrants of a core box (cut on multiples of ``align``); [box] if it cannot be cut."""
    y0, y1, x0, x1 = box

    def cut(a: int, b: int) -> list[tuple[int, int]]:
        mid = a + ((b - a) // 2 // align) * align
        return [(a, mid), (mid, b)] if a < mid < b else [(a, b)]

    return [(ya, yb, xa, xb) for ya, yb in cut(y0, y1) for xa, xb in cut(x0, x1)]


def map_tiles(
    fn: Callable[..., torch.Tensor | Sequence[torch.Tensor]],
    x: torch.Tensor | Sequence[torch.Tensor],
    *,
    halo: int,
    tile: int = 256,
    strides: Sequence[int] = (1,),
    report: Callable[[float, int], None] | None = None,
    out: Sequence[torch.Tensor] | None = None,
) -> list[torch.Tensor]:
    """Apply ``fn`` to ``x`` (``(..., H, W)``) tile by tile; returns ``fn``'s outputs, assembled.

    ``x`` may also be a sequence of tensors of the same ``H x W``; ``fn`` then
    gets their blocks as separate arguments.

    ``fn`` maps a block ``(..., h, w)`` to one tensor or a sequence of tensors
    ``(..., h // s, w // s)``, one per entry of ``strides`` (``s = 1``: same
    size; ``s > 1``: a map subsampled by ``s`` with floor rounding, as after
    ``s``-fold max pooling). Leading dimensions of the outputs may differ from
    the input's. ``tile`` and ``halo`` are rounded up to a multiple of the
    largest stride so every block starts on the subsampled grid.

    ``report(done, total)`` is called after every tile (it may raise, e.g.
    :class:`napari_fusion.FusionCancelled`, to stop). ``out``: tensors to write
    the outputs into (of the assembled shapes), instead of new ones.

    A tile whose block runs out of memory (GPU or host) is split into four
    and each part is run with the same halo, down to :data:`MIN_SPLIT_TILE`
    pixels; the result does not change. ``done`` then advances by the finished
    parts' share of their tile.
    """
    inputs = [x] if isinstance(x, torch.Tensor) else list(x)
    h, w = inputs[0].shape[-2:]
    if any(t.shape[-2:] != (h, w) for t in inputs):
        raise ValueError("all inputs of map_tiles must have the same height and width")
    align = max(int(s) for s in strides)
    if align < 1:
        raise ValueError(f"strides must be positive, got {tuple(strides)}")
    tile = -(-max(int(tile), 1) // align) * align
    halo = -(-max(int(halo), 0) // align) * align
    queue = [
        (y0, min(y0 + tile, h), x0, min(x0 + tile, w)) for y0 in tile_starts(h, tile) for x0 in tile_starts(w, tile)
    ]
    total = len(queue)
    share = {box: 1.0 for box in queue}  # fraction of an original tile each queued box stands for
    outs: list[torch.Tensor] | None = None if out is None else list(out)
    done = 0.0
    while queue:
        box = queue.pop(0)
        y0, y1, x0, x1 = box
        ya, xa = max(0, y0 - halo), max(0, x0 - halo)
        yb, xb = min(h, y1 + halo), min(w, x1 + halo)
        try:
            got = fn(*(t[..., ya:yb, xa:xb] for t in inputs))
        except Exception as exc:  # noqa: BLE001 - only out-of-memory errors are retried
            parts_of = _split_box(box, align)
            if not is_out_of_memory(exc) or max(y1 - y0, x1 - x0) < MIN_SPLIT_TILE or len(parts_of) == 1:
                raise
            free_device_memory()
            for part in parts_of:
                share[part] = share[box] * (part[1] - part[0]) * (part[3] - part[2]) / ((y1 - y0) * (x1 - x0))
            queue[:0] = parts_of
            continue
        parts = [got] if isinstance(got, torch.Tensor) else list(got)
        if len(parts) != len(strides):
            raise ValueError(f"fn returned {len(parts)} outputs for {len(strides)} strides")
        if outs is None:
            outs = [p.new_empty((*p.shape[:-2], h // s, w // s)) for p, s in zip(parts, strides)]
        for target, part, s in zip(outs, parts, strides):
            r0, c0 = y0 // s, x0 // s
            r1 = h // s if y1 == h else y1 // s
            c1 = w // s if x1 == w else x1 // s
            dy, dx = (y0 - ya) // s, (x0 - xa) // s
            target[..., r0:r1, c0:c1] = part[..., dy : dy + r1 - r0, dx : dx + c1 - c0]
        done += share.pop(box)
        if report is not None:
            report(done, total)
    assert outs is not None
    return outs
