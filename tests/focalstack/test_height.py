"""Height maps: sub-slice refinement on known depth, >255 slices, streaming, real DAPI stack."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from napari_fusion import fuse
from napari_fusion.errors import FusionInputError
from napari_fusion.focalstack import height_map, index_to_z, z_positions_for
from napari_fusion.synthetic import render_focal_stack


@pytest.fixture(scope="module")
def grey_stack():
    from skimage import data
    from skimage.transform import resize

    photo = (resize(data.astronaut(), (112, 112), anti_aliasing=True) * 255).astype(np.uint8)
    return render_focal_stack(photo, n_slices=6, max_sigma=4.0, seed=1)


@pytest.mark.parametrize("fit", ["parabola", "gaussian"])
def test_subslice_refinement_reduces_height_error(grey_stack, fit):
    st = grey_stack
    n = len(st.focus_depths)
    true_index = st.depth * (n - 1)
    coarse = height_map(st.slices, refine="none")
    fine = height_map(st.slices, refine=fit)
    err_c = np.abs(coarse.index - true_index).mean()
    err_f = np.abs(fine.index - true_index).mean()
    assert err_f < 0.7 * err_c, (err_c, err_f)
    assert np.all(np.abs(fine.index - fine.labels) <= 0.5 + 1e-6)
    # the decision is that of the focus_measure method with the same parameters
    r = fuse(st.slices, method="focus_measure")
    assert (coarse.labels == r.labels).mean() > 0.999


def test_height_in_physical_units_and_positions(grey_stack):
    hm = height_map(grey_stack.slices, z_step=0.25)
    np.testing.assert_allclose(hm.height, hm.index * 0.25, atol=1e-5)
    z = [0.0, 1.0, 2.0, 4.0, 8.0, 16.0]
    hz = height_map(grey_stack.slices, z_positions=z)
    np.testing.assert_allclose(hz.height, index_to_z(hz.index, np.asarray(z)), atol=1e-5)
    with pytest.raises(FusionInputError):
        z_positions_for(3, z_positions=[0, 2, 1])
    with pytest.raises(FusionInputError):
        height_map(grey_stack.slices, labels=np.full((112, 112), 6))


def test_height_from_edited_labels_refines_around_them(grey_stack):
    hm = height_map(grey_stack.slices)
    edited = hm.labels.astype(np.int64).copy()
    edited[:20, :20] = 2
    h2 = height_map(grey_stack.slices, edited)
    assert np.all(h2.labels[:20, :20] == 2)
    assert np.all(np.abs(h2.index[:20, :20] - 2) <= 0.5 + 1e-6)
    same = np.ones_like(edited, bool)
    same[:20, :20] = False
    np.testing.assert_allclose(h2.index[same], hm.index[same], atol=1e-5)


class _LazyStack:
    """A deep stack rendered slice by slice on access (never all in memory)."""

    def __init__(self, n, size=24):
        self.n, self.size = n, size
        rng = np.random.default_rng(0)
        self.texture = rng.random((size, size)).astype(np.float32)
        yy, xx = np.mgrid[0:size, 0:size]
        self.depth = (xx / (size - 1) * (n - 1)).astype(np.float32)  # a ramp over every slice

    def __len__(self):
        return self.n

    def __getitem__(self, k):
        if not 0 <= k < self.n:
            raise IndexError(k)
        from scipy import ndimage

        blur = np.abs(self.depth - k) / max(self.n / 12.0, 1.0)
        a = ndimage.gaussian_filter(self.texture, 2.0)
        # per-pixel mix of sharp and blurred texture: sharp where |depth - k| is small
        wgt = np.exp(-(blur**2))
        return (wgt * self.texture + (1 - wgt) * a).astype(np.float32)


def test_deep_stack_not_capped_at_255_and_streams():
    deep = _LazyStack(300)
    hm = height_map(deep, consistency=0, window=1, smooth=0.5)
    assert hm.labels.dtype == np.uint16
    assert hm.labels.max() > 255
    # the ramp of depth is recovered (within a few slices, columns average)
    col = hm.index.mean(0)
    assert np.corrcoef(col, deep.depth[0])[0, 1] > 0.95

    def peak(n):
        tracemalloc.start()
        height_map(_LazyStack(n), consistency=0, window=1, smooth=0.5)
        _, p = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return p

    assert peak(300) < 2 * peak(30)


def test_dapi_height_in_microns(dataset):
    from skimage.filters import threshold_otsu

    from napari_fusion.io import read_stack

    stack = read_stack(dataset("focalstack/dapi_widefield/dapi"))
    assert stack[0].dtype == np.uint16 and len(stack) == 40
    hm = height_map(stack, z_step=0.3)
    assert hm.height.dtype == np.float32
    assert hm.height.min() >= 0.0 and hm.height.max() <= 11.7 + 1e-5
    # the nucleus is sharpest around planes 17-24 (DATASET.md): 5.1-7.2 microns
    fused = fuse(stack).fused
    nucleus = fused > threshold_otsu(fused)
    assert 5.1 <= float(np.median(hm.height[nucleus])) <= 7.2
    # sub-slice values exist (not only multiples of 0.3)
    frac = np.abs(hm.height / 0.3 - np.round(hm.height / 0.3))
    assert (frac > 0.05).mean() > 0.2


def test_height_surface_mesh():
    from napari_fusion.focalstack import height_surface

    h = np.arange(20, dtype=np.float32).reshape(4, 5)
    v, f, t = height_surface(h, scale=(0.5, 2.0))
    assert v.shape == (20, 3) and f.shape == (2 * 3 * 4, 3) and t.shape == (20, 2)
    np.testing.assert_allclose(v[:, 0], h.ravel())
    np.testing.assert_allclose(v[-1], [19, 1.5, 8.0])
    assert f.max() == 19 and t.min() == 0 and t.max() == 1
    np.testing.assert_allclose(t[0], [0, 1])  # top-left pixel: u = 0, v = 1 (OpenGL convention)
    np.testing.assert_allclose(t[-1], [1, 0])
    v2, f2, _ = height_surface(np.zeros((9, 9)), step=4)
    assert v2.shape == (9, 3) and f2.shape == (8, 3)
