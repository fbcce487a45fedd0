"""Building blocks of the deep convolutional sparse coding (CSC) networks of
Xu, Zhao et al. (CSC-IVFN, CSC-MEFN, CSC-MMFN): one implementation for all three.

A dictionary convolutional unit (DCU) is one unrolled step of a learned
iterative shrinkage algorithm for convolutional sparse coding. Given the input
signal ``x`` (``c_in`` channels) and the current codes ``z`` (``c`` channels),
it refines the codes by the back-projected residual of their reconstruction::

    z' = act(BN(z + E(x - D(z))))

where ``D`` (codes -> signal) and ``E`` (signal -> codes) are 3x3 convolutions
without bias on reflection-padded inputs and ``act`` is a soft-shrinkage with
one learnable threshold per channel (:class:`SoftShrink`) or a PReLU.

Reference
---------
Z. Zhao, J. Zhang, H. Bai, Y. Wang, Y. Cui, L. Deng, K. Sun, C. Zhang, J. Liu,
S. Xu, "Deep convolutional sparse coding networks for interpretable image
fusion", CVPR Workshops 2023 (CSC-IVFN, CSC-MEFN and CSC-MMFN).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def conv3x3(c_in: int, c_out: int) -> nn.Sequential:
    """3x3 convolution without bias on a reflection-padded input (size preserved)."""
    return nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(c_in, c_out, 3, bias=False))


class SoftShrink(nn.Module):
    """Soft thresholding ``sign(x) * relu(|x| - theta)``, one learnable ``theta`` per channel.

    ``theta`` is kept non-negative by clamping in the forward pass (a negative
    threshold would turn shrinkage into expansion).
    """

    def __init__(self, channels: int, init: float = 1e-2):
        super().__init__()
        self.theta = nn.Parameter(torch.full((1, channels, 1, 1), float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        theta = self.theta.clamp_min(0.0)
        return torch.sign(x) * F.relu(x.abs() - theta)


def make_activation(kind: str, channels: int, *, init: float | None = None) -> nn.Module:
    """``"sst"`` (soft shrinkage, theta init 1e-2) or ``"prelu"`` (slope init 0.25)."""
    if kind == "sst":
        return SoftShrink(channels, 1e-2 if init is None else init)
    if kind == "prelu":
        return nn.PReLU(channels, 0.25 if init is None else init)
    raise ValueError(f"activation must be 'sst' or 'prelu', got {kind!r}")


class DCU(nn.Module):
    """Dictionary convolutional unit: ``z' = act(BN(z + E(x - D(z))))``.

    Parameters
    ----------
    signal_channels:
        Channels of the signal ``x``.
    code_channels:
        Channels of the codes ``z``.
    activation:
        ``"sst"`` or ``"prelu"``.
    batch_norm:
        Apply batch normalisation before the activation (as the papers do).
    """

    def __init__(
        self,
        signal_channels: int,
        code_channels: int,
        *,
        activation: str = "sst",
        batch_norm: bool = True,
    ):
        super().__init__()
        self.decode = conv3x3(code_channels, signal_channels)
        self.encode = conv3x3(signal_channels, code_channels)
        self.norm = nn.BatchNorm2d(code_channels) if batch_norm else nn.Identity()
        self.act = make_activation(activation, code_channels)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        residual = x - self.decode(z)
        return self.act(self.norm(z + self.encode(residual)))


__all__ = ["conv3x3", "SoftShrink", "make_activation", "DCU"]
