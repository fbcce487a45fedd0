"""``napari-fusion batch INPUT... -o OUTDIR``: fuse many focal stacks with the same settings.

The work (discovery, unique names, fingerprints, safe writing of each stack)
is :mod:`napari_fusion.focalstack.batch`; this module parses the arguments,
runs the stacks one by one and prints and writes the summary.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import sys
import traceback
from pathlib import Path
from typing import Any

from .._defaults import DEFAULT_METHOD
from ..errors import FusionError, FusionInputError, FusionOutputError
from ._params import add_memory_limit, parse_method_params, parse_param

NAME = "batch"
HELP = "fuse many focal stacks with the same settings (fused, labels, height, JSON record)"


def cmd_batch(args: argparse.Namespace) -> int:
    from ..focalstack.batch import discover, remove_dead_partials, write_summary
    from ..output_safety import check_output_path
    from ..registry import get_method

    get_method(args.method)  # unknown method: one clear error before any work
    params = parse_method_params(args.method, args.param or [])
    get_method(args.method).resolve_params(params)
    outdir = check_output_path(Path(args.output_dir), inputs=args.inputs, folder=True, what="output folder")
    sources = discover(args.inputs)
    if not sources:
        raise FusionInputError("no stacks found in the inputs")
    outdir.mkdir(parents=True, exist_ok=True)
    remove_dead_partials(outdir)
    align = None if args.align == "none" else args.align
    options = {
        "method": args.method,
        "params": params,
        "align": align,
        "z_step": args.z_step,
        "refine": args.refine,
        "reference_channel": args.reference_channel,
        "slab": args.slab,
        "crop": args.crop,
    }
    done, skipped, failed = _run_stacks(sources, outdir, options, args)
    summary = {
        "output_dir": str(outdir),
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv) if sys.argv else "",
        "total": len(sources),
        "done": done,
        "skipped": skipped,
        "failed": failed,
    }
    with contextlib.suppress(OSError):
        write_summary(outdir, summary)
    _print_summary(outdir, len(sources), done, skipped, failed)
    return 1 if failed else 0


def _run_stacks(sources, outdir: Path, options: dict[str, Any], args: argparse.Namespace) -> tuple[list, list, list]:
    """Fuse the stacks one by one; a failing stack is reported and skipped. Returns (done, skipped, failed)."""
    from ..focalstack.batch import process, stack_fingerprint, stack_state

    resume = getattr(args, "resume", True)
    overwrite = getattr(args, "overwrite", False)
    done: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    n = len(sources)
    for i, src in enumerate(sources, 1):
        entry = {"stack": src.name, "output_name": src.output_name, "source": src.key or src.name}
        try:
            fp = stack_fingerprint(src, **options)
            state, detail = stack_state(outdir, src.output_name, fp)
            if state == "done" and resume:
                skipped.append({**entry, "reason": detail})
                if not args.quiet:
                    print(f"[{i}/{n}] {src.name}: skipped ({detail})")
                continue
            written = process(src, outdir, device=args.device, overwrite=overwrite, fingerprint=fp, **options)
            done.append({**entry, "files": [p.name for p in written]})
            if not args.quiet:
                print(f"[{i}/{n}] {src.name}: " + ", ".join(p.name for p in written))
        except (FusionError, OSError, ValueError, RuntimeError, MemoryError) as exc:
            reason = str(exc) if isinstance(exc, FusionOutputError) else f"{type(exc).__name__}: {exc}"
            failed.append({**entry, "reason": reason})
            print(f"[{i}/{n}] {src.name}: FAILED: {exc}", file=sys.stderr)
            if args.verbose:
                traceback.print_exc()
    return done, skipped, failed


def _print_summary(outdir: Path, n: int, done: list, skipped: list, failed: list) -> None:
    """The closing summary: on stdout, or on stderr when any stack failed (failures always on stderr)."""
    from ..focalstack.batch import SUMMARY_NAME

    stream = sys.stderr if failed else sys.stdout
    ok = len(done) + len(skipped)
    print(
        f"batch: {ok} of {n} stacks fused into {outdir} "
        f"({len(done)} done, {len(skipped)} skipped, {len(failed)} failed; summary in {SUMMARY_NAME})",
        file=stream,
    )
    if done:
        print("done:", file=stream)
        for e in done:
            print(f"  {e['stack']} -> {e['output_name']}", file=stream)
    if skipped:
        print("skipped stacks:", file=stream)
        for e in skipped:
            print(f"  {e['stack']} ({e['output_name']}): {e['reason']}", file=stream)
    if failed:
        print("failed stacks:", file=sys.stderr)
        for e in failed:
            print(f"  {e['stack']} ({e['output_name']}): {e['reason']}", file=sys.stderr)


def add_subparser(sub) -> None:
    p = sub.add_parser(
        NAME,
        help=HELP,
        description=(
            "Fuse many focal stacks with the same settings. Each INPUT is a folder of slices, a "
            "multi-page TIFF, a multi-position TIFF (P, Z, Y, X) or a folder of stack folders (in a "
            "folder, single-page images form one stack and each multi-page TIFF is a stack of its own). "
            "Writes <name>_fused.tif, <name>_labels.tif, <name>_height.tif and <name>_record.json "
            "(all parameters, alignment, versions, inputs) per stack; names are made unique. "
            "A rerun skips stacks already done with the same parameters and inputs. OUTDIR may not "
            "be inside an input. Failing stacks are skipped and listed at the end (exit status 1); "
            "the summary is also written to OUTDIR/batch_summary.json."
        ),
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", type=Path)
    p.add_argument("-o", "--output-dir", required=True, type=Path, help="folder for the outputs")
    p.add_argument("-m", "--method", default=DEFAULT_METHOD, help=f"fusion method (default {DEFAULT_METHOD})")
    p.add_argument(
        "-p", "--param", action="append", type=parse_param, metavar="NAME=VALUE", help="method parameter (repeatable)"
    )
    p.add_argument(
        "--align",
        choices=("none", "translation", "similarity"),
        default="none",
        help="align slices first: 'translation' (shift) or 'similarity' (scale + shift, for "
        "stacks whose magnification changes with focus); default none",
    )
    p.add_argument("--crop", action="store_true", help="crop aligned stacks to the region all slices cover")
    p.add_argument("--z-step", type=float, help="distance between slices (e.g. microns) for the height map")
    p.add_argument(
        "--refine",
        default="parabola",
        choices=("parabola", "gaussian", "none"),
        help="sub-slice height refinement (default parabola)",
    )
    p.add_argument("--reference-channel", type=int, help="channel the decision is made on (multichannel data)")
    p.add_argument("--slab", type=int, help="fuse deep stacks in sub-stacks of this many slices")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    p.add_argument(
        "--no-resume",
        dest="resume",
        action="store_false",
        help="redo stacks already done with the same parameters (default: skip them)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace outputs that exist from other parameters (default: report the stack as failed)",
    )
    add_memory_limit(p)
    p.add_argument("-q", "--quiet", action="store_true", help="print only failures and the summary")
    p.add_argument("-v", "--verbose", action="store_true", help="print tracebacks of failing stacks")
    p.set_defaults(func=cmd_batch)
