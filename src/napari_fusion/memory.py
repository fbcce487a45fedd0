"""Predicting the memory an in-memory (untiled) fusion needs, before allocating it.

:func:`napari_fusion.fuse` on numpy inputs converts the whole stack to
float32 and runs the method on all of it at once (methods registered with
``streams_slices=True`` convert one slice at a time instead; their factors
are small). A stack too large for the
machine used to die deep inside numpy or torch after a long wait; now
``fuse`` first compares :func:`estimate_peak_bytes` with
:func:`available_memory` and, when the stack does not fit, either fuses it
tile by tile (methods that can be tiled) or raises
:class:`~napari_fusion.errors.FusionInputError` saying how much memory is
needed and what to do (:func:`guard_untiled`).

The estimate is ``input + factor[method] * N*H*W*C*4 + outputs``: the
caller's input array, a per-method float32 working set measured on real runs
(:data:`WORKING_SET_FACTORS`, see there for how), and the output arrays.
:func:`measure_peak_rss` measures the real peak of one call in a subprocess,
for calibration and benchmarks.

``NAPARI_FUSION_MEMORY_LIMIT`` (bytes, or a size such as ``512M``, ``2G``,
``1.5GiB``; the command line's ``--memory-limit``) overrides the detected available memory, for
tests and for users who want to keep memory free for other work. Such a limit caps the whole
process: :func:`headroom` takes the process's own baseline off it first.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import math
import os
import re
import subprocess
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._cgroups import cgroup_dirs, read_int
from .errors import FusionInputError

ENV_VAR = "NAPARI_FUSION_MEMORY_LIMIT"

#: Peak float32 working set of an untiled ``fuse`` per method, on top of the
#: caller's input array and the outputs: ``(a, b)`` meaning
#: ``a * N*H*W*C*4 + b * N*H*W*4`` bytes, i.e. ``a`` float32 copies of the whole
#: (colour) stack plus ``b`` float32 planes per image (most methods decide on
#: luminance, so much of their work does not grow with C). For grey stacks the
#: factor is ``a + b``. Measured with
#:
#:     python -c "from napari_fusion.memory import calibrate; calibrate()"
#:
#: i.e. :func:`measure_peak_rss` (peak RSS, ``VmHWM`` after resetting it, of a
#: fresh single-threaded subprocess, minus its RSS after importing napari_fusion
#: and torch and a warm-up fusion of a 2x32x32 stack) for a
#: 4x1536x1536 grey uint16 and an 8x768x768 RGB uint8 stack on the CPU, solving
#: for ``(a, b)`` and rounding up by ~10 % (last measured 2026-11-30, after the
#: shifted-sum filters of :mod:`napari_fusion.ops.filters` and the copy-free ``prepare``). Learned methods that took over 40 s
#: there were measured on smaller stacks, 4x384x384 grey uint16 and 4x256x256 RGB uint8
#: (2026-12-01: ``calibrate(grey=(4, 384, 384, "uint16"), rgb=(4, 256, 256, "uint8"), methods=[...],
#: timeout=900)``), where their fixed costs weigh more, so their factors err on the high side;
#: ``li2018_vgg19`` (ImageNet weights absent here) was measured with a random full-size VGG19 and
#: has a fixed part (:data:`FIXED_WORKING_SETS`).
#: The factors also size the tiles of a tiled run (:func:`fit_tile_to_memory`).
WORKING_SET_FACTORS: dict[str, tuple[float, float]] = {
    "average": (1.5, 1.0),  # measured: grey 2.12, RGB 1.60 per stack element
    "csc_ivfn": (5.75, 15.0),  # with its codes kept, + SOURCE_STREAMING (RGB part as measured 2026-12-01)
    # 2026-12-03, + FIXED_WORKING_SETS: grey 10 x 1024^2 3.59, 4 x 1024^2 3.21; RGB 10 x 640^2 3.56 per element
    "csc_mefn": (3.75, 0.5),
    # 2026-12-03, + FIXED_WORKING_SETS: grey 10 x 1024^2 2.91, 4 x 1024^2 3.35; RGB 10 x 640^2 3.58 per element
    "csc_mefn_pyramid": (4.0, -0.75),
    "li2018_vgg19": (6.5, 0.0),  # + FIXED_WORKING_SETS; measured 2026-12-02, see there
    # 2026-12-03, + FIXED_WORKING_SETS: grey 4 and 10 x 1024^2 152.6 and 319.1 MiB (6.94 per element
    # and 42 MiB), RGB 10 x 640^2 202.4 MiB (the 2026-12-01 factors, from 4 x 384^2, were 5-7x these)
    "liu2017_cnn_nway": (2.0, 5.75),
    # the methods that stream their slices: SLICE_STREAMING below; the two-input methods
    # (liu2017_cnn, tiis2018_fcn, veshki_cdl): PAIR_WORKING_SETS below
}


#: Bytes of a method's working set that do not grow with the image (network tiles and their
#: buffers), added to its :data:`WORKING_SET_FACTORS` part. ``li2018_vgg19`` runs its VGG19 in
#: 256 px tiles: measured 2026-12-02 with a random full-size VGG19, large allocations mapped as in
#: tiled runs (``python benchmarks/methods_memory.py --methods li2018_vgg19 --untrained-vgg19 --grey
#: --mapped --slices N --size S``), the work beyond the input and outputs was 159 MiB for both 2 and
#: 10 x 638^2 (the block of a 448 px tile), 171 MiB for 2 x 1214^2 and 398 MiB for 10 x 1214^2 (the
#: block of a 1024 tile): about 115-160 MiB fixed and 20 bytes per stack element; RGB (2 x 1214^2,
#: without the mapping) 34 bytes per element. The estimates with 160 MiB and 6.5 float32 per element
#: are 1.1-1.6x those peaks; the guess they replaced, 104 float32 per grey element, was 5-12x.
FIXED_WORKING_SETS: dict[str, int] = {
    "li2018_vgg19": 160 * 2**20,
    # measured 2026-12-03 (see WORKING_SET_FACTORS): the CNN's tiles and scratch; the CSC networks'
    # buffers (4 x 384^2 grey: 26.6 and 20.3 MiB beyond the input and outputs)
    "liu2017_cnn_nway": 48 * 2**20,
    "csc_mefn": 20 * 2**20,
    "csc_mefn_pyramid": 20 * 2**20,
}


@dataclass(frozen=True)
class SourceStreaming:
    """Working set of a method that works one source at a time.

    It keeps every source's cached values (``per_source`` float32 values per source pixel) when
    they take at most ``cap`` bytes or there are at most ``sources`` sources, and then holds
    ``planes_kept`` float32 values per pixel on top of its ``(a, b)``; otherwise it computes them
    again when needed and holds ``planes_streamed`` values per pixel plus ``per_element_streamed``
    per stack element (``N*C`` per pixel), *instead of* its ``(a, b)``: streaming, it holds no
    per-source working set but the stack itself and a few ``(N, H, W)`` maps.
    """

    per_source: float
    cap: int
    sources: int
    planes_kept: float
    planes_streamed: float
    per_element_streamed: float

    def keeps(self, n: int, pixels: int) -> bool:
        return n <= self.sources or self.per_source * n * pixels * 4 <= self.cap

    def kept_bytes(self, n: int, pixels: int) -> float:
        """Bytes on top of the ``(a, b)`` working set when the sources' values are kept."""
        return (self.planes_kept + self.per_source * n) * pixels * 4

    def streamed_bytes(self, n: int, pixels: int, channels: int) -> float:
        """The whole working set when they are computed again (the ``(a, b)`` part not added)."""
        return (self.planes_streamed + self.per_element_streamed * n * channels) * pixels * 4


