"""The method registry: every fusion method, with the metadata that drives
the API's parameter checks, the napari widget, the CLI and the docs.

A method is a function ``run(stack, *, ctx, **params) -> MethodOutput`` that
receives a float32 tensor ``(N, C, H, W)`` on the target device (intensities
normalised as the method's ``intensity`` field says) and returns the fused
``(C, H, W)`` tensor, plus optional labels/weights/extras. It is registered
with :func:`register_method`; nothing else has to change for it to appear in
``list_methods()``, the widget, and ``napari-fusion fuse -m``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from ._registry_base import Registry
from .errors import FusionCancelled, FusionInputError

#: Task vocabulary used in method metadata.
TASKS = (
    "multi-focus",
    "infrared-visible",
    "multi-exposure",
    "medical",
    "multispectral",
)

#: Outputs a method can declare.
OUTPUTS = ("fused", "labels", "weights", "depth")

#: How a two-input (``mode="pairwise"``) method is folded over more than two slices: every
#: such method gets a ``fold`` parameter with these choices (``napari_fusion._engine.fold_steps``).
#: ``"tree"`` (the default): neighbouring slices first, then neighbouring results,
#: (I0 + I1) + (I2 + I3), so at most ``ceil(log2 N)`` pair decisions are chained on any pixel's
#: way to the result; ``"sequential"``: ((I0 + I1) + I2) + ..., the order in which the papers
#: fuse a series (N - 1 chained decisions). Pairs are fused the same way by both.
FOLD_ORDERS = ("tree", "sequential")
FOLD_PARAM = "fold"
FOLD_DEFAULT = "tree"


@dataclass(frozen=True)
class Param:
    """One tunable parameter of a method.

    ``kind`` is ``int``, ``float``, ``bool`` or ``str``; ``choices`` restricts a
    ``str`` parameter; ``low``/``high`` give the inclusive valid range of a
    number.
    """

    name: str
    default: Any
    kind: type
    help: str
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] | None = None
    step: float | None = None

    def validate(self, value: Any, method: str) -> Any:
        """Return ``value`` converted to this parameter's kind, or raise."""
        where = f"parameter {self.name!r} of method {method!r}"
        if self.kind is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
                return value.lower() in ("true", "1", "yes")
            if isinstance(value, (int,)) and value in (0, 1):
                return bool(value)
            raise FusionInputError(f"{where} must be true or false, got {value!r}")
        if self.kind is str:
            value = str(value)
            if self.choices is not None and value not in self.choices:
                raise FusionInputError(f"{where} must be one of {', '.join(self.choices)}; got {value!r}")
            return value
        if self.kind in (int, float):
            try:
                if isinstance(value, bool):
                    raise TypeError
                num = float(value)
            except (TypeError, ValueError):
                raise FusionInputError(f"{where} must be a number, got {value!r}") from None
            if not math.isfinite(num):
                raise FusionInputError(f"{where} must be finite, got {value!r}")
            if self.kind is int:
                if num != int(num):
                    raise FusionInputError(f"{where} must be a whole number, got {value!r}")
                num = int(num)
            if self.low is not None and num < self.low:
                raise FusionInputError(f"{where} must be >= {self.low}, got {value!r}")
            if self.high is not None and num > self.high:
                raise FusionInputError(f"{where} must be <= {self.high}, got {value!r}")
            return num
        raise TypeError(f"unsupported parameter kind {self.kind!r}")  # pragma: no cover

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["kind"] = self.kind.__name__
        return d


@dataclass
class MethodOutput:
    """What a method's ``run`` function returns (tensors on any device)."""

    fused: torch.Tensor
    labels: torch.Tensor | None = None
    weights: torch.Tensor | None = None
    extras: dict[str, torch.Tensor] = field(default_factory=dict)


