"""The fusion-metrics dock widget."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("qtpy")
pytest.importorskip("pytestqt")

from napari_fusion import fuse  # noqa: E402
from napari_fusion.metrics import compute_metrics  # noqa: E402

pytestmark = pytest.mark.gui

TIMEOUT_MS = 60_000


def compute_and_wait(qtbot, w) -> dict:
    """Press Compute (a worker) and wait; returns the values shown (empty on error)."""
    with qtbot.waitSignal(w.run_finished, timeout=TIMEOUT_MS):
        assert w.compute() is not None, w.status.text()
    return dict(w.values)


@pytest.fixture
def viewer_with_layers(small_focal_stack):
    from napari.components import ViewerModel

    s = small_focal_stack
    v = ViewerModel()
    v.add_image(s.slices[0], name="near", rgb=True)
    v.add_image(s.slices[3], name="far", rgb=True)
    fused = fuse([s.slices[0], s.slices[3]], method="gff").fused
    v.add_image(fused, name="fused", rgb=True)
    v.add_image(s.ground_truth, name="truth", rgb=True)
    return v, fused


def test_metrics_widget_matches_library_and_copies_csv(qtbot, viewer_with_layers, small_focal_stack):
    from qtpy.QtWidgets import QApplication

    from napari_fusion._napari._metrics_widget import MetricsWidget

    viewer, fused = viewer_with_layers
    w = MetricsWidget(viewer)
    qtbot.addWidget(w)
    w.set_selection("fused", ["near", "far"], gt="truth")
    values = compute_and_wait(qtbot, w)
    s = small_focal_stack
    expected = compute_metrics(fused, [s.slices[0], s.slices[3]], s.ground_truth)
    # RGB fused + ground truth: the spectral metrics come on top of the library's defaults
    assert values.keys() == expected.keys() | {"sam", "ergas"} and "qabf" in values and "psnr_gt" in values
    for k in expected:
        assert values[k] == pytest.approx(expected[k], rel=1e-9, abs=1e-12)
    assert w.table.rowCount() == len(values)
    text = w.copy_csv()
    assert text.startswith("metric,value\n") and QApplication.clipboard().text() == text
    # the fused image scores better against the truth than a single defocused source does
    w.set_selection("near", ["far"], gt="truth")
    single = compute_and_wait(qtbot, w)
    assert values["psnr_gt"] > single["psnr_gt"]


def test_metrics_widget_reports_bad_input(qtbot, viewer_with_layers):
    from napari_fusion._napari._metrics_widget import MetricsWidget

    viewer, _ = viewer_with_layers
    viewer.add_image(np.zeros((10, 10), np.uint8), name="tiny")
    w = MetricsWidget(viewer)
    qtbot.addWidget(w)
    w.set_selection("fused", ["tiny"])
    assert compute_and_wait(qtbot, w) == {}
    assert "cannot compute" in w.status.text()


def test_metrics_widget_stack_layer_is_one_source_per_slice_and_spectral(qtbot, small_focal_stack):
    from napari.components import ViewerModel

    from napari_fusion._napari._metrics_widget import MetricsWidget
    from napari_fusion.metrics import ergas, sam

    s = small_focal_stack
    grey = s.slices.mean(-1).astype(np.float32)  # (Z, Y, X)
    fused = fuse(list(grey), method="focus_measure").fused
    v = ViewerModel()
    v.add_image(grey, name="stack")
    v.add_image(fused, name="fused")
    w = MetricsWidget(v)
    qtbot.addWidget(w)
    w.set_selection("fused", ["stack"])
    values = compute_and_wait(qtbot, w)
    expected = compute_metrics(fused, list(grey))  # N-way metrics over every slice
    assert values.keys() == expected.keys()
    for k in values:
        assert values[k] == pytest.approx(expected[k], rel=1e-9, abs=1e-12)
    assert f"{len(grey)} source(s)" in w.status.text()
    # off: only the slice the viewer shows is a source (a pair metric set)
    w.per_slice.setChecked(False)
    v.dims.set_current_step(0, 2)
    single = compute_and_wait(qtbot, w)
    assert single == pytest.approx(compute_metrics(fused, [grey[2]]))

    # a (bands, y, x) fused layer with a ground truth gets SAM and ERGAS over all bands
    rng = np.random.default_rng(0)
    truth = rng.random((5, 40, 30)).astype(np.float32) + 0.5
    estimate = truth + 0.05 * rng.standard_normal(truth.shape).astype(np.float32)
    v.add_image(truth, name="truth bands")
    v.add_image(estimate, name="estimate bands")
    w.set_selection("estimate bands", [], gt="truth bands")
    w.ergas_scale.setValue(2.0)
    values = compute_and_wait(qtbot, w)
    assert values["sam"] == pytest.approx(sam(estimate, truth, band_axis=0))
    assert values["ergas"] == pytest.approx(ergas(estimate, truth, scale=2.0, band_axis=0))


def test_metrics_widget_cancel(qtbot, small_focal_stack, monkeypatch):
    """Cancel stops after the current metric; the table keeps the previous values."""
    import threading

    from napari.components import ViewerModel

    from napari_fusion._napari import _metrics_widget as M

    s = small_focal_stack
    v = ViewerModel()
    v.add_image(s.slices[0], name="near", rgb=True)
    v.add_image(s.slices[3], name="far", rgb=True)
    v.add_image(s.ground_truth, name="fused", rgb=True)
    w = M.MetricsWidget(v)
    qtbot.addWidget(w)
    w.set_selection("fused", ["near", "far"])
    first = compute_and_wait(qtbot, w)
    started, release = threading.Event(), threading.Event()
    real = M.compute_metrics

    def slow(*args, progress, **kwargs):
        def gated(done, total, message):
            started.set()
            assert release.wait(20)
            progress(done, total, message)

        return real(*args, progress=gated, **kwargs)

    monkeypatch.setattr(M, "compute_metrics", slow)
    with qtbot.waitSignal(w.run_finished, timeout=TIMEOUT_MS) as blocker:
        assert w.compute() is not None
        qtbot.waitUntil(started.is_set, timeout=TIMEOUT_MS)
        w.cancel_button.click()
        release.set()
    assert blocker.args == ["cancelled"] and w.values == first
    assert "cancelled" in w.status.text() and w.run_button.isEnabled()


def test_a_large_in_memory_fusion_is_a_display_pyramid_that_metrics_score_at_full_resolution(qtbot):
    """An output plane above 2048 px on a side is a multiscale layer (strided views of the result);
    the Metrics widget scores level 0, the fused image itself."""
    from napari.components import ViewerModel

    from napari_fusion._napari._metrics_widget import MetricsWidget
    from napari_fusion._napari._widget import FusionWidget

    rng = np.random.default_rng(0)
    sharp = rng.random((2050, 96)).astype(np.float32)
    blurred = (sharp + np.roll(sharp, 1, 0) + np.roll(sharp, 1, 1)) / 3
    left = np.arange(96) < 48
    near, far = np.where(left, sharp, blurred), np.where(left, blurred, sharp)
    viewer = ViewerModel()
    layers = [viewer.add_image(near, name="near"), viewer.add_image(far, name="far")]
    widget = FusionWidget(viewer)
    qtbot.addWidget(widget)
    widget.set_image_layers(layers)
    widget.set_method("focus_measure")
    with qtbot.waitSignal(widget.run_finished, timeout=TIMEOUT_MS) as done:
        assert widget.run() is not None
    assert done.args == ["done"], widget.status.text()
    fused_layer = widget.output_layers["fused"]
    assert fused_layer.multiscale and widget.output_layers["decision"].multiscale
    full = fused_layer.data[0]
    expected_fused = fuse([near, far], method="focus_measure").fused
    np.testing.assert_array_equal(full, expected_fused)
    assert [lv.shape for lv in fused_layer.data] == [(2050, 96), (1025, 48), (513, 24)]
    metrics = MetricsWidget(viewer)
    qtbot.addWidget(metrics)
    metrics.set_selection("fused", ["near", "far"])
    values = compute_and_wait(qtbot, metrics)
    assert values["qabf"] == pytest.approx(compute_metrics(full, [near, far])["qabf"], rel=1e-9)


def test_a_metric_that_cannot_run_on_a_small_crop_is_left_out_and_named(qtbot, viewer):
    from napari_fusion._napari._metrics_widget import MetricsWidget
    from napari_fusion.errors import FusionInputError

    w = MetricsWidget(viewer)
    qtbot.addWidget(w)
    rng = np.random.default_rng(3)
    f, a, b = ((rng.random((32, 32)) * 255).astype(np.uint8) for _ in range(3))
    for name, data in (("f", f), ("a", a), ("b", b)):
        viewer.add_image(data, name=name)
    w.set_selection("f", ["a", "b"])
    values = compute_and_wait(qtbot, w)
    assert "viff" not in values and "qabf" in values and w.table.rowCount() == len(values)
    assert "not computed here: viff (metric 'viff':" in w.status.text()
    assert values["qabf"] == pytest.approx(compute_metrics(f, [a, b], names=["qabf"])["qabf"], rel=1e-9)
    with pytest.raises(FusionInputError, match="metric 'viff': image of size"):
        compute_metrics(f, [a, b], names=["viff"])
