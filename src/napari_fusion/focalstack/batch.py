"""``napari-fusion batch``: many focal stacks with the same settings.

Each INPUT is a folder of slices, a multi-page TIFF (``(Z, Y, X)`` or
``(Z, Y, X, 3)``), a multi-position TIFF (``(P, Z, Y, X)``: one stack per
position), or a folder whose sub-folders are stacks. For every stack, OUTDIR
receives ``<name>_fused.tif``, ``<name>_labels.tif`` (0-based slice index),
``<name>_height.tif`` (float32, z units) and ``<name>_record.json`` with every
parameter used (method parameters with defaults filled, alignment transforms,
versions, input paths). A stack that fails is reported and skipped; the
command then exits with status 1.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import re
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import FusionError, FusionInputError
from ..io import list_image_files, read_image, read_stack, write_image


@dataclass
class StackSource:
    """One stack to process: a display name, where it comes from and how to load it."""

    name: str
    inputs: list[str]
    load: Callable[[], list[np.ndarray]]


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "stack"


def discover(inputs: list[Path]) -> list[StackSource]:
    """Expand the command's INPUT arguments into stacks (nothing is read yet)."""
    out: list[StackSource] = []
    for p in inputs:
        p = Path(p)
        if p.is_dir():
            files = list_image_files(p)
            subdirs = sorted(d for d in p.iterdir() if d.is_dir() and list_image_files(d))
            if files:
                out.append(StackSource(p.name, [str(f) for f in files], lambda p=p: read_stack(p)))
            elif subdirs:
                out.extend(StackSource(d.name, [str(f) for f in list_image_files(d)], lambda d=d: read_stack(d))
                           for d in subdirs)
            else:
                out.append(StackSource(p.name, [str(p)], lambda p=p: _fail(f"no image files in {p}")))
        elif p.suffix.lower() in (".tif", ".tiff") and p.exists():
            shape = _tiff_shape(p)
            if shape is not None and len(shape) == 4 and shape[-1] not in (3, 4):
                for i in range(shape[0]):
                    out.append(StackSource(f"{p.stem}_p{i:03d}", [f"{p}#position={i}"],
                                           lambda p=p, i=i: list(read_image(p)[i])))
            else:
                out.append(StackSource(p.stem, [str(p)], lambda p=p: read_stack(p)))
        else:
            out.append(StackSource(p.stem or str(p), [str(p)], lambda p=p: read_stack(p)))
    return out


def _fail(msg: str):
    raise FusionInputError(msg)


def _tiff_shape(path: Path) -> tuple[int, ...] | None:
    try:
        import tifffile

        with tifffile.TiffFile(path) as tf:
            return tuple(tf.series[0].shape)
    except Exception:
        return None


def process(
    source: StackSource,
    outdir: Path,
    *,
    method: str,
    params: dict[str, Any],
    align: str | None,
    z_step: float | None,
    refine: str,
    reference_channel: int | None,
    slab: int | None,
    crop: bool,
    device: str,
) -> list[Path]:
    """Fuse one stack and write its outputs and record; returns the written paths."""
    from .pipeline import fuse_focal_stack

    images = source.load()
    if len(images) < 2:
        raise FusionInputError(f"{source.name}: a focal stack needs at least 2 slices, got {len(images)}")
    res = fuse_focal_stack(
        images, method=method, params=params, align=align, crop=crop, z_step=z_step, refine=refine,
        reference_channel=reference_channel, slab=slab, device=device,
    )
    stem = _safe(source.name)
    written = []
    paths = {
        "fused": outdir / f"{stem}_fused.tif",
        "labels": outdir / f"{stem}_labels.tif",
        "height": outdir / f"{stem}_height.tif",
        "record": outdir / f"{stem}_record.json",
    }
    meta = {"method": res.method, "params": res.params, "record": paths["record"].name}
    written.append(write_image(paths["fused"], res.fused, metadata=meta))
    if res.labels is not None:
        written.append(write_image(paths["labels"], res.labels, metadata=meta))
    if res.height is not None:
        written.append(write_image(paths["height"], res.height.astype(np.float32), metadata=meta))
    record = res.record()
    record.update({
        "stack": source.name,
        "inputs": source.inputs,
        "z_step": z_step,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "files": {k: p.name for k, p in paths.items() if p in written or k == "record"},
        "command": " ".join(sys.argv) if sys.argv else "",
    })
    paths["record"].write_text(json.dumps(record, indent=2))
    written.append(paths["record"])
    return written


