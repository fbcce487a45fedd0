"""Infrared/visible fusion with CSC-IVFN (Zhao et al., CVPR Workshops 2023).

1. The trained autoencoder (:class:`napari_fusion.nets.csc_ivfn.CSCIVFN`)
   codes every source's luminance: base codes (of the 11x11 box-blur base
   layer) and detail codes (of the detail layer), 64 maps each.
2. The codes of the sources are fused by one of the paper's three rules
   (``strategy``):

   - ``"saliency"`` (default; the paper's best, and the released test script):
     base codes by histogram-saliency weights refined by a guided filter,
     detail codes by l1 activity;
   - ``"l1"``: base and detail codes both by l1 activity;
   - ``"average"``: base and detail codes both averaged.

   *Saliency* (per code channel, per source): the map is min-max scaled to
   [0, 255] and truncated to integer levels ``I``; with ``H`` its normalised
   histogram, ``S(k) = sum_i H(i) |k - i|``; the ratios ``S_n / sum_m S_m``
   are smoothed by a guided filter (radius ``gf_radius``, ``gf_eps``, guide =
   the source's scaled map in [0, 1]) and normalised again.
   *l1 activity*: ``A_n = sum_c |z_n|``, 3x3 mean (zero border), weights
   ``A_n / sum_m A_m`` applied to every channel.
3. The fused base and detail codes, times ``code_scale``, are decoded by the
   shared decoder: ``sigmoid(dec(z_b) + dec(z_d))``.

Choices made here (see ``docs/methods/csc_ivfn.md``):

- ``code_scale`` defaults to 1 (the paper's fusion layer); the released test
  script multiplies both fused code sets by 2 before decoding
  (``code_scale=2``), which raises contrast.
- Guided-filtered saliency weights can go slightly negative; they are
  clipped at 0 before the renormalisation (the released code only adds
  1e-12), and weights that would be 0/0 become uniform.
- N >= 2 sources: every rule is a ratio over the sources, so it extends to
  any N (the paper fuses two).
- Colour: the luminance (BT.601 Y) is fused and the chroma of the visible
  source is kept (``chroma_source=-1``: the source with the most chroma).
  Grey and RGB inputs may be mixed (``mixed_colour``): a grey infrared image
  becomes three equal channels, i.e. no chroma.
- Labels: the source whose *detail* codes get the largest weight at each
  pixel (which source's texture/edges dominate the fused image); weights:
  the per-pixel detail weights. With ``strategy="average"`` there are no
  labels. ``extras["base_weight"]``: the channel-mean base-code weights, an
  (N, H, W) map of where each source's base (brightness) dominates.

Reference: Z. Zhao, J. Zhang, H. Bai, Y. Wang, Y. Cui, L. Deng, K. Sun,
C. Zhang, J. Liu, S. Xu, "Deep Convolutional Sparse Coding Networks for
Interpretable Image Fusion", CVPR Workshops 2023, pp. 2369-2377; code:
github.com/Zhaozixiang1228/IF-CSCFuse (CSC-IVF).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from ..errors import FusionInputError, WeightsUnavailableError
from ..nets.csc_ivfn import CSCIVFN
from ..ops.blend import normalise_weights
from ..ops.colour import chroma_sums, most_colourful, rgb_to_ycbcr, ycbcr_to_rgb
from ..ops.filters import box_filter
from ..ops.guided import guided_filter
from ..ops.tiles import map_tiles
from ..registry import FusionContext, MethodOutput, Param, register_method
from ..weights import LoadedWeights, how_to_train, load_shipped, read_manifest, shipped_path

CITATION = (
    "Z. Zhao, J. Zhang, H. Bai, Y. Wang, Y. Cui, L. Deng, K. Sun, C. Zhang, J. Liu, S. Xu, "
    "'Deep Convolutional Sparse Coding Networks for Interpretable Image Fusion', CVPR Workshops 2023, "
    "pp. 2369-2377."
)
STRATEGIES = ("saliency", "l1", "average")
LEVELS = 256
#: code channels handled at once by the saliency rule (bounds memory on large images,
#: and the time between progress reports)
CHANNEL_CHUNK = 1
#: tile side of the encoder and decoder passes (cache-sized: 2-3x faster than whole
#: 1024^2 images on a CPU; results equal a whole-image pass)
NET_TILE = 256
#: relative cost per pixel of coding one source, fusing the codes and decoding (for progress)
_COST_ENCODE, _COST_FUSE, _COST_DECODE = 1.0, 4.0, 0.2


WEIGHTS_NAME = "csc_ivfn"
#: Receptive radius of the decoder (three 3x3 convolutions; :attr:`CSCIVFN.decode_radius`), and the
#: encoder's when the manifest cannot be read (the shipped configuration's).
_DECODE_RADIUS = 3
_FALLBACK_ENCODE_RADIUS = 21


def default_weights_path() -> Path:
    return shipped_path(WEIGHTS_NAME)


# --------------------------------------------------------------------------- fusion rules


def l1_weights(codes: torch.Tensor) -> torch.Tensor:
    """``(N, C, H, W)`` codes -> ``(N, H, W)`` l1-activity weights (3x3 mean, zero border)."""
    act = box_filter(codes.abs().sum(1), 1, border="zeros")
    return normalise_weights(act)


def saliency_tables(hist: torch.Tensor) -> torch.Tensor:
    """``(..., 256)`` level counts -> ``(..., 256)`` tables ``S(k) = sum_i H(i) |k - i|``, with ``H``
    the counts normalised to sum to one."""
    lead = hist.shape[:-1]
    h = hist.reshape(-1, LEVELS).to(torch.float32)
    h = h / h.sum(-1, keepdim=True).clamp_min(1)
    grid = torch.arange(LEVELS, dtype=torch.float32, device=hist.device)
    return (h @ (grid[:, None] - grid[None, :]).abs()).reshape(*lead, LEVELS)


def level_counts(levels: torch.Tensor) -> torch.Tensor:
    """``(..., 256)`` counts of the integer levels of maps ``(..., H, W)`` in 0..255."""
    flat = levels.flatten(-2)
    flat2 = flat.reshape(-1, flat.shape[-1])
    hist = torch.zeros((flat2.shape[0], LEVELS), dtype=torch.float64, device=levels.device)
    hist.scatter_add_(1, flat2, torch.ones_like(flat2, dtype=torch.float64))
    return hist.reshape(*flat.shape[:-1], LEVELS)


def saliency(levels: torch.Tensor) -> torch.Tensor:
    """Histogram saliency ``S(I) = sum_i H(i) |I - i|`` of integer maps ``(..., H, W)`` in 0..255."""
    return _lookup(saliency_tables(level_counts(levels)), levels)


def _lookup(tables: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """``tables[..., levels]`` per map: ``(..., 256)`` tables, ``(..., H, W)`` levels."""
    flat = levels.flatten(-2)
    return tables.reshape(-1, LEVELS).gather(1, flat.reshape(-1, flat.shape[-1])).reshape(levels.shape)


def minmax01(x: torch.Tensor) -> torch.Tensor:
    """Each ``(H, W)`` map of ``(..., H, W)`` scaled to [0, 1] (constant maps -> 0)."""
    return scaled01(x, code_range(x))


def code_range(x: torch.Tensor) -> torch.Tensor:
    """``(2, ...)``: the minimum and maximum of each ``(H, W)`` map of ``(..., H, W)``."""
    return torch.stack([x.amin(dim=(-2, -1)), x.amax(dim=(-2, -1))])


def join_ranges(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The :func:`code_range` of two parts of the same maps, joined."""
    return torch.stack([torch.minimum(a[0], b[0]), torch.maximum(a[1], b[1])])


