"""``napari-fusion evaluate DATASET_DIR``: score fusion methods (and published outputs) on a
dataset with the fusion metrics (the work is :func:`napari_fusion.evaluation.evaluate_dataset`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..errors import FusionInputError
from ._params import parse_method_params

NAME = "evaluate"
HELP = "score fusion methods (and published outputs) on a dataset with the fusion metrics"


def _split_names(values: list[str] | None) -> list[str]:
    out: list[str] = []
    for v in values or []:
        out += [s.strip() for s in v.split(",") if s.strip()]
    return out


def _method_params(items: list[str], methods: list[str]) -> dict[str, dict[str, Any]]:
    """``METHOD.NAME=VALUE`` (or ``NAME=VALUE`` when one method runs) -> typed parameters per method."""
    pairs: dict[str, list[tuple[str, str]]] = {}
    for text in items:
        if "=" not in text:
            raise FusionInputError(f"parameter {text!r} must look like METHOD.NAME=VALUE")
        key, value = (t.strip() for t in text.split("=", 1))
        if "." in key:
            method, name = key.split(".", 1)
        elif len(methods) == 1:
            method, name = methods[0], key
        else:
            raise FusionInputError(f"parameter {text!r}: with several methods write METHOD.{key}={value}")
        if method not in methods:
            raise FusionInputError(f"parameter {text!r} is for method {method!r}, which is not run (-m)")
        pairs.setdefault(method, []).append((name, value))
    from ..registry import get_method

    out = {m: parse_method_params(m, p) for m, p in pairs.items()}
    for m, params in out.items():
        get_method(m).resolve_params(params)  # unknown names and bad values fail here, once
    return out


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ..evaluation import evaluate_dataset
    from ..metrics import METRICS

    if args.list_metrics:
        for name, spec in METRICS.items():
            direction = {True: "higher", False: "lower", None: "-"}[spec.higher_is_better]
            print(f"{name:24s} {spec.needs:8s} {direction:7s} {spec.variant}")
        return 0
    if args.dataset is None:
        raise FusionInputError("give a DATASET_DIR")
    if args.output:  # refused before the (long) evaluation, not after it
        from ..output_safety import check_output_path

        if args.output.suffix.lower() not in (".json", ".csv"):
            raise FusionInputError(f"output must end in .csv or .json, not {args.output.name!r}")
        check_output_path(args.output, inputs=[args.dataset], overwrite=args.overwrite)
    methods = _split_names(args.method)
    if not methods and not args.reference_only:
        from ..registry import list_methods

        methods = [s.name for s in list_methods() if not s.learned]
    ref: bool | list[str] = False
    if args.reference or args.reference_only:
        names = _split_names(args.reference_names)
        ref = names or True
    if args.reference_only:
        methods = []
    metrics = _split_names(args.metrics) or None
    method_params = _method_params(args.param or [], methods)
    result = evaluate_dataset(
        args.dataset,
        methods=methods,
        metrics=metrics,
        reference=ref,
        limit=args.limit,
        cases=_split_names(args.cases) or None,
        device=args.device,
        progress=not args.quiet,
        method_params=method_params,
    )
    print(result.format_table())
    if result.skipped:
        print(result.skipped_note(), file=sys.stderr)
    if args.output:
        p = result.write(args.output, overwrite=args.overwrite, inputs=[args.dataset])
        if not args.quiet:
            print(f"wrote {p}", file=sys.stderr)
    return 0


def add_subparser(sub) -> None:
    p = sub.add_parser(
        NAME,
        help=HELP,
        description=(
            "Fuse every case of DATASET_DIR (shared layout: <case>/src_00.*, src_01.*, optional gt.*, "
            "optional reference/<METHOD>.*) with the given methods and print the mean of each metric per "
            "method and the seconds per case. --reference scores the published outputs with the same code. "
            "Before starting it prints an estimate of the metrics' run time (timed on the first case), "
            "then a progress bar."
        ),
    )
    p.add_argument("dataset", nargs="?", type=Path, metavar="DATASET_DIR")
    p.add_argument(
        "-m",
        "--method",
        action="append",
        metavar="METHOD",
        help="method(s) to run (repeatable or comma-separated; default: all non-learned)",
    )
    p.add_argument(
        "--metrics",
        action="append",
        metavar="NAMES",
        help="metric names (comma-separated; default: a standard set; see --list-metrics)",
    )
    p.add_argument(
        "-p",
        "--param",
        action="append",
        metavar="METHOD.NAME=VALUE",
        help="method parameter (repeatable; NAME=VALUE is enough when one method runs)",
    )
    p.add_argument("--reference", action="store_true", help="also score the published outputs in reference/")
    p.add_argument("--reference-only", action="store_true", help="score only the published outputs")
    p.add_argument(
        "--reference-names", action="append", metavar="NAMES", help="only these reference outputs (comma-separated)"
    )
    p.add_argument("--cases", action="append", metavar="NAMES", help="only these cases (comma-separated)")
    p.add_argument("--limit", type=int, help="only the first N cases")
    p.add_argument(
        "-o", "--output", type=Path, help="write the table: .csv (summary) or .json (summary and per-case values)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing table file")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    p.add_argument("--list-metrics", action="store_true", help="list the metric names and exit")
    p.add_argument("-q", "--quiet", action="store_true", help="no run-time estimate and no progress bar")
    p.set_defaults(func=cmd_evaluate)
