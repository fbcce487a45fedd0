"""``napari-fusion upsample LOWRES GUIDE -o OUT``: guided upsampling from the command line
(see :func:`napari_fusion.guided_upsample`).

Building this parser imports :mod:`napari_fusion.upsample` (and torch) for the
method and model names; :func:`napari_fusion.cli.build_parser` builds it only
when ``upsample`` is the command being run.
"""

from __future__ import annotations

from pathlib import Path

NAME = "upsample"
HELP = "upsample a low-resolution multiband image with a high-resolution guide (pansharpening, HSI + RGB)"


def add_subparser(sub) -> None:
    from ..upsample import MODELS, UPSAMPLE_METHODS

    p = sub.add_parser(
        NAME,
        help=HELP,
        description="Upsample LOWRES (h x w [x B]) to the size of GUIDE (s*h x s*w [x G]); the result is written "
        "as float32 TIFF in LOWRES's layout and units.",
    )
    p.add_argument("lowres", help="low-resolution multiband image (TIFF: bands last or first)")
    p.add_argument("guide", help="high-resolution guide image (panchromatic, RGB...)")
    p.add_argument("-o", "--output", required=True, help="output file (.tif)")
    p.add_argument("-m", "--method", choices=UPSAMPLE_METHODS, default="csc_mmfn", help="default csc_mmfn")
    p.add_argument(
        "--model",
        default=None,
        help=f"csc_mmfn model: {', '.join(MODELS)} or a weights file "
        "(default: the shipped model matching the band counts)",
    )
    p.add_argument(
        "--band-axis", type=int, choices=(0, -1), default=None, help="band axis of LOWRES (default: inferred)"
    )
    p.add_argument(
        "--guide-axis", type=int, choices=(0, -1), default=None, help="channel axis of GUIDE (default: inferred)"
    )
    p.add_argument("--scale", type=int, default=None, help="expected scale factor (checked against the shapes)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing output (inputs are never overwritten, whatever the flag)",
    )
    p.set_defaults(func=run)


def run(args) -> int:
    from ..errors import FusionInputError
    from ..io import read_image, write_image
    from ..output_safety import check_output_path
    from ..upsample import guided_upsample

    output = Path(args.output)
    if output.suffix.lower() not in (".tif", ".tiff"):
        raise FusionInputError(f"unsupported output format {output.suffix!r} for {output}; use .tif (float32)")
    inputs = [args.lowres, args.guide]
    check_output_path(output, inputs=inputs, overwrite=args.overwrite)  # before any work
    low = read_image(args.lowres)
    guide = read_image(args.guide)
    out = guided_upsample(
        low,
        guide,
        method=args.method,
        model=args.model,
        scale=args.scale,
        band_axis=args.band_axis,
        guide_axis=args.guide_axis,
        device=args.device,
    )
    path = write_image(
        output,
        out,
        metadata={"method": args.method, "model": args.model, "lowres": str(args.lowres), "guide": str(args.guide)},
        overwrite=args.overwrite,
        inputs=inputs,
    )
    print(f"wrote {path} {out.shape} float32")
    return 0
