"""``napari-fusion methods``: list the fusion methods (names, tasks, parameters, citations).

The listing is read from ``methods_catalogue.json``, a snapshot of the
registry's metadata kept beside this module, so it prints without importing
torch. The snapshot cannot go stale unnoticed: ``tests/test_cli_startup.py``
compares it with the live registry. After changing a method's metadata,
regenerate it with ``python -m napari_fusion.cli.methods``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

NAME = "methods"
HELP = "list the fusion methods"

#: The registry's metadata (tasks and ``MethodSpec.as_dict()`` of every built-in method).
CATALOGUE = Path(__file__).with_name("methods_catalogue.json")


def live_catalogue() -> dict[str, Any]:
    """The snapshot's content computed from the registry (imports every method, hence torch)."""
    from ..registry import TASKS, list_methods

    return {"tasks": list(TASKS), "methods": [s.as_dict() for s in list_methods()]}


def read_catalogue() -> dict[str, Any]:
    """The snapshot; the live registry when the snapshot file is missing."""
    try:
        return json.loads(CATALOGUE.read_text())
    except FileNotFoundError:  # pragma: no cover - a damaged install
        return live_catalogue()


def _format(spec: dict[str, Any], verbose: bool) -> list[str]:
    kind = "learned" if spec["learned"] else "classical"
    lines = [
        f"{spec['name']:20s} {spec['title']}",
        f"{'':20s} tasks: {', '.join(spec['tasks'])}; {spec['inputs']}; {kind}; outputs: {', '.join(spec['outputs'])}",
    ]
    if verbose:
        for p in spec["params"]:
            rng = ""
            if p.get("choices"):
                rng = f" one of {', '.join(p['choices'])}"
            elif p.get("low") is not None or p.get("high") is not None:
                rng = f" in [{p.get('low')}, {p.get('high')}]"
            lines.append(f"{'':22s}{p['name']}={p['default']!r}{rng}: {p['help']}")
        lines.append(f"{'':20s} cite: {spec['citation']}")
    return lines


def cmd_methods(args: argparse.Namespace) -> int:
    from ..errors import FusionInputError

    catalogue = read_catalogue()
    specs = catalogue["methods"]
    if args.task is not None:
        if args.task not in catalogue["tasks"]:
            raise FusionInputError(f"unknown task {args.task!r}; tasks are {', '.join(catalogue['tasks'])}")
        specs = [s for s in specs if args.task in s["tasks"]]
    if args.json:
        print(json.dumps(specs, indent=2))
        return 0
    for s in specs:
        print("\n".join(_format(s, args.verbose)))
    return 0


def add_subparser(sub) -> None:
    m = sub.add_parser(NAME, help=HELP)
    m.add_argument("--task", help="only methods for this task")
    m.add_argument("--json", action="store_true", help="machine-readable metadata")
    m.add_argument("-v", "--verbose", action="store_true", help="show parameters and citations")
    m.set_defaults(func=cmd_methods)


if __name__ == "__main__":  # regenerate the snapshot after changing a method's metadata
    CATALOGUE.write_text(json.dumps(live_catalogue(), indent=1) + "\n")
    print(f"wrote {CATALOGUE}")
