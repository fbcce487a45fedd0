"""The slice-streaming laplacian_pyramid, gff and mertens against frozen copies of
their former whole-stack implementations.

The ``_reference_*`` functions below are the methods' bodies as they were
before they streamed over slices (each held the whole stack at every pyramid
level / every guided-filter intermediate). The streaming versions must give
the same labels exactly, the same ``weights`` exactly (gff, mertens), and the
same fused image up to float32 rounding (sums taken in another order).
"""

from __future__ import annotations

import pytest
import torch

from napari_fusion.methods.gff import fuse_gff, gff_saliency
from napari_fusion.methods.laplacian_pyramid import fuse_laplacian_pyramid
from napari_fusion.methods.mertens import fuse_mertens, mertens_weights
from napari_fusion.ops.blend import luminance_stack, normalise_weights
from napari_fusion.ops.filters import box_filter
from napari_fusion.ops.guided import guided_filter
from napari_fusion.ops.pyramids import (
    gaussian_pyramid,
    laplacian_pyramid,
    pyramid_levels,
    reconstruct_laplacian_pyramid,
)
from napari_fusion.ops.regions import mode_filter
from napari_fusion.registry import FusionContext, get_method

# --------------------------------------------------------------------------- frozen references


def _reference_laplacian_pyramid(stack, *, levels, window):
    n, c, h, w = stack.shape
    nlev = levels or pyramid_levels(h, w)
    grey = luminance_stack(stack)
    pyr = laplacian_pyramid(stack, nlev)
    gpyr = laplacian_pyramid(grey, nlev)
    fused_pyr = []
    labels = None
    for level in range(nlev - 1):
        energy = box_filter(gpyr[level] ** 2, window)
        choice = energy.argmax(0)
        if level == 0:
            labels = choice
        lh, lw = choice.shape
        idx = choice.view(1, 1, lh, lw).expand(1, c, lh, lw)
        fused_pyr.append(pyr[level].gather(0, idx)[0])
    fused_pyr.append(pyr[-1].mean(0))
    fused = reconstruct_laplacian_pyramid(fused_pyr)
    if labels is None:
        labels = box_filter(grey**2, window).argmax(0)
    return fused, mode_filter(labels, 2), None


def _reference_gff(stack, *, base_radius, saliency_sigma, saliency_radius, r1, eps1, r2, eps2):
    n = stack.shape[0]
    grey = luminance_stack(stack)
    saliency = gff_saliency(grey, sigma=saliency_sigma, radius=saliency_radius)
    labels = saliency.argmax(0)
    p = torch.nn.functional.one_hot(labels, n).movedim(-1, 0).to(stack.dtype)
    w_base = normalise_weights(guided_filter(grey, p, r1, eps1))
    w_detail = normalise_weights(guided_filter(grey, p, r2, eps2))
    base = box_filter(stack, base_radius)
    detail = stack - base
    fused = (base * w_base.unsqueeze(1)).sum(0) + (detail * w_detail.unsqueeze(1)).sum(0)
    return fused, labels, w_base


def _reference_mertens(stack, *, contrast, saturation, exposedness, sigma, levels):
    n, c, h, w = stack.shape
    weights = normalise_weights(
        mertens_weights(stack, contrast=contrast, saturation=saturation, exposedness=exposedness, sigma=sigma)
    )
    nlev = levels or pyramid_levels(h, w)
    wpyr = gaussian_pyramid(weights, nlev)
    ipyr = laplacian_pyramid(stack, nlev)
    fused_pyr = [(ip * wp.unsqueeze(1)).sum(0) for ip, wp in zip(ipyr, wpyr)]
    fused = reconstruct_laplacian_pyramid(fused_pyr)
    return fused, weights.argmax(0), weights


CASES = {
    "laplacian_pyramid": (fuse_laplacian_pyramid, _reference_laplacian_pyramid),
    "gff": (fuse_gff, _reference_gff),
    "mertens": (fuse_mertens, _reference_mertens),
}

# --------------------------------------------------------------------------- helpers


