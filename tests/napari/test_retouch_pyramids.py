"""Live retouch with the slices' pyramids kept between strokes (``retouched(..., pyramids=)``)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("qtpy")


def _job(stack: np.ndarray):
    from napari_fusion._napari._focal import FocalJob

    return FocalJob.for_array(stack)


def test_kept_pyramids_retouch_the_real_dapi_stack_as_recomputed_ones(dataset):
    """On the real DAPI widefield stack, two strokes with kept pyramids give the fused image
    of the strokes with pyramids recomputed per box (to one count; the kept ones are the whole
    slice's, the recomputed ones see the box's reflected border far from the stroke), the painted
    slice inside the stroke, and nothing changed outside the box."""
    from napari_fusion._napari._focal import retouch_blend, retouch_pyramids_for, retouched
    from napari_fusion.focalstack import fuse_focal_stack, labels_to_napari
    from napari_fusion.io import read_stack

    stack = np.stack(read_stack(dataset("focalstack/dapi_widefield/dapi")))
    result = fuse_focal_stack(stack, method="focus_pyramid")
    job = _job(stack)
    blend = retouch_blend(result, "method's blending")
    assert blend["blend"] == "pyramid"
    pyramids = retouch_pyramids_for(job, result)
    assert pyramids is not None and not pyramids.complete()
    for (y, x), k in (((60, 30), 5), ((20, 10), 33)):
        edited = labels_to_napari(result.labels)
        edited[y : y + 40, x : x + 50] = k + 1
        kept = retouched(job, result, edited, blend=blend, pyramids=pyramids)
        plain = retouched(job, result, edited, blend=blend)
        np.testing.assert_array_equal(kept[1], plain[1])  # labels
        np.testing.assert_array_equal(kept[2], plain[2])  # heights
        diff = np.abs(kept[0].astype(np.int64) - plain[0].astype(np.int64))
        assert diff.max() <= 1, diff.max()
        changed = kept[0] != result.fused
        assert changed[y : y + 40, x : x + 50].any()
        outside = np.ones(changed.shape, bool)
        outside[max(0, y - 64) : y + 104, max(0, x - 64) : x + 114] = False
        assert not changed[outside].any()
        # the stroke now shows the painted slice (a pyramid blend: close to it, not a copy)
        inside = (slice(y, y + 40), slice(x, x + 50))
        now = np.abs(kept[0][inside].astype(float) - stack[k][inside]).mean()
        before = np.abs(result.fused[inside].astype(float) - stack[k][inside]).mean()
        assert now < 0.3 * before, (now, before)
    assert 0 < len(pyramids._bands) <= stack.shape[0]  # only the slices the strokes needed


def test_no_budget_means_no_kept_pyramids(small_focal_stack):
    from napari_fusion._napari._focal import retouch_pyramids_for
    from napari_fusion.focalstack import fuse_focal_stack

    stack = np.stack(small_focal_stack.slices).mean(-1).astype(np.float32)
    result = fuse_focal_stack(stack, method="focus_pyramid")
    assert retouch_pyramids_for(_job(stack), result, budget_bytes=0) is None
    assert retouch_pyramids_for(_job(stack), result) is not None
