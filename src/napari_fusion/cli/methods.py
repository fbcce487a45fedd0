"""``napari-fusion methods``: list the fusion methods of the registry (names, tasks, parameters)."""

from __future__ import annotations

import argparse
import json

NAME = "methods"
HELP = "list the fusion methods"


def cmd_methods(args: argparse.Namespace) -> int:
    from ..registry import list_methods

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


def add_subparser(sub) -> None:
    m = sub.add_parser(NAME, help=HELP)
    m.add_argument("--task", help="only methods for this task")
    m.add_argument("--json", action="store_true", help="machine-readable metadata")
    m.add_argument("-v", "--verbose", action="store_true", help="show parameters and citations")
    m.set_defaults(func=cmd_methods)
