"""CSC-MEFN: the multi-exposure fusion network of Xu, Zhao et al. built from
dictionary convolutional units (see :mod:`napari_fusion.nets.csc`).

Every exposure's luma ``Y`` (BT.601, chroma centred on 0.5) goes through the
same small network::

    Conv3x3(1 -> C) -> BN -> SST -> DCU x n -> Conv1x1(C -> 1)

giving one logit map per exposure; a softmax across the K exposures turns
them into per-pixel luma weights that sum to one, so the network works for
any number of exposures (it is applied to each one separately and shares
its weights). The chroma planes are fused by the fixed rule of the paper,
weights ``|C - 0.5| + 1e-8`` (the most saturated exposure dominates), and
the fused YCbCr is converted back to RGB. At test time the result is
clamped to [0, 1] and stretched between its 0.5th and 99.5th percentiles,
as the authors' released test script does.

In the released code the number of DCUs is ``num_blocks - 2``: the released
weights use 2 DCUs, ``train.py`` trains 6; both are a constructor argument
here. Convolutions are initialised as in the released code (Kaiming normal,
negative slope 0.1; BN weight 1, bias 0).

Reference
---------
Z. Zhao, J. Zhang, H. Bai, Y. Wang, Y. Cui, L. Deng, K. Sun, C. Zhang, J. Liu,
S. Xu, "Deep convolutional sparse coding networks for interpretable image
fusion", CVPR Workshops 2023; authors' code ``shuangxu96/CSC-MEFN``.
"""

from __future__ import annotations

import torch
from torch import nn

from ..ops.colour import rgb_to_ycbcr, ycbcr_to_rgb
from ..ops.pyramids import blend_in_pyramid, pyramid_levels
from .csc import DCU, conv3x3, make_activation, run_dcus

CHROMA_EPS = 1e-8


class CSCMEFN(nn.Module):
    """Weight network of CSC-MEFN.

    Parameters
    ----------
    channels:
        Code channels (24 in the paper).
    n_dcu:
        Number of dictionary convolutional units (released weights: 2,
        released ``train.py``: 6).
    """

    def __init__(self, channels: int = 24, n_dcu: int = 2):
        super().__init__()
        if channels < 1 or n_dcu < 0:
            raise ValueError("channels must be >= 1 and n_dcu >= 0")
        self.channels = int(channels)
        self.n_dcu = int(n_dcu)
        self.head = conv3x3(1, channels)
        self.head_norm = nn.BatchNorm2d(channels)
        self.head_act = make_activation("sst", channels)
        self.dcus = nn.ModuleList(DCU(1, channels, activation="sst") for _ in range(n_dcu))
        self.tail = nn.Conv2d(channels, 1, 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, 0.1)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @property
    def receptive_radius(self) -> int:
        """Pixels of context one output pixel depends on (each side)."""
        return 1 + 2 * self.n_dcu

    def logits(self, y: torch.Tensor) -> torch.Tensor:
        """Logit maps ``(M, 1, H, W)`` of luma images ``(M, 1, H, W)``."""
        z = self.head_act(self.head_norm(self.head(y)))
        return self.tail(run_dcus(self.dcus, [y] * len(self.dcus), z))

    def forward(self, luma: torch.Tensor) -> torch.Tensor:
        """Luma weights ``(B, K, H, W)`` (softmax across K) of luma stacks ``(B, K, H, W)``."""
        b, k, h, w = luma.shape
        logits = self.logits(luma.reshape(b * k, 1, h, w)).view(b, k, h, w)
        return torch.softmax(logits, dim=1)


