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

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ._conv import conv3x3_relu

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


class DenseScorer:
    """Prepared dense inference of a :class:`LiuFocusNet`: (s, t) maps of whole tiles.

    The patch CNN is evaluated as a fully convolutional network over tiles (no
    patch extraction). conv1 (1->64) is a 9->64 matrix product of the 3x3
    neighbourhoods, written straight into channels-last memory; conv2 and conv3
    run channels-last with the ReLU fused into the convolution where torch
    offers it (oneDNN pointwise post-op on CPU), else in place; the head is
    the folded ``(2, 256, 8, 8)`` difference filter, applied as one
    256 -> 128 matrix product and 64 shifted additions (a Cout=2 convolution
    runs far below the matrix-product rate). Results equal the
    layered network's up to float rounding (about 1e-6 on the scores).

    ``dtype`` ``torch.bfloat16`` runs the branch in bfloat16 (useful only where
    the hardware has bfloat16 units; on AVX2-only CPUs it is an order of
    magnitude slower); the head and all outputs stay float32.
    """

    def __init__(self, net: LiuFocusNet, dtype: torch.dtype = torch.float32) -> None:
        br = net.branch
        cl = torch.channels_last
        with torch.no_grad():
            self.dtype = dtype
            self.w1 = br.conv1.weight.detach().reshape(64, 9).t().contiguous().to(dtype)
            self.b1 = br.conv1.bias.detach().to(dtype)
            self.w2 = br.conv2.weight.detach().to(dtype).contiguous(memory_format=cl)
            self.b2 = br.conv2.bias.detach().to(dtype)
            self.w3 = br.conv3.weight.detach().to(dtype).contiguous(memory_format=cl)
            self.b3 = br.conv3.bias.detach().to(dtype)
            filters, self.db = difference_filters(net)
            # head as one (256 -> 8*8*2) matrix product plus 64 shifted additions; rows (ky, kx, s/t)
            self.head_rows = filters.detach().float().permute(2, 3, 0, 1).reshape(128, 256).contiguous()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Branch features ``(B, 256, ceil(h/2), ceil(w/2))`` (channels-last) of ``(B, 1, h, w)``.

        The full-resolution layers (conv1, conv2 and the pooling) run in bands of :data:`BAND`
        rows on a CPU (:data:`DEVICE_BAND` elsewhere), each band with its two neighbour rows, so
        their 64- and 128-channel maps stay in cache and are never whole in memory; only the pooled
        map is. The bands add no arithmetic and give the same numbers as whole maps."""
        bsz, _, h, w = x.shape
        xp = F.pad(x[:, 0].to(self.dtype), (1, 1, 1, 1))
        band = BAND if x.device.type == "cpu" else DEVICE_BAND
        pooled = torch.empty((bsz, 128, (h + 1) // 2, (w + 1) // 2), device=x.device, dtype=self.dtype)
        pooled = pooled.contiguous(memory_format=torch.channels_last)
        # conv1's output rows r0-1 .. r1 of a band, NHWC; rows outside the image stay zero (conv2's padding)
        rows = xp.new_zeros((bsz, min(band, h) + 2, w, 64))
        for r0 in range(0, h, band):
            r1 = min(h, r0 + band)
            lo, hi = max(r0 - 1, 0), min(r1 + 1, h)
            if r1 + 2 - r0 < rows.shape[1] or hi < r1 + 1:  # a shorter last band, or the image's last row
                rows = xp.new_zeros((bsz, r1 + 2 - r0, w, 64))
            cols = torch.stack([xp[:, lo + dy : hi + dy, dx : dx + w] for dy in range(3) for dx in range(3)], dim=-1)
            y = torch.addmm(self.b1, cols.reshape(-1, 9), self.w1).clamp_min_(0)
            rows[:, lo - r0 + 1 : hi - r0 + 1] = y.view(bsz, hi - lo, w, 64)
            y = conv3x3_relu(rows.permute(0, 3, 1, 2), self.w2, self.b2, pad_rows=False)  # NCHW view of NHWC
            pooled[:, :, r0 // 2 : (r1 + 1) // 2] = F.max_pool2d(y, 2, stride=2, ceil_mode=True)
        return conv3x3_relu(pooled, self.w3, self.b3)

    def terms(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 2, h', w')`` (s, t) maps of a ``(B, 1, h, w)`` batch of whole tiles."""
        f = self.features(x).float()
        bsz, _, h2, w2 = f.shape
        # (ky, kx, s/t) x (b, i, j): each tap's plane comes out contiguous, no permuted copy of the
        # 128 planes (9 % of the scorer's time on a 1024^2 pair, 2026-12-03)
        y = torch.mm(self.head_rows, f.permute(0, 2, 3, 1).reshape(-1, 256).t()).view(8, 8, 2, bsz, h2, w2)
        h, w = h2 - 7, w2 - 7
        out = y[0, 0, :, :, :h, :w].clone()
        for k in range(1, 64):
            ky, kx = divmod(k, 8)
            out += y[ky, kx, :, :, ky : ky + h, kx : kx + w]
        return out.transpose(0, 1)