class FusionContext:
    """Run-time services handed to a method: the device and progress reporting.

    ``report(done, total, message)`` forwards to the user's progress callback;
    the callback may raise :class:`FusionCancelled` to stop the run.
    """

    def __init__(
        self,
        device: torch.device,
        progress: Callable[[float, float, str], Any] | None = None,
        *,
        offset: float = 0.0,
        span: float = 1.0,
        total: float = 1.0,
        steps: Any = None,
        scope: tuple = (),
    ):
        self.device = device
        self._progress = progress
        self._offset = offset
        self._span = span
        self._total = total
        self._steps = steps  # napari_fusion.whole_image.TileSteps in a tile of a tiled run
        self._scope = scope

    def report(self, done: float, total: float, message: str = "") -> None:
        """Report that ``done`` of ``total`` units of this method's work are finished."""
        if self._progress is None:
            return
        frac = 0.0 if total <= 0 else min(max(done / total, 0.0), 1.0)
        self._progress(self._offset + frac * self._span, self._total, message)

    def sub(self, index: int, count: int) -> FusionContext:
        """A context for the ``index``-th of ``count`` equal parts of this one's work."""
        span = self._span / count
        return FusionContext(
            self.device,
            self._progress,
            offset=self._offset + index * span,
            span=span,
            total=self._total,
            steps=self._steps,
            scope=self._scope + (index,),
        )

    @property
    def fold_depth_limit(self) -> int | None:
        """In a collect pass of a tiled run: the deepest fold step whose local part this tile's
        context covers (:attr:`napari_fusion.whole_image.TileSteps.depth_limit`); else None."""
        return None if self._steps is None else self._steps.depth_limit

    @property
    def tiled(self) -> bool:
        """True inside one tile of a tiled run (the method sees a block, not the whole image)."""
        return self._steps is not None

    def image_shape(self, own: tuple[int, int]) -> tuple[int, int]:
        """``(H, W)`` of the whole image: ``own`` (the stack's) untiled, the image's in a tile."""
        return own if self._steps is None else tuple(self._steps.shape)

    def whole_image_map(
        self,
        key: str,
        local: Callable[[], torch.Tensor],
        finish: Callable[[torch.Tensor], torch.Tensor],
        *,
        scale: int = 1,
    ) -> torch.Tensor:
        """A step that needs the whole image's map: ``finish(local())`` over the whole image.

        ``local()`` computes a ``(..., H, W)`` map of this run's image; ``finish``
        turns the whole image's map into the map returned. In a tile of a tiled
        run the engine has computed ``finish`` of the assembled map in an earlier
        pass and this returns its window over the tile's block (see
        :mod:`napari_fusion.whole_image`); ``local`` is then not called. With ``scale`` the map
        is at ``1/scale`` of the image's resolution, ``ceil(size / scale)`` samples (a pyramid
        level; tiles must then start on the ``scale`` grid).
        """
        if self._steps is None:
            return finish(local())
        return self._steps.map(self._scope + (key,), local, finish, self.device, scale)

    def whole_image_stat(
        self,
        key: str,
        values: torch.Tensor,
        reduce: Callable[[torch.Tensor], Any],
        finish: Callable[[Any], Any],
        combine: Callable[[Any, Any], Any] | None = None,
    ) -> Any:
        """A statistic of the whole image: ``finish(reduce(values))``.

        ``reduce`` of two parts of an image, joined by ``combine`` (default ``+``),
        must equal ``reduce`` of the whole. In a tile of a tiled run the engine has
        combined ``reduce`` of every tile's core in an earlier pass, and this
        returns ``finish`` of that.
        """
        if self._steps is None:
            return finish(reduce(values))
        return self._steps.stat(self._scope + (key,), values, reduce, finish, combine)

    def whole_image_stat_of(
        self,
        key: str,
        reduce_core: Callable[[Callable[[torch.Tensor], torch.Tensor]], Any],
        finish: Callable[[Any], Any],
        combine: Callable[[Any, Any], Any] | None = None,
    ) -> Any:
        """:meth:`whole_image_stat` of values the method computes only when the statistic is needed
        (e.g. one source at a time, never all at once): ``finish(reduce_core(core))``.

        ``reduce_core(core)`` computes the reduction, calling ``core(x)`` to cut any map
        ``(..., H, W)`` of this run's block down to the part the statistic covers (the whole
        map untiled, the tile's core in a tile). It is not called when the engine already
        has the statistic.
        """
        if self._steps is None:
            return finish(reduce_core(lambda x: x))
        return self._steps.stat_of(self._scope + (key,), reduce_core, finish, combine)


