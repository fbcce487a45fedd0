"""Recomposition from (edited) labels: exactness, blends, lazy input, dtypes, napari convention."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

from napari_fusion import fuse
from napari_fusion.errors import FusionInputError
from napari_fusion.focalstack import labels_from_napari, labels_to_napari, recompose


def test_unedited_labels_reproduce_the_method(rgb_stack):
    r = fuse(rgb_stack.slices, method="focus_measure")
    np.testing.assert_array_equal(recompose(rgb_stack.slices, r.labels), r.fused)
    rb = fuse(rgb_stack.slices, method="focus_measure", blend=2.0)
    out = recompose(rgb_stack.slices, rb.labels, blend="gaussian", sigma=2.0)
    assert np.abs(out.astype(int) - rb.fused.astype(int)).max() <= 1


def test_painted_region_takes_the_painted_slice(rgb_stack):
    r = fuse(rgb_stack.slices, method="focus_measure")
    edited = r.labels.astype(np.int64).copy()
    edited[10:40, 20:70] = 4
    out = recompose(rgb_stack.slices, edited)
    np.testing.assert_array_equal(out[10:40, 20:70], rgb_stack.slices[4][10:40, 20:70])
    keep = np.ones(edited.shape, bool)
    keep[10:40, 20:70] = False
    np.testing.assert_array_equal(out[keep], r.fused[keep])
    assert r.labels.max() < 5  # inputs untouched
    # the pyramid spline blends the seam but keeps the painted content inside
    sp = recompose(rgb_stack.slices, edited, blend="pyramid")
    assert sp.dtype == np.uint8
    inner = (slice(18, 32), slice(30, 60))
    assert np.abs(sp[inner].astype(int) - rgb_stack.slices[4][inner]).mean() < 3


def test_lazy_dask_stack_and_axes(rgb_stack):
    r = fuse(rgb_stack.slices, method="focus_measure")
    lazy = da.from_array(rgb_stack.slices, chunks=(1, 48, 64, 3))
    np.testing.assert_array_equal(recompose(lazy, r.labels), r.fused)
    moved = np.moveaxis(rgb_stack.slices, -1, 1)  # (Z, C, Y, X)
    np.testing.assert_array_equal(recompose(moved, r.labels, channel_axis=1), r.fused)


@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
def test_dtypes_kept(rgb_stack, dtype):
    grey = rgb_stack.slices.mean(-1)
    stack = (grey * 200).astype(np.uint16) if dtype == np.uint16 else (grey / 255.0).astype(np.float32)
    r = fuse(stack, method="focus_measure")
    for blend in ("none", "gaussian", "pyramid"):
        out = recompose(stack, r.labels, blend=blend)
        assert out.dtype == dtype and out.shape == stack.shape[1:]
        assert out.min() >= stack.min() and out.max() <= stack.max()
    # fuse() maps float data through its working scale (last-bit differences); recompose copies
    np.testing.assert_allclose(recompose(stack, r.labels), r.fused, rtol=1e-6)
    exact = np.take_along_axis(stack, r.labels[None].astype(np.intp), 0)[0]
    np.testing.assert_array_equal(recompose(stack, r.labels), exact)


def test_napari_label_convention():
    lab = np.array([[0, 1], [2, 299]])
    nap = labels_to_napari(lab)
    assert nap.dtype == np.uint16 and nap.min() == 1
    np.testing.assert_array_equal(labels_from_napari(nap), lab)
    erased = nap.copy()
    erased[0, 0] = 0
    with pytest.raises(FusionInputError, match="unpainted"):
        labels_from_napari(erased)
    prev = np.array([[7, 7], [7, 7]])
    np.testing.assert_array_equal(labels_from_napari(erased, previous=prev), [[7, 1], [2, 299]])


def test_bad_labels_are_clear_errors(rgb_stack):
    lab = np.zeros(rgb_stack.slices.shape[1:3], np.int64)
    with pytest.raises(FusionInputError, match="0-based"):
        recompose(rgb_stack.slices, lab + 5)
    with pytest.raises(FusionInputError, match="shape"):
        recompose(rgb_stack.slices, lab[:-1])
    with pytest.raises(FusionInputError, match="blend"):
        recompose(rgb_stack.slices, lab, blend="median")


@pytest.mark.parametrize("levels", [3, 4])
def test_pyramid_blend_per_slice_boxes_equal_the_whole_image_spline(levels):
    """Each slice's pyramids are computed only over its pixels' box grown by the blend's reach;
    the result equals the Burt-Adelson spline computed over the whole image (RGB, banded labels
    as real decisions are, plus a small island far from its slice's other pixels)."""
    rng = np.random.default_rng(3)
    n, h, w = 6, 203, 317  # odd sizes: the level grids do not divide evenly
    slices_ = rng.random((n, h, w, 3)).astype(np.float32)
    yy, xx = np.mgrid[:h, :w]
    labels = np.clip((n * (yy + 0.4 * xx) / (h + 0.4 * w)).astype(np.int64), 0, n - 1)
    labels[150:160, 20:30] = 0  # an island of slice 0 far from its band
    got = recompose(list(slices_), labels, blend="pyramid", levels=levels)
    want = np.clip(_whole_image_spline(slices_, labels, levels), slices_.min(), slices_.max())
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=2e-5)


