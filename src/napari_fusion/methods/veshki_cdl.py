"""Multi-focus fusion by coupled dictionary learning and joint sparse
representation (Veshki, Ouzir & Vorobyov).

F. G. Veshki, N. Ouzir, S. A. Vorobyov, "Image fusion using joint sparse
representations and coupled dictionary learning", ICASSP 2020, pp.
8344-8348. Authors' code: github.com/FarshadGVeshki/CDL-multifocus-fusion
(MATLAB + SPAMS), followed here where the paper leaves details open.

Two dictionaries are learned jointly (:mod:`napari_fusion.training.veshki_cdl`):
``Df`` for focused patches and ``Db`` for the same patches blurred, sharing
one sparse code. For fusion, every pair of co-located, mean-removed patches
``x1, x2`` (grey = mean of the channels; a grid at ``stride``) is coded by
OMP over ``D = [Df; Db]`` (columns normalised) twice: as ``[x1; x2]`` and as
``[x2; x1]``. If source 1 is the sharp one there, the first order fits the
coupled model and its reconstruction error ``e1`` is the smaller one: the
patch votes for source 1 when ``e1 < e2`` (0.5 on ties: errors within a relative 1e-5). Patch votes are
averaged over the pixels each patch covers, giving a map ``m`` in [0, 1].

Boundary handling (``boundary``):

* ``"paper"``: pixels with ``m`` exactly 0 or 1 keep their class; mixed
  pixels (``0 < m < 1``, next to focus boundaries) are relabelled by the
  per-pixel errors ``e'1 = (x1 - Df a)^2 + (x2 - Db a)^2`` (``a`` the code of
  ``[x1; x2]``) against ``e'2 = (x1 - Db b)^2 + (x2 - Df b)^2`` (``b`` the
  code of ``[x2; x1]``), each averaged over the patches covering the pixel.
* ``"released"``: as the authors' code: ``m > 0.5`` then a ``vote_size``
  box-filter majority vote re-thresholded at 0.5. Two deliberate
  departures from a literal ``imfilter(ones(10)/100)``: the vote counts
  only pixels inside the image (zero padding would bias borders towards
  source 2), and an even window is centred by averaging its two half-pixel
  shifted placements (a ``[1/2, 1, ..., 1, 1/2]`` kernel).

The fused image is ``M * im1 + (1 - M) * im2`` with the grey decision ``M``
applied to every channel. Stacks are fused sequentially pairwise (the
registry folds them), as the paper does for its 15-image Pap-smear series.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import FusionInputError, WeightsUnavailableError
from ..ops.filters import separable_filter
from ..ops.sparse import batch_omp, normalise_columns
from ..registry import FusionContext, MethodOutput, Param, register_method
from ..weights import LoadedWeights, how_to_train, load_shipped, shipped_path

CITATION = (
    "F. G. Veshki, N. Ouzir, S. A. Vorobyov, 'Image fusion using joint sparse representations "
    "and coupled dictionary learning', IEEE ICASSP 2020, pp. 8344-8348."
)

PATCH_SIZES = (8, 16)
BOUNDARY_MODES = ("paper", "released")


def weights_name(patch: int) -> str:
    return f"veshki_cdl_{patch}x{patch}"


def default_dictionary_path(patch: int) -> Path:
    return shipped_path(weights_name(patch))


def load_dictionaries(patch: int, path: str | Path | None, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(Df, Db)``, each ``(patch^2, K)``, verified against their manifest and cached."""
    how = how_to_train("veshki_cdl", options=f"--config cpu --patch {patch}", param="dictionary")

    def build(w: LoadedWeights) -> tuple[torch.Tensor, torch.Tensor]:
        try:
            df, db = w.state["Df"].float(), w.state["Db"].float()
        except KeyError:
            raise WeightsUnavailableError(f"{w.path} holds no Df/Db dictionaries. {how}") from None
        n = patch * patch
        if df.shape != db.shape or df.ndim != 2 or df.shape[0] != n:
            raise WeightsUnavailableError(
                f"dictionaries in {w.path} have shapes {tuple(df.shape)}/{tuple(db.shape)}, expected ({n}, K). {how}"
            )
        return df.to(w.device), db.to(w.device)

    return load_shipped(
        weights_name(patch), path=path or None, device=device, build=build, expect={"patch": patch}, how_to_get=how
    )


def coupled_dictionary(df: torch.Tensor, db: torch.Tensor) -> torch.Tensor:
    """``[Df; Db]`` with unit-norm columns, ``(2n, K)``."""
    return normalise_columns(torch.cat([df, db], 0))