#: Methods that fuse one source at a time (:class:`SourceStreaming`). ``csc_ivfn`` keeps every
#: source's codes (2 x 32 maps with the shipped weights) as ``methods.csc_ivfn.KEEP_CODES_BYTES``
#: and ``KEEP_CODES_SOURCES`` say. Kept (measured 2026-12-02 with ``measure_peak_rss``, grey
#: uint16): 2 x 768^2 241 float32 values per pixel in all. Streamed (measured 2026-12-02, later, after
#: the detail codes got a round of their own, each source's base codes were freed before the next
#: was coded and the YCbCr/luminance copies of the stack were dropped), work beyond the input and
#: outputs: 6 x 768^2 and 10 x 640^2 grey uint16 195 and 209 values per pixel, 10 x 1252^2 (the
#: block of a 1024 tile) 187 (1223 MiB in all, 1574 before), RGB uint8 6 x 640^2 212 (352 MiB, 462
#: before); so about 175 + 3.5 per stack element, rounded up by ~10 % (estimates 1.09-1.11x those
#: peaks on the small grey stacks, 1.24x on 1252^2, 1.26x RGB). The same 3 x 640^2 run measured
#: 337-366 MB from run to run (heap placement), above 1.05x the estimate with 190 planes; 205 since.
SOURCE_STREAMING: dict[str, SourceStreaming] = {
    "csc_ivfn": SourceStreaming(
        per_source=64.0, cap=256 * 2**20, sources=2, planes_kept=75.0, planes_streamed=205.0, per_element_streamed=4.5
    )
}