def _whole_image_spline(slices_, labels, levels):
    """Burt-Adelson spline of the whole image, slice by slice, straight from the definition."""
    import torch

    from napari_fusion.ops.pyramids import gaussian_pyramid, laplacian_pyramid, reconstruct_laplacian_pyramid

    with torch.inference_mode():
        acc = None
        for k in range(len(slices_)):
            gm = gaussian_pyramid(torch.from_numpy((labels == k).astype(np.float32)), levels)
            lp = laplacian_pyramid(torch.from_numpy(np.moveaxis(slices_[k], -1, 0).copy()), levels)
            terms = [g * b for g, b in zip(gm, lp)]
            acc = terms if acc is None else [a + t for a, t in zip(acc, terms)]
        return np.moveaxis(reconstruct_laplacian_pyramid(acc).numpy(), 0, -1)


def test_kept_pyramids_blend_a_box_as_the_whole_image_spline():
    """A box blended from kept whole-slice pyramids equals the whole-image spline away from the
    box's border (the masks' pyramids are the box's own), and exactly so over the whole image."""
    from napari_fusion.focalstack.recompose import SlicePyramids, pyramid_blend_box, retouch_pyramids

    rng = np.random.default_rng(5)
    n, h, w, levels = 5, 203, 317, 4
    slices_ = rng.random((n, h, w, 3)).astype(np.float32)
    yy, xx = np.mgrid[:h, :w]
    labels = np.clip((n * (yy + 0.4 * xx) / (h + 0.4 * w)).astype(np.int64), 0, n - 1)
    labels[150:160, 20:30] = 0
    want = np.clip(_whole_image_spline(slices_, labels, levels), slices_.min(), slices_.max())
    pyramids = SlicePyramids(list(slices_), levels=levels)
    assert not pyramids.complete()
    whole = pyramid_blend_box(pyramids, labels, (0, 0))
    np.testing.assert_allclose(whole, want, atol=2e-5)
    y0, y1, x0, x1 = 40, 190, 64, 250  # origin on the 8 px grid of level 3
    box = pyramid_blend_box(pyramids, labels[y0:y1, x0:x1], (y0, x0))
    reach = 4 * 2**levels
    inner = (slice(reach, y1 - y0 - reach), slice(reach, x1 - x0 - reach))
    np.testing.assert_allclose(box[inner], want[y0:y1, x0:x1][inner], atol=2e-5)
    assert not np.allclose(box, want[y0:y1, x0:x1], atol=2e-5)  # control: the border does see its reflection
    # every slice was used, so every pyramid is now kept; the memory estimate is their real size
    assert pyramids.complete()
    assert pyramids.nbytes() == sum(b.numel() * 4 for k in range(n) for b in pyramids.bands(k)[0])
    with pytest.raises(FusionInputError, match="grid"):
        pyramid_blend_box(pyramids, labels[4:100, 8:100], (4, 8))
    with pytest.raises(FusionInputError, match="leaves"):
        pyramid_blend_box(pyramids, labels[:100, :100], (160, 0))
    with pytest.raises(FusionInputError, match="0-based"):
        pyramid_blend_box(pyramids, labels[:8, :8] + n, (0, 0))
    # the budget: None when they would not fit
    assert retouch_pyramids(list(slices_), levels=levels, budget_bytes=pyramids.nbytes() - 1) is None
    assert retouch_pyramids(list(slices_), levels=levels, budget_bytes=pyramids.nbytes()) is not None


def test_kept_pyramids_keep_dtype_and_refuse_mixed_slices():
    from napari_fusion.focalstack.recompose import SlicePyramids, pyramid_blend_box

    rng = np.random.default_rng(1)
    stack = rng.integers(0, 4000, (3, 48, 40), dtype=np.uint16)
    labels = np.repeat(np.arange(3), 16)[:, None].repeat(40, 1)
    out = pyramid_blend_box(SlicePyramids(stack, levels=3), labels, (0, 0))
    assert out.dtype == np.uint16 and out.shape == (48, 40)
    np.testing.assert_allclose(out, recompose(stack, labels, blend="pyramid", levels=3), atol=1)
    bad = SlicePyramids([stack[0], stack[1][:40]], levels=3)
    with pytest.raises(FusionInputError, match="slice 1"):
        pyramid_blend_box(bad, labels[:, :] % 2, (0, 0))
