"""Whole-image steps of tiled runs: computed in a first pass over the tiles, then applied per tile.

Some methods have a step whose result at one pixel depends on the whole
image: Liu et al.'s small-region removal (regions of 1% of the image area),
a percentile stretch, the choice of the most colourful source. A method
writes such a step through its :class:`~napari_fusion.registry.FusionContext`:

* ``ctx.whole_image_map(key, local, finish, scale=1)``: ``local()`` computes a map
  ``(..., H, W)`` of the method's input window (or ``ceil(H / scale)`` rows etc.: a
  pyramid level); ``finish(full)`` turns the map of the *whole image* into the map the
  method continues with (same shape);
* ``ctx.whole_image_stat(key, values, reduce, finish, combine=+)``: ``reduce(values)``
  turns per-pixel values into a statistic that ``combine`` joins over parts of the
  image (counts, sums; element-wise min/max); ``finish(total)`` turns the whole
  image's statistic into what the method continues with.
* ``ctx.image_shape(own)``: the whole image's ``(H, W)`` (a pyramid's depth).

Untiled, both are simply ``finish(local())`` and ``finish(reduce(values))``.

Tiled (:func:`napari_fusion.tiling.fuse_lazy`), the engine runs *collect
passes* before the lazy result exists. In a pass every tile runs the method
until it reaches a step whose result is not known yet; there the tile gives
back its core's part (:class:`Collected`: the map over the core, or
``reduce`` of the core's values) and stops. The parts are assembled (maps)
or combined (statistics), ``finish`` is applied once to the whole, and the
next pass runs with that step known. Tiles of later passes, and the final
tiles, read known maps over their block (:class:`TileSteps`). The number of
passes is found by running them: a two-input method folded over N slices
(``liu2017_cnn``) has one step per fold step; pass ``p`` computes the fold steps with at most
``p`` steps chained beneath them (:attr:`TileSteps.depth_limit`, the context its tiles have) and
collects every one whose step is not known (:class:`CollectedMany`): one pass per level of the
fold, ceil(log2 N) as a tree, N - 1 sequentially. Each pass starts with
one tile computed with the whole method's context; when it runs to the end there
is no step left (for this method, or for these data) and nothing more is run.

Because ``finish`` sees exactly the whole image's map or statistic, a tiled
run computes the same global step as the untiled one; only the local parts
(computed per tile with the method's halo) can differ by float rounding.

Memory: a known map is kept for the whole run; boolean maps are stored as
packed bits (one eighth of a byte per pixel).

A zarr output keeps the steps of the run that writes it (:func:`save_steps`, the file
``whole_image_steps.pt`` in the output's group), so that the same command run again after an
interruption reads them (:func:`load_steps`) and computes only the missing tiles, not the
passes again (CSC-IVFN's took 34 minutes on 10 x 8192^2).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

#: Most collect passes a run may need (a guard against a method that never finishes).
MAX_PASSES = 4096


class Collected(Exception):
    """Raised inside a tile of a collect pass: the tile's part of a whole-image step.

    ``kind`` is ``"map"`` (``part`` is the map over the tile's core) or
    ``"stat"`` (``part`` is the statistic of the core's values).
    """

    def __init__(
        self,
        key: tuple,
        kind: str,
        part: Any,
        finish: Callable[[Any], Any],
        combine: Callable[[Any, Any], Any] | None,
        scale: int = 1,
    ):
        super().__init__(f"whole-image step {key!r} collected")
        self.key = key
        self.kind = kind
        self.part = part
        self.finish = finish
        self.combine = combine or _add
        self.scale = scale

    def __reduce__(self):  # exceptions pickle their message only; dask workers send this back whole
        return (Collected, (self.key, self.kind, self.part, self.finish, self.combine, self.scale))


class CollectedMany(Exception):
    """Raised inside a tile of a collect pass by a fold whose tile reached several whole-image
    steps that do not depend on each other (the steps of one level of a tree fold): their
    :class:`Collected` parts, in the order the fold ran them. Empty when the tile computed every
    step its context allows without reaching an unknown one (:attr:`TileSteps.depth_limit`)."""

    def __init__(self, parts: list[Collected]):
        super().__init__(f"{len(parts)} whole-image steps collected")
        self.parts = list(parts)

    def __reduce__(self):
        return (CollectedMany, (self.parts,))


def _add(a: Any, b: Any) -> Any:
    return a + b


def scaled_box(box: tuple[int, int, int, int], scale: int) -> tuple[int, int, int, int]:
    """``box`` (image pixels, its start on the ``scale`` grid) in the samples of a map at
    ``1/scale`` resolution whose size is ``ceil(size / scale)`` (a pyramid level)."""
    y0, y1, x0, x1 = box
    return y0 // scale, -(-y1 // scale), x0 // scale, -(-x1 // scale)


@dataclass
class KnownMap:
    """A finished whole-image map, kept as numpy (bool maps as packed bits along the last axis),
    at ``1/scale`` of the image's resolution."""

    data: np.ndarray
    shape: tuple[int, ...]
    packed: bool
    scale: int = 1

    @classmethod
    def of(cls, full: np.ndarray, scale: int = 1) -> KnownMap:
        if full.dtype == np.bool_:
            return cls(np.packbits(full, axis=-1), full.shape, True, scale)
        return cls(np.ascontiguousarray(full), full.shape, False, scale)

    def window(self, box: tuple[int, int, int, int]) -> np.ndarray:
        """The map over ``box`` (image pixels)."""
        y0, y1, x0, x1 = scaled_box(box, self.scale)
        if not self.packed:
            return self.data[..., y0:y1, x0:x1]
        b0, b1 = x0 // 8, -(-x1 // 8)
        bits = np.unpackbits(self.data[..., y0:y1, b0:b1], axis=-1)
        return bits[..., x0 - 8 * b0 : x0 - 8 * b0 + (x1 - x0)].astype(bool)

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes)


@dataclass
class StepResults:
    """What the collect passes of one tiled run found: finished maps and statistics by key."""

    maps: dict[tuple, KnownMap] = field(default_factory=dict)
    stats: dict[tuple, Any] = field(default_factory=dict)
    #: Every step of the run is here (its passes ran to the end): a run given these computes none.
    complete: bool = False

    def __contains__(self, key: tuple) -> bool:
        return key in self.maps or key in self.stats

    @property
    def nbytes(self) -> int:
        return sum(m.nbytes for m in self.maps.values())

    def add(self, collected: Collected, parts: list[tuple[tuple[int, int, int, int], Any]], shape) -> None:
        """Assemble (maps) or combine (statistics) the tiles' ``parts`` and apply ``finish`` once."""
        key, finish = collected.key, collected.finish
        if collected.kind == "map":
            first, s = parts[0][1], collected.scale
            dtype = np.bool_ if isinstance(first, KnownMap) and first.packed else first.dtype
            full = np.empty(first.shape[:-2] + (-(-shape[0] // s), -(-shape[1] // s)), dtype=dtype)
            for box, part in parts:
                y0, y1, x0, x1 = scaled_box(box, s)
                full[..., y0:y1, x0:x1] = unpacked(part)
            done = finish(torch.from_numpy(full))
            self.maps[key] = KnownMap.of(_numpy(done), s)
        else:
            total = parts[0][1]
            for _, part in parts[1:]:
                total = collected.combine(total, part)
            self.stats[key] = finish(total)


def unpacked(part: Any) -> np.ndarray:
    """A tile's part of a map as an array (boolean parts travel as packed bits, :class:`KnownMap`)."""
    if isinstance(part, KnownMap):
        return part.window((0, part.shape[-2] * part.scale, 0, part.shape[-1] * part.scale))
    return part


def _numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


@dataclass
class TileSteps:
    """The whole-image steps as one tile sees them (handed to the method through its context).

    ``block`` and ``core`` are ``(y0, y1, x0, x1)`` in image pixels; ``shape`` is the image's.
    """

    known: StepResults
    block: tuple[int, int, int, int]
    core: tuple[int, int, int, int]
    shape: tuple[int, int]
    #: In a collect pass of a folded two-input method: the deepest fold step (pair steps chained
    #: beneath it) whose local part the tile's context covers; deeper steps wait for a later
    #: pass. None: no limit (final tiles, other methods).
    depth_limit: int | None = None

    def _core_in_block(self, scale: int = 1) -> tuple[slice, slice]:
        by0, _, bx0, _ = self.block
        y0, y1, x0, x1 = scaled_box(
            (self.core[0] - by0, self.core[1] - by0, self.core[2] - bx0, self.core[3] - bx0), scale
        )
        return slice(y0, y1), slice(x0, x1)

    def map(
        self, key: tuple, local: Callable[[], torch.Tensor], finish, device: torch.device, scale: int = 1
    ) -> torch.Tensor:
        if key in self.known.maps:
            return torch.from_numpy(np.ascontiguousarray(self.known.maps[key].window(self.block))).to(device)
        cy, cx = self._core_in_block(scale)
        part = _numpy(local()[..., cy, cx])
        # boolean parts as packed bits: a pass of a tree fold keeps several steps' parts of every tile
        packed = KnownMap.of(part) if part.dtype == np.bool_ else part.copy()
        raise Collected(key, "map", packed, finish, None, scale)

    def stat(self, key: tuple, values: torch.Tensor, reduce, finish, combine=None) -> Any:
        return self.stat_of(key, lambda core: reduce(core(values)), finish, combine)

    def stat_of(self, key: tuple, reduce_core, finish, combine=None) -> Any:
        if key in self.known.stats:
            return self.known.stats[key]
        cy, cx = self._core_in_block()
        raise Collected(key, "stat", reduce_core(lambda x: x[..., cy, cx]), finish, combine)


# --------------------------------------------------------------------------- kept on disk

#: Version of the file :func:`save_steps` writes.
STEPS_FORMAT = 1


def save_steps(known: StepResults, path: Path, *, fingerprint: str) -> bool:
    """Write the whole-image steps of a run to ``path`` (torch's format, through a temporary name),
    with the ``fingerprint`` of the run they belong to, so that a resumed run can read them
    (:func:`load_steps`) instead of computing its collect passes again. Returns False, writing
    nothing, when a statistic is of a type the file cannot hold."""
    import os

    try:
        record = {
            "format": STEPS_FORMAT,
            "fingerprint": fingerprint,
            "complete": known.complete,
            "maps": [
                (_encode(k), torch.from_numpy(m.data), list(m.shape), m.packed, m.scale) for k, m in known.maps.items()
            ],
            "stats": [(_encode(k), _encode(v)) for k, v in known.stats.items()],
        }
    except TypeError:
        return False
    part = path.with_name(path.name + ".part")
    torch.save(record, part)
    os.replace(part, path)
    return True


def load_steps(path: Path, *, fingerprint: str) -> StepResults | None:
    """The steps :func:`save_steps` wrote to ``path`` for the run with ``fingerprint``; None when there
    is no such file, it cannot be read (read with ``weights_only``: tensors and plain values only),
    or it belongs to another run."""
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
        if record.get("format") != STEPS_FORMAT or record.get("fingerprint") != fingerprint:
            return None
        known = StepResults(complete=bool(record["complete"]))
        for key, data, shape, packed, scale in record["maps"]:
            known.maps[_decode(key)] = KnownMap(data.numpy(), tuple(shape), bool(packed), int(scale))
        for key, value in record["stats"]:
            known.stats[_decode(key)] = _decode(value)
        return known
    except Exception:  # unreadable in any way (truncated, not ours, other types): computed again
        return None


def _encode(v: Any) -> Any:
    """``v`` as values ``torch.load(weights_only=True)`` reads back, containers and numpy tagged."""
    if isinstance(v, torch.Tensor):
        return v.detach().cpu()
    if isinstance(v, np.ndarray):
        return {"numpy": torch.from_numpy(np.ascontiguousarray(v))}
    if isinstance(v, np.generic):
        return {"npscalar": v.item(), "dtype": v.dtype.str}
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, (tuple, list)):
        return {"tuple" if isinstance(v, tuple) else "list": [_encode(x) for x in v]}
    if isinstance(v, dict):
        return {"dict": [(_encode(k), _encode(x)) for k, x in v.items()]}
    raise TypeError(f"cannot keep a {type(v).__name__} on disk")


def _decode(v: Any) -> Any:
    if not isinstance(v, dict):
        return v
    if "numpy" in v:
        return v["numpy"].numpy()
    if "npscalar" in v:
        return np.dtype(v["dtype"]).type(v["npscalar"])
    if "tuple" in v:
        return tuple(_decode(x) for x in v["tuple"])
    if "list" in v:
        return [_decode(x) for x in v["list"]]
    return {_decode(k): _decode(x) for k, x in v["dict"]}


__all__ = [
    "Collected",
    "CollectedMany",
    "KnownMap",
    "MAX_PASSES",
    "StepResults",
    "TileSteps",
    "load_steps",
    "save_steps",
    "scaled_box",
    "unpacked",
]
