"""CSC-IVFN: the infrared/visible network of the deep convolutional sparse
coding family (Zhao, Xu et al.), built from :class:`napari_fusion.nets.csc.DCU`.

Structure
---------
1. ``split``: base = 11x11 box blur of the grey image (reflect border),
   detail = image - base.
2. Two encoders of ``depth`` DCUs at ``channels`` code channels, starting
   from zero codes: the *base* encoder (PReLU, slope 0.25) codes the base
   layer, the *detail* encoder (soft shrinkage, theta 1e-2) the detail layer.
3. One decoder, shared: 3x3 convolutions ``channels -> channels/2 ->
   channels/4 -> 1``, each followed by batch normalisation, no nonlinearity
   in between. It decodes the base codes and the detail codes separately;
   the two results are summed and passed through a sigmoid.

Trained as an autoencoder on single grey images; at test time the codes of
two sources are fused (:mod:`napari_fusion.methods.csc_ivfn`) and decoded.

Which signal the later DCUs see (``signal`` argument)
-----------------------------------------------------
- ``"paper"`` (default here): every DCU of the base encoder refines its codes
  against the base layer and every DCU of the detail encoder against the
  detail layer. This is the unrolled sparse-coding iteration the paper
  describes (the DCU's residual ``x - D(z)`` is a reconstruction error of
  the signal being coded), so the base codes really code the base layer and
  the detail codes the detail layer, which is what the two different fusion
  rules (saliency for base codes, l1 activity for detail codes) assume.
- ``"released"``: the authors' released code (IF-CSCFuse, ``CSC-IVF/Net.py``)
  gives the base/detail layer only to the first DCU; the following DCUs
  compute their residual against the raw image. Both encoders then end up
  coding the whole image and the split only shapes their first step.

Reference
---------
Z. Zhao, J. Zhang, H. Bai, Y. Wang, Y. Cui, L. Deng, K. Sun, C. Zhang, J. Liu,
S. Xu, "Deep convolutional sparse coding networks for interpretable image
fusion", CVPR Workshops 2023, pp. 2369-2377 (CSC-IVF); released code:
github.com/Zhaozixiang1228/IF-CSCFuse.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .csc import DCU, conv3x3, run_dcus

SIGNALS = ("paper", "released")


def box_split(x: torch.Tensor, size: int = 11) -> tuple[torch.Tensor, torch.Tensor]:
    """``(base, detail)`` of ``(B, C, H, W)`` images: ``size x size`` box mean (reflect border)."""
    if size < 1 or size % 2 == 0:
        raise ValueError(f"box size must be odd and positive, got {size}")
    r = size // 2
    if r == 0:
        return x, torch.zeros_like(x)
    # reflect padding needs r < H, W; replicate beyond that (tiny images only)
    mode = "reflect" if min(x.shape[-2:]) > r else "replicate"
    base = F.avg_pool2d(F.pad(x, (r, r, r, r), mode=mode), size, stride=1)
    return base, x - base


class CSCEncoder(nn.Module):
    """``depth`` DCUs coding a 1-channel signal with ``channels`` code maps."""

    def __init__(self, channels: int = 64, depth: int = 8, *, activation: str = "sst", signal: str = "paper"):
        super().__init__()
        if signal not in SIGNALS:
            raise ValueError(f"signal must be one of {SIGNALS}, got {signal!r}")
        if depth < 1:
            raise ValueError("depth must be >= 1")
        self.channels = channels
        self.signal = signal
        self.units = nn.ModuleList(DCU(1, channels, activation=activation) for _ in range(depth))

    def forward(self, component: torch.Tensor, image: torch.Tensor | None = None) -> torch.Tensor:
        """Codes of ``component`` (base or detail layer); ``image`` is the raw
        image, used by the later units in the ``"released"`` variant."""
        signals = [
            component if (k == 0 or self.signal == "paper" or image is None) else image for k in range(len(self.units))
        ]
        return run_dcus(self.units, signals, None)


class CSCDecoder(nn.Module):
    """Shared linear decoder: 3x3 convs ``c -> c/2 -> c/4 -> 1``, each with BN."""

    def __init__(self, channels: int = 64):
        super().__init__()
        c2, c4 = max(channels // 2, 1), max(channels // 4, 1)
        self.layers = nn.Sequential(
            conv3x3(channels, c2),
            nn.BatchNorm2d(c2),
            conv3x3(c2, c4),
            nn.BatchNorm2d(c4),
            conv3x3(c4, 1),
            nn.BatchNorm2d(1),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.layers(z)


class CSCIVFN(nn.Module):
    """Base/detail convolutional sparse coding autoencoder for grey images in [0, 1].

    Parameters
    ----------
    channels, depth:
        Code channels and DCUs per encoder (paper: 64 and 8).
    blur:
        Box size of the base/detail split (paper: 11).
    signal:
        ``"paper"`` or ``"released"`` (see the module docstring).
    """

    def __init__(self, channels: int = 64, depth: int = 8, *, blur: int = 11, signal: str = "paper"):
        super().__init__()
        self.config = {"channels": int(channels), "depth": int(depth), "blur": int(blur), "signal": signal}
        self.blur = int(blur)
        self.base_encoder = CSCEncoder(channels, depth, activation="prelu", signal=signal)
        self.detail_encoder = CSCEncoder(channels, depth, activation="sst", signal=signal)
        self.decoder = CSCDecoder(channels)

    @property
    def encode_radius(self) -> int:
        """Receptive radius of :meth:`encode`: the box split, then two 3x3 convolutions per DCU."""
        return self.blur // 2 + 2 * len(self.base_encoder.units)

    @property
    def decode_radius(self) -> int:
        """Receptive radius of :meth:`decode` (three 3x3 convolutions)."""
        return 3

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(base codes, detail codes)`` of ``(B, 1, H, W)`` images."""
        base, detail = box_split(x, self.blur)
        return self.base_encoder(base, x), self.detail_encoder(detail, x)

    def encode_base(self, x: torch.Tensor) -> torch.Tensor:
        """The base codes of :meth:`encode` alone (half its work)."""
        base, _ = box_split(x, self.blur)
        return self.base_encoder(base, x)

    def encode_detail(self, x: torch.Tensor) -> torch.Tensor:
        """The detail codes of :meth:`encode` alone (half its work)."""
        _, detail = box_split(x, self.blur)
        return self.detail_encoder(detail, x)

    def decode(self, z_base: torch.Tensor, z_detail: torch.Tensor) -> torch.Tensor:
        """``sigmoid(decoder(z_base) + decoder(z_detail))``."""
        return torch.sigmoid(self.decoder(z_base) + self.decoder(z_detail))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(*self.encode(x))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["SIGNALS", "box_split", "CSCEncoder", "CSCDecoder", "CSCIVFN", "count_parameters"]