def _stack(seed, n, c, h, w):
    """Smooth random content with a per-slice sharp region (a rough focal / exposure stack)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand((1, c, h, w), generator=g)
    base = box_filter(base, 2)
    out = []
    for k in range(n):
        blur = box_filter(base[0], 1 + (k % 3))
        noise = 0.15 * torch.rand((c, h, w), generator=g)
        gain = 0.4 + 0.6 * (k + 1) / n
        out.append((gain * blur + noise * (k % 2)).clamp(0, 1))
    return torch.stack(out)


def _run_both(method, stack, **overrides):
    new, ref = CASES[method]
    params = get_method(method).defaults() | overrides
    out = new(stack.clone(), ctx=FusionContext(torch.device("cpu")), **params)
    fused, labels, weights = ref(stack.clone(), **params)
    return out, fused, labels, weights


def _assert_same(out, fused, labels, weights):
    assert torch.equal(out.labels, labels)
    if weights is None:
        assert out.weights is None
    else:
        assert out.weights is not None and torch.equal(out.weights, weights)
    assert out.fused.shape == fused.shape and out.fused.dtype == fused.dtype
    span = float(fused.max() - fused.min()) or 1.0
    assert float((out.fused - fused).abs().max()) <= 1e-5 * span


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("method", sorted(CASES))
@pytest.mark.parametrize(
    ("seed", "n", "c", "h", "w"),
    [(0, 4, 3, 67, 45), (1, 3, 1, 40, 64), (2, 2, 3, 33, 33), (3, 6, 1, 96, 80)],
)
def test_streaming_equals_whole_stack(method, seed, n, c, h, w):
    _assert_same(*_run_both(method, _stack(seed, n, c, h, w)))


@pytest.mark.parametrize(
    ("method", "overrides"),
    [
        ("laplacian_pyramid", {"levels": 1}),
        ("laplacian_pyramid", {"levels": 3, "window": 0}),
        ("laplacian_pyramid", {"levels": 9, "window": 2}),
        ("gff", {"r1": 5, "base_radius": 3, "eps2": 0.01}),
        ("gff", {"r1": 60, "r2": 30}),  # radii larger than the image: replicated borders
        ("mertens", {"levels": 1}),
        ("mertens", {"levels": 2, "saturation": 0.0, "contrast": 2.0}),
        ("mertens", {"contrast": 0.0, "saturation": 0.0, "exposedness": 0.0}),
    ],
)
def test_streaming_equals_whole_stack_params(method, overrides):
    _assert_same(*_run_both(method, _stack(7, 5, 3, 50, 70), **overrides))


@pytest.mark.parametrize("method", sorted(CASES))
def test_streaming_constant_and_single_slice(method):
    """Ties everywhere (all slices equal) and zero weights take the same fallback; N = 1 works."""
    flat = torch.full((3, 3, 24, 40), 0.25)
    _assert_same(*_run_both(method, flat))
    _assert_same(*_run_both(method, _stack(4, 1, 3, 24, 40)))


@pytest.mark.parametrize("method", sorted(CASES))
def test_streaming_reports_progress_to_the_end(method):
    seen = []
    ctx = FusionContext(torch.device("cpu"), lambda d, t, m: seen.append(d / t))
    fn = CASES[method][0]
    fn(_stack(5, 3, 3, 32, 32), ctx=ctx, **get_method(method).defaults())
    assert seen and seen == sorted(seen) and seen[-1] == pytest.approx(1.0)


def test_gff_zero_weights_fall_back_to_uniform(monkeypatch):
    """Where every refined weight is 0 both formulations use uniform weights (the mean layers)."""
    import napari_fusion.methods.gff as gff_module

    real = guided_filter

    def zero_where_bright(guide, src, radius, eps):
        out = real(guide, src, radius, eps)
        return torch.where(guide > 0.5, torch.zeros_like(out), out)

    monkeypatch.setattr(gff_module, "guided_filter", zero_where_bright)
    monkeypatch.setitem(globals(), "guided_filter", zero_where_bright)
    stack = _stack(8, 4, 3, 40, 56)
    stack[:, :, :20] = 0.8  # every slice bright in the top half: all weights 0 there
    out, fused, labels, weights = _run_both("gff", stack, r1=4, r2=2, base_radius=3)
    assert bool((weights[:, :20] == 0.25).all())
    _assert_same(out, fused, labels, weights)