#: Rows of the full-resolution maps the scorer computes at once on a CPU (even; see
#: :meth:`DenseScorer.features`): conv2 of a 278-pixel-wide tile ran at 226 GFLOP/s on whole maps and
#: its bands at about 280 (2026-12-03, Xeon with AVX-512).
BAND = 16
#: The same on a GPU, where small bands would cost kernel launches: bounds a batch of 8 tiles'
#: full-resolution maps to ~0.3 GB (they would be ~1 GB whole).
DEVICE_BAND = 128

#: Default tile side in score-map units: an input tile is ``2 * tile + 22`` pixels
#: (about 50 GFLOP per image tile, under a second on two cores; 192 ran a 1024^2 pair 5-8 % faster
#: than 128, the same numbers, and with the bands less memory: 2026-12-03).
TILE = 192


def tile_grid(height: int, width: int, tile: int | None = None) -> list[tuple[slice, slice, slice, slice]]:
    """Tiles of the score map of an ``height x width`` image, as (score rows, score cols,
    input rows, input cols) slices; tiles are balanced (equal sizes up to one). ``tile``:
    default :data:`TILE`."""
    sh, sw = score_map_size(height, width)
    tile = tile or TILE

    def split(n: int, full: int) -> list[tuple[slice, slice]]:
        count = max(1, math.ceil(n / tile))
        edges = [round(k * n / count) for k in range(count + 1)]
        # score i needs input rows 2i-4 .. 2i+19 (receptive field of the branch + 8x8 head)
        return [(slice(a, b), slice(max(0, 2 * a - 4), min(full, 2 * b + 18))) for a, b in zip(edges, edges[1:])]

    return [(si, sj, yi, xj) for si, yi in split(sh, height) for sj, xj in split(sw, width)]


def _find_equal(window: tuple[slice, slice], grey: torch.Tensor, known: torch.Tensor | None) -> int:
    """Index of an image in ``known`` whose ``window`` equals ``grey``'s exactly, else -1."""
    if known is None:
        return -1
    for m in range(known.shape[0]):
        if torch.equal(grey[window], known[m][window]):
            return m
    return -1


@torch.no_grad()
def stack_terms(
    scorer: DenseScorer,
    grey: torch.Tensor,
    *,
    tile: int | None = None,
    batch: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    known: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """``(N, 2, h', w')`` (s, t) maps of ``N`` grey ``(N, H, W)`` images, in tiles.

    The same tile of up to ``batch`` images goes through the network at once
    (default: 1 on CPU, where a tile already fills the cores, 8 elsewhere);
    ``progress(done, total)`` (in image tiles) is called after every batch (it
    may raise to cancel). Results do not depend on ``tile`` or ``batch``.

    ``known``: ``(grey (M, H, W), terms (M, 2, h', w'))`` of images scored before
    with this scorer and ``tile``; a tile whose input window equals one of
    them exactly takes its terms from there instead of the network (a pairwise
    fold scores a blend that, away from the decision boundaries, is bitwise
    one of the previous pair's images).
    """
    n, h, w = grey.shape
    if h < PATCH or w < PATCH:
        raise ValueError(f"images must be at least {PATCH}x{PATCH} pixels, got {h}x{w}")
    sh, sw = score_map_size(h, w)
    out = torch.empty((n, 2, sh, sw), device=grey.device, dtype=torch.float32)
    known_grey, known_terms = known if known is not None and known[0].shape[-2:] == (h, w) else (None, None)
    grid = tile_grid(h, w, tile)
    batch = batch if batch is not None else (1 if grey.device.type == "cpu" else 8)
    done, total = 0, len(grid) * n
    with torch.inference_mode():
        for si, sj, yi, xj in grid:
            todo = []
            for k in range(n):
                m = _find_equal((yi, xj), grey[k], known_grey)
                if m < 0:
                    todo.append(k)
                    continue
                out[k, :, si, sj] = known_terms[m, :, si, sj]
                done += 1
            r0, c0 = si.start - yi.start // 2, sj.start - xj.start // 2
            for b0 in range(0, len(todo), max(1, batch)):
                ks = todo[b0 : b0 + batch]
                t = scorer.terms(torch.stack([grey[k, yi, xj] for k in ks])[:, None])
                out[ks, :, si, sj] = t[..., r0 : r0 + si.stop - si.start, c0 : c0 + sj.stop - sj.start]
                done += len(ks)
                if progress is not None:
                    progress(done, total)
            if progress is not None and not todo:
                progress(done, total)
    return out


@torch.no_grad()
def image_terms(
    net: LiuFocusNet,
    grey: torch.Tensor,
    *,
    filters: torch.Tensor | None = None,
    tile: int | None = None,
    scorer: DenseScorer | None = None,
) -> torch.Tensor:
    """``(2, h', w')`` maps (s, t) of one grey ``(H, W)`` image, computed in tiles.

    ``tile`` is the tile side in score-map units (an input tile is
    ``2 * tile + 22`` pixels); results do not depend on it. ``filters`` is
    accepted for compatibility (the scorer folds the head itself).
    """
    del filters
    scorer = scorer if scorer is not None else DenseScorer(net)
    return stack_terms(scorer, grey.reshape(1, *grey.shape[-2:]), tile=tile)[0]


def pair_scores(terms_a: torch.Tensor, terms_b: torch.Tensor, db: float) -> torch.Tensor:
    """Dense ``P(a is focused)`` from two images' :func:`image_terms`."""
    return torch.sigmoid(terms_a[0] + terms_b[1] + db)
