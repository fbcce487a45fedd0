"""Method parameters on the command line: ``-p NAME=VALUE``, typed by the registry.

Shared by ``fuse``, ``batch`` and ``evaluate``. Values are checked and
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