def chroma_weights(c: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """The paper's chroma weights ``|C - 0.5| + eps``, normalised along ``dim``."""
    w = (c - 0.5).abs() + CHROMA_EPS
    return w / w.sum(dim=dim, keepdim=True)


#: How :func:`fuse_exposures` combines the exposures with the network's weights: ``"sum"`` the
#: paper's per-pixel weighted sum (luma; chroma by saturation), ``"pyramid"`` the variant that
#: blends the exposures' channels in a Laplacian pyramid with Gaussian pyramids of the weights
#: (the multiresolution blend of Mertens et al.'s exposure fusion; not the paper's rule).
BLENDS = ("sum", "pyramid")


def fuse_exposures(net: CSCMEFN, stack: torch.Tensor, *, blend: str = "sum") -> tuple[torch.Tensor, torch.Tensor]:
    """Fuse exposure stacks ``(B, K, C, H, W)`` (C = 3 RGB or 1 grey, values in [0, 1]).

    Returns ``(fused (B, C, H, W), luma weights (B, K, H, W))``. The result is
    neither clamped nor stretched (see :func:`postprocess`): training uses it
    as it is. ``blend``: one of :data:`BLENDS` (both differentiable).
    """
    if stack.ndim != 5 or stack.shape[2] not in (1, 3):
        raise ValueError(f"expected a (B, K, 1 or 3, H, W) stack, got {tuple(stack.shape)}")
    if blend not in BLENDS:
        raise ValueError(f"blend must be one of {BLENDS}, got {blend!r}")
    grey = stack.shape[2] == 1
    ycc = stack if grey else rgb_to_ycbcr(stack, channel_dim=2)  # (B, K, C, H, W)
    weights = net(ycc[:, :, 0])
    if blend == "pyramid":
        levels = pyramid_levels(*stack.shape[-2:])
        fused = torch.stack([blend_in_pyramid(s, w, levels) for s, w in zip(stack, weights, strict=True)])
        return fused, weights
    y = (weights * ycc[:, :, 0]).sum(1, keepdim=True)
    if grey:
        return y, weights
    chroma = ycc[:, :, 1:]
    c = (chroma_weights(chroma, dim=1) * chroma).sum(1)  # (B, 2, H, W)
    return ycbcr_to_rgb(torch.cat([y, c], dim=1), channel_dim=1), weights


def percentile_bounds(x: torch.Tensor, low: float = 0.005, high: float = 0.995) -> tuple[torch.Tensor, torch.Tensor]:
    """Values at fractions ``low`` and ``high`` of the sorted values of ``x`` (any size)."""
    flat = x.reshape(-1)
    lo_k, hi_k = percentile_ranks(flat.numel(), low, high)
    lo = flat.kthvalue(lo_k).values
    hi = flat.kthvalue(hi_k).values
    return lo, hi


#: Bits of a float32's pattern below the coarse histogram's bins (65536 values per bin).
_FINE_BITS = 16


def _float_bits(x: torch.Tensor) -> torch.Tensor:
    """int64 bit patterns of non-negative float32 values (ordered like the values; -0.0 -> +0.0)."""
    return (x.to(torch.float32).reshape(-1) + 0.0).view(torch.int32).to(torch.int64)


def coarse_histogram(x: torch.Tensor) -> torch.Tensor:
    """Counts of values in [0, 1] by the high 16 bits of their float32 pattern (summable over tiles)."""
    return torch.bincount(_float_bits(x) >> _FINE_BITS, minlength=(0x3F800000 >> _FINE_BITS) + 1).cpu()


def rank_in_histogram(hist: torch.Tensor, k: int) -> tuple[int, int]:
    """Bin holding the ``k``-th smallest value (1-based) and its rank inside that bin."""
    cum = torch.cumsum(hist, 0)
    b = int(torch.searchsorted(cum, torch.tensor(k, dtype=cum.dtype)))
    return b, k - (int(cum[b - 1]) if b > 0 else 0)


def fine_histograms(x: torch.Tensor, bins: tuple[int, ...]) -> torch.Tensor:
    """``(len(bins), 65536)`` counts of the low 16 bits of the values in each coarse bin."""
    bits = _float_bits(x)
    out = []
    for b in bins:
        low = bits[(bits >> _FINE_BITS) == b] & ((1 << _FINE_BITS) - 1)
        out.append(torch.bincount(low, minlength=1 << _FINE_BITS))
    return torch.stack(out).cpu()


def order_statistic(bin_index: int, fine: torch.Tensor, rank: int) -> float:
    """The value of rank ``rank`` (1-based) among those of coarse bin ``bin_index``."""
    low, _ = rank_in_histogram(fine, rank)
    pattern = torch.tensor([(bin_index << _FINE_BITS) | low], dtype=torch.int32)
    return float(pattern.view(torch.float32)[0])


def percentile_ranks(n: int, low: float, high: float) -> tuple[int, int]:
    """1-based ranks of the values :func:`percentile_bounds` takes from ``n`` values."""
    return min(max(int(n * low), 0), n - 1) + 1, min(max(int(n * high), 0), n - 1) + 1


def stretch_between(out: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """Map ``lo`` to 0 and ``hi`` to 1 and clip; unchanged when ``hi - lo <= 1e-6``."""
    span = hi - lo
    if span <= 1e-6:
        return out
    return ((out - lo) / span).clamp(0.0, 1.0)


def postprocess(fused: torch.Tensor, *, stretch: bool = True, low: float = 0.005, high: float = 0.995) -> torch.Tensor:
    """Clamp to [0, 1]; with ``stretch``, map the ``low`` / ``high`` quantiles of the
    whole image (all channels together) to 0 and 1 and clip (the released test
    script's post-processing)."""
    out = fused.clamp(0.0, 1.0)
    if not stretch:
        return out
    lo, hi = percentile_bounds(out, low, high)
    return stretch_between(out, float(lo), float(hi))


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


__all__ = [
    "BLENDS",
    "CSCMEFN",
    "chroma_weights",
    "fuse_exposures",
    "coarse_histogram",
    "fine_histograms",
    "order_statistic",
    "percentile_bounds",
    "percentile_ranks",
    "postprocess",
    "rank_in_histogram",
    "stretch_between",
    "count_parameters",
]
