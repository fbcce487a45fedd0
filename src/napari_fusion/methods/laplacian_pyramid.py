"""Laplacian-pyramid fusion with a choose-max rule on local band energy.

Each source is decomposed into a Laplacian pyramid; at every band-pass level
the source with the largest local energy (3x3 mean of the squared
coefficient, on luminance) gives the coefficients of all channels; the
coarsest level is averaged; the pyramid is collapsed.

References: P. J. Burt, E. H. Adelson, "The Laplacian pyramid as a compact
image code", IEEE Trans. Communications 31(4), 1983; P. J. Burt, R. J.
Kolczynski, "Enhanced image capture through fusion", ICCV 1993.
The labels are the level-0 decision (finest details), smoothed by a small
majority filter.

The slices are streamed: one slice at a time, its luminance pyramid decides
where it beats the running per-level maximum of band energy, then its
channels' pyramids, one channel and one level at a time, update the running
per-level accumulators (the coefficients of the best slice so far, the sum
of the coarsest levels). Memory stays at the fused pyramid plus a few
single-plane maps whatever the depth of the stack. Labels and chosen
coefficients are exactly those of a whole-stack argmax (ties: first slice);
the averaged coarsest level differs from a whole-stack mean by float32
rounding only.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..ops.blend import luminance_stack
from ..ops.filters import box_filter
from ..ops.pyramids import (
    SPLIT_LEVEL,
    collapse_onto,
    gaussian_level,
    iter_laplacian_levels,
    pyramid_levels,
    split_levels,
)
from ..ops.regions import mode_filter
from ..registry import FusionContext, MethodOutput, Param, register_method


@register_method(
    name="laplacian_pyramid",
    title="Laplacian-pyramid fusion",
    tasks=("multi-focus", "infrared-visible", "medical", "multispectral"),
    mode="nway",
    outputs=("fused", "labels", "depth"),
    params=(
        Param("levels", 0, int, "Pyramid levels (0: as many as fit, coarsest level >= 8 px).", low=0, high=16),
        Param("window", 1, int, "Radius of the window for the local band energy.", low=0, high=8),
    ),
    citation=(
        "P. J. Burt, E. H. Adelson, 'The Laplacian pyramid as a compact image code', "
        "IEEE Trans. Communications 31(4), 1983; Burt & Kolczynski, ICCV 1993."
    ),
    description="Multi-scale choose-max fusion of Laplacian band-pass coefficients.",
    halo=lambda p: 4 * 2 ** (p["levels"] if p["levels"] > 0 else SPLIT_LEVEL + 1),
    collect_halo=lambda p: None if p["levels"] > 0 else 4 * 2 ** (SPLIT_LEVEL + 1),
    streams_slices=True,
)
def fuse_laplacian_pyramid(stack: torch.Tensor, *, ctx: FusionContext, levels: int, window: int) -> MethodOutput:
    n, c, h, w = stack.shape
    nlev = levels or pyramid_levels(*ctx.image_shape((h, w)))
    split = 0 if levels else split_levels(nlev)
    if not split:
        chosen, coarse, labels = _choose(stack, _luminance, nlev, window, ctx)
        coarse /= n
    else:  # the depth follows the whole image: its coarse levels are a whole-image step
        coarse = ctx.whole_image_map(
            "coarse levels",
            lambda: coarse_inputs(stack, split),
            lambda full: _fuse_coarse(full, nlev - split, window),
            scale=2**split,
        )
        chosen, _, labels = _choose(stack, _luminance, split + 1, window, ctx, decided=split)
    fused = torch.empty((c, h, w), dtype=stack.dtype, device=stack.device)
    for ch in range(c):  # one channel at a time: the collapse's buffers are single planes
        fused[ch] = collapse_onto(coarse[ch], [level[ch] for level in chosen])
    del chosen, coarse
    labels = mode_filter(labels, 2)
    ctx.report(1, 1, "collapsed")
    return MethodOutput(fused=fused, labels=labels)


def _luminance(k: int, image: torch.Tensor) -> torch.Tensor:
    """Luminance of slice ``k``, read as the ``(C, H, W)`` ``image``."""
    return luminance_stack(image[None])[0]


def coarse_inputs(stack: torch.Tensor, level: int) -> torch.Tensor:
    """``(N, C + 1, h, w)``: every slice's channels and luminance at Gaussian-pyramid ``level``."""
    levels = []
    for k in range(len(stack)):
        image = stack[k]  # read once: ``stack`` may be a slice view that converts on reading
        levels.append(torch.cat([gaussian_level(image, level), gaussian_level(_luminance(k, image), level)[None]]))
    return torch.stack(levels)