@dataclass(frozen=True)
class PairWorkingSet:
    """Working set of a two-input method folded over a stack (``mode="pairwise"``), which fuses
    one pair at a time: ``fixed`` bytes (network tiles and scratch, whatever the image size), the
    stack as float32 (``N*H*W*C*4``), ``grey`` (``C = 1``) or ``rgb`` (``C = 3``) float32 values
    per pixel of the pair (``2*H*W``), and the fold's pending results (up to ceil(log2 N) of them
    in a tree: ``C`` float32 planes and int64 labels each), and for more than two slices two
    ``(N, H, W)`` float32 arrays while the weights are composed. Unlike :data:`WORKING_SET_FACTORS`,
    the pair's part does not grow with the number of slices."""

    fixed: float
    grey: float
    rgb: float

    def bytes(self, n: int, pixels: int, channels: int, *, tiled: bool = False) -> float:
        pending = max((n - 1).bit_length(), 1) * pixels * (4 * channels + 8)  # ceil(log2 N): a tree's levels
        # the weights composed over the fold (untiled runs only: tiles build none)
        composing = 2 * n * pixels * 4 if n > 2 and not tiled else 0
        per_pixel = self.grey if channels == 1 else self.rgb
        return self.fixed + n * pixels * channels * 4 + per_pixel * 2 * pixels * 4 + pending + composing


#: The two-input methods' working sets (:class:`PairWorkingSet`), fitted to ``measure_peak_rss`` of
#: pairs (2 x 512^2, 1024^2 and 1536^2 grey uint16, 2 x 768^2 RGB uint8; 2026-12-02), fixed costs
#: and factors rounded up by ~10 %. They replaced factors per stack element measured on small
#: stacks, which overestimated ``veshki_cdl`` 3-5x and ``tiis2018_fcn`` 6-9x and underestimated
#: ``liu2017_cnn``'s pairs 1.6x (its fixed cost: CNN tiles).
PAIR_WORKING_SETS: dict[str, PairWorkingSet] = {
    # measured grey 2 x 512^2 / 1024^2 / 1536^2: 188 / 227 / 238 MiB; the rest of the fit was below 0
    "liu2017_cnn": PairWorkingSet(fixed=210 * 2**20, grey=0.0, rgb=0.0),
    "tiis2018_fcn": PairWorkingSet(fixed=155 * 2**20, grey=0.0, rgb=10.75),  # grey 144 / 159 / 184 MiB
    "veshki_cdl": PairWorkingSet(fixed=30 * 2**20, grey=3.0, rgb=5.75),  # grey 37 / 91 / 167 MiB
}

#: Methods registered with ``streams_slices=True`` convert and read one slice at a time and keep a
#: few running planes, so their working set does not grow with the number of slices:
#: ``(fixed bytes, float32 values per pixel for grey stacks, for RGB stacks)``, replacing their
#: :data:`WORKING_SET_FACTORS` entry. Measured 2026-12-03 (``python benchmarks/methods_memory.py
#: --mapped --threads 2`` with ``--grey --size 1024`` and RGB ``--size 640``, 4 and 10 slices each):
#: the work beyond the input and outputs per pixel was, grey / RGB, ``focus_measure`` 17.7-18.7 /
#: 24.8-26.7, ``focus_pyramid`` 10.1-17.4 / 20.8-27.1, ``gff`` 15.5-19.4 / 39.2-45.7,
#: ``laplacian_pyramid`` 15.5-16.6 / 22.6-25.9, ``mertens`` 3.7 / 14.5-21.5; rounded up by ~10 %.
#: (The factors per stack element they replace overestimated ten slices 1.3-3.5x.)
SLICE_STREAMING: dict[str, tuple[int, float, float]] = {
    "focus_measure": (0, 20.75, 29.5),
    "focus_pyramid": (0, 19.25, 30.0),
    "gff": (0, 21.5, 50.25),
    "laplacian_pyramid": (0, 18.5, 28.5),
    "mertens": (0, 4.25, 23.75),
}

