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

from collections.abc import Callable
from pathlib import Path

import torch

from ..errors import FusionInputError, WeightsUnavailableError
from ..nets.csc_ivfn import CSCIVFN
from ..ops.blend import normalise_weights
from ..ops.colour import chroma_sums, most_colourful, rgb_to_ycbcr, ycbcr_to_rgb
from ..ops.filters import box_filter
from ..ops.guided import guided_filter
from ..ops.tiles import map_tiles, tile_with_unmapped_maps
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
#: relative cost per pixel of coding one source, the saliency rule's weights of one source
#: and decoding (for progress)
_COST_ENCODE, _COST_WEIGHTS, _COST_DECODE = 1.0, 1.0, 0.2
#: every source's codes are kept (computed once) when they take at most this many bytes;
#: beyond, they are computed again when needed, one source at a time (bounded memory)
KEEP_CODES_BYTES = 256 * 2**20
#: ... and always for this many sources or fewer (a pair's codes take less memory than the
#: running sums of the rules, and coding them again would cost 1.7x the time)
KEEP_CODES_SOURCES = 2


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
    """``(..., C, 256)`` level counts of codes ``(..., C, H, W)`` scaled by ``rng`` ``(2, ..., C)``,
    a few channels at a time."""
    out = []
    for start in range(0, codes.shape[-3], CHANNEL_CHUNK):
        part = slice(start, start + CHANNEL_CHUNK)
        out.append(level_counts(_levels(scaled01(codes[..., part, :, :], rng[..., part]))))
    return torch.cat(out, dim=-2)


def saliency_weights(codes: torch.Tensor, *, radius: int = 45, eps: float = 0.01) -> torch.Tensor:
    """``(N, C, H, W)`` codes -> ``(N, C, H, W)`` guided-filtered histogram-saliency weights
    (the paper's base-code rule, all sources at once; the method streams it: :func:`fuse_source_codes`)."""
    rng = code_range(codes)
    tables = saliency_tables(_counts_in_range(codes, rng))
    r = _guided_radius(radius, codes.shape[-2:])
    norm = scaled01(codes, rng)
    p = normalise_weights(_lookup(tables, _levels(norm)) + 1e-12)
    return normalise_weights(guided_filter(norm, p, r, eps) if r > 0 else p)


def _guided_radius(radius: int, shape) -> int:
    return int(min(radius, max(min(shape) - 1, 0)))  # reflect borders need r < side


