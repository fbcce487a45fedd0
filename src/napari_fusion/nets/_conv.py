"""Inference helpers shared by the networks: 3x3 convolution + ReLU fused where torch offers it."""

from __future__ import annotations

import functools

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


def conv3x3_relu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``relu(conv2d(x, weight, bias, padding=1))`` for a 3x3, stride-1 convolution: one oneDNN call
    with the ReLU fused into it where :func:`fusable`, else the convolution and an in-place ReLU.
    Equal up to float rounding; channels-last inputs and weights run fastest on a CPU."""
    if fusable(x, weight):
        return torch.ops.mkldnn._convolution_pointwise(x, weight, bias, [1, 1], [1, 1], [1, 1], 1, "relu", [], "")
    return F.conv2d(x, weight, bias, padding=1).relu_()
