"""Method parameters on the command line: ``-p NAME=VALUE``, typed by the registry; and the
``--memory-limit`` option of ``fuse`` and ``batch``.

``-p`` is shared by ``fuse``, ``batch`` and ``evaluate``. Values are checked and
converted only by :meth:`napari_fusion.registry.Param.validate`, so the
command line accepts exactly what the library accepts.
"""

from __future__ import annotations

import argparse
from typing import Any


def parse_param(text: str) -> tuple[str, str]:
    """argparse ``type`` of ``-p``: ``"NAME=VALUE"`` -> ``("NAME", "VALUE")`` (stripped, still text)."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"parameter {text!r} must look like NAME=VALUE")
    name, value = text.split("=", 1)
    return name.strip(), value.strip()


def parse_method_params(method: str, pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """Turn ``(NAME, VALUE)`` text pairs into typed values with the method's :class:`Param` metadata.

    Unknown names are passed through as text: ``MethodSpec.resolve_params``
    reports them with the list of valid names.
    """
    from ..registry import get_method

    spec = get_method(method)
    out: dict[str, Any] = {}
    for name, value in pairs:
        try:
            p = spec.param(name)
        except KeyError:
            out[name] = value
            continue
        out[name] = p.validate(value, spec.name)
    return out


def parse_memory_size(text: str) -> int:
    """argparse ``type`` of ``--memory-limit``: ``"1.5G"``, ``"800M"``, ``"2000000000"`` -> bytes (> 0)."""
    from ..errors import FusionInputError
    from ..memory import parse_size

    try:
        size = parse_size(text)
    except FusionInputError:
        size = 0
    if size <= 0:
        raise argparse.ArgumentTypeError(f"must be a size such as 1.5G or 800M, got {text!r}")
    return size


def add_memory_limit(parser: argparse.ArgumentParser) -> None:
    """``--memory-limit SIZE``: the memory the fusion may use, instead of what the machine has free."""
    parser.add_argument(
        "--memory-limit",
        type=parse_memory_size,
        metavar="SIZE",
        help="memory the whole run may use (the process, its libraries included), e.g. 1.5G or 8G (default: "
        "what the machine has available, and for a tiled run about 1.5G: tiles estimated to need more are "
        "computed in sub-tiles); tiles shrink to fit it, and a stack that does not fit in it is fused tile by "
        "tile (same as setting NAPARI_FUSION_MEMORY_LIMIT). A larger limit lets large tiles run whole, faster",
    )