@dataclass(frozen=True)
class MethodSpec:
    """Metadata and entry point of one fusion method."""

    name: str
    title: str
    run: Callable[..., MethodOutput]
    tasks: tuple[str, ...]
    mode: str  # "nway" (any N at once) or "pairwise" (folded over a stack, see FOLD_ORDERS)
    learned: bool
    outputs: tuple[str, ...]
    params: tuple[Param, ...]
    citation: str
    description: str
    intensity: str = "stack"  # "stack": min-max of all inputs -> [0, 1]; "dtype": /dtype max
    halo: Callable[[dict[str, Any]], int] | None = None
    colour: str = "luminance"  # how colour inputs are decided: "luminance" or "native"
    mixed_colour: bool = False  # accepts grey and RGB inputs together (grey -> 3 equal channels)
    #: Context the local part of the method's whole-image steps needs (``ctx.whole_image_map``/
    #: ``_stat``), or None when it has none with these params; ``halo`` is then the context
    #: of the rest, once the whole-image steps are known (see napari_fusion.whole_image).
    collect_halo: Callable[[dict[str, Any]], int | None] | None = None
    #: The method reads its stack only one slice at a time (``stack[k]``, ``len``, ``shape``,
    #: ``dtype``, ``device``), so an untiled run may hand it a :class:`~._inputs.ScaledSlices`
    #: view that converts each slice when read, instead of a float32 copy of the whole stack.
    streams_slices: bool = False

    @property
    def n_inputs(self) -> str:
        return "N-way" if self.mode == "nway" else "pairwise, folded over stacks (sequentially or as a tree)"

    def defaults(self) -> dict[str, Any]:
        return {p.name: p.default for p in self.params}

    def param(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(name)

    def resolve_params(self, given: dict[str, Any]) -> dict[str, Any]:
        """Defaults overridden by ``given``, each value validated."""
        known = {p.name: p for p in self.params}
        unknown = sorted(set(given) - set(known))
        if unknown:
            valid = ", ".join(sorted(known)) or "none"
            raise FusionInputError(
                f"unknown parameter(s) {', '.join(map(repr, unknown))} for method "
                f"{self.name!r}; valid parameters: {valid}"
            )
        out = {}
        for name, p in known.items():
            out[name] = p.validate(given[name], self.name) if name in given else p.default
        return out

    def halo_for(self, params: dict[str, Any]) -> int | None:
        """Pixels of context a tile needs on each side, or None if the method is global."""
        value = None if self.halo is None else self.halo(params)
        return None if value is None else int(value)

    def collect_halo_for(self, params: dict[str, Any]) -> int | None:
        """Context of the local part of the whole-image steps, or None if there are none."""
        value = None if self.collect_halo is None else self.collect_halo(params)
        return None if value is None else int(value)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "tasks": list(self.tasks),
            "mode": self.mode,
            "inputs": self.n_inputs,
            "learned": self.learned,
            "mixed_colour": self.mixed_colour,
            "outputs": list(self.outputs),
            "params": [p.as_dict() for p in self.params],
            "citation": self.citation,
            "description": self.description,
        }


def ensure_methods_loaded() -> None:
    """Import the built-in methods (importing them registers them); cheap after the first call."""
    from . import methods  # noqa: F401


#: Every registered method, by name (built-ins are loaded on first look-up).
METHODS: Registry[MethodSpec] = Registry("method", loader=ensure_methods_loaded)
#: Old name of the live ``name -> MethodSpec`` dict; use :data:`METHODS` and the functions below.
_REGISTRY: dict[str, MethodSpec] = METHODS.entries
#: Old private name of :func:`ensure_methods_loaded`, still used by other modules.
_ensure_loaded = ensure_methods_loaded


#: The ``fold`` parameter every pairwise method gets (see :data:`FOLD_ORDERS`).
FOLD_PARAM_SPEC = Param(
    FOLD_PARAM,
    FOLD_DEFAULT,
    str,
    "Stacks of more than two: 'tree' (neighbouring slices, then their results: fewer chained "
    "decisions, less context per tile) or 'sequential' ((1 + 2) + 3 ..., the papers' order).",
    choices=FOLD_ORDERS,
)


