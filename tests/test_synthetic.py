"""Synthetic focal stacks and exposure series."""

from __future__ import annotations

import numpy as np

from napari_fusion.synthetic import render_exposure_series, render_focal_stack, smooth_depth_map


def test_focal_stack_is_sharp_where_focused():
    rng = np.random.default_rng(0)
    img = (rng.random((64, 64)) * 255).astype(np.uint8)
    depth = np.zeros((64, 64), np.float32)
    depth[:, 32:] = 1.0  # left half at depth 0, right half at depth 1
    s = render_focal_stack(img, n_slices=3, depth=depth, max_sigma=3.0)
    assert s.slices.shape == (3, 64, 64) and s.slices.dtype == np.uint8
    np.testing.assert_array_equal(s.slices[0][:, :32], img[:, :32])  # in focus: unchanged
    np.testing.assert_array_equal(s.slices[2][:, 40:], img[:, 40:])
    assert s.slices[0][:, 40:].std() < img[:, 40:].std() * 0.5  # defocused: blurred
    assert (s.true_labels[:, :32] == 0).all() and (s.true_labels[:, 32:] == 2).all()


def test_depth_map_range_and_seed():
    a = smooth_depth_map((40, 50), seed=1)
    assert a.min() == 0 and abs(a.max() - 1) < 1e-6
    np.testing.assert_array_equal(a, smooth_depth_map((40, 50), seed=1))
    assert not np.array_equal(a, smooth_depth_map((40, 50), seed=2))


def test_exposure_series_ordered():
    img = np.tile(np.linspace(0, 255, 64).astype(np.uint8), (8, 1))
    s = render_exposure_series(img, n_exposures=3, stops=1.0)
    assert s.shape == (3, 8, 64)
    means = s.reshape(3, -1).mean(1)
    assert means[0] < means[1] < means[2]
    assert abs(int(s[1].astype(int).mean()) - int(img.mean())) <= 1
