"""The generic fusion widget with CSC-IVFN: a grey infrared layer + an RGB visible layer."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("qtpy")
pytest.importorskip("pytestqt")

from napari_fusion import fuse  # noqa: E402
from napari_fusion.methods.csc_ivfn import default_weights_path  # noqa: E402

pytestmark = [
    pytest.mark.gui,
    pytest.mark.skipif(not default_weights_path().is_file(), reason="shipped csc_ivfn weights not installed"),
]

TIMEOUT_MS = 60_000


def _pair():
    rng = np.random.default_rng(0)
    h, w = 48, 64
    ir = np.full((h, w), 40, np.uint8)
    ir[16:32, 20:40] = 230  # a hot target
    vis = np.zeros((h, w, 3), np.uint8)
    vis[..., 0] = (rng.random((h, w)) * 120 + 60).astype(np.uint8)
    vis[..., 1] = 100
    vis[..., 2] = 30
    return ir, vis


def test_grey_ir_layer_and_rgb_visible_layer(qtbot, viewer, widget):
    ir, vis = _pair()
    a = viewer.add_image(ir, name="infrared")
    b = viewer.add_image(vis, name="visible", rgb=True)
    widget.set_image_layers([a, b])
    widget.set_method("csc_ivfn")
    with qtbot.waitSignal(widget.run_finished, timeout=TIMEOUT_MS) as blocker:
        assert widget.run() is not None, widget.status.text()
    assert blocker.args[0] == "done", widget.status.text()
    fused = widget.output_layers["fused"]
    assert fused.rgb and fused.data.shape == vis.shape and fused.data.dtype == np.uint8
    np.testing.assert_array_equal(fused.data, fuse([ir, vis], method="csc_ivfn").fused)
    decision = widget.output_layers["decision"]
    assert list(decision.features["source"]) == ["infrared", "visible"]
    np.testing.assert_array_equal(a.data, ir)
    np.testing.assert_array_equal(b.data, vis)


def test_mixed_layers_refused_for_a_method_that_does_not_accept_them(qtbot, viewer, widget):
    ir, vis = _pair()
    a = viewer.add_image(ir, name="infrared")
    b = viewer.add_image(vis, name="visible", rgb=True)
    widget.set_image_layers([a, b])
    widget.set_method("average")
    assert widget.run() is None
    assert "mixed" in widget.status.text()
