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
import traceback
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
    parser.add_argument("--debug", action="store_true", help="print the traceback of an error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in _SUBCOMMAND_MODULES:
        importlib.import_module(name).add_subparser(sub)
    return parser


def _describe_os_error(exc: OSError) -> str:
    where = exc.filename or ""
    what = exc.strerror or str(exc)
    return f"{where}: {what}" if where else what


def _terminate_as_interrupt(signum, frame):  # pragma: no cover - exercised by the kill tests
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``napari-fusion`` command; returns the exit status.

    Every failure ends in one ``napari-fusion: error: ...`` line on stderr
    (exit status 2; 1 for unexpected internal errors), with the traceback only
    under ``--debug``. SIGTERM is handled like Ctrl-C, so temporary files are
    removed and nothing partial is left at an output's name.
    """
    import signal

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    if debug:
        argv.remove("--debug")
    parser = build_parser()
    args = parser.parse_args(argv)
    if threading_main():
        signal.signal(signal.SIGTERM, _terminate_as_interrupt)
    try:
        return int(args.func(args) or 0)
    except FusionError as exc:
        if debug:
            traceback.print_exc()
        print(f"napari-fusion: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into e.g. `head`
        return 0
    except KeyboardInterrupt:
        print("napari-fusion: interrupted; no partial output was left at the output names", file=sys.stderr)
        return 130
    except OSError as exc:
        if debug:
            traceback.print_exc()
        print(f"napari-fusion: error: {_describe_os_error(exc)}", file=sys.stderr)
        return 2
    except MemoryError:
        if debug:
            traceback.print_exc()
        print(
            "napari-fusion: error: out of memory; fuse tile by tile with --chunks 1024 (or a smaller tile)",
            file=sys.stderr,
        )
        return 2
    except Exception as exc:  # noqa: BLE001 - the command line never ends in a bare traceback
        if debug:
            traceback.print_exc()
        print(
            f"napari-fusion: error: internal error {type(exc).__name__}: {exc} "
            "(run again with --debug for the traceback, and please report it)",
            file=sys.stderr,
        )
        return 1


def threading_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