def scaled01(x: torch.Tensor, rng: torch.Tensor) -> torch.Tensor:
    """Maps ``(..., H, W)`` scaled to [0, 1] by their ``(2, ...)`` range (constant maps -> 0)."""
    lo, hi = rng[0][..., None, None], rng[1][..., None, None]
    span = hi - lo
    return torch.where(span > 0, (x - lo) / span.clamp_min(1e-30), torch.zeros_like(x))


def _levels(norm: torch.Tensor) -> torch.Tensor:
    return (norm * (LEVELS - 1)).to(torch.long).clamp_(0, LEVELS - 1)


def _counts_in_range(codes: torch.Tensor, rng: torch.Tensor) -> torch.Tensor:
    """``(N, C, 256)`` level counts of codes scaled by ``rng``, a few channels at a time."""
    out = []
    for start in range(0, codes.shape[1], CHANNEL_CHUNK):
        part = slice(start, start + CHANNEL_CHUNK)
        out.append(level_counts(_levels(scaled01(codes[:, part], rng[:, :, part]))))
    return torch.cat(out, dim=1)


def saliency_weights(
    codes: torch.Tensor,
    *,
    radius: int = 45,
    eps: float = 0.01,
    report: Callable[[int, int], None] | None = None,
    ctx: FusionContext | None = None,
) -> torch.Tensor:
    """``(N, C, H, W)`` codes -> ``(N, C, H, W)`` guided-filtered histogram-saliency weights.

    The maps' ranges and level histograms are whole-image statistics (``ctx``;
    computed in collect passes of a tiled run). ``report(done, total)`` is called
    after every chunk of channels.
    """
    out = torch.empty_like(codes)
    for part, weights in _iter_saliency_weights(codes, radius=radius, eps=eps, report=report, ctx=ctx):
        out[:, part] = weights
    return out


