"""Inference helpers shared by the networks: 3x3 convolution + ReLU fused where torch offers it,
and the user's choice of bfloat16 arithmetic."""

from __future__ import annotations

import functools
import warnings

import torch
import torch.nn.functional as F


@functools.cache
def has_fused_conv() -> bool:
    """Whether this torch build offers oneDNN's convolution with a fused pointwise ReLU (CPU)."""
    try:
        return hasattr(torch.ops.mkldnn, "_convolution_pointwise") and torch.backends.mkldnn.is_available()
    except (AttributeError, RuntimeError):  # pragma: no cover - builds without oneDNN
        return False


def fusable(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """A float32 CPU convolution outside autograd, which :func:`conv3x3_relu` can fuse with its ReLU."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
        and has_fused_conv()
    )


def conv3x3_relu(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, *, pad_rows: bool = True
) -> torch.Tensor:
    """``relu(conv2d(x, weight, bias, padding=1))`` for a 3x3, stride-1 convolution: one oneDNN call
    with the ReLU fused into it where :func:`fusable`, else the convolution and an in-place ReLU.
    Equal up to float rounding; channels-last inputs and weights run fastest on a CPU.

    ``pad_rows=False`` pads the columns only (``padding=(0, 1)``): the output has two rows fewer,
    for a band of rows whose neighbour rows the caller supplies."""
    padding = [1, 1] if pad_rows else [0, 1]
    if fusable(x, weight):
        return torch.ops.mkldnn._convolution_pointwise(x, weight, bias, padding, [1, 1], [1, 1], 1, "relu", [], "")
    return F.conv2d(x, weight, bias, padding=padding).relu_()


#: Arithmetic a learned method's network may run in (the user's choice; float32 by default).
PRECISIONS = ("float32", "bfloat16")


def cpu_has_bfloat16() -> bool:
    """Whether this CPU has bfloat16 units (AVX512-BF16, which AMX CPUs have too)."""
    check = getattr(getattr(torch, "cpu", None), "_is_avx512_bf16_supported", None)
    try:
        return bool(check()) if check is not None else False
    except RuntimeError:  # pragma: no cover - builds without the check
        return False


def network_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The dtype of ``precision`` (one of :data:`PRECISIONS`); warns when bfloat16 is chosen on a
    CPU without bfloat16 units, where it runs slower than float32 (an AVX2 CPU ran a bfloat16
    convolution ~12x slower)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "float32":
        return torch.float32
    if device.type == "cpu" and not cpu_has_bfloat16():
        warnings.warn(
            "precision='bfloat16' runs slower than float32 on this CPU (it has no AVX512-BF16 or AMX "
            "units); float32 is the faster choice here",
            stacklevel=4,
        )
    return torch.bfloat16