#: Factor for methods not in the table (plugins): conservative.
DEFAULT_FACTOR = (4.0, 16.0)
#: Working set left in host memory when the method runs on a GPU (float copy, staging).
HOST_FACTOR_ON_DEVICE = 2.5
#: Memory kept free of the *detected* available memory for everything else in the process
#: (allocator slack, I/O buffers; the process's own baseline is already outside what is available).
HEADROOM_BYTES = 256 * 2**20
#: Memory taken off a limit the user sets (``NAPARI_FUSION_MEMORY_LIMIT``, the command line's
#: ``--memory-limit``), which caps the whole process: the interpreter, torch and the libraries
#: (about 370-450 MiB for ``napari-fusion fuse`` with torch loaded) and the allocator's slack. With
#: 256 MiB, a tiled ``csc_ivfn`` run under a 1.5 GiB limit peaked at 1469 MiB (2026-12-02).
LIMIT_HEADROOM_BYTES = 512 * 2**20
#: Memory the tiles of a tiled run, computed side by side, may take together when the user set no
#: limit (:func:`napari_fusion.tiling.sub_tile_for`): with the process's own ~0.4 GiB (the
#: interpreter, torch, the libraries), a run of about 1.5 GiB, whatever memory the machine has.
#: Tiles estimated to need more are computed in sub-tiles; a limit the user sets replaces it.
TILED_ROOM = 2**30
#: Smallest tile :func:`guard_untiled` uses when it has to tile a stack that does not fit.
MIN_AUTO_TILE = 256

_UNITS = {"": 1, "b": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


def parse_size(text: str | int) -> int:
    """Bytes from ``123``, ``512M``, ``2G``, ``1.5GiB``, ``800MB`` (binary units)."""
    if isinstance(text, (int, np.integer)):
        return int(text)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgtKMGT]?)(?:i?[bB])?\s*", str(text))
    if not m:
        raise FusionInputError(f"{ENV_VAR} must be a number of bytes or a size such as 2G, got {text!r}")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


#: The limit of :func:`limited_to` in this thread (or task), or None.
_LIMIT: contextvars.ContextVar[int | None] = contextvars.ContextVar("napari_fusion_memory_limit", default=None)


@contextlib.contextmanager
def limited_to(size: str | int | None):
    """Within the block, :func:`available_memory` is ``size`` (bytes, or a size such as ``"1.5G"``;
    ``None``: unchanged), as ``$NAPARI_FUSION_MEMORY_LIMIT`` would make it, in this thread only (a
    context variable: nothing process-wide changes, so a napari widget's worker can set it). The
    command line's ``--memory-limit``; in Python::

        with napari_fusion.memory.limited_to("1.5G"):
            lazy = napari_fusion.fuse(stack, "csc_ivfn", chunks=1024)  # tiles fitted to 1.5 GiB
    """
    if size is None:
        yield
        return
    token = _LIMIT.set(parse_size(size))
    try:
        yield
    finally:
        _LIMIT.reset(token)


def _user_limit() -> int | None:
    """The limit the user set: :func:`limited_to`'s, else ``$NAPARI_FUSION_MEMORY_LIMIT``'s, else None."""
    limit = _LIMIT.get()
    if limit is not None:
        return limit
    env = os.environ.get(ENV_VAR, "").strip()
    return parse_size(env) if env else None


def limit_is_set() -> bool:
    """Whether the user set a memory limit (:func:`limited_to`, ``$NAPARI_FUSION_MEMORY_LIMIT``)."""
    return _user_limit() is not None


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup_room() -> int | None:
    """Limit minus usage of this process's memory cgroup (v2, then v1), if limited."""
    for kind, base in cgroup_dirs("memory"):
        if kind == "v2":
            limit, usage = read_int(base + "/memory.max"), read_int(base + "/memory.current")
        else:
            limit, usage = read_int(base + "/memory.limit_in_bytes"), read_int(base + "/memory.usage_in_bytes")
        if limit is None or usage is None or limit >= 2**60:  # v1 "unlimited" is a huge number
            continue
        return max(limit - usage, 0)
    return None


def available_memory() -> int:
    """Bytes this process can still allocate.

    A limit the user set (:func:`limited_to`, ``$NAPARI_FUSION_MEMORY_LIMIT``); otherwise on Linux
    the smaller of ``MemAvailable`` and the memory cgroup's limit minus usage; elsewhere
    ``os.sysconf`` (available physical pages), else a large number (no check).
    """
    limit = _user_limit()
    if limit is not None:
        return limit
    values = [v for v in (_meminfo_available(), _cgroup_room()) if v is not None]
    if values:
        return min(values)
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 2**62


def headroom() -> int:
    """Bytes of :func:`available_memory` kept free for everything but the fusion's working set:
    :data:`LIMIT_HEADROOM_BYTES` under a limit the user set (it caps the whole process), else
    :data:`HEADROOM_BYTES` (the detected memory excludes what the process already holds)."""
    return LIMIT_HEADROOM_BYTES if _user_limit() is not None else HEADROOM_BYTES


def _outputs_of(method: str) -> tuple[str, ...]:
    try:
        from .registry import get_method

        return get_method(method).outputs
    except Exception:  # noqa: BLE001 - unknown method: assume every output
        return ("fused", "labels", "weights", "depth")


