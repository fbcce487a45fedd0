"""``napari-fusion demo``: render a synthetic focal stack, fuse it, write TIFFs, print PSNR/SSIM
(the work is :func:`napari_fusion.demo.run_demo`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .._defaults import DEFAULT_METHOD

NAME = "demo"
HELP = "render a synthetic focal stack, fuse it, write TIFFs and print PSNR/SSIM"


def cmd_demo(args: argparse.Namespace) -> int:
    from ..demo import run_demo
    from ..output_safety import check_output_path

    # before the stack is rendered and fused: a file there, or a folder that cannot be written
    check_output_path(Path(args.output_dir), folder=True, what="output folder -o")
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
    d = sub.add_parser(NAME, help=HELP)
    d.add_argument("-o", "--output-dir", default="napari-fusion-demo", help="folder for the outputs")
    d.add_argument("-m", "--method", default=DEFAULT_METHOD)
    d.add_argument("--slices", type=int, default=8)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--device", default="auto")
    d.add_argument("-q", "--quiet", action="store_true")
    d.set_defaults(func=cmd_demo)
