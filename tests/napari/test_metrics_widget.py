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
    values = w.compute()
    s = small_focal_stack
    expected = compute_metrics(fused, [s.slices[0], s.slices[3]], s.ground_truth)
    assert values.keys() == expected.keys() and "qabf" in values and "psnr_gt" in values
    for k in values:
        assert values[k] == pytest.approx(expected[k], rel=1e-9, abs=1e-12)
    assert w.table.rowCount() == len(values)
    text = w.copy_csv()
    assert text.startswith("metric,value\n") and QApplication.clipboard().text() == text
    # the fused image scores better against the truth than a single defocused source does
    w.set_selection("near", ["far"], gt="truth")
    single = w.compute()
    assert values["psnr_gt"] > single["psnr_gt"]


def test_metrics_widget_reports_bad_input(qtbot, viewer_with_layers):
    from napari_fusion._napari._metrics_widget import MetricsWidget

    viewer, _ = viewer_with_layers
    viewer.add_image(np.zeros((10, 10), np.uint8), name="tiny")
    w = MetricsWidget(viewer)
    qtbot.addWidget(w)
    w.set_selection("fused", ["tiny"])
    assert w.compute() == {}
    assert "cannot compute" in w.status.text()
