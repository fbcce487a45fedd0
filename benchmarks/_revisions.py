"""The source of an earlier git revision, for benchmarks that time it beside the working tree.

``extract_src(rev, dest)`` writes revision ``rev``'s ``src/`` into ``dest`` with ``git archive``
(nothing is checked out, the working tree is untouched) and returns the folder to put on
``PYTHONPATH``. Used by ``metrics_speed.py``, ``ops_speed.py`` and ``vs_focus_stack.py`` (``--rev``).
"""

from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def extract_src(rev: str, dest: Path) -> Path:
    """``dest / "src"`` holding the package sources of ``rev`` (extracted once per ``dest``)."""
    src = Path(dest) / "src"
    if src.is_dir():
        return src
    tar = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", rev, "src"], capture_output=True)
    if tar.returncode != 0:
        raise SystemExit(f"git archive {rev} failed: {tar.stderr.decode(errors='replace').strip()}")
    Path(dest).mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(tar.stdout)) as tf:
        tf.extractall(dest, filter="data")
    return src