def register_method(
    *,
    name: str,
    title: str,
    tasks: tuple[str, ...] | list[str],
    mode: str,
    learned: bool = False,
    outputs: tuple[str, ...] | list[str] = ("fused",),
    params: tuple[Param, ...] | list[Param] = (),
    citation: str = "",
    description: str = "",
    intensity: str = "stack",
    halo: Callable[[dict[str, Any]], int] | int | None = None,
    colour: str = "luminance",
    mixed_colour: bool = False,
    collect_halo: Callable[[dict[str, Any]], int | None] | int | None = None,
    streams_slices: bool = False,
) -> Callable[[Callable[..., MethodOutput]], Callable[..., MethodOutput]]:
    """Decorator that adds a method's ``run`` function to the registry.

    ``mixed_colour=True`` lets users give grey and RGB images together (e.g.
    a grey infrared image and a colour visible one): grey images reach ``run``
    as three equal channels (no chroma), so the method can tell the colour
    source by its chroma. ``collect_halo``: see :class:`MethodSpec` and
    :mod:`napari_fusion.whole_image`. ``streams_slices``: see :class:`MethodSpec`. A
    ``mode="pairwise"`` method gets the engine's ``fold`` parameter (:data:`FOLD_ORDERS`) unless
    it declares one; its ``run`` never receives it.
    """
    bad = set(tasks) - set(TASKS)
    if bad:
        raise ValueError(f"unknown task(s) {bad}; use {TASKS}")
    if mode not in ("nway", "pairwise"):
        raise ValueError("mode must be 'nway' or 'pairwise'")
    if set(outputs) - set(OUTPUTS) or "fused" not in outputs:
        raise ValueError(f"outputs must include 'fused' and be among {OUTPUTS}")
    if intensity not in ("stack", "dtype"):
        raise ValueError("intensity must be 'stack' or 'dtype'")
    if streams_slices and mode != "nway":
        raise ValueError("streams_slices needs mode 'nway' (pairwise methods are folded over stacked pairs)")
    if isinstance(halo, int):
        fixed = halo
        halo = lambda params: fixed  # noqa: E731
    params = tuple(params)
    if mode == "pairwise" and all(p.name != FOLD_PARAM for p in params):
        params += (FOLD_PARAM_SPEC,)
    if isinstance(collect_halo, int):
        collect_fixed = collect_halo
        collect_halo = lambda params: collect_fixed  # noqa: E731

    def decorate(func):
        METHODS.register(
            name,
            MethodSpec(
                name=name,
                title=title,
                run=func,
                tasks=tuple(tasks),
                mode=mode,
                learned=learned,
                outputs=tuple(outputs),
                params=tuple(params),
                citation=citation,
                description=description or (func.__doc__ or "").strip().split("\n\n")[0],
                intensity=intensity,
                halo=halo,
                colour=colour,
                mixed_colour=bool(mixed_colour),
                collect_halo=collect_halo,
                streams_slices=bool(streams_slices),
            ),
        )
        return func

    return decorate


def unregister_method(name: str) -> MethodSpec | None:
    """Remove the method ``name`` from the registry and return its spec (None if absent).

    For tests and plugins; built-in methods come back only in a new process.
    """
    return METHODS.unregister(name)


@contextlib.contextmanager
def temporary_method(func: Callable[..., MethodOutput], **registration: Any) -> Iterator[MethodSpec]:
    """Register ``func`` as a method for the ``with`` block only; yields its :class:`MethodSpec`.

    ``registration`` are the keyword arguments of :func:`register_method`::

        with temporary_method(run, name="_test", title="test", tasks=("multi-focus",), mode="nway"):
            nf.fuse(stack, method="_test")
    """
    name = registration["name"]
    register_method(**registration)(func)
    try:
        yield METHODS.entries[name]
    finally:
        unregister_method(name)


def get_method(name: str) -> MethodSpec:
    """The :class:`MethodSpec` registered under ``name``."""
    return METHODS.get(name)


def list_methods(task: str | None = None) -> list[MethodSpec]:
    """All registered methods (optionally only those for ``task``), sorted by name."""
    if task is not None and task not in TASKS:
        raise FusionInputError(f"unknown task {task!r}; tasks are {', '.join(TASKS)}")
    specs = sorted(METHODS.values(), key=lambda s: s.name)
    if task is not None:
        specs = [s for s in specs if task in s.tasks]
    return specs


__all__ = [
    "TASKS",
    "OUTPUTS",
    "FOLD_DEFAULT",
    "FOLD_ORDERS",
    "FOLD_PARAM",
    "Param",
    "MethodOutput",
    "MethodSpec",
    "FusionContext",
    "FusionCancelled",
    "METHODS",
    "register_method",
    "unregister_method",
    "temporary_method",
    "ensure_methods_loaded",
    "get_method",
    "list_methods",
]
