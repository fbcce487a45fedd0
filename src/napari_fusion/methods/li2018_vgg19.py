"""Infrared/visible fusion with VGG19 deep features (Li, Wu & Kittler 2018).

1. Every source's luminance ``I_n`` is split into a base layer ``B_n`` and a
   detail layer ``D_n = I_n - B_n`` by Tikhonov smoothing (lam = 5, solved
   with FFTs on a 16-pixel symmetric padding;
   :func:`napari_fusion.ops.decomposition.tikhonov_split`).
2. Base layers are averaged.
3. Each detail layer, replicated to three channels with no mean subtraction
   or normalisation, goes through ImageNet VGG19. At four depths
   ``k`` (strides 1, 2, 4, 8) the activity ``A_n^k`` is the l1 norm over
   channels, averaged over 3x3 blocks (zero padding, /9); the weights are the
   ratios ``W_n^k = A_n^k / sum_m A_m^k``, replicated back to full size; each
   depth gives a candidate ``F^k = sum_n W_n^k D_n``.
4. The fused detail is the pixel-wise maximum over the candidates (the
   largest signed value, not the largest magnitude: the paper's and code's
   ``max``), and ``fused = mean_n B_n + fused detail``, clipped only when the
   result is converted back to the input's range.

Choices made here (see ``docs/methods/li2018_vgg19.md``):

- ``layers="conv"`` (default) takes the convolution outputs *before* ReLU,
  torchvision ``features[0, 5, 10, 19]`` = conv1_1, conv2_1, conv3_1,
  conv4_1, which is what the authors' released MATLAB code indexes
  (MatConvNet ``res(2)``, ``res(7)``, ``res(12)``, ``res(21)``) and so what
  produced the published images; ``layers="relu"`` takes relu1_1..relu4_1
  (``features[1, 6, 11, 20]``) as the paper's text says.
- Where an image side is not a multiple of the stride, the released code
  leaves the last rows/columns of that layer's weight map at zero, which
  drops the detail there from that candidate; here the weight map is
  extended by repeating its last row/column, so every pixel has weights that
  sum to one.
- Weights that would be 0/0 (no activity in any source) become uniform.
- N >= 2 sources: the ratio generalises to ``A_n / sum_m A_m``; base layers
  are averaged over all N.
- Colour: the luminance (BT.601 Y) is fused and the chroma (Cb, Cr) of the
  *visible* source is kept. With ``chroma_source=-1`` the visible source is
  the one with the most chroma (an infrared image given as RGB is grey, so
  it has none).
- The network uses torchvision's ImageNet weights (``vgg19-dcbb9e9d.pth``);
  the authors used MatConvNet's ``imagenet-vgg-verydeep-19``, a different
  conversion of the same VGG19, so results are close to, not identical with,
  theirs (``benchmarks/compare_li2018.py`` measures how close).

Reference: H. Li, X.-J. Wu, J. Kittler, "Infrared and Visible Image Fusion
using a Deep Learning Framework", 24th International Conference on Pattern
Recognition (ICPR), 2018, pp. 2705-2710; code:
github.com/hli1221/imagefusion_deeplearning.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from ..errors import FusionInputError, WeightsUnavailableError
from ..nets.vgg19 import LAYER_INDEX, VGG19, layer_stride, load_torchvision_state_dict, receptive_radius
from ..ops.blend import normalise_weights, normalise_weights_
from ..ops.colour import chroma_sums, most_colourful, rgb_to_ycbcr, ycbcr_to_rgb
from ..ops.colour import visible_source as visible_source  # public here since the first release
from ..ops.decomposition import tikhonov_split
from ..ops.filters import box_filter
from ..ops.tiles import map_tiles
from ..registry import FusionContext, MethodOutput, Param, register_method
from ..weights import VGG19_IMAGENET, LoadedWeights, load_catalogued

#: The four feature layers of each ``layers`` choice, as torchvision indices.
LAYER_SETS: dict[str, tuple[int, ...]] = {
    "conv": tuple(LAYER_INDEX[n] for n in ("conv1_1", "conv2_1", "conv3_1", "conv4_1")),
    "relu": tuple(LAYER_INDEX[n] for n in ("relu1_1", "relu2_1", "relu3_1", "relu4_1")),
}
_NET_DEPTH = max(max(v) for v in LAYER_SETS.values()) + 1


# --------------------------------------------------------------------------- #
# The non-network steps (also used by the tests on hand-computed cases)
# --------------------------------------------------------------------------- #


def l1_activity(features: torch.Tensor) -> torch.Tensor:
    """``(C, h, w)`` feature maps -> ``(h, w)`` l1 norm over channels."""
    return features.abs().sum(0)


def block_average(activity: torch.Tensor) -> torch.Tensor:
    """3x3 mean of each ``(h, w)`` map, zero padded and divided by 9 (as the authors' code)."""
    return box_filter(activity, 1, border="zeros")


def ratio_weights(activity: torch.Tensor) -> torch.Tensor:
    """``(N, h, w)`` activities -> weights ``A_n / sum_m A_m`` (uniform where all are 0)."""
    return normalise_weights(activity)


def upsample_weights(weights: torch.Tensor, stride: int, size: tuple[int, int]) -> torch.Tensor:
    """Block-replicate ``(N, h, w)`` maps by ``stride`` and extend them to ``size``.

    The replicated map covers ``h*stride x w*stride`` pixels; rows and columns
    beyond that (image sides not multiples of ``stride``) repeat the last
    block instead of staying at zero weight. With stride 1 and maps already of ``size``, the
    maps themselves come back (not a copy).
    """
    height, width = size
    h, w = weights.shape[-2:]
    if stride == 1 and (h, w) == (height, width):
        return weights
    # which block each output row / column copies (the last one beyond h*stride, w*stride): one
    # full-size result, no intermediate copies at full size
    rows = (torch.arange(height, device=weights.device) // stride).clamp_(max=h - 1)
    cols = (torch.arange(width, device=weights.device) // stride).clamp_(max=w - 1)
    return weights.index_select(-2, rows).index_select(-1, cols)


def select_detail(candidates: torch.Tensor, *, rule: str = "max") -> torch.Tensor:
    """Index ``(H, W)`` of the candidate kept per pixel from ``(K, H, W)`` candidates.

    ``"max"``: the largest signed value (the paper); ``"absmax"``: the largest
    magnitude (a common variant that does not favour bright details).
    """
    if rule == "max":
        return candidates.argmax(0)
    if rule == "absmax":
        return candidates.abs().argmax(0)
    raise ValueError(f"unknown selection rule {rule!r}")


def fuse_details(
    details: torch.Tensor,
    activities: list[torch.Tensor],
    strides: list[int],
    *,
    rule: str = "max",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Multi-layer detail fusion from per-layer activities.

    ``details`` is ``(N, H, W)``; ``activities[k]`` is the ``(N, h_k, w_k)``
    l1 activity at layer ``k`` (before block averaging), at ``strides[k]``.
    Returns ``(fused_detail (H, W), weights (N, H, W), layer (H, W))``: the
    weights and layer index of the candidate chosen at each pixel, so that
    ``fused_detail == (weights * details).sum(0)``.
    """
    size = tuple(details.shape[-2:])

    def layer_weights(k: int) -> torch.Tensor:  # (N, H, W), from the small per-layer map
        # ratio_weights in place, on block_average's fresh map
        return upsample_weights(normalise_weights_(block_average(activities[k])), strides[k], size)

    # One layer's full-size weights at a time, upsampled again for the chosen ones: the K x N
    # full-size maps, held twice, were most of a tiled run's working set (10 slices, tiles of 1024).
    cand = torch.empty((len(activities), *size), dtype=details.dtype, device=details.device)
    for k in range(len(activities)):
        w = layer_weights(k)
        cand[k] = w.mul_(details).sum(0)  # in place: w is a fresh map
    layer = select_detail(cand, rule=rule)
    fused = cand.gather(0, layer.unsqueeze(0))[0]
    del cand
    weights = layer_weights(0)
    for k in range(1, len(activities)):
        torch.where(layer == k, layer_weights(k), weights, out=weights)
    return fused, weights, layer


#: Relative size below which the Tikhonov base layer's response to a pixel is ignored at the
#: edge of a tile's context (float32 rounding is ~6e-8).
_TIKHONOV_TAIL = 1e-8


def tikhonov_reach(lam: float) -> int:
    """Pixels beyond which the Tikhonov base layer's response to one pixel is below 1e-8 of its size.

    The operator ``(1 + lam (G_x^T G_x + G_y^T G_y))^-1`` decays as ``exp(-kappa r)`` with
    ``cosh(kappa) = 1 + 1 / (2 lam)`` (lam = 5: kappa = 0.44, about 2.3 pixels per e-fold).
    """
    if lam <= 0:
        return 0
    kappa = math.acosh(1.0 + 1.0 / (2.0 * lam))
    return int(math.ceil(-math.log(_TIKHONOV_TAIL) / kappa))


def _split_sources(lum: torch.Tensor, *, lam: float, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sum of the base layers (H, W), detail layers (N, H, W))`` of ``(N, H, W)`` luminances, one
    source at a time: the split's FFTs work in float64 on padded complex spectra, about ten
    float32 values per pixel of whatever they are given, so not all N planes at once."""
    detail = torch.empty_like(lum)
    base_sum = torch.zeros_like(lum[0])
    for i in range(lum.shape[0]):
        base, detail[i] = tikhonov_split(lum[i], lam=lam, pad=pad)
        base_sum += base
    return base_sum, detail


def _halo(p: dict) -> int | None:
    """Tikhonov reach + the deepest feature layer's receptive radius + its 3x3 block average and
    block replication at stride 8 (two blocks of 8). None (global) when the FFT's wrap-around
    through a small ``pad`` couples opposite image borders by more than 1e-5."""
    lam, pad = float(p["lam"]), int(p["pad"])
    if lam > 0 and math.exp(-2 * pad * math.acosh(1.0 + 1.0 / (2.0 * lam))) > 1e-5:
        return None
    ids = LAYER_SETS[p["layers"]]
    return tikhonov_reach(lam) + max(receptive_radius(i) for i in ids) + 2 * max(layer_stride(i) for i in ids)


# --------------------------------------------------------------------------- #
# The network and its weights
# --------------------------------------------------------------------------- #

_TEST_NETWORK: VGG19 | None = None


@contextmanager
def untrained_network_for_tests(net: VGG19) -> Iterator[VGG19]:
    """TEST ONLY: run ``li2018_vgg19`` with ``net`` instead of the ImageNet weights.

    Lets the test-suite check the method's mechanics end to end with a small
    randomly initialised VGG-shaped network (``VGG19(widths=...)``) on
    machines without the real weights. The results are meaningless as
    fusion; user-facing code must never call this.
    """
    global _TEST_NETWORK
    if not isinstance(net, VGG19):
        raise TypeError("expected a napari_fusion.nets.vgg19.VGG19 instance")
    if net.depth < _NET_DEPTH:
        raise ValueError(f"the network must have at least {_NET_DEPTH} feature modules")
    previous = _TEST_NETWORK
    _TEST_NETWORK = net
    try:
        yield net
    finally:
        _TEST_NETWORK = previous


def _build(w: LoadedWeights) -> VGG19:
    net = VGG19(depth=_NET_DEPTH)
    try:
        load_torchvision_state_dict(net, w.state)
    except ValueError as exc:
        raise WeightsUnavailableError(f"{w.path}: {exc}") from None
    return net.to(w.device, memory_format=torch.channels_last).eval().requires_grad_(False)


def load_network(weights: str = "", *, device: torch.device | str = "cpu") -> VGG19:
    """The ImageNet VGG19 truncated after relu4_1, on ``device``, in eval mode.

    ``weights`` names a file; empty means locate it (environment variable
    ``NAPARI_FUSION_VGG19_WEIGHTS``, then the torch hub cache). Raises
    :class:`napari_fusion.WeightsUnavailableError` when no verified file
    exists. Loaded networks are kept by :mod:`napari_fusion.weights`.
    """
    return load_catalogued(VGG19_IMAGENET, weights or None, device=device, build=_build)


def _network(weights: str, device: torch.device) -> VGG19:
    if _TEST_NETWORK is not None:
        return _TEST_NETWORK.to(device, memory_format=torch.channels_last).eval()
    return load_network(weights, device=device)


#: tile side of the VGG19 pass (a multiple of the deepest stride used, 8)
NET_TILE = 256


def layer_activities(
    net: VGG19,
    details: torch.Tensor,
    layer_ids: tuple[int, ...],
    *,
    ctx: FusionContext | None = None,
    tile: int | None = None,
) -> list[torch.Tensor]:
    """Per-layer ``(N, h_k, w_k)`` l1 activities of ``(N, H, W)`` detail layers.

    The network runs in tiles aligned to the deepest stride, each with the
    deepest layer's receptive radius of real context (the network's zero
    padding then applies only at the image border, as in a whole-image pass),
    so the result does not depend on ``tile``; progress after every tile.
    """
    n = details.shape[0]
    ids = tuple(layer_ids)
    strides = [layer_stride(i) for i in ids]
    halo = max(receptive_radius(i) for i in ids)

    def activities(block: torch.Tensor) -> list[torch.Tensor]:
        feats = net.extract(block.to(torch.float32).expand(1, 3, *block.shape[-2:]), ids)
        return [l1_activity(feats[k][0]) for k in ids]

    per_source = []
    for i in range(n):

        def report(done: int, total: int, i: int = i) -> None:
            if ctx is not None:
                ctx.report(i + done / total, n + 1, f"VGG19 features of source {i + 1}/{n}")

        per_source.append(
            map_tiles(activities, details[i], halo=halo, tile=tile or NET_TILE, strides=strides, report=report)
        )
    return [torch.stack([s[j] for s in per_source]) for j in range(len(ids))]


# --------------------------------------------------------------------------- #
# The registered method
# --------------------------------------------------------------------------- #


@register_method(
    name="li2018_vgg19",
    title="VGG19 deep-feature fusion (Li, Wu & Kittler 2018)",
    tasks=("infrared-visible", "medical"),
    mode="nway",
    learned=True,
    outputs=("fused", "labels", "weights"),
    params=(
        Param(
            "layers",
            "conv",
            str,
            "Feature layers: 'conv' = conv1_1..conv4_1 before ReLU (the authors' released code, "
            "which made the published images); 'relu' = relu1_1..relu4_1 (the paper's text).",
            choices=("conv", "relu"),
        ),
        Param(
            "selection",
            "max",
            str,
            "How the four per-layer detail candidates are combined: 'max' = largest signed "
            "value (paper); 'absmax' = largest magnitude.",
            choices=("max", "absmax"),
        ),
        Param(
            "lam", 5.0, float, "Tikhonov smoothing strength of the base/detail split (paper: 5).", low=0.0, high=1000.0
        ),
        Param("pad", 16, int, "Symmetric padding (pixels) before the FFT solve (paper code: 16).", low=0, high=512),
        Param(
            "chroma_source",
            -1,
            int,
            "Colour inputs: index of the visible source whose chroma is kept; -1 = the most colourful.",
            low=-1,
            high=65535,
        ),
        Param(
            "weights",
            "",
            str,
            "Path to torchvision's vgg19-dcbb9e9d.pth; empty = $NAPARI_FUSION_VGG19_WEIGHTS, then the "
            "torch hub cache (get it with `napari-fusion weights fetch vgg19`).",
        ),
    ),
    citation=(
        "H. Li, X.-J. Wu, J. Kittler, 'Infrared and Visible Image Fusion using a Deep Learning "
        "Framework', ICPR 2018, pp. 2705-2710."
    ),
    description=(
        "Base/detail fusion: averaged Tikhonov base layers plus details weighted by multi-layer "
        "ImageNet VGG19 activity. Needs torchvision's VGG19 weights "
        "(`napari-fusion weights fetch vgg19`)."
    ),
    intensity="stack",
    halo=_halo,
    colour="luminance",
    collect_halo=lambda p: 0 if p["chroma_source"] < 0 else None,  # the visible source of colour inputs
)
def fuse_li2018_vgg19(
    stack: torch.Tensor,
    *,
    ctx: FusionContext,
    layers: str,
    selection: str,
    lam: float,
    pad: int,
    chroma_source: int,
    weights: str,
) -> MethodOutput:
    n, c, h, w = stack.shape
    if chroma_source >= n:
        raise FusionInputError(
            f"chroma_source is {chroma_source} but there are only {n} sources (0..{n - 1}); use -1 for automatic"
        )
    net = _network(weights, stack.device)  # fails early, before any work, if there are no weights
    if c == 3:
        ycc = rgb_to_ycbcr(stack, channel_dim=1)
        lum = ycc[:, 0]
        v = chroma_source
        if v < 0:  # a whole-image statistic (summed over the tiles of a tiled run)
            v = ctx.whole_image_stat("chroma", ycc, chroma_sums, most_colourful)
    else:
        lum = stack[:, 0]
    base_sum, detail = _split_sources(lum, lam=lam, pad=pad)
    layer_ids = LAYER_SETS[layers]
    acts = layer_activities(net, detail, layer_ids, ctx=ctx)
    fused_detail, w_detail, layer = fuse_details(detail, acts, [layer_stride(i) for i in layer_ids], rule=selection)
    fused_lum = base_sum.div_(n) + fused_detail  # the sources' mean base + the fused detail
    if c == 3:
        fused = ycbcr_to_rgb(torch.cat([fused_lum.unsqueeze(0), ycc[v, 1:]]), channel_dim=0)
    else:
        fused = fused_lum.unsqueeze(0)
    labels = w_detail.argmax(0)
    ctx.report(n + 1, n + 1, "fused")
    return MethodOutput(
        fused=fused,
        labels=labels,
        weights=w_detail,
        extras={"detail": fused_detail, "layer": layer.to(torch.float32)},
    )
