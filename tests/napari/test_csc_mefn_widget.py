"""csc_mefn through the generic fusion widget on the exposure-series sample data."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("qtpy")
pytest.importorskip("pytestqt")

from napari_fusion import fuse  # noqa: E402

pytestmark = pytest.mark.gui


def _run(qtbot, w) -> str:
    with qtbot.waitSignal(w.run_finished, timeout=60_000) as blocker:
        assert w.run() is not None, w.status.text()
    return blocker.args[0]


def _widget_on_the_sample(qtbot):
    """A fusion widget on a viewer holding the 96 px exposure-series sample, task multi-exposure."""
    from napari.components import ViewerModel

    from napari_fusion._napari._sample_data import exposure_series
    from napari_fusion._napari._widget import FusionWidget

    viewer = ViewerModel()
    w = FusionWidget(viewer)
    qtbot.addWidget(w)
    data, kwargs, _ = exposure_series(size=96)[0]
    layer = viewer.add_image(data, **kwargs)
    w.task.setCurrentText("multi-exposure")
    return w, layer, data


def test_exposure_series_sample_with_csc_mefn(qtbot):
    w, layer, data = _widget_on_the_sample(qtbot)
    before = data.copy()
    listed = [w.method.itemData(i) for i in range(w.method.count())]
    assert "csc_mefn" in listed
    w.set_stack_layer(layer, axis=0)
    w.set_method("csc_mefn")
    w.device.setCurrentText("cpu")
    assert set(w.params.editors) == {"stretch", "low_percentile", "high_percentile", "weights"}
    assert _run(qtbot, w) == "done", w.status.text()
    fused, dec = w.output_layers["fused"], w.output_layers["decision"]
    assert fused.rgb and fused.data.shape == (96, 96, 3) and fused.data.dtype == np.uint8
    expected = fuse(data, method="csc_mefn", device="cpu")
    np.testing.assert_array_equal(fused.data, expected.fused)
    # decision: which exposure dominates (1-based labels naming the stack's slices)
    np.testing.assert_array_equal(dec.data, expected.labels.astype(int) + 1)
    assert list(dec.features["source"]) == [f"{layer.name} [{k}]" for k in range(3)]
    # exposure fusion uses the colour: the fused image is not grey
    assert np.abs(fused.data[..., 0].astype(int) - fused.data[..., 2].astype(int)).mean() > 5
    # re-run without the stretch updates the same layer
    w.params.editors["stretch"].setChecked(False)
    assert _run(qtbot, w) == "done"
    assert w.output_layers["fused"] is fused
    np.testing.assert_array_equal(fused.data, fuse(data, method="csc_mefn", device="cpu", stretch=False).fused)
    np.testing.assert_array_equal(layer.data, before)


def test_exposure_series_sample_with_the_pyramid_variant(qtbot):
    """The named variant is listed beside the paper's method, with its pyramid depth parameter."""
    w, layer, data = _widget_on_the_sample(qtbot)
    listed = [w.method.itemData(i) for i in range(w.method.count())]
    assert {"csc_mefn", "csc_mefn_pyramid"} <= set(listed)
    w.set_stack_layer(layer, axis=0)
    w.set_method("csc_mefn_pyramid")
    w.device.setCurrentText("cpu")
    assert set(w.params.editors) == {"stretch", "low_percentile", "high_percentile", "weights", "levels"}
    assert _run(qtbot, w) == "done", w.status.text()
    expected = fuse(data, method="csc_mefn_pyramid", device="cpu")
    np.testing.assert_array_equal(w.output_layers["fused"].data, expected.fused)
    np.testing.assert_array_equal(w.output_layers["decision"].data, expected.labels.astype(int) + 1)
