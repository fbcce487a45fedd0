"""``napari-fusion fuse IN... -o OUT``: fuse images or a stack into one image (in memory, or
tile by tile with ``--chunks``)."""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from .._defaults import DEFAULT_METHOD
from ..errors import FusionInputError
from ._params import add_memory_limit, parse_method_params, parse_param
from ._progress import TqdmProgress

NAME = "fuse"
HELP = "fuse images or a stack into one image"


def _parse_chunks(text: str):
    if text == "auto":
        return text
    try:
        parts = [int(v) for v in text.lower().replace("x", ",").split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--chunks must be N, ROWSxCOLS or auto, got {text!r}") from None
    if len(parts) not in (1, 2) or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"--chunks must be N, ROWSxCOLS or auto, got {text!r}")
    return parts[0] if len(parts) == 1 else tuple(parts)


def _z_step(text: str) -> float:
    from .._zpositions import check_z_step

    try:
        return check_z_step(text)
    except FusionInputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def check_fuse_outputs(args: argparse.Namespace, *, fingerprint: str | None = None) -> None:
    """Refuse unsafe or unwritable outputs of ``fuse`` before anything is read or fused."""
    from ..io import IMAGE_SUFFIXES, zarr_output_action
    from ..output_safety import check_distinct, check_output_path

    outs = {"-o": args.output, "--labels": args.labels, "--depth": args.depth}
    check_distinct(outs)
    zarr_out = args.output.suffix.lower() == ".zarr"
    for flag, path in outs.items():
        if path is None or (zarr_out and flag != "-o"):
            continue
        suffix = path.suffix.lower()
        tiled = getattr(args, "chunks", None) is not None
        allowed = (
            (".tif", ".tiff", ".zarr")
            if tiled and flag == "-o"
            else (".tif", ".tiff")
            if tiled or flag == "--depth"
            else IMAGE_SUFFIXES
        )
        if suffix not in allowed:
            raise FusionInputError(f"unsupported output format {suffix!r} for {flag} {path}; use {', '.join(allowed)}")
        check_output_path(
            path, inputs=args.inputs, overwrite=args.overwrite, what=f"output {flag}", folder=suffix == ".zarr"
        )
        if suffix == ".zarr" and fingerprint is not None:
            zarr_output_action(path, fingerprint, overwrite=args.overwrite)
    note_repeated_inputs(args.inputs)


def note_repeated_inputs(inputs) -> None:
    """Say on stderr when an input is given more than once (an overlapping shell pattern): each
    copy is read again and fused as further slices, which is rarely what was meant."""
    from collections import Counter

    seen = Counter(Path(p).resolve() for p in inputs or [])
    for path, times in seen.items():
        if times > 1:
            print(f"note: {path} is given {times} times; each copy is fused as more slices", file=sys.stderr)


def _fingerprint(args: argparse.Namespace, params: dict) -> str:
    import hashlib

    from ..output_safety import fingerprint_paths

    record = {
        "inputs": fingerprint_paths(args.inputs),
        "method": args.method,
        "params": params,
        "z_step": args.z_step,
        "chunks": args.chunks,
        "device": args.device,
    }
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()


def _microscopy_stack(args: argparse.Namespace):
    """The input opened by :mod:`napari_fusion.microscopy`, or None when the usual readers take it.

    CZI, ND2 and LIF files always go through it (bioio), as does any input
    with ``--scene``, ``--channel`` or ``--timepoint``, and, in memory,
    OME-Zarr images. The result is grey ``(Z, Y, X)`` or RGB ``(Z, Y, X, 3)``.
    """
    from ..microscopy import BIOIO_FORMATS, is_ome_zarr, open_microscopy

    chosen = {k: getattr(args, k, None) for k in ("scene", "channel", "timepoint")}
    picked = any(v is not None for v in chosen.values())
    if len(args.inputs) != 1:
        if picked:
            raise FusionInputError("--scene, --channel and --timepoint choose inside one file: give one input")
        return None
    path = args.inputs[0]
    in_memory = getattr(args, "chunks", None) is None
    if not (picked or path.suffix.lower() in BIOIO_FORMATS or (in_memory and is_ome_zarr(path))):
        return None
    ms = open_microscopy(path, **chosen)
    if ms.axes == "ZYXC":
        names = f" ({', '.join(ms.channel_names)})" if ms.channel_names else ""
        raise FusionInputError(
            f"{path} has {ms.shape[-1]} channels{names}; choose the one to fuse with --channel N (number or name)"
        )
    if ms.axes == "ZYXS" and ms.shape[-1] not in (3, 4):
        raise FusionInputError(f"{path} has {ms.shape[-1]} samples per pixel; napari-fusion fuses grey or RGB images")
    if ms.axes == "ZYXS":
        ms.data = ms.data[..., :3]
    return ms


