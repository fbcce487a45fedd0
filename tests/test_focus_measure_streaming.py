"""The streaming focus_measure gives exactly the results of the whole-stack implementation it replaced."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from napari_fusion.methods.focus_measure import (
    focus_measure,
    fuse_focus_measure,
    majority_filter,
    modified_laplacian,
)
from napari_fusion.ops.blend import luminance_stack
from napari_fusion.ops.filters import box_filter, conv2d_same, gaussian_filter
from napari_fusion.ops.regions import mode_filter
from napari_fusion.registry import FusionContext
from napari_fusion.synthetic import render_focal_stack


def _reference_sml(image: torch.Tensor, window: int) -> torch.Tensor:
    # The replaced implementation took the modified Laplacian by conv2d; that equals the shifted
    # sums of ``modified_laplacian`` bit for bit on some CPUs only (on AVX-512 ones torch's
    # convolution rounds differently), which test_modified_laplacian_equals_conv bounds. Here the
    # streaming logic is compared, on the same modified Laplacian.
    return box_filter(modified_laplacian(image), window)


def _reference(stack, *, measure, window, smooth, consistency, blend, halo_control):
    """The implementation before streaming: grey copy of the whole stack, conv2d SML."""
    n, c, h, w = stack.shape
    grey = luminance_stack(stack)
    best = torch.full((h, w), -math.inf)
    labels = torch.zeros((h, w), dtype=torch.long)
    for k in range(n):
        g = grey[k]
        if halo_control:
            g = torch.log(g.clamp_min(0) + 0.01)
        fm = _reference_sml(g, window) if measure == "sml" else focus_measure(g, measure, window)
        if smooth > 0:
            fm = gaussian_filter(fm, smooth)
        better = fm > best
        labels = torch.where(better, torch.full_like(labels, k), labels)
        best = torch.where(better, fm, best)
    if consistency > 0:
        labels = mode_filter(labels, consistency)
    if blend > 0:
        fused = torch.zeros((c, h, w))
        total = torch.zeros((h, w))
        for k in torch.unique(labels).tolist():
            wk = gaussian_filter((labels == k).float(), blend)
            fused += wk * stack[k]
            total += wk
        fused = fused / total.clamp_min(1e-12)
    else:
        fused = stack.gather(0, labels.view(1, 1, h, w).expand(1, c, h, w))[0]
    return fused, labels, best


def _stack(kind: str) -> torch.Tensor:
    rng = np.random.default_rng(3)
    if kind == "synthetic_rgb":
        img = (rng.random((70, 90, 3)) * 255).astype(np.uint8)
        s = render_focal_stack(img, n_slices=5, max_sigma=3.0, seed=1).slices
        return torch.from_numpy(s.astype(np.float32) / 255).permute(0, 3, 1, 2).contiguous()
    if kind == "grey_quantised":  # many exact ties between slices
        return torch.from_numpy((rng.integers(0, 4, (4, 1, 33, 47)) / 3).astype(np.float32))
    if kind == "thin":
        return torch.from_numpy(rng.random((3, 3, 1, 40)).astype(np.float32))
    return torch.from_numpy(rng.random((6, 1, 64, 64)).astype(np.float32))


PARAMS = [
    dict(measure="sml", window=4, smooth=2.0, consistency=3, blend=0.0, halo_control=False),
    dict(measure="sml", window=1, smooth=0.0, consistency=0, blend=1.5, halo_control=True),
    dict(measure="variance", window=2, smooth=1.0, consistency=1, blend=0.0, halo_control=False),
    dict(measure="tenengrad", window=3, smooth=0.5, consistency=2, blend=0.0, halo_control=True),
]


@pytest.mark.parametrize("kind", ["synthetic_rgb", "grey_quantised", "thin", "noise"])
@pytest.mark.parametrize("params", PARAMS, ids=[p["measure"] + str(i) for i, p in enumerate(PARAMS)])
def test_streaming_matches_whole_stack(kind, params):
    stack = _stack(kind)
    fused, labels, best = _reference(stack, **params)
    out = fuse_focus_measure(stack, ctx=FusionContext(torch.device("cpu")), **params)
    assert torch.equal(out.labels, labels)
    assert torch.equal(out.fused, fused)
    assert torch.equal(out.extras["focus"], best)


@pytest.mark.parametrize("shape", [(64, 80), (2, 17, 5), (1, 9), (9, 1), (3, 2, 2)])
def test_modified_laplacian_equals_conv(shape):
    x = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    kx = torch.tensor([[0.0, 0.0, 0.0], [-1.0, 2.0, -1.0], [0.0, 0.0, 0.0]])
    ref = conv2d_same(x, kx).abs() + conv2d_same(x, kx.T.contiguous()).abs()
    # equal bit for bit on AVX2 CPUs; torch's convolution on AVX-512 ones rounds differently
    torch.testing.assert_close(modified_laplacian(x), ref, rtol=0, atol=1e-6)
    exact = conv2d_same(x.double(), kx.double()).abs() + conv2d_same(x.double(), kx.T.contiguous().double()).abs()
    torch.testing.assert_close(modified_laplacian(x).double(), exact, rtol=0, atol=1e-6)


@pytest.mark.parametrize("shape", [(64, 80), (1, 9), (9, 1), (5, 7), (40, 3)])
@pytest.mark.parametrize("radius", [1, 3, 7, 8, 20])
def test_majority_filter_equals_mode_filter(shape, radius):
    g = torch.Generator().manual_seed(radius)
    labels = torch.randint(0, 5, shape, generator=g)
    labels[labels == 2] = 7  # values need not be contiguous
    assert torch.equal(majority_filter(labels, radius), mode_filter(labels, radius))