class SourceCodes:
    """The sparse codes of each source, one source at a time (``(C, H, W)`` base and detail codes).

    ``both(i)`` returns source ``i``'s ``(base, detail)`` codes, ``base(i)`` and ``detail(i)``
    one kind alone. With ``keep`` every source's codes are computed once and kept (small
    images); without, they are computed again whenever asked (``encode_base`` and
    ``encode_detail``, each half the work of ``encode``), so that at most one source's codes
    of one kind are held at a time whatever the number of sources.
    """

    def __init__(self, n: int, encode, encode_base=None, encode_detail=None, *, keep: bool = False):
        self.n = n
        self._encode, self._encode_base, self._encode_detail = encode, encode_base, encode_detail
        streams = not keep and encode_base is not None and encode_detail is not None
        self._kept: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None if streams else {}

    @classmethod
    def given(cls, base: torch.Tensor, detail: torch.Tensor) -> SourceCodes:
        """Codes already computed: ``(N, C, H, W)`` base and detail codes (kept, as they are held)."""
        return cls(base.shape[0], lambda i: (base[i], detail[i]), keep=True)

    @property
    def kept(self) -> bool:
        """Every source's codes are computed once and kept."""
        return self._kept is not None

    def both(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._kept is None:
            return self._encode(i)
        if i not in self._kept:
            self._kept[i] = self._encode(i)
        return self._kept[i]

    def base(self, i: int) -> torch.Tensor:
        if self._kept is None:
            return self._encode_base(i)
        return self.both(i)[0]

    def detail(self, i: int) -> torch.Tensor:
        if self._kept is None:
            return self._encode_detail(i)
        return self.both(i)[1]

    def stacked(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(N, C, H, W)`` base and detail codes of all sources (for experiments; holds them all)."""
        pairs = [self.both(i) for i in range(self.n)]
        return torch.stack([b for b, _ in pairs]), torch.stack([d for _, d in pairs])


def _activity(codes: torch.Tensor) -> torch.Tensor:
    """l1 activity ``box3(sum_c |z|)`` (zero border) of one source's ``(C, H, W)`` codes -> ``(H, W)``."""
    return box_filter(codes.abs().sum(0, keepdim=True), 1, border="zeros")[0]


_EPS = 1e-12


class _MeanRule:
    """Codes averaged over the sources (``strategy="average"``), one source at a time."""

    def __init__(self, n: int):
        self.n, self.sum = n, None

    def add(self, i: int, z: torch.Tensor) -> None:
        self.sum = z.clone() if self.sum is None else self.sum.add_(z)

    def result(self, report=None) -> tuple[torch.Tensor, torch.Tensor]:
        uniform = torch.full((self.n, *self.sum.shape[-2:]), 1.0 / self.n, dtype=self.sum.dtype, device=self.sum.device)
        return self.sum.div_(self.n), uniform


class _L1Rule:
    """The l1 rule, one source at a time: ``sum_n A_n z_n / sum_n A_n`` and the weights ``A_n / sum A``.

    Where every activity is 0, every source's codes are 0 around that pixel (the 3x3 mean
    includes it), so the fused codes there are 0, which is also their average.
    """

    def __init__(self, n: int):
        self.n, self.act, self.fused = n, None, None

    def add(self, i: int, z: torch.Tensor) -> None:
        if self.fused is None:
            self.act = torch.empty((self.n, *z.shape[-2:]), dtype=z.dtype, device=z.device)
            self.fused = torch.zeros_like(z)
        self.act[i] = _activity(z)
        self.fused.addcmul_(self.act[i].expand_as(z), z)

    def result(self, report=None) -> tuple[torch.Tensor, torch.Tensor]:
        total = self.act.sum(0)
        fused = self.fused.div_(total.clamp_min(_EPS)).masked_fill_((total <= _EPS).expand_as(self.fused), 0.0)
        return fused, normalise_weights(self.act, eps=_EPS)


class _SaliencyRule:
    """The paper's saliency rule over the base codes, one source at a time, in two rounds.

    The whole-image statistics (each code map's range and 256-level histogram) come first
    (:func:`_code_stats`). Round 1 (:meth:`add`) sums ``S_n + 1e-12`` over the sources
    (``S_n``: each channel's histogram saliency). Round 2 (:meth:`result`) codes each source
    again, computes its weights ``p_n = (S_n + 1e-12) / sum``, guided-filters them (guide:
    the source's scaled codes), clips them at 0 and sums ``q_n`` and ``q_n z_n``: the fused
    codes ``sum q_n z_n / sum q_n`` are the paper's renormalised weights times the codes
    (the average where every ``q_n`` is 0). Its weights: each source's share of the sum of
    ``q`` over the channels. With kept codes (:attr:`SourceCodes.kept`) there are no rounds:
    every source's channels are weighted together, a few channels at a time.
    """

    def __init__(self, codes: SourceCodes, *, radius: int, eps: float, ctx: FusionContext):
        self.codes, self.radius, self.eps = codes, radius, eps
        self.rng, self.tables = _code_stats(codes, ctx)
        self.total: torch.Tensor | None = None

    def _scores(self, i: int, z: torch.Tensor, part: slice) -> tuple[torch.Tensor, torch.Tensor]:
        """Source ``i``'s channels ``part`` (codes ``z``): scaled to [0, 1], and their saliency + 1e-12."""
        norm = scaled01(z, self.rng[:, i, part])
        return norm, _lookup(self.tables[i, part], _levels(norm)) + _EPS

    def add(self, i: int, z: torch.Tensor) -> None:
        if self.codes.kept:
            return  # all sources at once in the end: no running sum
        if self.total is None:
            self.total = torch.zeros_like(z)
        for start in range(0, z.shape[0], CHANNEL_CHUNK):
            part = slice(start, start + CHANNEL_CHUNK)
            self.total[part] += self._scores(i, z[part], part)[1]

    def result(self, report: Callable[[str], None]) -> tuple[torch.Tensor, torch.Tensor]:
        if self.codes.kept:
            return self._all_sources_at_once(report)
        n, total = self.codes.n, self.total
        r = _guided_radius(self.radius, total.shape[-2:])
        qsum, qz = torch.zeros_like(total), torch.zeros_like(total)
        share = torch.zeros((n, *total.shape[-2:]), dtype=total.dtype, device=total.device)
        for i in range(n):
            z = self.codes.base(i)
            for start in range(0, z.shape[0], CHANNEL_CHUNK):
                part = slice(start, start + CHANNEL_CHUNK)
                norm, s = self._scores(i, z[part], part)
                p = s.div_(total[part])
                q = (guided_filter(norm, p, r, self.eps) if r > 0 else p).clamp_min_(0)
                qsum[part] += q
                qz[part].addcmul_(q, z[part])
                share[i] += q.sum(0)
            del z, norm, s, p, q  # freed before the next source is coded
            report(f"base-code weights of source {i + 1}/{n}")
        self.total = None
        flat = qsum <= _EPS
        fused = qz.div_(qsum.clamp_min(_EPS))
        if bool(flat.any()):  # rare: every clipped weight 0; the codes' average there, in one more round
            fused[flat] = sum(self.codes.base(i)[flat] for i in range(n)) / n
        return fused, normalise_weights(share, eps=_EPS)

    def _all_sources_at_once(self, report: Callable[[str], None]) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`result` from kept codes, a few channels of every source at a time: the same
        values without the ``(C, H, W)`` running sums (less memory when the codes are kept)."""
        n, z0 = self.codes.n, self.codes.base(0)
        r = _guided_radius(self.radius, z0.shape[-2:])
        fused = torch.empty_like(z0)
        share = torch.zeros((n, *z0.shape[-2:]), dtype=z0.dtype, device=z0.device)
        c, reported = z0.shape[0], 0
        for start in range(0, c, CHANNEL_CHUNK):
            part = slice(start, start + CHANNEL_CHUNK)
            z = torch.stack([self.codes.base(i)[part] for i in range(n)])
            norm, s = zip(*(self._scores(i, z[i], part) for i in range(n)), strict=True)
            norm, p = torch.stack(norm), normalise_weights(torch.stack(s), eps=_EPS)
            q = (guided_filter(norm, p, r, self.eps) if r > 0 else p).clamp_min_(0)
            share += q.sum(1)
            fused[part] = (normalise_weights(q, eps=_EPS) * z).sum(0)
            while reported < min(start + CHANNEL_CHUNK, c) * n // c:  # one report per source's share
                reported += 1
                report(f"base-code weights: channels {min(start + CHANNEL_CHUNK, c)}/{c}")
        return fused, normalise_weights(share, eps=_EPS)


def _code_stats(codes: SourceCodes, ctx: FusionContext) -> tuple[torch.Tensor, torch.Tensor]:
    """Whole-image ``(2, N, C)`` ranges and ``(N, C, 256)`` saliency tables of the base codes,
    computed one source at a time (two whole-image statistics in a tiled run)."""

    def ranges(core):
        return torch.stack([code_range(core(codes.base(i))) for i in range(codes.n)], dim=1)

    rng = ctx.whole_image_stat_of("code_range", ranges, lambda r: r, join_ranges)

    def counts(core):
        return torch.stack([_counts_in_range(core(codes.base(i)), rng[:, i]) for i in range(codes.n)])

    hist = ctx.whole_image_stat_of("code_levels", counts, lambda t: t)
    return rng, saliency_tables(hist.to(rng.device))


def fuse_source_codes(
    codes: SourceCodes,
    *,
    strategy: str,
    gf_radius: int = 45,
    gf_eps: float = 0.01,
    ctx: FusionContext | None = None,
    report: Callable[[str], None] | None = None,
    on_detail: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Fuse the sources' codes one source at a time (see :class:`SourceCodes`): whatever the
    number of sources, a few ``(C, H, W)`` sums and one source's codes are held at once.

    Returns ``(fused base (C, H, W), fused detail (C, H, W), detail weights (N, H, W) or
    None for 'average', base weights (N, H, W): each source's share of the base codes'
    weights)``. The saliency rule calls ``report(message)`` after each source's weights.
    ``on_detail(fused detail)`` is called as soon as the detail codes are fused, before the
    base codes' second round; what it returns replaces them in the result (the method
    decodes them there, so that their ``C`` maps are freed early).
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    ctx = ctx or FusionContext(torch.device("cpu"))
    say = report or (lambda message: None)
    n = codes.n
    rules: dict[str, Callable[[], _MeanRule | _L1Rule | _SaliencyRule]] = {
        "average": lambda: _MeanRule(n),
        "l1": lambda: _L1Rule(n),
        "saliency": lambda: _SaliencyRule(codes, radius=gf_radius, eps=gf_eps, ctx=ctx),
    }
    base_rule, detail_rule = rules[strategy](), rules["average" if strategy == "average" else "l1"]()
    if codes.kept:
        for i in range(n):
            zb, zd = codes.both(i)
            base_rule.add(i, zb)
            detail_rule.add(i, zd)
            del zb, zd
    else:  # the detail codes first, alone: their sums are freed before the base codes' sums exist
        for i in range(n):
            detail_rule.add(i, codes.detail(i))
    fd, wd = detail_rule.result()
    if on_detail is not None:
        fd = on_detail(fd)
    del detail_rule  # its sums (the fused detail codes, N activities) are not needed any more
    if not codes.kept:
        for i in range(n):
            base_rule.add(i, codes.base(i))
    fb, wb = base_rule.result(say)
    return fb, fd, None if strategy == "average" else wd, wb


def fuse_codes(
    base: torch.Tensor,
    detail: torch.Tensor,
    *,
    strategy: str,
    gf_radius: int = 45,
    gf_eps: float = 0.01,
    ctx: FusionContext | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """:func:`fuse_source_codes` of ``(N, C, H, W)`` base and detail codes already computed."""
    return fuse_source_codes(
        SourceCodes.given(base, detail), strategy=strategy, gf_radius=gf_radius, gf_eps=gf_eps, ctx=ctx
    )


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


def net_tile(channels: int, radius: int) -> int:
    """Tile side of the encoder and decoder: :data:`NET_TILE`, or, in tiled runs, the largest
    multiple of 8 whose feature maps (``channels`` x ``(tile + 2 radius)^2`` float32) stay below
    the size that gets fresh pages (:func:`~napari_fusion.ops.tiles.tile_with_unmapped_maps`). The
    encoder's 32 convolutions allocate one such map each; mapped, they cost more in page faults
    than in arithmetic: on 10 x 484 x 740 (a 256 x 512 tile's block), one thread, 153 CPU-s (88 of
    them system time) with 256 px tiles, 94 CPU-s with 136 px, 61 CPU-s with 256 px and glibc's
    default heap (2026-12-02, machine shared)."""
    return tile_with_unmapped_maps(NET_TILE, channels=channels, grow=2 * radius)


def _source_codes(net: CSCIVFN, lum: Callable[[int], torch.Tensor], n: int, *, keep: bool, work: _Work) -> SourceCodes:
    """:class:`SourceCodes` of ``n`` sources, ``lum(i)`` giving source ``i``'s ``(1, 1, H, W)``
    luminance when it is coded (clamped to [0, 1] then: no luminance copy of the stack held),
    encoded in cache-sized tiles."""

    def source(i: int) -> torch.Tensor:
        return lum(i).float().clamp(0.0, 1.0)

    tile = net_tile(net.config["channels"], net.encode_radius)

    def encode(i: int) -> tuple[torch.Tensor, torch.Tensor]:
        report = work.task(_COST_ENCODE, f"sparse codes of source {i + 1}/{n}")
        zb, zd = map_tiles(net.encode, source(i), halo=net.encode_radius, tile=tile, strides=(1, 1),
                           report=report)  # fmt: skip
        return zb[0], zd[0]

    def encode_one(kind: str) -> Callable[[int], torch.Tensor]:
        def run(i: int) -> torch.Tensor:
            report = work.task(_COST_ENCODE / 2, f"{kind} codes of source {i + 1}/{n}")
            (z,) = map_tiles(getattr(net, f"encode_{kind}"), source(i), halo=net.encode_radius, tile=tile,
                             report=report)  # fmt: skip
            return z[0]

        return run

    return SourceCodes(n, encode, encode_one("base"), encode_one("detail"), keep=keep)


def _work_total(n: int, strategy: str, *, keep: bool, stats: bool) -> float:
    """Units of work of one run (for progress): encodings, the saliency rule's filters, decoding.

    Without ``keep`` the saliency rule codes each source's base codes again in its second
    round, and twice more for its whole-image statistics (``stats``: untiled; in a tiled
    run's final tiles they are known)."""
    total = n * _COST_ENCODE + _COST_DECODE
    if strategy == "saliency":
        total += n * _COST_WEIGHTS
        if not keep:
            total += n * _COST_ENCODE / 2 * (3 if stats else 1)
    return total


class _Work:
    """Progress of a run in units of work: each task's share is booked when it starts."""

    def __init__(self, ctx: FusionContext, total: float):
        self.ctx, self.total, self.done = ctx, total, 0.0

    def task(self, cost: float, message: str) -> Callable[[float, int], None]:
        start, self.done = self.done, self.done + cost
        total = max(self.total, self.done)
        return lambda done, count: self.ctx.report(start + cost * done / max(count, 1), total, message)


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

    def ycc(i: int) -> torch.Tensor:  # (1, 3, H, W): one source in YCbCr (no YCbCr copy of the stack)
        return rgb_to_ycbcr(stack[i : i + 1], channel_dim=1)

    if c == 3:
        v = chroma_source
        if v < 0:  # a whole-image statistic (summed over the tiles of a tiled run)
            sums = lambda core: torch.cat([chroma_sums(core(ycc(i))) for i in range(n)])  # noqa: E731
            v = ctx.whole_image_stat_of("chroma", sums, most_colourful)
        lum: Callable[[int], torch.Tensor] = lambda i: ycc(i)[:, :1]  # noqa: E731
    else:
        lum = lambda i: stack[i : i + 1, :1]  # noqa: E731
    keep = n <= KEEP_CODES_SOURCES or 2 * n * net.config["channels"] * h * w * 4 <= KEEP_CODES_BYTES

    def decoded(z: torch.Tensor) -> torch.Tensor:  # (C, H, W) fused codes -> (1, H, W), before the sigmoid
        tile = net_tile(net.config["channels"], net.decode_radius)
        (out,) = map_tiles(lambda zz: net.decoder(code_scale * zz), z[None], halo=net.decode_radius, tile=tile,
                           report=work.task(_COST_DECODE / 2, "decoding"))  # fmt: skip
        return out[0]

    work = _Work(ctx, _work_total(n, strategy, keep=keep, stats=not ctx.tiled))
    codes = _source_codes(net, lum, n, keep=keep, work=work)
    fb, fd, wd, wb = fuse_source_codes(
        codes,
        strategy=strategy,
        gf_radius=gf_radius,
        gf_eps=gf_eps,
        ctx=ctx,
        report=lambda message: work.task(_COST_WEIGHTS, message)(1, 1),
        on_detail=decoded,
    )
    del codes
    fused_lum = torch.sigmoid(decoded(fb).add_(fd))  # fd: the decoded detail (1, H, W); as CSCIVFN.decode
    if c == 3:
        fused = ycbcr_to_rgb(torch.cat([fused_lum, ycc(v)[0, 1:]]), channel_dim=0)
    else:
        fused = fused_lum
    ctx.report(work.total, work.total, "decoded")
    weights_out = wd if wd is not None else torch.full((n, h, w), 1.0 / n, device=stack.device)
    return MethodOutput(
        fused=fused,
        labels=None if wd is None else wd.argmax(0),
        weights=weights_out,
        extras={"base_weight": wb},
    )