def _fuse_coarse(full: torch.Tensor, nlev: int, window: int) -> torch.Tensor:
    """``(C, h, w)``: the fusion of the levels from the split on (the whole image's
    :func:`coarse_inputs`), collapsed to the split level."""
    stack = full[:, :-1]
    chosen, coarse, _ = _choose(stack, lambda k, image: full[k, -1], nlev, window, None, decided=nlev - 1)
    coarse /= stack.shape[0]
    out = torch.empty((stack.shape[1], *stack.shape[-2:]), dtype=stack.dtype, device=stack.device)
    for ch in range(out.shape[0]):
        out[ch] = collapse_onto(coarse[ch], [level[ch] for level in chosen])
    return out


def _choose(
    stack: torch.Tensor,
    lum: Callable[[int, torch.Tensor], torch.Tensor],
    nlev: int,
    window: int,
    ctx: FusionContext | None,
    *,
    decided: int | None = None,
) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """Stream the slices' ``nlev``-level pyramids: ``(chosen band levels (C, h, w) each, sum of
    the coarsest levels (C, h, w), level-0 decision (H, W))``.

    ``decided`` band levels are chosen by band energy (default ``max(nlev - 1, 1)``: every band,
    or the image itself for a one-level pyramid); with ``decided == nlev - 1`` as the fine part of
    a split pyramid the coarsest level (the split level itself) is only summed.
    """
    n, c, h, w = stack.shape
    decided = max(nlev - 1, 1) if decided is None else decided
    best: list[torch.Tensor] = []  # running maximum of the band energy, per decided level
    chosen: list[torch.Tensor] = []  # (C, h, w) coefficients of the running winner, per band level
    coarse: torch.Tensor | None = None  # running sum of the coarsest levels
    labels = torch.zeros((h, w), dtype=torch.long, device=stack.device)
    for k in range(n):
        image = stack[k]  # read once: ``stack`` may be a slice view that converts on reading
        gbands = list(iter_laplacian_levels(lum(k, image), nlev))
        wins = _choose_max(gbands, best, window, decided)
        if wins:
            labels.masked_fill_(wins[0], k)
        for ch in range(c):
            bands = gbands if c == 1 else iter_laplacian_levels(image[ch], nlev)
            for level, band in enumerate(bands):
                if level == nlev - 1:
                    if coarse is None:
                        coarse = torch.zeros((c, *band.shape), dtype=band.dtype, device=band.device)
                    coarse[ch] += band
                    continue
                if k == 0 and ch == 0:
                    chosen.append(torch.empty((c, *band.shape), dtype=band.dtype, device=band.device))
                chosen[level][ch] = torch.where(wins[level], band, chosen[level][ch])
        del image, gbands, wins
        if ctx is not None:
            ctx.report(k + 1, n + 1, f"pyramid of slice {k + 1}/{n}")
    assert coarse is not None
    return chosen, coarse, labels


def _choose_max(gbands: list[torch.Tensor], best: list[torch.Tensor], window: int, decided: int) -> list[torch.Tensor]:
    """Where this slice's band energy beats the running maximum ``best`` (updated in place), for
    the ``decided`` finest levels.

    ``best`` starts empty: the first slice wins everywhere. Ties keep the
    earlier slice, as ``argmax`` over the whole stack does.
    """
    wins = []
    for level in range(decided):
        energy = box_filter(gbands[level] ** 2, window)
        if len(best) <= level:
            best.append(energy)
            wins.append(torch.ones_like(energy, dtype=torch.bool))
            continue
        better = energy > best[level]
        best[level] = torch.where(better, energy, best[level])
        wins.append(better)
    return wins
