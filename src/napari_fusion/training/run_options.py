"""Command-line options and finishing steps shared by every ``napari-fusion train <model>``.

Each model module adds its own options (config, variant, task...) and calls
:func:`add_run_arguments` for the common ones; ``main_from_args`` then uses
:func:`apply_train_overrides`, :func:`command_line` and :func:`install_weights`.
"""

from __future__ import annotations

import shlex
import shutil
import sys
from pathlib import Path
from typing import Any

from .. import shipped_weights
from ..weights import verified
from ..weights.verified import PACKAGE_WEIGHTS_DIR

#: The in-code sha256 table of the package's weights, rewritten by :func:`install_weights`.
SHIPPED_TABLE_FILE: Path | None = None  # None: the module napari_fusion/shipped_weights.py


def add_run_arguments(
    p,
    *,
    default_out: str,
    resume: bool = True,
    device: bool = True,
    progress: bool = True,
    threads_help: str = "CPU threads (default from the config)",
    budget_help: str = "override the wall-clock budget",
) -> None:
    """``--out --resume --threads --device --max-minutes --install --no-progress``."""
    p.add_argument("--out", default=None, help=f"run folder (default {default_out})")
    if resume:
        p.add_argument("--resume", action="store_true", help="continue from the run folder's checkpoint")
    p.add_argument("--threads", type=int, default=None, help=threads_help)
    if device:
        p.add_argument("--device", default=None, help="auto, cpu, cuda... (default auto)")
    p.add_argument("--max-minutes", type=float, default=None, help=budget_help)
    p.add_argument(
        "--install", action="store_true", help=f"copy the finished weights and card into {PACKAGE_WEIGHTS_DIR}"
    )
    if progress:
        p.add_argument("--no-progress", action="store_true", help="no progress bars")


def apply_train_overrides(train: Any, args) -> None:
    """Copy ``--threads``, ``--device`` and ``--max-minutes`` (when given) onto a ``TrainConfig``."""
    for attr, value in (
        ("threads", args.threads),
        ("device", getattr(args, "device", None)),
        ("max_minutes", args.max_minutes),
    ):
        if value is not None:
            setattr(train, attr, value)


def command_line() -> str:
    """The ``napari-fusion ...`` command being run, for the manifest and model card."""
    return "napari-fusion " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv else ""


def install_weights(out: str | Path, name: str) -> Path:
    """Copy ``<name>.pt/.json/.md`` from the run folder ``out`` into the package.

    When the destination is the folder the loader treats as the package's
    (``napari_fusion.weights.verified.PACKAGE_WEIGHTS_DIR``), the weights file's sha256 is also
    recorded in :mod:`napari_fusion.shipped_weights` (that module is
    rewritten), without which the loader would refuse the new file.
    """
    out = Path(out)
    for ext in (".pt", ".json", ".md"):  # all present before anything is copied
        if not (out / f"{name}{ext}").is_file():
            raise FileNotFoundError(out / f"{name}{ext}")
    PACKAGE_WEIGHTS_DIR.mkdir(parents=True, exist_ok=True)
    for ext in (".pt", ".json", ".md"):
        shutil.copy2(out / f"{name}{ext}", PACKAGE_WEIGHTS_DIR / f"{name}{ext}")
    dest = PACKAGE_WEIGHTS_DIR / f"{name}.pt"
    if Path(PACKAGE_WEIGHTS_DIR).resolve() == Path(verified.PACKAGE_WEIGHTS_DIR).resolve():
        shipped_weights.record(dest.name, verified.sha256_file(dest), path=SHIPPED_TABLE_FILE)
        print(f"recorded the sha256 of {dest.name} in {SHIPPED_TABLE_FILE or shipped_weights.__file__}")
    print(f"installed {name} into {PACKAGE_WEIGHTS_DIR}")
    return dest


__all__ = ["add_run_arguments", "apply_train_overrides", "command_line", "install_weights"]
