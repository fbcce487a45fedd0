"""Released weights with a JSON manifest: finding them and loading them only after verification.

A released weights file is a ``state_dict`` written by
:func:`napari_fusion.training.checkpoints.export_weights`, with a JSON
manifest beside it (``<name>.json``: architecture, sha256 of the weights
file, training summary). :func:`load_verified_weights` refuses

* a file whose sha256 does not match its manifest (damaged or replaced);
* a file inside the package (:data:`PACKAGE_WEIGHTS_DIR`) whose sha256 is
  not the one recorded in the code (:mod:`napari_fusion.shipped_weights`),
  so editing a shipped weights file and its manifest together is caught, and
  a file dropped into the package that the table does not list;
* a manifest whose entries differ from ``expect`` (e.g. another architecture).

Every file is read with ``torch.load(..., weights_only=True)``: only tensors
and plain Python values are unpickled, so a tampered file cannot run code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import WeightsUnavailableError
from .catalogue import sha256_of

#: Folder of the weights shipped inside the package.
PACKAGE_WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "trained_weights"


def shipped_path(name: str) -> Path:
    """Where the shipped weights file ``<name>.pt`` lives (it may not exist)."""
    return Path(PACKAGE_WEIGHTS_DIR) / f"{name}.pt"


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file (the one implementation is :func:`napari_fusion.weights.sha256_of`)."""
    return sha256_of(path)


def safe_load(path: str | Path) -> Any:
    """``torch.load`` that unpickles only tensors and plain values (never arbitrary objects)."""
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


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
) -> tuple[dict[str, Any], dict[str, Any]]:
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
            f"weights file {p} is corrupt or was replaced: sha256 {got} does not match the manifest's {want}.{hint}"
        )
    check_shipped(p, got, hint=hint)
    for key, value in (expect or {}).items():
        if manifest.get(key) != value:
            raise WeightsUnavailableError(
                f"weights file {p} is for {key}={manifest.get(key)!r}, expected {value!r}.{hint}"
            )
    try:
        state = safe_load(p)
    except Exception as exc:  # noqa: BLE001 - any unpickling problem means unusable weights
        raise WeightsUnavailableError(f"cannot read weights file {p}: {exc}.{hint}") from None
    return state, manifest


__all__ = [
    "PACKAGE_WEIGHTS_DIR",
    "shipped_path",
    "sha256_file",
    "safe_load",
    "read_manifest",
    "shipped_name",
    "check_shipped",
    "load_verified_weights",
]
