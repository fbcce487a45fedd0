"""The focus-classification CNN of Liu, Chen, Peng & Wang 2017.

Y. Liu, X. Chen, H. Peng, Z. Wang, "Multi-focus image fusion with a deep
convolutional neural network", Information Fusion 36:191-207, 2017.

Two siamese branches with shared weights look at co-located 16x16 patches of
the two sources; their 8x8x256 feature maps are concatenated (512 channels)
and classified as "source 1 is in focus" / "source 2 is in focus".

Each branch: conv 3x3 (1->64) + ReLU, conv 3x3 (64->128) + ReLU, 2x2 max-pool
with stride 2, conv 3x3 (128->256) + ReLU. All convolutions are 'same'
(zero padding 1); the pooling pads odd sizes (ceil mode), as in the authors'
MATLAB inference code. The fully connected layers are written as
convolutions, so the same network scores a whole image densely:

* original model: fc1 = 8x8 'valid' conv 512->256, fc2 = 1x1 conv 256->2;
* "slight" model (paper Sec. 5): fc1 dropped, one 8x8 'valid' conv 512->2
  (435,202 parameters).

As in the authors' MATLAB code no ReLU sits between fc1 and fc2. On an
``(H, W)`` input the dense score map is ``(ceil(H/2) - 7, ceil(W/2) - 7)``;
score ``(i, j)`` belongs to the 16x16 input patch with top-left corner
``(2i, 2j)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

VARIANTS = ("slight", "original")

#: Side of the patch one score describes, and the stride between scores.
PATCH = 16
STRIDE = 2


class LiuBranch(nn.Module):
    """One siamese branch: ``(B, 1, H, W)`` -> ``(B, 256, ceil(H/2), ceil(W/2))``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 64, 3, padding=1)
        self.conv2 = nn.Conv2d(64, 128, 3, padding=1)
        self.conv3 = nn.Conv2d(128, 256, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.max_pool2d(x, 2, stride=2, ceil_mode=True)
        return F.relu(self.conv3(x))


class LiuFocusNet(nn.Module):
    """Siamese focus classifier; ``forward(a, b)`` returns 2-class logits per position.

    Logit channel 0 means "``a`` is in focus", channel 1 "``b`` is in focus".
    On 16x16 inputs the output is ``(B, 2, 1, 1)``; on larger inputs it is a
    dense map (see the module docstring).
    """

    def __init__(self, variant: str = "slight") -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        self.variant = variant
        self.branch = LiuBranch()
        if variant == "original":
            self.fc1 = nn.Conv2d(512, 256, 8)
            self.fc2 = nn.Conv2d(256, 2, 1)
        else:
            self.fc1 = None
            self.fc2 = nn.Conv2d(512, 2, 8)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Branch features of a ``(B, 1, H, W)`` batch (shared by both inputs)."""
        return self.branch(x)

    def head(self, fa: torch.Tensor, fb: torch.Tensor) -> torch.Tensor:
        """Logits from the two branches' feature maps."""
        z = torch.cat([fa, fb], dim=1)
        if self.fc1 is not None:
            z = self.fc1(z)
        return self.fc2(z)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if a.shape != b.shape:
            raise ValueError(f"inputs differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
        if a.shape[-1] < PATCH or a.shape[-2] < PATCH:
            raise ValueError(f"inputs must be at least {PATCH}x{PATCH} pixels")
        # one pass through the shared branch for both inputs
        f = self.features(torch.cat([a, b], dim=0))
        fa, fb = f.split(a.shape[0], dim=0)
        return self.head(fa, fb)

    def score_map(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Probability that ``a`` is in focus, ``(B, h', w')`` with ``h' = ceil(H/2) - 7``."""
        return torch.softmax(self(a, b), dim=1)[:, 0]


def score_map_size(height: int, width: int) -> tuple[int, int]:
    """Size of the dense score map for an ``height x width`` input."""
    return (height + 1) // 2 - 7, (width + 1) // 2 - 7


def spread_scores(scores: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Focus map ``(..., H, W)``: each score spread over its 16x16 patch, overlaps averaged.

    ``scores`` is ``(..., h', w')`` from :meth:`LiuFocusNet.score_map`.
    """
    lead = scores.shape[:-2]
    s = scores.reshape(-1, 1, *scores.shape[-2:])
    ones_k = torch.ones(1, 1, PATCH, PATCH, device=s.device, dtype=s.dtype)
    total = F.conv_transpose2d(s, ones_k, stride=STRIDE)
    count = F.conv_transpose2d(torch.ones_like(s[:1]), ones_k, stride=STRIDE)
    fm = (total / count)[..., :height, :width]
    return fm.reshape(*lead, height, width)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------
# Fast dense inference
#
# No non-linearity follows the branch concatenation (fc1 and fc2 are linear,
# as in the authors' MATLAB code), so the head is one linear 8x8 filter on
# the 512 concatenated channels: fc2 o fc1 folds into a single 512->2 conv.
# The 2-class softmax only needs the logit difference, which splits into a
# term of the first image's features and a term of the second's:
#     P(a focused) = sigmoid(s(a) + t(b) + db).
# Each image's (s, t) maps are computed once, from its own features, so a
# pair costs two branch passes plus two 256->2 convolutions, and an N-slice
# stack N branch passes (every pair's score is then an addition).
# ---------------------------------------------------------------------------


@torch.no_grad()
def folded_head(net: LiuFocusNet) -> tuple[torch.Tensor, torch.Tensor]:
    """The head as one ``(2, 512, 8, 8)`` filter and ``(2,)`` bias (exact)."""
    w2 = net.fc2.weight  # (2, K, kh, kw)
    b2 = net.fc2.bias if net.fc2.bias is not None else torch.zeros(2, device=w2.device)
    if net.fc1 is None:
        return w2, b2
    w1 = net.fc1.weight  # (256, 512, 8, 8)
    b1 = net.fc1.bias if net.fc1.bias is not None else torch.zeros(w1.shape[0], device=w1.device)
    m = w2[:, :, 0, 0]  # (2, 256)
    w = torch.einsum("cm,mikl->cikl", m, w1)
    return w, m @ b1 + b2


@torch.no_grad()
def difference_filters(net: LiuFocusNet) -> tuple[torch.Tensor, float]:
    """``(2, 256, 8, 8)`` filters giving (s, t) from one image's features, and ``db``."""
    w, b = folded_head(net)
    wd = w[0] - w[1]  # (512, 8, 8)
    filt = torch.stack([wd[:256], wd[256:]])
    return filt, float(b[0] - b[1])


@torch.no_grad()
def image_terms(
    net: LiuFocusNet,
    grey: torch.Tensor,
    *,
    filters: torch.Tensor | None = None,
    tile: int = 192,
) -> torch.Tensor:
    """``(2, h', w')`` maps (s, t) of one grey ``(H, W)`` image, computed in tiles.

    ``tile`` is the tile side in score-map units (an input tile is about
    ``2 * tile + 30`` pixels); results do not depend on it.
    """
    if filters is None:
        filters, _ = difference_filters(net)
    h, w = grey.shape[-2:]
    if h < PATCH or w < PATCH:
        raise ValueError(f"images must be at least {PATCH}x{PATCH} pixels, got {h}x{w}")
    sh, sw = score_map_size(h, w)
    out = torch.empty((2, sh, sw), device=grey.device, dtype=filters.dtype)
    halo = 8  # input pixels; the branch's receptive field reaches 5 beyond a patch
    x = grey.reshape(1, 1, h, w)
    for i0 in range(0, sh, tile):
        i1 = min(i0 + tile, sh)
        ys, ye = max(0, 2 * i0 - halo), min(h, 2 * (i1 - 1) + PATCH + halo)
        for j0 in range(0, sw, tile):
            j1 = min(j0 + tile, sw)
            xs, xe = max(0, 2 * j0 - halo), min(w, 2 * (j1 - 1) + PATCH + halo)
            f = net.features(x[..., ys:ye, xs:xe])
            r0, c0 = i0 - ys // 2, j0 - xs // 2
            f = f[..., r0 : r0 + (i1 - i0) + 7, c0 : c0 + (j1 - j0) + 7]
            out[:, i0:i1, j0:j1] = F.conv2d(f, filters)[0]
    return out


def pair_scores(terms_a: torch.Tensor, terms_b: torch.Tensor, db: float) -> torch.Tensor:
    """Dense ``P(a is focused)`` from two images' :func:`image_terms`."""
    return torch.sigmoid(terms_a[0] + terms_b[1] + db)
