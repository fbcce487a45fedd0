"""Multichannel decisions, time-lapse (lazy), slabs, dtypes end to end, halo control."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

from napari_fusion import fuse
from napari_fusion.errors import FusionInputError
from napari_fusion.focalstack import decide_in_slabs, fuse_focal_stack, fuse_timelapse, slab_bounds
from napari_fusion.synthetic import render_focal_stack


@pytest.fixture(scope="module")
def grey_focal():
    from skimage import data
    from skimage.transform import resize

    photo = (resize(data.camera(), (96, 96), anti_aliasing=True) * 255).astype(np.uint8)
    return render_focal_stack(photo, n_slices=12, max_sigma=5.0, seed=2)


def test_multichannel_decision_on_reference_channel(grey_focal):
    st = grey_focal
    rng = np.random.default_rng(0)
    # channel 0: the textured focal stack; channel 1: content with no focus cue of its own
    other = rng.integers(0, 4000, st.slices.shape).astype(np.uint16)
    data = np.stack([st.slices.astype(np.uint16) * 100, other], axis=1)  # (Z, C, Y, X)
    r = fuse_focal_stack(data, method="focus_measure", channel_axis=1, reference_channel=0, z_step=0.5)
    assert r.fused.shape == (96, 96, 2) and r.fused.dtype == np.uint16
    direct = fuse(st.slices.astype(np.uint16) * 100, method="focus_measure")
    np.testing.assert_array_equal(r.labels, direct.labels)
    np.testing.assert_array_equal(r.fused[..., 0], direct.fused)
    # channel 1 follows channel 0's decision exactly
    expect = np.take_along_axis(other, r.labels[None].astype(np.intp), 0)[0]
    np.testing.assert_array_equal(r.fused[..., 1], expect)
    assert r.height.max() <= 0.5 * 11 + 1e-6
    # deciding on channel 1 instead gives a different (noise-driven) decision
    r1 = fuse_focal_stack(data, method="focus_measure", channel_axis=1, reference_channel=1, height=False)
    assert (r1.labels != r.labels).mean() > 0.3
    with pytest.raises(FusionInputError):
        fuse_focal_stack(data, channel_axis=1, reference_channel=2)


def test_slabs_carry_labels_to_original_slices(grey_focal):
    st = grey_focal
    assert slab_bounds(12, 4) == [(0, 4), (4, 8), (8, 12)]
    assert all(4 <= b - a < 8 for a, b in slab_bounds(13, 4)) and slab_bounds(13, 4)[-1][1] == 13
    assert slab_bounds(5, 4) == [(0, 5)]
    direct = fuse(st.slices, method="focus_measure").labels
    slabbed = decide_in_slabs(list(st.slices), slab=4, method="focus_measure")
    assert slabbed.max() > 4  # original indices, not slab indices
    assert (slabbed == direct).mean() > 0.9
    # recursion: 12 slices, slabs of 2 -> 6 results -> 3 -> 2
    assert (decide_in_slabs(list(st.slices), slab=2, method="focus_measure") == direct).mean() > 0.8
    r = fuse_focal_stack(st.slices, method="focus_measure", slab=4)
    np.testing.assert_array_equal(r.labels, slabbed)
    exact = np.take_along_axis(st.slices, r.labels[None].astype(np.intp), 0)[0]
    np.testing.assert_array_equal(r.fused, exact)


def test_timelapse_is_lazy_and_matches_per_frame(grey_focal, monkeypatch):
    st = grey_focal
    frames = np.stack([st.slices, st.slices[:, ::-1].copy(), st.slices[:, :, ::-1].copy()])  # (T, Z, Y, X)
    lazy = da.from_array(frames, chunks=(1, 12, 96, 96))
    import napari_fusion.focalstack.timelapse as tl

    calls = []
    real = tl.fuse_focal_stack
    monkeypatch.setattr(tl, "fuse_focal_stack", lambda *a, **k: calls.append(1) or real(*a, **k))
    res = fuse_timelapse(lazy, z_step=2.0)
    assert calls == [] and isinstance(res.fused, da.Array)
    assert res.fused.shape == (3, 96, 96) and res.labels.shape == (3, 96, 96)
    f1 = res.fused[1].compute()
    assert len(calls) == 1  # only the requested time point ran
    np.testing.assert_array_equal(f1, fuse(frames[1]).fused)
    h2 = res.height[2].compute()
    np.testing.assert_allclose(h2, fuse_focal_stack(frames[2], z_step=2.0).height)
    eager = fuse_timelapse(frames, lazy=False)
    np.testing.assert_array_equal(eager.labels[0], fuse(frames[0]).labels)


@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
def test_16bit_and_float_end_to_end(grey_focal, dtype):
    st = grey_focal
    stack = (
        (st.slices.astype(np.float32) * 250).astype(np.uint16)
        if dtype == np.uint16
        else (st.slices / 255.0).astype(np.float32)
    )
    r = fuse_focal_stack(stack, method="focus_measure", align="translation", z_step=0.3)
    assert r.fused.dtype == dtype and r.fused.shape == stack.shape[1:]
    assert r.height.dtype == np.float32 and r.height.min() >= 0 and r.height.max() <= 0.3 * 11 + 1e-5
    np.testing.assert_allclose(r.alignment.shifts, 0, atol=0.6)  # an aligned stack stays put
    ref = fuse(stack)
    assert np.abs(r.fused.astype(np.float64) - ref.fused).mean() < 0.01 * float(stack.max())
    rec = r.record()
    assert rec["params"]["measure"] == "sml" and rec["alignment"]["mode"] == "translation"


def test_halo_control_reduces_halo():
    from napari_fusion.focalstack.halo import halo_excess, render_bright_objects

    st = render_bright_objects((128, 128), n_slices=8, n_objects=10, max_sigma=16.0, seed=0)
    off = fuse(st.slices, method="focus_measure")
    on = fuse(st.slices, method="focus_measure", halo_control=True)
    h_off = halo_excess(off.fused, st.ground_truth, st.objects)
    h_on = halo_excess(on.fused, st.ground_truth, st.objects)
    assert h_off > 0.001  # the default shows a halo on this case
    assert h_on < 0.6 * h_off
    # the objects themselves are not damaged
    err = lambda r: np.abs(r.fused - st.ground_truth)[st.objects].mean()  # noqa: E731
    assert err(on) < 1.2 * err(off)
    # default behaviour is unchanged by the new parameter
    np.testing.assert_array_equal(fuse(st.slices, method="focus_measure", halo_control=False).fused, off.fused)


def test_multichannel_weights_method_applies_weights(grey_focal):
    data = np.stack([grey_focal.slices, 255 - grey_focal.slices], axis=-1).astype(np.float32)  # (Z, Y, X, 2)
    r = fuse_focal_stack(data, method="average")
    assert r.labels is None and r.height is None and r.blend == {"blend": "weights"}
    np.testing.assert_allclose(r.fused, data.mean(0), atol=1e-3)
