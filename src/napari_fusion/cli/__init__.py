"""Command line: ``napari-fusion fuse | methods | demo | weights | upsample | batch | evaluate | train``.

One module per subcommand (``cli/fuse.py``, ``cli/methods.py``, ...), each
with the same three names:

* ``NAME``: the subcommand, ``HELP``: its one-line help (shown by ``--help``);
* ``add_subparser(subparsers)``: registers the full parser and sets
  ``func=<callable(args) -> int>`` (the work function);
* the work functions import what they need (torch, I/O, the registry) when
  they run; the modules import nothing heavy, so importing them is cheap.

Startup without torch: ``napari-fusion --help``, ``--version`` and argument
errors must not import torch (seconds of CPU). :func:`build_parser` is given
the arguments about to be parsed and builds the full parser only for the
subcommand they name; every other subcommand is registered with its ``NAME``
and ``HELP`` only (which is all the top-level ``--help`` and the "invalid
choice" error show, and argparse never parses a subcommand that was not
named). This matters for ``train`` (its parser comes from
:mod:`napari_fusion.training.cli` and imports every training module, hence
torch) and ``upsample`` (its choices come from :mod:`napari_fusion.upsample`):
they are imported only when they are the command. ``build_parser()`` without
arguments builds every subcommand in full (for tests and documentation tools).
Parsers that are built eagerly stay light: defaults come from
:mod:`napari_fusion._defaults`, ``-p NAME=VALUE`` is split by
:func:`._params.parse_param` and typed only when the command runs
(:func:`._params.parse_method_params`, i.e. ``Param.validate``).

To add a subcommand, add a module with ``NAME``, ``HELP`` and
``add_subparser`` and list it in ``_SUBCOMMAND_MODULES`` (the order of the
help listing).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback
import warnings
from collections.abc import Sequence

from ..errors import FusionError

#: subcommand modules (in ``napari_fusion.cli``), in the order ``--help`` lists them
_SUBCOMMAND_MODULES = ("fuse", "methods", "demo", "weights", "upsample", "batch", "evaluate", "train")


def _command_of(argv: Sequence[str]) -> str | None:
    """The subcommand ``argv`` names: its first word that is not an option (the top-level
    options ``--version``, ``--debug`` and ``--help`` take no value)."""
    for arg in argv:
        if arg == "--":
            continue
        if not arg.startswith("-"):
            return arg
    return None


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The ``napari-fusion`` parser.

    ``argv``: the arguments it will parse; only the subcommand they name gets
    its full parser, the others are listed by name and help (see the module
    docstring). ``None`` (the default): every subcommand in full.
    """
    from .. import __version__

    command = None if argv is None else _command_of(argv)
    parser = argparse.ArgumentParser(
        prog="napari-fusion",
        description="Image fusion: focal stacks, infrared/visible, multi-exposure, medical, multispectral.",
    )
    parser.add_argument("--version", action="version", version=f"napari-fusion {__version__}")
    parser.add_argument("--debug", action="store_true", help="print the traceback of an error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in _SUBCOMMAND_MODULES:
        module = importlib.import_module(f"{__name__}.{name}")
        if argv is None or command == module.NAME:
            module.add_subparser(sub)
        else:
            sub.add_parser(module.NAME, help=module.HELP)
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
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    previous = signal.signal(signal.SIGTERM, _terminate_as_interrupt) if threading_main() else None
    try:
        with warnings.catch_warnings():
            if not debug:  # one line, like the errors, instead of Python's file:line and source
                warnings.showwarning = _show_warning
            return _run(args, debug)
    finally:
        if previous is not None:  # a caller's own handler (e.g. when main() is called in-process)
            signal.signal(signal.SIGTERM, previous)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning as one line; on its own line when a progress bar is drawing (tqdm clears and redraws it)."""
    from tqdm import tqdm

    tqdm.write(f"napari-fusion: warning: {message}", file=sys.stderr if file is None else file)


def _run(args: argparse.Namespace, debug: bool) -> int:
    """Run the parsed command; every failure becomes one error line and an exit status."""
    try:
        limit = getattr(args, "memory_limit", None)
        if limit is None:
            return int(args.func(args) or 0)
        from ..memory import limited_to

        with limited_to(limit):
            return int(args.func(args) or 0)
    except FusionError as exc:
        if debug:
            traceback.print_exc()
        print(f"napari-fusion: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into e.g. `head`
        return 0
    except KeyboardInterrupt as exc:
        if "napari_fusion.tiling" in sys.modules:  # tiles still running in dask's threads stop now
            sys.modules["napari_fusion.tiling"].stop_running_tiles()
        note = getattr(exc, "note", None) or "no partial output was left at the output names"
        print(f"napari-fusion: interrupted; {note}", file=sys.stderr)
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
