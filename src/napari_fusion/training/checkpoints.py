"""Saving and resuming training checkpoints; exporting released weights.

Two kinds of files:

* training checkpoints (``checkpoint.pt`` in a run folder): model, optimiser,
  scheduler and RNG state, step counters and elapsed time, so an interrupted
  run resumes where it stopped;
* released weights: a ``state_dict`` file plus a JSON manifest beside it
  (``<name>.json``: architecture, sha256 of the weights file, training
  summary) and a human-readable model card (``<name>.md``). Loading and
  verifying them is :mod:`napari_fusion.weights`' job
  (:func:`napari_fusion.weights.load_verified_weights`), which inference
  code uses without importing this package.

Every file is read with ``torch.load(..., weights_only=True)``: only tensors
and plain Python values (dicts, lists, numbers, strings...) are unpickled, so
a tampered file cannot run code. Checkpoints that need more (written by older
versions, which stored e.g. numpy RNG state as numpy objects) are refused
with a message, never loaded unsafely.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from ..errors import WeightsUnavailableError
from ..weights.verified import safe_load, sha256_file


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write a training checkpoint atomically (a crash never leaves half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_save(state, path)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a training checkpoint written by :func:`save_checkpoint`, safely.

    Raises :class:`~napari_fusion.errors.WeightsUnavailableError` when the file
    holds anything but tensors and plain values (an old-format checkpoint, or a
    tampered one): it is refused, not unpickled.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsUnavailableError(f"checkpoint not found: {path}")
    try:
        state = safe_load(path)
    except Exception as exc:  # noqa: BLE001 - UnpicklingError, RuntimeError, EOFError...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsUnavailableError(
            f"checkpoint {path} cannot be loaded safely and was refused: {first}. It holds objects "
            "other than tensors and plain values (a checkpoint from an older napari-fusion, or a "
            "tampered file), and loading it could run arbitrary code. Start the run afresh (without "
            "--resume, or delete the file)."
        ) from None
    if not isinstance(state, dict):
        raise WeightsUnavailableError(f"checkpoint {path} does not hold a dict (got {type(state).__name__})")
    return state


def export_weights(
    state_dict: dict[str, torch.Tensor], path: str | Path, *, manifest: dict[str, Any]
) -> dict[str, Any]:
    """Write released weights and their JSON manifest (with the file's sha256).

    Returns the manifest as written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in state_dict.items()}
    _atomic_save(clean, path)
    out = dict(manifest)
    out["file"] = path.name
    out["sha256"] = sha256_file(path)
    out["bytes"] = path.stat().st_size
    path.with_suffix(".json").write_text(json.dumps(out, indent=2, sort_keys=True) + "\n")
    return out