def _z_from_calibration(args: argparse.Namespace, cal):
    """The z step to use and the calibration to write: ``--z-step``, else the metadata's; never a guess.

    Prints a note saying where the z step came from, or that it is missing
    (then the depth map is in slice units).
    """
    depth_out = args.depth is not None or args.output.suffix.lower() == ".zarr"
    if args.z_step is not None:
        if cal.z_step is not None and not math.isclose(cal.z_step, args.z_step, rel_tol=1e-6):
            print(
                f"note: --z-step {args.z_step:g} replaces the z step {cal.z_step:g} {cal.unit_text} "
                f"in the metadata ({cal.source})",
                file=sys.stderr,
            )
        return args.z_step, cal.with_z_step(args.z_step, cal.source if cal.pixel_size_yx else "--z-step")
    if cal.z_step is not None:
        print(
            f"note: z step {cal.z_step:g} {cal.unit_text} from metadata ({cal.source})"
            + (f"; depth map in {cal.unit_text}" if depth_out else ""),
            file=sys.stderr,
        )
        return cal.z_step, cal
    if depth_out:
        print(
            f"note: calibration missing: {', '.join(map(str, args.inputs))} states no z step, so the depth map "
            "is in slice units (nothing is guessed; pass --z-step to give the distance between slices)",
            file=sys.stderr,
        )
    return None, cal


def _output_bytes(shape: tuple[int, ...], itemsize: int, args: argparse.Namespace) -> int:
    plane = math.prod(shape[1:3])
    total = plane * (math.prod(shape[3:]) if len(shape) > 3 else 1) * itemsize
    if args.labels is not None or args.output.suffix.lower() == ".zarr":
        total += plane * 2
    if args.depth is not None or args.output.suffix.lower() == ".zarr":
        total += plane * 4
    return total


class InterruptedWithOutput(KeyboardInterrupt):
    """An interrupt that left an output on purpose (a resumable zarr output); ``note`` says what."""

    def __init__(self, note: str):
        super().__init__(note)
        self.note = note


def _resumable_note(path: Path) -> str | None:
    """What an interrupted zarr output holds, when it is an incomplete output of ours."""
    from ..io import zarr_output_status

    info = zarr_output_status(path)
    if not info or info.get("complete"):
        return None
    return (
        f"{path} keeps the {info.get('tiles_done', 0)} of {info.get('tiles', '?')} tiles written so far, marked "
        "incomplete: run the same command again to finish it"
    )


def cmd_fuse_tiled(args: argparse.Namespace) -> int:
    """``fuse --chunks``: read lazily, fuse tile by tile, write tile by tile."""
    import numpy as np

    from ..io import open_lazy_stack, read_calibration, read_zarr_steps, write_lazy
    from ..output_safety import check_disk_space
    from ..tiling import fuse_lazy

    params = parse_method_params(args.method, args.param or [])
    fingerprint = _fingerprint(args, params)
    check_fuse_outputs(args, fingerprint=fingerprint)
    ms = _microscopy_stack(args)
    stack = ms.data if ms is not None else open_lazy_stack(args.inputs)
    check_disk_space(args.output.parent, _output_bytes(tuple(stack.shape), stack.dtype.itemsize, args))
    z_step, cal = _z_from_calibration(args, ms.calibration if ms is not None else read_calibration(args.inputs))
    z = None
    if z_step is not None:
        z = np.arange(stack.shape[0], dtype=np.float32) * z_step
    t0 = time.perf_counter()
    zarr_out = args.output.suffix.lower() == ".zarr"
    # an interrupted zarr output of this same command keeps its whole-image steps: not computed again
    steps = read_zarr_steps(args.output, fingerprint) if zarr_out else None
    if steps is not None and not args.quiet:
        print(f"note: resuming {args.output}: its whole-image steps are read back, not computed again", file=sys.stderr)
    progress = TqdmProgress(f"fusing {stack.shape[0]} images ({args.method})", not args.quiet)
    try:  # a method's whole-image steps are computed here, in passes over the tiles
        result = fuse_lazy(
            stack,
            method=args.method,
            z_positions=z,
            device=args.device,
            chunks=args.chunks,
            progress=progress,
            whole_image_steps=steps,
            **params,
        )
    except BaseException:
        progress.close()
        raise
    progress.describe(f"fusing {stack.shape[0]} images ({args.method}), {result.grid.n_tiles} tiles")
    for flag, name in ((args.labels, "labels"), (args.depth, "depth")):
        if flag is not None and getattr(result, name) is None:
            print(f"note: method {args.method!r} makes no {name}; --{name} ignored", file=sys.stderr)
        elif flag is not None and zarr_out:
            print(f"note: --{name} ignored: a .zarr output holds {name} in the same group", file=sys.stderr)
    try:
        written = write_lazy(
            result,
            args.output,
            labels=None if zarr_out or result.labels is None else args.labels,
            depth=None if zarr_out or result.depth is None else args.depth,
            progress=progress,
            overwrite=args.overwrite,
            inputs=args.inputs,
            fingerprint=fingerprint,
            calibration=cal,
        )
    except KeyboardInterrupt as exc:
        note = _resumable_note(args.output) if zarr_out else None
        if note is None:
            raise
        raise InterruptedWithOutput(note) from exc
    finally:
        progress.close()
    elapsed = time.perf_counter() - t0
    if not args.quiet:
        print(
            f"fused {stack.shape[0]} images with {args.method} in {result.grid.n_tiles} tiles in {elapsed:.2f} s "
            f"-> {', '.join(map(str, written))}"
        )
    return 0


