"""Saving, resuming and verifying weights.

Two kinds of files:

* training checkpoints (``checkpoint.pt`` in a run folder): model, optimiser,
  scheduler and RNG state, step counters and elapsed time, so an interrupted
  run resumes where it stopped;
* released weights: a ``state_dict`` file plus a JSON manifest beside it
  (``<name>.json``: architecture, sha256 of the weights file, training
  summary) and a human-readable model card (``<name>.md``). The loader
  refuses files whose sha256 does not match the manifest and, for files
  inside the package (:data:`PACKAGE_WEIGHTS_DIR`), also files whose sha256
  is not the one recorded in the code (:mod:`napari_fusion.shipped_weights`),
  so editing a shipped weights file and its manifest together is caught.

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


def _safe_load(path: Path) -> Any:
    """``torch.load`` that unpickles only tensors and plain values (never arbitrary objects)."""
    return torch.load(path, map_location="cpu", weights_only=True)


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
        state = _safe_load(path)
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


def read_manifest(weights_path: str | Path) -> dict[str, Any]:
    """The JSON manifest beside a weights file."""
    mpath = Path(weights_path).with_suffix(".json")
    if not mpath.is_file():
        raise WeightsUnavailableError(f"no manifest {mpath.name} beside the weights file {weights_path}")
    try:
        return json.loads(mpath.read_text())
    except json.JSONDecodeError as exc:
        raise WeightsUnavailableError(f"manifest {mpath} is not valid JSON: {exc}") from None


def shipped_name(path: str | Path) -> str | None:
    """``path``'s name relative to :data:`PACKAGE_WEIGHTS_DIR` (posix), or None if it lies outside."""
    try:
        return Path(path).resolve().relative_to(Path(PACKAGE_WEIGHTS_DIR).resolve()).as_posix()
    except ValueError:
        return None


def check_shipped(path: str | Path, digest: str, *, hint: str = "") -> None:
    """Refuse a file inside the package whose sha256 is not the one in :mod:`napari_fusion.shipped_weights`.

    Files outside the package (user-trained, installed elsewhere) are not
    checked here; their manifest is all there is.
    """
    from ..shipped_weights import SHIPPED_SHA256

    name = shipped_name(path)
    if name is None:
        return
    expected = SHIPPED_SHA256.get(name)
    if expected is None:
        raise WeightsUnavailableError(
            f"weights file {path} lies in the package but is not one of the shipped weights listed in "
            "napari_fusion/shipped_weights.py (`napari-fusion train ... --install` adds the files it "
            f"installs); it was not loaded.{hint}"
        )
    if digest != expected:
        raise WeightsUnavailableError(
            f"weights file {path} was modified: its sha256 {digest} is not the shipped one {expected} "
            "(recorded in napari_fusion/shipped_weights.py), even though its manifest may agree. "
            f"Reinstall napari-fusion to restore it.{hint}"
        )


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
    check_shipped(p, got, hint=hint)
    for key, value in (expect or {}).items():
        if manifest.get(key) != value:
            raise WeightsUnavailableError(
                f"weights file {p} is for {key}={manifest.get(key)!r}, expected {value!r}.{hint}"
            )
    try:
        state = _safe_load(p)
    except Exception as exc:  # noqa: BLE001 - any unpickling problem means unusable weights
        raise WeightsUnavailableError(f"cannot read weights file {p}: {exc}.{hint}") from None
    return state, manifest