def pair_errors(
    x1: torch.Tensor,
    x2: torch.Tensor,
    d: torch.Tensor,
    *,
    max_atoms: int,
    eps: float,
    per_pixel: bool = False,
    gram: torch.Tensor | None = None,
):
    """Reconstruction errors of the two orders of each patch pair.

    ``x1, x2``: ``(B, n)`` mean-removed patches; ``d``: coupled dictionary
    ``(2n, K)``. Returns ``(e1, e2)`` (``(B,)`` squared errors of ``[x1; x2]``
    and ``[x2; x1]``) and, with ``per_pixel``, also ``(p1, p2)`` ``(B, n)``:
    the per-pixel errors ``(x1 - Df a)^2 + (x2 - Db a)^2`` and
    ``(x1 - Db b)^2 + (x2 - Df b)^2``.
    """
    b, n = x1.shape
    s = torch.cat([torch.cat([x1, x2], 1), torch.cat([x2, x1], 1)], 0)
    codes = batch_omp(s, d, max_atoms=max_atoms, eps=eps, gram=gram)
    e1, e2 = codes.residual[:b], codes.residual[b:]
    if not per_pixel:
        return e1, e2
    r = (s - codes.reconstruct(d)) ** 2
    per = r[:, :n] + r[:, n:]
    return e1, e2, per[:b], per[b:]


#: errors closer than this (relative) are a tie: rounding differences of batched
#: matrix products (which depend on the batch composition) must not decide a vote
TIE_TOLERANCE = 1e-5
#: the patch grid is coded in at least this many bands (progress and cancel granularity)
MIN_BANDS = 16


def _grid_pad(h: int, patch: int, stride: int) -> int:
    return patch + int(math.ceil((h - patch) / stride)) * stride - h


def _centred_box_mean(x: torch.Tensor, size: int) -> torch.Tensor:
    """Mean over a ``size x size`` window of the pixels inside the image.

    Odd sizes: the usual centred window; even sizes: the average of the two
    half-pixel shifted placements, i.e. a ``[1/2, 1, ..., 1, 1/2]`` kernel of
    length ``size + 1``, so the vote is not shifted.

    Window sums with zero padding (:func:`~napari_fusion.ops.filters.separable_filter`:
    shifted sums in blocks of rows, where ``conv2d`` would unfold ``size + 1`` copies of the
    image), divided by the same sums of ones. Exact for the 0/1 decision maps it is used on.
    """
    k = torch.ones(size + (1 - size % 2), dtype=x.dtype, device=x.device)
    if size % 2 == 0:
        k[0] = k[-1] = 0.5
    return separable_filter(x, k, border="zeros") / separable_filter(torch.ones_like(x), k, border="zeros")