def saliency_fuse(
    codes: torch.Tensor,
    *,
    radius: int = 45,
    eps: float = 0.01,
    report: Callable[[int, int], None] | None = None,
    ctx: FusionContext | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sum_n w_n * codes_n (C, H, W), channel-mean weights (N, H, W))`` with the
    :func:`saliency_weights`, a few channels at a time (never all the ``(N, C, H, W)`` weights)."""
    n, c, h, w = codes.shape
    fused = torch.empty((c, h, w), dtype=codes.dtype, device=codes.device)
    total = torch.zeros((n, h, w), dtype=codes.dtype, device=codes.device)
    for part, weights in _iter_saliency_weights(codes, radius=radius, eps=eps, report=report, ctx=ctx):
        fused[part] = (weights * codes[:, part]).sum(0)
        total += weights.sum(1)
    return fused, total / c


def _iter_saliency_weights(codes: torch.Tensor, *, radius, eps, report, ctx) -> Iterator[tuple[slice, torch.Tensor]]:
    """``(channels, (N, chunk, H, W) weights)`` of :func:`saliency_weights`, chunk by chunk."""
    n, c, h, w = codes.shape
    ctx = ctx or FusionContext(codes.device)
    rng = ctx.whole_image_stat("code_range", codes, code_range, lambda r: r, join_ranges)
    counts = ctx.whole_image_stat("code_levels", codes, lambda z: _counts_in_range(z, rng), lambda t: t)
    tables = saliency_tables(counts.to(codes.device))
    r = int(min(radius, max(min(h, w) - 1, 0)))  # reflect borders need r < side
    for start in range(0, c, CHANNEL_CHUNK):
        part = slice(start, start + CHANNEL_CHUNK)
        norm = scaled01(codes[:, part], rng[:, :, part])
        p = normalise_weights(_lookup(tables[:, part], _levels(norm)) + 1e-12)
        if r > 0:
            p = guided_filter(norm, p, r, eps)
        yield part, normalise_weights(p)
        if report is not None:
            report(min(start + CHANNEL_CHUNK, c), c)


def _weighted_sum(weights: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """``sum_n weights[n] * codes[n]`` of ``(N, H, W)`` weights and ``(N, C, H, W)`` codes."""
    out = weights[0] * codes[0]
    for k in range(1, codes.shape[0]):
        out.addcmul_(weights[k].expand_as(codes[k]), codes[k])
    return out


def fuse_codes(
    base: torch.Tensor,
    detail: torch.Tensor,
    *,
    strategy: str,
    gf_radius: int = 45,
    gf_eps: float = 0.01,
    report: Callable[[int, int], None] | None = None,
    ctx: FusionContext | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Fuse ``(N, C, H, W)`` base and detail codes (``report(done, total)`` as work advances).

    Returns ``(fused base (C, H, W), fused detail (C, H, W), detail weights
    (N, H, W) or None for 'average', base weights (N, H, W) averaged over channels)``.
    """
    n = base.shape[0]
    if strategy == "average":
        fb, fd = base.mean(0), detail.mean(0)
        uniform = torch.full((n, *base.shape[-2:]), 1.0 / n, device=base.device)
        return fb, fd, None, uniform
    wd = l1_weights(detail)
    fd = _weighted_sum(wd, detail)
    if strategy == "l1":
        wb = l1_weights(base)
        return _weighted_sum(wb, base), fd, wd, wb
    if strategy == "saliency":
        if report is not None:
            report(0, 1)
        fb, wb = saliency_fuse(base, radius=gf_radius, eps=gf_eps, report=report, ctx=ctx)
        return fb, fd, wd, wb
    raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")


