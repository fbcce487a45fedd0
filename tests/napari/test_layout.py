"""Dock layout: every dock widget fits a 400 px dock, scrolls vertically; parameters labelled in words."""

from __future__ import annotations

import pytest

pytest.importorskip("napari")
pytest.importorskip("qtpy")
pytest.importorskip("pytestqt")

pytestmark = pytest.mark.gui


@pytest.mark.parametrize("which", ["fusion", "focal", "metrics", "upsample"])
def test_widget_fits_a_400_px_dock_and_scrolls(qtbot, viewer, which):
    from qtpy.QtWidgets import QScrollArea

    from napari_fusion._napari._common import DOCK_WIDTH, content_width
    from napari_fusion._napari._focal import FocalStackWidget
    from napari_fusion._napari._metrics_widget import MetricsWidget
    from napari_fusion._napari._upsample_widget import GuidedUpsampleWidget
    from napari_fusion._napari._widget import FusionWidget

    kinds = {
        "fusion": FusionWidget,
        "focal": FocalStackWidget,
        "metrics": MetricsWidget,
        "upsample": GuidedUpsampleWidget,
    }
    w = kinds[which](viewer)
    qtbot.addWidget(w)
    assert content_width(w) <= DOCK_WIDTH, content_width(w)  # measured 234 and 318 px
    scroll = w.findChild(QScrollArea)
    assert scroll is not None and scroll.widgetResizable()
    w.resize(DOCK_WIDTH, 150)  # a short dock: the content scrolls instead of being squeezed
    w.show()
    qtbot.waitExposed(w)
    assert scroll.verticalScrollBar().maximum() > 0
    assert scroll.horizontalScrollBar().maximum() == 0


def test_parameters_have_word_labels_and_the_name_in_the_tooltip(qtbot, viewer):
    from qtpy.QtWidgets import QLabel

    from napari_fusion._napari._widget import FusionWidget

    w = FusionWidget(viewer)
    qtbot.addWidget(w)
    w.set_method("liu2017_cnn")
    labels = {lab.text(): lab for lab in w.params.findChildren(QLabel)}
    assert "guided filter ε" in labels and "gf_eps" not in labels
    assert labels["guided filter ε"].toolTip().startswith("gf_eps: ")
    assert w.params.editors["gf_eps"].toolTip().startswith("gf_eps: ")
    w.set_method("focus_measure")
    labels = {lab.text() for lab in w.params.findChildren(QLabel)}
    assert {"halo control", "window"} <= labels
