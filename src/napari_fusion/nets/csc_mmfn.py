"""CSC-MMFN: a deep convolutional sparse coding network for multimodal image
super-resolution (a low-resolution multiband image + a high-resolution guide).

Architecture (Xu, Zhao et al.; ``docs/methods/csc_mmfn.md``)::

    LR bands x (N, B, h, w)            HR guide y (N, G, H, W)
      Conv3x3 B->F, SST                  Conv3x3 G->F, SST
      n_dcu x DCU(x, z)                  n_dcu x DCU(y, u)
      codes z (F, h, w)                  codes u (F, H, W)
                     \\                  /   \\
                      \\   bilinear down(u) |
                       fast guided filter (r, eps): per channel, z ~ a * down(u) + b,
                       a, b upsampled and applied to u  ->  Z (F, H, W)
                                   Conv3x3 F->B
                                       +  bilinear up(x)  ->  (N, B, H, W)

The decoder convolution starts at zero, so an untrained network returns the
bilinear upsampling (a departure from the released code's default
initialisation that makes short CPU training safe). The paper/released code uses 3 DCUs per branch at 256 channels; the CPU
configuration we ship uses fewer channels (see the model cards). Unlike the
released code, every resize uses the actual height and width of each input,
so non-square images and any scale factor work.

Reference
---------
Z. Zhao, J. Zhang, H. Bai, Y. Wang, Y. Cui, L. Deng, K. Sun, C. Zhang, J. Liu,
S. Xu, "Deep convolutional sparse coding networks for interpretable image
fusion", CVPR Workshops 2023; S. Xu et al., CSC-MMFN (authors' code
shuangxu96/CSC-MMFN). Fast guided filter: H. Wu, S. Zheng, J. Zhang, K. Huang,
"Fast end-to-end trainable guided filter", CVPR 2018.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ..ops.guided import fast_guided_filter
from .csc import DCU, SoftShrink, conv3x3, run_dcus


class _Branch(nn.Module):
    """Conv3x3 -> SST -> ``n_dcu`` DCUs on one input (codes of ``features`` channels)."""

    def __init__(self, channels: int, features: int, n_dcu: int):
        super().__init__()
        self.head = conv3x3(channels, features)
        self.act = SoftShrink(features)
        self.dcus = nn.ModuleList(DCU(channels, features, activation="sst") for _ in range(n_dcu))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return run_dcus(self.dcus, [x] * len(self.dcus), self.act(self.head(x)))


class CSCMMFN(nn.Module):
    """Low-resolution multiband image + high-resolution guide -> high-resolution bands.

    Parameters
    ----------
    bands:
        Channels of the low-resolution image (31 for CAVE, 4 for the pansharpening pairs).
    guide_channels:
        Channels of the guide (3 for RGB, 1 for panchromatic).
    features:
        Code channels of both branches (paper: 256).
    n_dcu:
        DCUs per branch (paper: 3).
    radius, eps:
        Fast guided filter window radius and regularisation (paper: 1, 1e-4).
    """

    def __init__(
        self,
        bands: int,
        guide_channels: int,
        *,
        features: int = 256,
        n_dcu: int = 3,
        radius: int = 1,
        eps: float = 1e-4,
    ):
        super().__init__()
        self.config = dict(
            bands=int(bands),
            guide_channels=int(guide_channels),
            features=int(features),
            n_dcu=int(n_dcu),
            radius=int(radius),
            eps=float(eps),
        )
        self.lr_branch = _Branch(bands, features, n_dcu)
        self.guide_branch = _Branch(guide_channels, features, n_dcu)
        self.tail = conv3x3(features, bands)
        # zero decoder: the untrained network is exactly the bilinear upsampling, and
        # training only learns the residual detail (the released code uses the default init)
        nn.init.zeros_(self.tail[1].weight)
        self.radius = int(radius)
        self.eps = float(eps)

    def forward(self, lowres: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
        """``lowres`` (N, B, h, w) and ``guide`` (N, G, H, W) -> (N, B, H, W)."""
        if lowres.ndim != 4 or guide.ndim != 4:
            raise ValueError("CSCMMFN expects 4-D (N, C, H, W) tensors")
        size_lr = tuple(lowres.shape[-2:])
        size_hr = tuple(guide.shape[-2:])
        up = F.interpolate(lowres, size=size_hr, mode="bilinear", align_corners=False)
        z = self.lr_branch(lowres)
        u = self.guide_branch(guide)
        u_low = F.interpolate(u, size=size_lr, mode="bilinear", align_corners=False)
        codes = fast_guided_filter(u_low, z, u, self.radius, self.eps)
        return up + self.tail(codes)


def build_from_config(config: dict[str, Any]) -> CSCMMFN:
    """A :class:`CSCMMFN` from the ``config`` dict stored in a weights manifest."""
    c = dict(config)
    return CSCMMFN(
        c.pop("bands"),
        c.pop("guide_channels"),
        features=c["features"],
        n_dcu=c["n_dcu"],
        radius=c["radius"],
        eps=c["eps"],
    )


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["CSCMMFN", "build_from_config", "count_parameters"]
