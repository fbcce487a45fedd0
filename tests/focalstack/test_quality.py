"""focalstack.quality: seam measures with and without a ground truth."""

from __future__ import annotations

import numpy as np


def test_boundary_gradient_excess_sees_a_step_on_label_boundaries_only():
    from napari_fusion.focalstack.quality import boundary_gradient_excess

    rng = np.random.default_rng(0)
    texture = rng.random((64, 64))
    labels = np.zeros((64, 64), int)
    labels[:, 32:] = 1
    assert boundary_gradient_excess(texture, np.zeros_like(labels)) == 0.0  # no boundary
    assert boundary_gradient_excess(texture, labels) < 0.2  # a boundary with no seam on it
    patchwork = texture.copy()
    patchwork[:, 32:] += 3.0  # a brightness step exactly on the label boundary
    assert boundary_gradient_excess(patchwork, labels) > 1.0
