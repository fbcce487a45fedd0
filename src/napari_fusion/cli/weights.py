"""The ``weights`` subcommand: ``napari-fusion weights status | fetch NAME | path NAME | convert NAME SOURCE``."""

from __future__ import annotations

import argparse
import json

NAME = "weights"
HELP = "pretrained weights of learned methods: status, fetch, convert"


def cmd_status(args: argparse.Namespace) -> int:
    from ..weights import get_weights_spec, list_weights, weights_status

    specs = [get_weights_spec(n) for n in args.names] if args.names else list_weights()
    rows = [(s, weights_status(s)) for s in specs]
    if args.json:
        print(json.dumps([{**st.as_dict(), "methods": list(s.methods), "url": s.url} for s, st in rows], indent=2))
        return 0
    for spec, st in rows:
        state = "available" if st.found else "MISSING"
        used = f" (used by {', '.join(spec.methods)})" if spec.methods else ""
        print(f"{spec.name:12s} {state:9s} {spec.description}{used}")
        print(f"{'':12s} {st.message}")
        if not st.found:
            print(f"{'':12s} get it with: napari-fusion weights fetch {spec.name}  (or set {spec.env_var})")
    return 0 if all(st.found for _, st in rows) or not args.check else 1


def cmd_fetch(args: argparse.Namespace) -> int:
    from ..weights import fetch_weights, get_weights_spec

    spec = get_weights_spec(args.name)
    if not args.quiet:
        print(f"downloading {spec.url} ...")
    path = fetch_weights(spec, force=args.force, progress=not args.quiet, dest_dir=args.dest)
    print(f"{spec.name}: {path} (SHA-256 verified)")
    return 0


def cmd_path(args: argparse.Namespace) -> int:
    from ..weights import locate_weights

    print(locate_weights(args.name).path)
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from ..weights.convert import convert_vgg19, sidecar_path

    out = convert_vgg19(args.source, args.output, format=args.format, overwrite=args.overwrite)
    record = json.loads(sidecar_path(out).read_text())
    known = f"the published {record['known_as']}" if record["known_source"] else "a file not in the checksum table"
    print(f"{out}: converted from {record['source']['file']} ({record['source']['format']}, {known})")
    print(f"SHA-256 {record['sha256']}; use it with $NAPARI_FUSION_VGG19_WEIGHTS or the 'weights' parameter")
    return 0


def add_subparser(sub) -> None:
    p = sub.add_parser(
        NAME,
        help=HELP,
        description=(
            "Pretrained weights of learned methods are looked up in the file given as the method's "
            "'weights' parameter, then the weights' environment variable, then the torch hub cache "
            "(torch.hub.get_dir()/checkpoints). 'fetch' downloads into that cache (needs internet)."
        ),
    )
    ws = p.add_subparsers(dest="weights_command", metavar="ACTION")
    ws.required = True

    s = ws.add_parser("status", help="which weights are available, and where")
    s.add_argument("names", nargs="*", metavar="NAME", help="only these weights (default: all)")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.add_argument("--check", action="store_true", help="exit with status 1 when any is missing")
    s.set_defaults(func=cmd_status)

    f = ws.add_parser("fetch", help="download weights into the torch hub cache and verify them")
    f.add_argument("name", metavar="NAME", help="weights name, e.g. vgg19")
    f.add_argument("--force", action="store_true", help="download again even if a valid copy exists")
    f.add_argument("--dest", default=None, help="folder to download into instead of the torch hub cache")
    f.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    f.set_defaults(func=cmd_fetch)

    c = ws.add_parser(
        "convert",
        help="convert VGG19 weights you have (Keras .h5, MatConvNet .mat) for li2018_vgg19",
        description=(
            "Write a torch state dict with torchvision's names and a JSON sidecar (<output>.json) recording "
            "the source and the output's SHA-256; the weights check accepts the output by that record. "
            "Both are written under temporary names and renamed into place when complete."
        ),
    )
    c.add_argument("name", metavar="NAME", choices=["vgg19"], help="vgg19")
    c.add_argument(
        "source", metavar="SOURCE", help="vgg19_weights_tf_dim_ordering_tf_kernels*.h5 or imagenet-vgg-verydeep-19.mat"
    )
    c.add_argument("-o", "--output", required=True, help="the .pth file to write (the source is only read)")
    c.add_argument("--format", choices=["keras", "matconvnet"], default=None, help="default: from the file")
    c.add_argument("--overwrite", action="store_true", help="replace an existing output (never the source)")
    c.set_defaults(func=cmd_convert)

    w = ws.add_parser("path", help="print the verified path of the weights (error if missing)")
    w.add_argument("name", metavar="NAME")
    w.set_defaults(func=cmd_path)
