"""Choosing the torch device a fusion runs on."""

from __future__ import annotations

import torch

from .errors import FusionInputError

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """Return a usable :class:`torch.device`.

    ``"auto"`` (or ``None``) picks CUDA when available, then Apple MPS, then
    the CPU. Naming a device that is not available is an input error rather
    than a crash later inside torch.
    """
    if isinstance(device, torch.device):
        device = str(device)
    if device is None or device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    name = str(device).lower()
    kind = name.split(":")[0]
    if kind == "cpu":
        return torch.device("cpu")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise FusionInputError("device 'cuda' was requested but no CUDA GPU is available")
        return torch.device(name)
    if kind == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise FusionInputError("device 'mps' was requested but MPS is not available")
        return torch.device("mps")
    raise FusionInputError(f"unknown device {device!r}; choose one of {', '.join(DEVICE_CHOICES)}")
