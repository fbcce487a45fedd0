"""Command line: ``napari-fusion fuse | methods | demo | ...``.

Subcommands live in the modules that own the work; each such module exposes
``add_subparser(subparsers)`` which registers its parser and sets
``func=<callable(args) -> int>``. Add a module to ``_SUBCOMMAND_MODULES`` to
extend the CLI.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from .errors import FusionError

_SUBCOMMAND_MODULES = (
    "napari_fusion.cli_fuse",
    "napari_fusion.cli_weights",
    "napari_fusion.cli_upsample",
    "napari_fusion.focalstack.batch",
    "napari_fusion.evaluation",
    "napari_fusion.training.cli",
)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="napari-fusion",
        description="Image fusion: focal stacks, infrared/visible, multi-exposure, medical, multispectral.",
    )
    parser.add_argument("--version", action="version", version=f"napari-fusion {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in _SUBCOMMAND_MODULES:
        importlib.import_module(name).add_subparser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``napari-fusion`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except FusionError as exc:
        print(f"napari-fusion: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into e.g. `head`
        return 0
    except KeyboardInterrupt:
        print("napari-fusion: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