def estimate_peak_bytes(
    n: int,
    height: int,
    width: int,
    channels: int = 1,
    dtype: Any = np.uint16,
    method: str = "focus_measure",
    *,
    device: str = "cpu",
    tiled: bool = False,
) -> int:
    """Predicted peak memory (bytes above an idle process) of an untiled :func:`napari_fusion.fuse`
    (``tiled``: of one tile's block, which builds no ``(N, H, W)`` weights).

    ``input (N*H*W*C, dtype) + a * N*H*W*C*4 + b * N*H*W*4 + outputs`` with
    the method's ``(a, b)`` from :data:`WORKING_SET_FACTORS` (and its :data:`FIXED_WORKING_SETS`
    part; plus its
    :data:`SOURCE_STREAMING` entry, if any, or that entry alone where it streams the sources); two-input methods: their
    :data:`PAIR_WORKING_SETS` entry instead of ``(a, b)``. ``device`` other than
    ``"cpu"``: only the host side (the float copy and staging) is counted.
    """
    n, height, width, channels = (int(v) for v in (n, height, width, channels))
    pixels = height * width
    item = np.dtype(dtype).itemsize
    elements = n * pixels * channels
    streaming = SOURCE_STREAMING.get(method)
    if method in PAIR_WORKING_SETS:
        work = PAIR_WORKING_SETS[method].bytes(n, pixels, channels, tiled=tiled)
    elif method in SLICE_STREAMING:
        fixed, grey, rgb = SLICE_STREAMING[method]
        work = fixed + (grey if channels == 1 else rgb) * pixels * 4
    elif streaming is not None and not streaming.keeps(n, pixels):
        work = streaming.streamed_bytes(n, pixels, channels)
    else:
        a, b = WORKING_SET_FACTORS.get(method, DEFAULT_FACTOR)
        work = FIXED_WORKING_SETS.get(method, 0) + a * elements * 4 + b * n * pixels * 4
        if streaming is not None:
            work += streaming.kept_bytes(n, pixels)
    if str(device) != "cpu":
        work = min(work, HOST_FACTOR_ON_DEVICE * elements * 4)
    outputs = _outputs_of(method)
    out = pixels * channels * item  # fused
    if "labels" in outputs:
        out += pixels * 8 + pixels * (1 if n <= 256 else 2)  # int64 on the way, then uint8/16
    if "depth" in outputs:
        out += pixels * 4
    if "weights" in outputs and not tiled:
        out += n * pixels * 4
    return int(elements * item + work + out)


def size_text(b: int) -> str:
    """A byte count for messages: ``"1.25 GiB"``, or ``"12.5 MiB"`` below 256 MiB."""
    return f"{b / 2**30:.2f} GiB" if b >= 2**28 else f"{b / 2**20:.1f} MiB"


REMEDY = "use chunks=1024 in Python or --chunks 1024 on the command line to fuse tile by tile"


def check_fits(
    n: int,
    height: int,
    width: int,
    channels: int = 1,
    dtype: Any = np.uint16,
    method: str = "focus_measure",
    *,
    device: str = "cpu",
    available: int | None = None,
) -> int:
    """Raise :class:`FusionInputError` if an untiled fusion of this stack would not fit in memory.

    Returns the estimate (bytes) when it fits.
    """
    need = estimate_peak_bytes(n, height, width, channels, dtype, method, device=device)
    room = available_memory() if available is None else int(available)
    if need + headroom() > room:
        raise FusionInputError(_message(need, room, n, height, width, channels, dtype, method, REMEDY))
    return need


def _message(need, room, n, h, w, c, dtype, method, remedy) -> str:
    shape = f"{n} x {h} x {w}" + (f" x {c}" if c > 1 else "")
    return (
        f"fusing this {shape} {np.dtype(dtype).name} stack with {method!r} in memory needs about "
        f"{size_text(need)} (estimate; with {size_text(headroom())} kept free), but only {size_text(room)} is "
        "available; stopped before allocating it. "
        f"To fuse it anyway, {remedy}."
    )