def cdl_decision(
    g1: torch.Tensor,
    g2: torch.Tensor,
    df: torch.Tensor,
    db: torch.Tensor,
    *,
    stride: int,
    max_atoms: int,
    eps: float,
    boundary: str,
    vote_size: int = 10,
    band_patches: int = 8192,
    report=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decision map ``M`` (1 = source 1 focused) and averaged patch labels ``m``.

    ``g1, g2``: grey ``(H, W)`` images in [0, 1]; ``eps`` the squared-residual
    threshold of one coupled signal. Patches are processed in bands of at most
    ``band_patches`` grid positions (bounding memory), and in at least
    ``MIN_BANDS`` bands; ``report(done, total)`` after each band.
    """
    n, _ = df.shape
    patch = int(round(math.sqrt(n)))
    h, w = g1.shape
    ph, pw = _grid_pad(h, patch, stride), _grid_pad(w, patch, stride)
    pair = torch.stack([g1, g2])[None]
    if ph or pw:
        mode = "reflect" if (ph < h and pw < w) else "replicate"
        pair = F.pad(pair, (0, pw, 0, ph), mode=mode)
    pair = pair[0]
    hp, wp = h + ph, w + pw
    ny, nx = (hp - patch) // stride + 1, (wp - patch) // stride + 1
    d = coupled_dictionary(df, db)
    gram = d.t() @ d
    per_pixel = boundary == "paper"
    acc = torch.zeros((4 if per_pixel else 2, hp, wp), dtype=g1.dtype, device=g1.device)
    rows = max(1, min(band_patches // nx, math.ceil(ny / MIN_BANDS)))  # progress in >= MIN_BANDS steps
    for r0 in range(0, ny, rows):
        r1 = min(ny, r0 + rows)
        y0, y1 = r0 * stride, (r1 - 1) * stride + patch
        band = pair[:, y0:y1]
        cols = F.unfold(band[:, None], patch, stride=stride)  # (2, n, L)
        x = cols.transpose(1, 2)
        x = x - x.mean(2, keepdim=True)
        out = pair_errors(x[0], x[1], d, max_atoms=max_atoms, eps=eps, per_pixel=per_pixel, gram=gram)
        e1, e2 = out[0], out[1]
        tie = (e1 - e2).abs() <= TIE_TOLERANCE * (e1 + e2) + 1e-12
        lab = torch.where(tie, 0.5, (e1 < e2).to(g1.dtype)).to(g1.dtype)
        nl = lab.numel()
        parts = [lab.expand(n, nl), torch.ones((n, nl), dtype=g1.dtype, device=g1.device)]
        if per_pixel:
            parts += [out[2].t(), out[3].t()]
        stacked = torch.stack(parts)  # (P, n, L)
        folded = F.fold(stacked, (y1 - y0, wp), patch, stride=stride)[:, 0]
        acc[:, y0:y1] += folded
        if report is not None:
            report(r1, ny)
    cnt = acc[1].clamp_min(1)
    m = (acc[0] / cnt)[:h, :w]
    if boundary == "paper":
        p1, p2 = (acc[2] / cnt)[:h, :w], (acc[3] / cnt)[:h, :w]
        mixed = (m > 0) & (m < 1)
        by_pixel = torch.where(p1 == p2, (m >= 0.5).to(m.dtype), (p1 < p2).to(m.dtype))
        dec = torch.where(mixed, by_pixel, (m >= 0.5).to(m.dtype))
    else:
        dec = (m > 0.5).to(m.dtype)
        if vote_size > 1:
            dec = (_centred_box_mean(dec, vote_size) > 0.5).to(m.dtype)
    return dec, m


def _halo(params) -> int:
    return 2 * int(params["patch"]) + int(params["vote_size"]) + int(params["stride"])


@register_method(
    name="veshki_cdl",
    title="Coupled dictionaries + joint sparse coding (Veshki et al.)",
    tasks=("multi-focus",),
    mode="pairwise",
    learned=True,
    outputs=("fused", "labels", "weights"),
    params=(
        Param("patch", 8, int, "Patch size: 8 (released code's default) or 16 (paper).", low=8, high=16, step=8),
        Param("stride", 2, int, "Patch grid step in pixels (released code: 2).", low=1, high=16),
        Param("max_atoms", 3, int, "OMP atoms per coupled patch (released code: 3).", low=1, high=32),
        Param(
            "eps",
            1e-4,
            float,
            "OMP stops when the squared residual is <= eps * patch^2 (released: 1e-4).",
            low=0.0,
            high=1.0,
        ),
        Param(
            "boundary",
            "released",
            str,
            "Mixed pixels: 'paper' (per-pixel errors) or 'released' (box vote).",
            choices=BOUNDARY_MODES,
        ),
        Param("vote_size", 10, int, "Box-vote window for boundary='released' (0/1: off).", low=0, high=101),
        Param(
            "dictionary", "", str, "Path to other trained dictionaries (.pt with its .json manifest); empty: shipped."
        ),
    ),
    citation=CITATION,
    description=(
        "Focused/blurred coupled dictionaries: each patch pair is sparse-coded in both orders, the "
        "order with the smaller reconstruction error tells which source is sharp."
    ),
    halo=_halo,
)
def fuse_veshki_cdl(
    stack: torch.Tensor,
    *,
    ctx: FusionContext,
    patch: int,
    stride: int,
    max_atoms: int,
    eps: float,
    boundary: str,
    vote_size: int,
    dictionary: str,
) -> MethodOutput:
    if patch not in PATCH_SIZES:
        raise FusionInputError(f"veshki_cdl: patch must be 8 or 16, got {patch}")
    if stride > patch:
        raise FusionInputError(f"veshki_cdl: stride ({stride}) must not exceed the patch size ({patch})")
    if stack.shape[0] != 2:
        raise FusionInputError("veshki_cdl fuses two images at a time")
    h, w = stack.shape[-2:]
    if h < patch or w < patch:
        raise FusionInputError(f"veshki_cdl needs images of at least {patch}x{patch} pixels, got {h}x{w}")
    df, db = load_dictionaries(patch, dictionary or None, ctx.device)
    grey = stack.float().mean(1)  # (2, H, W): the released code's grey image
    dec, m = cdl_decision(
        grey[0],
        grey[1],
        df,
        db,
        stride=stride,
        max_atoms=max_atoms,
        eps=eps * patch * patch,
        boundary=boundary,
        vote_size=vote_size,
        report=lambda done, total: ctx.report(done, total + 1, "sparse coding"),
    )
    fused = dec * stack[0] + (1 - dec) * stack[1]
    ctx.report(1, 1, "fused")
    return MethodOutput(
        fused=fused,
        labels=(1 - dec).long(),
        weights=torch.stack([dec, 1 - dec]),
        extras={"patch_votes": m},
    )