# --------------------------------------------------------------------------- network


def load_network(weights: str | Path | None, device: torch.device) -> CSCIVFN:
    """The trained network (shipped weights, or ``weights``), sha256-verified, eval mode, cached."""
    how = how_to_train("csc_ivfn")

    def build(w: LoadedWeights) -> CSCIVFN:
        cfg = w.manifest.get("net_config") or {}
        try:
            net = CSCIVFN(
                int(cfg.get("channels", 64)),
                int(cfg.get("depth", 8)),
                blur=int(cfg.get("blur", 11)),
                signal=str(cfg.get("signal", "paper")),
            )
            net.load_state_dict(w.state)
        except (RuntimeError, ValueError) as exc:
            raise WeightsUnavailableError(f"weights {w.path} do not fit CSC-IVFN: {exc}. {how}") from None
        return net.to(w.device).eval().requires_grad_(False)

    return load_shipped(
        WEIGHTS_NAME, path=weights or None, device=device, build=build, expect={"model": "csc_ivfn"}, how_to_get=how
    )


def _encode_radius(params: dict) -> int:
    """The encoder's receptive radius from the weights' manifest (box split + two 3x3 convolutions
    per unit), as :attr:`CSCIVFN.encode_radius`."""
    try:
        cfg = read_manifest(params.get("weights") or default_weights_path()).get("net_config") or {}
        return int(cfg.get("blur", 11)) // 2 + 2 * int(cfg.get("depth", 8))
    except (OSError, ValueError, TypeError, AttributeError, WeightsUnavailableError):
        return _FALLBACK_ENCODE_RADIUS  # an unreadable manifest is reported when the method runs


def _halo(params: dict) -> int:
    """Encoder + code fusion (guided filter of the saliency weights, or the l1 rule's 3x3 mean) + decoder."""
    fusing = {"saliency": 2 * int(params["gf_radius"]), "l1": 1}.get(params["strategy"], 0)
    return _encode_radius(params) + fusing + _DECODE_RADIUS


def _collect_halo(params: dict) -> int | None:
    """Whole-image steps: the saliency rule's code ranges and histograms (on the codes), and the
    choice of the visible source (colour inputs, ``chroma_source=-1``)."""
    if params["strategy"] == "saliency" or params["chroma_source"] < 0:
        return _encode_radius(params)
    return None


# --------------------------------------------------------------------------- method


