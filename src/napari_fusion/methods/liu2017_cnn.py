"""CNN focus-map fusion of Liu, Chen, Peng & Wang 2017, with consistency verification.

Y. Liu, X. Chen, H. Peng, Z. Wang, "Multi-focus image fusion with a deep
convolutional neural network", Information Fusion 36:191-207, 2017.

1. A siamese CNN (:mod:`napari_fusion.nets.liu2017_cnn`) scores every 16x16
   patch (stride 2) of the grey sources: the probability that source A is
   in focus there. Each score is spread over its patch and overlapping
   scores are averaged: the focus map.
2. Consistency verification: the focus map is thresholded at 0.5 (D = 1
   where A wins); connected regions smaller than 1% of the image area are
   absorbed by their surroundings (on D and on its complement); D is
   smoothed by a guided filter (r=8, eps=0.1) guided by the grey initial
   composite ``A*D + B*(1-D)``.
3. The fused image is ``W*A + (1-W)*B`` on the colour sources, W the
   filtered map.

Stacks are folded pairwise (``liu2017_cnn``, as the paper fuses more than two
sources). ``liu2017_cnn_nway`` scores every slice against every other slice
(the mean probability that it is the sharper one), takes the best slice per
pixel and applies the same verification to the label map.

The networks are trained here (``napari-fusion train liu2017_cnn``); the weights
shipped in ``napari_fusion/trained_weights`` are checked against their sha256.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import FusionInputError, WeightsUnavailableError
from ..nets._conv import PRECISIONS, network_dtype
from ..nets.liu2017_cnn import (
    PATCH,
    VARIANTS,
    DenseScorer,
    LiuFocusNet,
    pair_scores,
    spread_scores,
    stack_terms,
)
from ..ops.blend import luminance_stack, normalise_weights, one_hot, select, weighted_sum
from ..ops.guided import guided_filter, guided_filter_of
from ..ops.regions import remove_small_regions
from ..registry import FusionContext, MethodOutput, Param, register_method
from ..weights import LoadedWeights, how_to_train, load_shipped, shipped_path

CITATION = (
    "Y. Liu, X. Chen, H. Peng, Z. Wang, 'Multi-focus image fusion with a deep convolutional "
    "neural network', Information Fusion 36:191-207, 2017."
)


def weights_name(variant: str) -> str:
    """Name of the shipped weights of ``variant`` (``liu2017_<variant>``)."""
    return f"liu2017_{variant}"


def default_weights_path(variant: str) -> Path:
    """Where the shipped weights of ``variant`` live."""
    return shipped_path(weights_name(variant))


def load_liu_net(variant: str, weights: str | Path | None, device: torch.device):
    """(net, prepared :class:`DenseScorer`) on ``device``, verified and cached."""
    how = how_to_train("liu2017_cnn", options=f"--config cpu --variant {variant}")

    def build(w: LoadedWeights):
        net = LiuFocusNet(variant)
        try:
            net.load_state_dict(w.state)
        except RuntimeError as exc:
            raise WeightsUnavailableError(f"weights {w.path} do not fit the {variant} model: {exc}. {how}") from None
        net.eval().requires_grad_(False).to(w.device)
        return net, DenseScorer(net)

    return load_shipped(
        weights_name(variant),
        path=weights or None,
        device=device,
        build=build,
        expect={"variant": variant},
        how_to_get=how,
    )


_BF16_SCORERS: weakref.WeakKeyDictionary[LiuFocusNet, DenseScorer] = weakref.WeakKeyDictionary()


def scorer_for(variant: str, weights: str | Path | None, device: torch.device, precision: str) -> DenseScorer:
    """The prepared scorer of the network (:func:`load_liu_net`) in ``precision``: ``"float32"``, or
    ``"bfloat16"`` (the branch's convolutions in bfloat16, the head and outputs float32; kept, one per
    network, so that a fold's scores of the previous pair can be reused)."""
    net, scorer = load_liu_net(variant, weights, device)
    if network_dtype(precision, device) == torch.float32:
        return scorer
    if net not in _BF16_SCORERS:
        _BF16_SCORERS[net] = DenseScorer(net, dtype=torch.bfloat16)
    return _BF16_SCORERS[net]


def _check_size(stack: torch.Tensor) -> None:
    h, w = stack.shape[-2:]
    if h < PATCH or w < PATCH:
        raise FusionInputError(f"liu2017_cnn needs images of at least {PATCH}x{PATCH} pixels, got {h}x{w}")


#: The last pair scored by ``liu2017_cnn``: (scorer, grey, terms). A pairwise fold
#: scores ``(I0 + I1) + I2``: away from the decision boundaries the blend is bitwise
#: I0 or I1, whose tiles' scores are then reused (see ``stack_terms(known=...)``).
_LAST_PAIR: list[tuple[DenseScorer, torch.Tensor, torch.Tensor]] = []


def clear_score_cache() -> None:
    """Forget the last pair's scores (benchmarks: time the network, not the reuse)."""
    _LAST_PAIR.clear()


def _scores(
    scorer: DenseScorer, grey: torch.Tensor, ctx: FusionContext, steps: int, *, reuse: bool = False
) -> torch.Tensor:
    """(s, t) maps of every grey slice, reporting progress (and honouring cancel) per tile batch.

    The CNN is ``steps - 2`` of the ``steps`` units this method reports.
    """
    share = steps - 2

    def progress(done: int, total: int) -> None:
        ctx.report(share * done / total, steps, f"CNN scores, image tile {done}/{total}")

    known = None
    if reuse and _LAST_PAIR and _LAST_PAIR[0][0] is scorer:
        known = _LAST_PAIR[0][1:]
    terms = stack_terms(scorer, grey, progress=progress, known=known)
    if reuse:
        _LAST_PAIR[:] = [(scorer, grey, terms)]
    return terms


def _exact_where_flat(wa: torch.Tensor, d: torch.Tensor, radius: int) -> torch.Tensor:
    """``wa`` with the decision ``d`` restored exactly wherever ``d`` is constant over the guided
    filter's support (radius ``2 * radius``): there the filter's exact output is ``d``, and
    its float result differs only by rounding. Then the fused image is bitwise one source."""
    k, p = 4 * radius + 1, 2 * radius
    x = d[None, None]
    hi = F.max_pool2d(F.max_pool2d(x, (k, 1), 1, (p, 0)), (1, k), 1, (0, p))
    lo = -F.max_pool2d(F.max_pool2d(-x, (k, 1), 1, (p, 0)), (1, k), 1, (0, p))
    return torch.where((hi == lo)[0, 0], d, wa)


def _min_area(fraction: float, h: int, w: int) -> int:
    return int(math.ceil(fraction * h * w))


def _without_small_regions(fraction: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """Consistency verification's region removal, as a whole-image step (regions smaller than
    ``fraction`` of the *whole* image's area; in a tiled run it runs once on the assembled map)."""

    def finish(full: torch.Tensor) -> torch.Tensor:
        h, w = full.shape[-2:]
        return remove_small_regions(full, _min_area(fraction, h, w))

    return finish


#: Input context one pixel of the focus map needs: a score at stride 2 covers a 16x16 patch and
#: reads 4 more pixels on each side (two 3x3 convolutions before the 2x2 pool, one after it at
#: stride 2); the scores spread over the patches containing a pixel reach 15 further.
CNN_REACH = 4 + PATCH - 1


def _halo(p: dict) -> int:
    """Context of the guided filter (and of the exact-where-flat test), plus the CNN's when the
    decision is not a whole-image step (no region removal)."""
    return 2 * int(p["gf_radius"]) + (0 if p["area_fraction"] > 0 else CNN_REACH)


def _collect_halo(p: dict) -> int | None:
    """With region removal the decision is a whole-image step, computed with the CNN's context."""
    return CNN_REACH if p["area_fraction"] > 0 else None


_PARAMS = (
    Param("variant", "slight", str, "Network: 'slight' (paper's fast model, no fc1) or 'original'.", choices=VARIANTS),
    Param("threshold", 0.5, float, "Focus-map threshold for the initial decision.", low=0.0, high=1.0, step=0.05),
    Param(
        "area_fraction",
        0.01,
        float,
        "Regions smaller than this fraction of the image are removed (0: off).",
        low=0.0,
        high=0.5,
        step=0.005,
    ),
    Param("gf_radius", 8, int, "Guided-filter radius for the final weight map (0: hard decision).", low=0, high=100),
    Param("gf_eps", 0.1, float, "Guided-filter regularisation.", low=1e-6, high=10.0),
    Param("weights", "", str, "Path to other trained weights (.pt with its .json manifest); empty: shipped weights."),
    Param(
        "precision",
        "float32",
        str,
        "Arithmetic of the CNN: 'float32', or 'bfloat16' (scoring ~3x faster where the CPU has AMX or "
        "AVX512-BF16 units, or on a GPU; changes 0.1-2% of the labels; slower on other CPUs).",
        choices=PRECISIONS,
    ),
)


@register_method(
    name="liu2017_cnn",
    title="CNN focus map (Liu et al. 2017)",
    tasks=("multi-focus",),
    mode="pairwise",
    learned=True,
    outputs=("fused", "labels", "weights", "depth"),
    params=_PARAMS,
    citation=CITATION,
    description="A trained CNN decides which source is in focus; consistency verification cleans the map.",
    halo=_halo,
    collect_halo=_collect_halo,
)
def fuse_liu2017(
    stack: torch.Tensor,
    *,
    ctx: FusionContext,
    variant: str,
    threshold: float,
    area_fraction: float,
    gf_radius: int,
    gf_eps: float,
    weights: str,
    precision: str,
) -> MethodOutput:
    _check_size(stack)
    if stack.shape[0] != 2:
        raise FusionInputError("liu2017_cnn fuses two images at a time")
    scorer = scorer_for(variant, weights, ctx.device, precision)
    h, w = stack.shape[-2:]
    grey = luminance_stack(stack).float()
    extras: dict[str, torch.Tensor] = {}

    def decide() -> torch.Tensor:
        ta, tb = _scores(scorer, grey, ctx, 4, reuse=not ctx.tiled)
        extras["focus_map"] = spread_scores(pair_scores(ta, tb, scorer.db), h, w)
        ctx.report(2.5, 4, "focus map")
        return extras["focus_map"] > threshold

    if area_fraction > 0:
        d = ctx.whole_image_map("decision", decide, _without_small_regions(area_fraction)).to(torch.uint8)
    else:
        d = decide().to(torch.uint8)
    df = d.float()
    ctx.report(3, 4, "consistency verification")
    if gf_radius > 0:
        guide = grey[0] * df + grey[1] * (1 - df)
        ctx.report(3.5, 4, "guided filter")
        wa = _exact_where_flat(guided_filter(guide, df, gf_radius, gf_eps), df, gf_radius)
    else:
        wa = df
    fused = wa * stack[0] + (1 - wa) * stack[1]
    ctx.report(4, 4, "fused")
    return MethodOutput(
        fused=fused,
        labels=(1 - d).long(),
        weights=torch.stack([wa, 1 - wa]),
        extras=extras,
    )


@register_method(
    name="liu2017_cnn_nway",
    title="CNN focus map, all slices at once (Liu et al. 2017, N-way)",
    tasks=("multi-focus",),
    mode="nway",
    learned=True,
    outputs=("fused", "labels", "weights", "depth"),
    params=_PARAMS,
    citation=CITATION,
    description=(
        "Liu et al.'s CNN scores every slice against every other; each pixel from the slice most often "
        "judged sharper, then the paper's consistency verification."
    ),
    halo=_halo,
    collect_halo=_collect_halo,
)
def fuse_liu2017_nway(
    stack: torch.Tensor,
    *,
    ctx: FusionContext,
    variant: str,
    threshold: float,
    area_fraction: float,
    gf_radius: int,
    gf_eps: float,
    weights: str,
    precision: str,
) -> MethodOutput:
    """N-way extension; for two slices it gives ``liu2017_cnn``'s decision, with the
    filtered weights clamped to be non-negative and normalised.

    ``threshold`` only applies to two slices (with more, the arg-max decides).
    """
    _check_size(stack)
    n, _, h, w = stack.shape
    scorer = scorer_for(variant, weights, ctx.device, precision)
    grey = luminance_stack(stack).float()
    steps = n + 3
    extras: dict[str, torch.Tensor] = {}

    def decide() -> torch.Tensor:
        labels, extras["focus_map"] = _nway_decision(scorer, grey, ctx, threshold, steps)
        ctx.report(n + 1, steps, "decision")
        return labels.to(torch.uint8 if n <= 256 else torch.int32)

    if area_fraction > 0:
        labels = ctx.whole_image_map("decision", decide, _without_small_regions(area_fraction)).long()
    else:
        labels = decide().long()
    ctx.report(n + 2, steps, "consistency verification")
    if gf_radius > 0:
        guide = select(grey.unsqueeze(1), labels)[0]
        smooth = guided_filter_of(guide, gf_radius, gf_eps)
        fused, wts = _blend_smoothed_choices(stack, labels, smooth, keep_weights=not ctx.tiled)
    else:
        wts = one_hot(labels, n)
        fused = weighted_sum(stack, wts)
    ctx.report(steps, steps, "fused")
    return MethodOutput(fused=fused, labels=labels, weights=wts, extras=extras)


def _blend_smoothed_choices(
    stack: torch.Tensor, labels: torch.Tensor, smooth: Callable[[torch.Tensor], torch.Tensor], *, keep_weights: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(fused, weights): ``sum_k w_k I_k / sum_k w_k`` with ``w_k = max(smooth([labels == k]), 0)``,
    the mean of the sources where every ``w_k`` is 0 (as :func:`normalise_weights`), streamed over
    the slices: a few ``(H, W)`` maps whatever their number. The normalised ``(N, H, W)`` weights
    only with ``keep_weights`` (a tile of a tiled run outputs none)."""
    n = stack.shape[0]
    num = torch.zeros_like(stack[0])
    total = torch.zeros(labels.shape, dtype=stack.dtype, device=stack.device)
    kept = []
    for k in range(n):
        w = smooth((labels == k).to(stack.dtype)).clamp_min_(0)
        num.addcmul_(stack[k], w)
        total += w
        if keep_weights:
            kept.append(w)
    some = total > _NO_WEIGHT
    fused = torch.where(some, num / total.clamp_min(_NO_WEIGHT), stack.mean(0))
    weights = normalise_weights(torch.stack(kept), eps=_NO_WEIGHT) if keep_weights else None
    return fused, weights


#: Total weight below which a pixel takes the mean of the sources (:func:`normalise_weights`' rule).
_NO_WEIGHT = 1e-12


def _nway_decision(
    scorer: DenseScorer, grey: torch.Tensor, ctx: FusionContext, threshold: float, steps: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(labels, focus map): per pixel the slice with the highest mean probability of being the
    sharper one against every other slice (two slices: ``liu2017_cnn``'s thresholded map)."""
    n, h, w = grey.shape
    db = scorer.db
    terms = _scores(scorer, grey, ctx, steps)
    if n == 2:
        focus = spread_scores(pair_scores(terms[0], terms[1], db), h, w)
        return (focus <= threshold).long(), focus
    # mean over opponents of P(slice k is the sharper one), streamed over k
    best = None
    labels = torch.zeros((h, w), dtype=torch.long, device=grey.device)
    for k in range(n):
        acc = torch.zeros_like(terms[0][0])
        for j in range(n):
            if j != k:
                acc += pair_scores(terms[k], terms[j], db)
        fk = spread_scores(acc / (n - 1), h, w)
        if best is None:
            best = fk
        else:
            better = fk > best
            labels = torch.where(better, torch.full_like(labels, k), labels)
            best = torch.where(better, fk, best)
    assert best is not None
    return labels, best
