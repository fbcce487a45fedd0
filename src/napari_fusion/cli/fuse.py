"""The ``fuse``, ``methods`` and ``demo`` subcommands."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from .errors import FusionInputError


def _parse_param(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"parameter {text!r} must look like NAME=VALUE")
    name, value = text.split("=", 1)
    return name.strip(), value.strip()


def _coerce_params(method: str, pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """Turn NAME=VALUE strings into typed values using the registry metadata."""
    from .registry import get_method

    spec = get_method(method)
    out: dict[str, Any] = {}
    for name, value in pairs:
        try:
            p = spec.param(name)
        except KeyError:
            out[name] = value  # resolve_params reports unknown names with the valid list
            continue
        out[name] = p.validate(value, spec.name)
    return out


class _TqdmProgress:
    """Progress callback drawing a tqdm bar on stderr."""

    def __init__(self, desc: str, enabled: bool):
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=100, desc=desc, unit="%", leave=False, file=sys.stderr)

    def __call__(self, done: float, total: float, message: str = "") -> None:
        if self.bar is None:
            return
        pct = int(round(100 * done / total)) if total else 100
        self.bar.update(max(0, pct - self.bar.n))
        if message:
            self.bar.set_postfix_str(message, refresh=False)

    def close(self):
        if self.bar is not None:
            self.bar.close()


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
    from ._inputs import check_z_step

    try:
        return check_z_step(text)
    except FusionInputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def check_fuse_outputs(args: argparse.Namespace, *, fingerprint: str | None = None) -> None:
    """Refuse unsafe or unwritable outputs of ``fuse`` before anything is read or fused."""
    from .io import IMAGE_SUFFIXES, zarr_output_action
    from .output_safety import check_distinct, check_output_path

    outs = {"-o": args.output, "--labels": args.labels, "--depth": args.depth}
    check_distinct(outs)
    zarr_out = args.output.suffix.lower() == ".zarr"
    for flag, path in outs.items():
        if path is None or (zarr_out and flag != "-o"):
            continue
        suffix = path.suffix.lower()
        tiled = getattr(args, "chunks", None) is not None
        allowed = (".tif", ".tiff", ".zarr") if tiled and flag == "-o" else (".tif", ".tiff") if tiled or flag == "--depth" \
            else IMAGE_SUFFIXES
        if suffix not in allowed:
            raise FusionInputError(f"unsupported output format {suffix!r} for {flag} {path}; use {', '.join(allowed)}")
        check_output_path(path, inputs=args.inputs, overwrite=args.overwrite, what=f"output {flag}", folder=suffix == ".zarr")
        if suffix == ".zarr" and fingerprint is not None:
            zarr_output_action(path, fingerprint, overwrite=args.overwrite)


def _fingerprint(args: argparse.Namespace, params: dict) -> str:
    import hashlib

    from .output_safety import fingerprint_paths

    record = {
        "inputs": fingerprint_paths(args.inputs),
        "method": args.method,
        "params": params,
        "z_step": args.z_step,
        "chunks": args.chunks,
        "device": args.device,
    }
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()


def _output_bytes(shape: tuple[int, ...], itemsize: int, args: argparse.Namespace) -> int:
    plane = int(np.prod(shape[1:3]))
    total = plane * (int(np.prod(shape[3:])) if len(shape) > 3 else 1) * itemsize
    if args.labels is not None or args.output.suffix.lower() == ".zarr":
        total += plane * 2
    if args.depth is not None or args.output.suffix.lower() == ".zarr":
        total += plane * 4
    return total


def cmd_fuse_tiled(args: argparse.Namespace) -> int:
    """``fuse --chunks``: read lazily, fuse tile by tile, write tile by tile."""
    from .api import fuse
    from .io import open_lazy_stack, write_lazy
    from .output_safety import check_disk_space

    params = _coerce_params(args.method, args.param or [])
    fingerprint = _fingerprint(args, params)
    check_fuse_outputs(args, fingerprint=fingerprint)
    stack = open_lazy_stack(args.inputs)
    check_disk_space(args.output.parent, _output_bytes(tuple(stack.shape), stack.dtype.itemsize, args))
    z = None
    if args.z_step is not None:
        z = np.arange(stack.shape[0], dtype=np.float32) * args.z_step
    t0 = time.perf_counter()
    result = fuse(stack, method=args.method, z_positions=z, device=args.device, chunks=args.chunks, **params)
    progress = _TqdmProgress(f"fusing {stack.shape[0]} images ({args.method}), {result.grid.n_tiles} tiles", not args.quiet)
    zarr_out = args.output.suffix.lower() == ".zarr"
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
        )
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
    from .api import fuse
    from .io import read_stack, write_image
    from .output_safety import AtomicGroup, check_disk_space

    if getattr(args, "chunks", None) is not None:
        return cmd_fuse_tiled(args)
    check_fuse_outputs(args)
    params = _coerce_params(args.method, args.param or [])
    from .registry import get_method

    get_method(args.method).resolve_params(params)  # unknown parameters: refused before reading
    images = read_stack(args.inputs)
    if len(images) < 2:
        raise FusionInputError(
            f"fusion needs at least two images; {', '.join(map(str, args.inputs))} gave {len(images)}"
        )
    check_disk_space(args.output.parent, _output_bytes((len(images),) + images[0].shape, images[0].dtype.itemsize, args))
    z = None
    if args.z_step is not None:
        z = np.arange(len(images), dtype=np.float32) * args.z_step
    progress = _TqdmProgress(f"fusing {len(images)} images ({args.method})", not args.quiet)
    t0 = time.perf_counter()
    try:
        result = fuse(images, method=args.method, z_positions=z, device=args.device, progress=progress, **params)
    finally:
        progress.close()
    elapsed = time.perf_counter() - t0
    provenance = {"method": result.method, "params": result.params, "inputs": [str(p) for p in args.inputs]}
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
            write_image(group.temp_for(path), data, metadata=provenance, inputs=args.inputs)
    written = [str(p) for p, _ in items]
    if not args.quiet:
        print(f"fused {len(images)} images with {args.method} in {elapsed:.2f} s -> {', '.join(written)}")
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    from .registry import list_methods

    specs = list_methods(args.task)
    if args.json:
        print(json.dumps([s.as_dict() for s in specs], indent=2))
        return 0
    for s in specs:
        kind = "learned" if s.learned else "classical"
        print(f"{s.name:20s} {s.title}")
        print(f"{'':20s} tasks: {', '.join(s.tasks)}; {s.n_inputs}; {kind}; outputs: {', '.join(s.outputs)}")
        if args.verbose:
            for p in s.params:
                rng = ""
                if p.choices:
                    rng = f" one of {', '.join(p.choices)}"
                elif p.low is not None or p.high is not None:
                    rng = f" in [{p.low}, {p.high}]"
                print(f"{'':22s}{p.name}={p.default!r}{rng}: {p.help}")
            print(f"{'':20s} cite: {s.citation}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(
        output_dir=Path(args.output_dir),
        method=args.method,
        n_slices=args.slices,
        device=args.device,
        seed=args.seed,
        show_progress=not args.quiet,
    )
    return 0


def add_subparser(sub) -> None:
    from .api import DEFAULT_METHOD

    p = sub.add_parser(
        "fuse",
        help="fuse images or a stack into one image",
        description=(
            "Fuse images. IN is a multi-page TIFF stack, a folder of slices (natural order), "
            "or two or more image files (TIFF incl. 16-bit, PNG, JPEG)."
        ),
    )
    p.add_argument("inputs", nargs="+", metavar="IN", type=Path)
    p.add_argument("-m", "--method", default=DEFAULT_METHOD, help=f"fusion method (default {DEFAULT_METHOD}; see 'napari-fusion methods')")
    p.add_argument("-o", "--output", required=True, type=Path, help="fused image (.tif keeps dtype; .png/.jpg for 8-bit)")
    p.add_argument("--labels", type=Path, help="write the decision labels (source index per pixel)")
    p.add_argument("--depth", type=Path, help="write the depth map (float32 TIFF)")
    p.add_argument("--z-step", type=_z_step, help="distance between slices (e.g. microns, > 0) for the depth map")
    p.add_argument("-p", "--param", action="append", type=_parse_param, metavar="NAME=VALUE", help="method parameter (repeatable)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    p.add_argument(
        "--chunks",
        type=_parse_chunks,
        metavar="N|RxC|auto",
        help="fuse out of core, tile by tile (tile size in pixels): inputs are read lazily (TIFF, zarr, "
        "OME-Zarr) and outputs written tile by tile (.tif or .zarr)",
    )
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing outputs (inputs are never overwritten, whatever the flag)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")
    p.set_defaults(func=cmd_fuse)

    m = sub.add_parser("methods", help="list the fusion methods")
    m.add_argument("--task", help="only methods for this task")
    m.add_argument("--json", action="store_true", help="machine-readable metadata")
    m.add_argument("-v", "--verbose", action="store_true", help="show parameters and citations")
    m.set_defaults(func=cmd_methods)

    d = sub.add_parser(
        "demo",
        help="render a synthetic focal stack, fuse it, write TIFFs and print PSNR/SSIM",
    )
    d.add_argument("-o", "--output-dir", default="napari-fusion-demo", help="folder for the outputs")
    d.add_argument("-m", "--method", default=DEFAULT_METHOD)
    d.add_argument("--slices", type=int, default=8)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--device", default="auto")
    d.add_argument("-q", "--quiet", action="store_true")
    d.set_defaults(func=cmd_demo)