def input_geometry(
    images: Any, *, stack_axis: int = 0, channel_axis: int | None = None, mixed_colour: bool = False
) -> tuple[int, int, int, int, np.dtype] | None:
    """``(N, H, W, C, dtype)`` of ``fuse``'s raw input, from metadata only; None when unclear."""
    try:
        if hasattr(images, "shape") and hasattr(images, "dtype"):
            shape = tuple(int(s) for s in images.shape)
            ndim = len(shape)
            if ndim not in (3, 4):
                return None
            sa = stack_axis % ndim
            n = shape[sa]
            rest = [i for i in range(ndim) if i != sa]
            if channel_axis is not None:
                ca = channel_axis % ndim
                c = shape[ca]
                rest = [i for i in rest if i != ca]
            elif ndim == 4:
                c = shape[rest[-1]]
                rest = rest[:-1]
            else:
                c = 1
            if len(rest) != 2:
                return None
            return n, shape[rest[0]], shape[rest[1]], c, np.dtype(images.dtype)
        if isinstance(images, (list, tuple)) and images:
            shapes = [tuple(int(s) for s in a.shape) for a in images]
            h, w = shapes[0][:2]
            chans = [s[2] if len(s) == 3 else 1 for s in shapes]
            c = max(chans)  # mixed grey + RGB: grey becomes 3 channels (others are refused later)
            return len(images), h, w, c, np.dtype(images[0].dtype)
    except Exception:  # noqa: BLE001 - anything odd: let prepare() report it
        return None
    return None


def _auto_tile(n, c, dtype, method, halo, room, workers) -> int:
    """Largest power-of-two tile (<= 1024) whose blocks, ``workers`` at a time, fit in ``room``."""
    tile = 1024
    while tile > MIN_AUTO_TILE:
        side = tile + 2 * halo
        if workers * estimate_peak_bytes(n, side, side, c, dtype, method, tiled=True) <= room:
            break
        tile //= 2
    return tile


#: Smallest tile (core side) :func:`fit_tile_to_memory` shrinks a requested tile to.
MIN_FITTED_TILE = 128
#: Sides of the tiles :func:`fit_tile_to_memory` chooses are multiples of this (and of the method's
#: alignment): output chunks of 464 rather than 463 pixels.
FITTED_TILE_STEP = 16


def tiles_at_once() -> int:
    """How many tiles the local threaded scheduler computes side by side (dask's ``num_workers``
    setting, else the CPU count)."""
    import dask

    return max(1, int(dask.config.get("num_workers", None) or os.cpu_count() or 1))


