"""Saving, resuming and verifying weights.

Two kinds of files:

* training checkpoints (``checkpoint.pt`` in a run folder): model, optimiser,
  scheduler and RNG state, step counters and elapsed time, so an interrupted
  run resumes where it stopped;
* released weights: a ``state_dict`` file plus a JSON manifest beside it
  (``<name>.json``: architecture, sha256 of the weights file, training
  summary) and a human-readable model card (``<name>.md``). The loader
  refuses files whose sha256 does not match the manifest.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from ..errors import WeightsUnavailableError

#: Folder of the weights shipped inside the package.
PACKAGE_WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "trained_weights"


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file (one implementation for the project: :func:`napari_fusion.weights.sha256_of`)."""
    from ..weights import sha256_of

    return sha256_of(path)


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
    """Read a training checkpoint written by :func:`save_checkpoint`."""
    return torch.load(Path(path), map_location="cpu", weights_only=False)


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


def read_manifest(weights_path: str | Path) -> dict[str, Any]:
    """The JSON manifest beside a weights file."""
    mpath = Path(weights_path).with_suffix(".json")
    if not mpath.is_file():
        raise WeightsUnavailableError(f"no manifest {mpath.name} beside the weights file {weights_path}")
    try:
        return json.loads(mpath.read_text())
    except json.JSONDecodeError as exc:
        raise WeightsUnavailableError(f"manifest {mpath} is not valid JSON: {exc}") from None


def load_verified_weights(
    weights_path: str | Path, *, how_to_get: str = "", expect: dict[str, Any] | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load a released ``state_dict`` after checking its sha256 against the manifest.

    ``expect`` lists manifest entries that must match (e.g. the architecture).
    Raises :class:`~napari_fusion.errors.WeightsUnavailableError` with
    ``how_to_get`` appended when the file is missing, corrupt or mismatched.
    """
    p = Path(weights_path)
    hint = f" {how_to_get}" if how_to_get else ""
    if not p.is_file():
        raise WeightsUnavailableError(f"weights file not found: {p}.{hint}")
    manifest = read_manifest(p)
    want = manifest.get("sha256")
    got = sha256_file(p)
    if want != got:
        raise WeightsUnavailableError(
            f"weights file {p} is corrupt or was replaced: sha256 {got} does not match the "
            f"manifest's {want}.{hint}"
        )
    for key, value in (expect or {}).items():
        if manifest.get(key) != value:
            raise WeightsUnavailableError(
                f"weights file {p} is for {key}={manifest.get(key)!r}, expected {value!r}.{hint}"
            )
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling problem means unusable weights
        raise WeightsUnavailableError(f"cannot read weights file {p}: {exc}.{hint}") from None
    return state, manifest