def cmd_fuse(args: argparse.Namespace) -> int:
    import numpy as np

    from ..api import fuse
    from ..io import read_calibration, read_stack, write_image
    from ..output_safety import AtomicGroup, check_disk_space

    if getattr(args, "chunks", None) is not None:
        return cmd_fuse_tiled(args)
    check_fuse_outputs(args)
    params = parse_method_params(args.method, args.param or [])
    from ..registry import get_method

    get_method(args.method).resolve_params(params)  # unknown parameters: refused before reading
    ms = _microscopy_stack(args)
    images = list(np.asarray(ms.data)) if ms is not None else read_stack(args.inputs)
    if len(images) < 2:
        raise FusionInputError(
            f"fusion needs at least two images; {', '.join(map(str, args.inputs))} gave {len(images)}"
        )
    check_disk_space(
        args.output.parent, _output_bytes((len(images),) + images[0].shape, images[0].dtype.itemsize, args)
    )
    z_step, cal = _z_from_calibration(args, ms.calibration if ms is not None else read_calibration(args.inputs))
    z = None
    if z_step is not None:
        z = np.arange(len(images), dtype=np.float32) * z_step
    progress = TqdmProgress(f"fusing {len(images)} images ({args.method})", not args.quiet)
    t0 = time.perf_counter()
    try:
        result = fuse(images, method=args.method, z_positions=z, device=args.device, progress=progress, **params)
    finally:
        progress.close()
    elapsed = time.perf_counter() - t0
    provenance = {"method": result.method, "params": result.params, "inputs": [str(p) for p in args.inputs]}
    if z_step is not None:
        provenance["z_step"] = z_step
    items = [(args.output, result.fused)]
    if args.labels:
        if result.labels is None:
            print(f"note: method {args.method!r} makes no labels; --labels ignored", file=sys.stderr)
        else:
            items.append((args.labels, result.labels))
    if args.depth:
        if result.depth is None:
            print(f"note: method {args.method!r} makes no depth map; --depth ignored", file=sys.stderr)
        else:
            items.append((args.depth, result.depth.astype(np.float32)))
    # all outputs under temporary names first, then renamed into place together
    with AtomicGroup() as group:
        for path, data in items:
            write_image(group.temp_for(path), data, metadata=provenance, inputs=args.inputs, calibration=cal)
    written = [str(p) for p, _ in items]
    if not args.quiet:
        print(f"fused {len(images)} images with {args.method} in {elapsed:.2f} s -> {', '.join(written)}")
    return 0


def add_subparser(sub) -> None:
    p = sub.add_parser(
        NAME,
        help=HELP,
        description=(
            "Fuse images. IN is a multi-page TIFF stack, a folder of slices (natural order), "
            "two or more image files (TIFF incl. 16-bit, PNG, JPEG), an OME-TIFF or OME-Zarr, or a microscope's "
            "CZI, ND2 or LIF file (needs bioio and its plugin: pip install 'napari-fusion[microscopy]'). The z step "
            "and pixel size in the metadata calibrate the depth map and are written with the outputs."
        ),
    )
    p.add_argument("inputs", nargs="+", metavar="IN", type=Path)
    p.add_argument(
        "-m",
        "--method",
        default=DEFAULT_METHOD,
        help=f"fusion method (default {DEFAULT_METHOD}; see 'napari-fusion methods')",
    )
    p.add_argument(
        "-o", "--output", required=True, type=Path, help="fused image (.tif keeps dtype; .png/.jpg for 8-bit)"
    )
    p.add_argument("--labels", type=Path, help="write the decision labels (source index per pixel)")
    p.add_argument("--depth", type=Path, help="write the depth map (float32 TIFF)")
    p.add_argument(
        "--z-step",
        type=_z_step,
        help="distance between slices (> 0; in µm for calibrated files) for the depth map; default: the z step "
        "in the input's metadata (OME-TIFF, OME-Zarr, CZI, ND2, LIF), else slice units",
    )
    p.add_argument("--scene", help="scene (image series) of a microscopy file to fuse, by number or name")
    p.add_argument("--channel", help="channel of a microscopy file to fuse, by number or name")
    p.add_argument("--timepoint", type=int, help="time point of a microscopy file to fuse (from 0)")
    p.add_argument(
        "-p", "--param", action="append", type=parse_param, metavar="NAME=VALUE", help="method parameter (repeatable)"
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    p.add_argument(
        "--chunks",
        type=_parse_chunks,
        metavar="N|RxC|auto",
        help="fuse out of core, tile by tile (tile size in pixels): inputs are read lazily (TIFF, zarr, "
        "OME-Zarr) and outputs written tile by tile (.tif or .zarr)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace existing outputs (inputs are never overwritten, whatever the flag)",
    )
    add_memory_limit(p)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")
    p.set_defaults(func=cmd_fuse)