def fit_tile_to_memory(
    tile: tuple[int, int],
    *,
    halo: int,
    align: int,
    shape: tuple[int, int],
    n: int,
    channels: int,
    dtype: Any,
    method: str,
    workers: int,
    room: int,
    device: str = "cpu",
    input_chunks: tuple[int, int] | None = None,
) -> tuple[int, int]:
    """The largest tile, at most ``tile``, whose blocks fit in ``room`` bytes ``workers`` at a time.

    A tile computes its block (the core grown by ``halo`` on each side, clipped
    to ``shape``) with the method's untiled working set
    (:func:`estimate_peak_bytes`), so a tile the user chose for the output's
    chunking may need far more memory than the machine has (``csc_ivfn`` keeps
    every source's codes: about 8.5 GiB for one block of a 1024 tile of ten
    slices). The tile's sides are then capped at the largest multiple of ``align``
    and :data:`FITTED_TILE_STEP` whose blocks fit, down to :data:`MIN_FITTED_TILE` (or ``align``, if larger;
    sides already below it are kept); the same tile comes back when it already
    fits. (Halving instead overshot: a tile slightly too large for the room became
    a quarter of it, and with large halos (``csc_ivfn``: 114 px) the blocks then
    computed 3.6 times the core's pixels instead of 2.3 at the largest fitting tile.)
    """

    def need(t: tuple[int, int]) -> int:
        return tiles_need(t, halo=halo, shape=shape, n=n, channels=channels, dtype=dtype, method=method,
                          workers=workers, device=device, input_chunks=input_chunks)  # fmt: skip

    floor = max(MIN_FITTED_TILE, align)
    step = align * FITTED_TILE_STEP // math.gcd(align, FITTED_TILE_STEP)  # multiples of both
    out = tuple(int(v) for v in tile)
    side = max(out)
    while need(out) > room and side > floor:  # type: ignore[arg-type]
        side = max(floor, (side - 1) // step * step)  # the next multiple of step down
        out = tuple(min(v, side) if v > floor else v for v in tile)
    return out  # type: ignore[return-value]


def tiles_need(
    tile: tuple[int, int],
    *,
    halo: int,
    shape: tuple[int, int],
    n: int,
    channels: int,
    dtype: Any,
    method: str,
    workers: int,
    device: str = "cpu",
    input_chunks: tuple[int, int] | None = None,
) -> int:
    """Estimated bytes of ``workers`` tiles computed side by side: each its block (the core grown by
    ``halo``, clipped to ``shape``) with the method's untiled working set; with ``input_chunks``
    (the input's spatial chunks, read by the tiles), also the input chunks a tiled run keeps
    (:func:`napari_fusion._tile_inputs.cache_bytes`)."""
    from ._tile_inputs import cache_bytes

    bh, bw = min(tile[0] + 2 * halo, shape[0]), min(tile[1] + 2 * halo, shape[1])
    need = workers * estimate_peak_bytes(n, bh, bw, channels, dtype, method, device=device, tiled=True)
    if input_chunks is not None:
        plane = n * channels * np.dtype(dtype).itemsize
        need += cache_bytes((bh, bw), chunks=input_chunks, shape=shape, plane_bytes=plane, workers=workers)
    return need


def guard_untiled(
    images: Any,
    spec,
    resolved: dict[str, Any],
    *,
    stack_axis: int = 0,
    channel_axis: int | None = None,
    z_positions=None,
    device=None,
    progress=None,
    params: dict[str, Any] | None = None,
    fuse_tiled: Callable[..., Any],
):
    """Called by :func:`napari_fusion.fuse` before it prepares an in-memory stack.

    ``fuse_tiled`` is :func:`napari_fusion.tiling.fuse_lazy` (given by the
    caller: the tiling module imports this one).

    Returns None when the untiled fusion fits in memory (or the input's shape
    cannot be read cheaply). Otherwise, if the method can be tiled, fuses tile
    by tile (with a warning) and returns that :class:`FusionResult` (without
    ``weights`` and ``extras``, as tiled results have none); if it cannot,
    raises :class:`FusionInputError` with the estimate.
    """
    geo = input_geometry(images, stack_axis=stack_axis, channel_axis=channel_axis, mixed_colour=spec.mixed_colour)
    if geo is None:
        return None
    n, h, w, c, dtype = geo
    try:
        from .device import resolve_device

        dev_type = resolve_device(device).type
    except Exception:  # noqa: BLE001 - fuse reports bad devices itself
        dev_type = "cpu"
    need = estimate_peak_bytes(n, h, w, c, dtype, spec.name, device="cpu" if dev_type == "cpu" else dev_type)
    room = available_memory()
    if need + headroom() <= room:
        return None
    halo = spec.halo_for(resolved)
    if halo is None:
        remedy = (
            f"free memory or fuse fewer or smaller images: {spec.name!r} is global (with these parameters) and "
            f"cannot be fused tile by tile; with a method that can (e.g. 'focus_measure'), " + REMEDY
        )
        raise FusionInputError(_message(need, room, n, h, w, c, dtype, spec.name, remedy))
    workers = max(1, min(os.cpu_count() or 1, 8))
    input_bytes = n * h * w * c * dtype.itemsize
    tile = _auto_tile(n, c, dtype, spec.name, halo, max(room - input_bytes - headroom(), 0), workers)
    warnings.warn(
        f"fusing this {n} x {h} x {w}{f' x {c}' if c > 1 else ''} stack with {spec.name!r} in memory would need "
        f"about {size_text(need)} (with {size_text(headroom())} kept free) but only {size_text(room)} is available: "
        f"fusing it tile by tile instead "
        f"({tile} x {tile} tiles; pass chunks= yourself to choose)",
        RuntimeWarning,
        stacklevel=3,
    )
    lazy = fuse_tiled(
        images,
        spec.name,
        stack_axis=stack_axis,
        channel_axis=channel_axis,
        z_positions=z_positions,
        device=device,
        progress=progress,
        chunks=tile,
        **(params or {}),
    )
    return lazy.compute(progress=progress)


# --------------------------------------------------------------------------- measuring

_MEASURE = r"""
import json, resource, sys, warnings
import numpy as np
import torch
import napari_fusion as nf
args = json.loads(sys.argv[1])
torch.set_num_threads(args["threads"])
warnings.simplefilter("ignore")
def stack(n, h, w, c, dtype, seed):
    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype)
    hi = 1.0 if dt.kind == "f" else min(np.iinfo(dt).max, 60000)
    shape = (n, h, w) if c == 1 else (n, h, w, c)
    return (rng.random(shape, dtype=np.float32) * hi).astype(dt) if dt.kind == "f" else rng.integers(0, hi, shape, dtype=dt)
def status(key):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
def reset_peak():  # Linux: "5" resets VmHWM, so an import-time peak does not hide the fusion's
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return status("VmHWM") is not None
    except OSError:
        return False
nf.fuse(stack(2, 32, 32, args["c"], args["dtype"], 1), args["method"], device="cpu", **args["params"])
if reset_peak():
    base = status("VmRSS")
    peak_of = lambda: status("VmHWM")
else:
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    peak_of = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
x = stack(args["n"], args["h"], args["w"], args["c"], args["dtype"], 0)
nf.fuse(x, args["method"], device="cpu", **args["params"])
peak = peak_of()
print("NAPARI_FUSION_PEAK", json.dumps({"base": base, "peak": peak}))
"""


def measure_peak_rss(
    n: int,
    h: int,
    w: int,
    c: int = 1,
    dtype: Any = np.uint16,
    method: str = "focus_measure",
    *,
    timeout: float | None = 600,
    threads: int = 1,
    **params: Any,
) -> int:
    """Measured peak memory (bytes) of one untiled CPU ``fuse`` of random ``(n, h, w[, c])`` data.

    Runs in a fresh Python subprocess: after importing napari_fusion and torch
    and a warm-up fusion of a 2x32x32 stack, the peak RSS is reset (Linux
    ``/proc/self/clear_refs``) and the result is the peak (``VmHWM``) of the
    real call minus the RSS before it (elsewhere: ``ru_maxrss`` after minus
    before), so the result includes the input array and is
    comparable with :func:`estimate_peak_bytes`. Raises ``RuntimeError`` when
    the subprocess fails and ``subprocess.TimeoutExpired`` after ``timeout``.
    """
    args = {
        "n": int(n),
        "h": int(h),
        "w": int(w),
        "c": int(c),
        "dtype": np.dtype(dtype).name,
        "method": method,
        "params": params,
        "threads": int(threads),
    }
    env = dict(os.environ)
    env.pop(ENV_VAR, None)  # the child must fuse in memory
    proc = subprocess.run(
        [sys.executable, "-c", _MEASURE, json.dumps(args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )
    for line in proc.stdout.splitlines():
        if line.startswith("NAPARI_FUSION_PEAK "):
            r = json.loads(line.split(" ", 1)[1])
            return int(r["peak"] - r["base"])
    raise RuntimeError(f"measuring {method} failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")


def calibrate(
    grey=(4, 1536, 1536, "uint16"), rgb=(8, 768, 768, "uint8"), methods=None, timeout: float = 40
) -> dict[str, tuple[float, float]]:
    """Measure each method's ``(a, b)`` (see :data:`WORKING_SET_FACTORS`) and print them (beyond
    its :data:`SOURCE_STREAMING` entry, which stays in the estimate)."""
    from .registry import list_methods

    names = methods or [s.name for s in list_methods()]
    out: dict[str, tuple[float, float]] = {}
    for name in names:
        if name in PAIR_WORKING_SETS:
            print(f"{name}: a two-input method, modelled by PAIR_WORKING_SETS (fit to pairs; see there)")
            continue
        if name in SLICE_STREAMING:
            print(f"{name}: streams its slices, modelled by SLICE_STREAMING (planes per pixel; see there)")
            continue
        factors = []
        for (n, h, w, dt), c in ((grey, 1), (rgb, 3)):
            try:
                peak = measure_peak_rss(n, h, w, c, dt, name, timeout=timeout)
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                why = str(exc).splitlines()[-1][:150] if str(exc) else type(exc).__name__
                print(
                    f"{name} {n}x{h}x{w}x{c} {dt}: not measured ({'timeout' if isinstance(exc, subprocess.TimeoutExpired) else why})"
                )
                break
            known = dict(WORKING_SET_FACTORS)
            WORKING_SET_FACTORS[name] = (0.0, 0.0)
            try:
                fixed = estimate_peak_bytes(n, h, w, c, dt, name)  # input + outputs
            finally:
                WORKING_SET_FACTORS.clear()
                WORKING_SET_FACTORS.update(known)
            f = (peak - fixed) / (n * h * w * c * 4)
            print(f"{name} {n}x{h}x{w}x{c} {dt}: peak {peak / 2**20:.1f} MiB, factor per stack element {f:.2f}")
            factors.append(f)
        if len(factors) == 2:
            f_grey, f_rgb = factors  # grey: a + b; RGB: a + b / 3
            a = max((3 * f_rgb - f_grey) / 2, 0.0)
            b = max(f_grey - a, 0.0)
            out[name] = (math.ceil(a * 1.1 * 4) / 4, math.ceil(b * 1.1 * 4) / 4)
    print(json.dumps(out))
    return out


__all__ = [
    "ENV_VAR",
    "headroom",
    "limited_to",
    "limit_is_set",
    "TILED_ROOM",
    "FIXED_WORKING_SETS",
    "PAIR_WORKING_SETS",
    "PairWorkingSet",
    "WORKING_SET_FACTORS",
    "SOURCE_STREAMING",
    "SLICE_STREAMING",
    "SourceStreaming",
    "available_memory",
    "calibrate",
    "check_fits",
    "estimate_peak_bytes",
    "fit_tile_to_memory",
    "guard_untiled",
    "input_geometry",
    "measure_peak_rss",
    "parse_size",
    "size_text",
    "tiles_at_once",
    "tiles_need",
]