def cmd_batch(args: argparse.Namespace) -> int:
    from ..cli_fuse import _coerce_params
    from ..registry import get_method

    get_method(args.method)  # unknown method: one clear error before any work
    params = _coerce_params(args.method, args.param or [])
    get_method(args.method).resolve_params(params)
    outdir = Path(args.output_dir)
    outdir.mkdir(parents=True, exist_ok=True)
    sources = discover(args.inputs)
    if not sources:
        raise FusionInputError("no stacks found in the inputs")
    failures: list[tuple[str, str]] = []
    for i, src in enumerate(sources, 1):
        try:
            written = process(
                src, outdir, method=args.method, params=params, align=None if args.align == "none" else args.align, z_step=args.z_step,
                refine=args.refine, reference_channel=args.reference_channel, slab=args.slab, crop=args.crop,
                device=args.device,
            )
            if not args.quiet:
                print(f"[{i}/{len(sources)}] {src.name}: " + ", ".join(p.name for p in written))
        except (FusionError, OSError, ValueError, RuntimeError, MemoryError) as exc:
            failures.append((src.name, f"{type(exc).__name__}: {exc}"))
            print(f"[{i}/{len(sources)}] {src.name}: FAILED: {exc}", file=sys.stderr)
            if args.verbose:
                traceback.print_exc()
    ok = len(sources) - len(failures)
    print(f"batch: {ok} of {len(sources)} stacks fused into {outdir}", file=sys.stderr if failures else sys.stdout)
    if failures:
        print("failed stacks:", file=sys.stderr)
        for name, msg in failures:
            print(f"  {name}: {msg}", file=sys.stderr)
        return 1
    return 0


def add_subparser(sub) -> None:
    from ..api import DEFAULT_METHOD
    from ..cli_fuse import _parse_param

    p = sub.add_parser(
        "batch",
        help="fuse many focal stacks with the same settings (fused, labels, height, JSON record)",
        description=(
            "Fuse many focal stacks with the same settings. Each INPUT is a folder of slices, a "
            "multi-page TIFF, a multi-position TIFF (P, Z, Y, X) or a folder of stack folders. "
            "Writes <name>_fused.tif, <name>_labels.tif, <name>_height.tif and <name>_record.json "
            "(all parameters, alignment, versions, inputs) per stack. Failing stacks are skipped "
            "and listed at the end (exit status 1)."
        ),
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", type=Path)
    p.add_argument("-o", "--output-dir", required=True, type=Path, help="folder for the outputs")
    p.add_argument("-m", "--method", default=DEFAULT_METHOD, help=f"fusion method (default {DEFAULT_METHOD})")
    p.add_argument("-p", "--param", action="append", type=_parse_param, metavar="NAME=VALUE",
                   help="method parameter (repeatable)")
    p.add_argument("--align", choices=("none", "translation", "similarity"), default="none",
                   help="align slices first: 'translation' (shift) or 'similarity' (scale + shift, for "
                        "stacks whose magnification changes with focus); default none")
    p.add_argument("--crop", action="store_true", help="crop aligned stacks to the region all slices cover")
    p.add_argument("--z-step", type=float, help="distance between slices (e.g. microns) for the height map")
    p.add_argument("--refine", default="parabola", choices=("parabola", "gaussian", "none"),
                   help="sub-slice height refinement (default parabola)")
    p.add_argument("--reference-channel", type=int, help="channel the decision is made on (multichannel data)")
    p.add_argument("--slab", type=int, help="fuse deep stacks in sub-stacks of this many slices")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    p.add_argument("-q", "--quiet", action="store_true", help="print only failures and the summary")
    p.add_argument("-v", "--verbose", action="store_true", help="print tracebacks of failing stacks")
    p.set_defaults(func=cmd_batch)


__all__ = ["StackSource", "add_subparser", "cmd_batch", "discover", "process"]