@register_method(
    name="csc_ivfn",
    title="CSC-IVFN sparse-coding network (Zhao et al. 2023)",
    tasks=("infrared-visible",),
    mode="nway",
    learned=True,
    outputs=("fused", "labels", "weights"),
    params=(
        Param(
            "strategy",
            "saliency",
            str,
            "Code fusion: 'saliency' = base codes by guided-filtered histogram saliency, detail codes by l1 "
            "activity (paper's best); 'l1' = both by l1 activity; 'average' = both averaged.",
            choices=STRATEGIES,
        ),
        Param("gf_radius", 45, int, "Guided-filter radius of the saliency weights (paper: 45).", low=0, high=500),
        Param(
            "gf_eps",
            0.01,
            float,
            "Guided-filter regularisation of the saliency weights (paper: 0.01).",
            low=1e-6,
            high=10.0,
        ),
        Param(
            "code_scale",
            1.0,
            float,
            "Factor on the fused codes before decoding: 1 = paper, 2 = released code.",
            low=0.1,
            high=10.0,
            step=0.1,
        ),
        Param(
            "chroma_source",
            -1,
            int,
            "Colour inputs: index of the visible source whose chroma is kept; -1 = the most colourful.",
            low=-1,
            high=65535,
        ),
        Param(
            "weights", "", str, "Path to other trained weights (.pt with its .json manifest); empty: shipped weights."
        ),
    ),
    citation=CITATION,
    description=(
        "Learned convolutional sparse coding of base and detail layers; codes fused by saliency / l1 activity "
        "and decoded. Grey infrared + colour visible allowed (visible chroma kept)."
    ),
    intensity="stack",
    halo=_halo,
    colour="luminance",
    mixed_colour=True,
    collect_halo=_collect_halo,
)
def fuse_csc_ivfn(
    stack: torch.Tensor,
    *,
    ctx: FusionContext,
    strategy: str,
    gf_radius: int,
    gf_eps: float,
    code_scale: float,
    chroma_source: int,
    weights: str,
) -> MethodOutput:
    n, c, h, w = stack.shape
    if chroma_source >= n:
        raise FusionInputError(
            f"chroma_source is {chroma_source} but there are only {n} sources (0..{n - 1}); use -1 for automatic"
        )
    net = load_network(weights, stack.device)  # fails before any work when there are no weights
    if c == 3:
        ycc = rgb_to_ycbcr(stack, channel_dim=1)
        lum = ycc[:, :1]
        v = chroma_source
        if v < 0:  # a whole-image statistic (summed over the tiles of a tiled run)
            v = ctx.whole_image_stat("chroma", ycc, chroma_sums, most_colourful)
    else:
        lum = stack[:, :1]
    lum = lum.float().clamp(0.0, 1.0)
    fusing = _COST_FUSE if strategy == "saliency" else 0.1
    total = n * _COST_ENCODE + fusing + _COST_DECODE

    def step(start: float, weight: float, message: str) -> Callable[[int, int], None]:
        return lambda done, count: ctx.report(start + weight * done / count, total, message)

    codes = net.config["channels"]
    base = torch.empty((n, codes, h, w), dtype=torch.float32, device=stack.device)
    detail = torch.empty_like(base)
    for i in range(n):
        map_tiles(
            net.encode,
            lum[i : i + 1],
            halo=net.encode_radius,
            tile=NET_TILE,
            strides=(1, 1),
            report=step(i * _COST_ENCODE, _COST_ENCODE, f"sparse codes of source {i + 1}/{n}"),
            out=(base[i : i + 1], detail[i : i + 1]),
        )
    fb, fd, wd, wb = fuse_codes(
        base,
        detail,
        strategy=strategy,
        gf_radius=gf_radius,
        gf_eps=gf_eps,
        report=step(n * _COST_ENCODE, fusing, "fusing the codes"),
        ctx=ctx,
    )
    del base, detail
    ctx.report(n * _COST_ENCODE + fusing, total, "codes fused")
    (fused_lum,) = map_tiles(
        lambda zb, zd: net.decode(code_scale * zb, code_scale * zd),
        (fb[None], fd[None]),
        halo=net.decode_radius,
        tile=NET_TILE,
        report=step(n * _COST_ENCODE + fusing, _COST_DECODE, "decoding"),
    )
    fused_lum = fused_lum[0]  # (1, H, W)
    if c == 3:
        fused = ycbcr_to_rgb(torch.cat([fused_lum, ycc[v, 1:]]), channel_dim=0)
    else:
        fused = fused_lum
    ctx.report(total, total, "decoded")
    weights_out = wd if wd is not None else torch.full((n, h, w), 1.0 / n, device=stack.device)
    return MethodOutput(
        fused=fused,
        labels=None if wd is None else wd.argmax(0),
        weights=weights_out,
        extras={"base_weight": wb},
    )
