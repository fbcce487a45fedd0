"""The "Guided upsampling" dock widget."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("qtpy")
pytest.importorskip("pytestqt")

import napari_fusion as nf  # noqa: E402

pytestmark = pytest.mark.gui


@pytest.fixture
def viewer():
    """A viewer holding a multispectral and a pan layer (overrides conftest's empty ``viewer``)."""
    from napari.components import ViewerModel

    rng = np.random.default_rng(0)
    v = ViewerModel()
    pan = rng.random((48, 64)).astype(np.float32)
    ms = np.stack([pan[::4, ::4] * k + 0.1 for k in (1.0, 0.5, 2.0, 0.8)])  # (4, 12, 16) bands first
    v.add_image(ms, name="ms")
    v.add_image(pan, name="pan", scale=(0.5, 0.5))
    return v


def run_and_wait(qtbot, w):
    """Press Run (a worker) and wait; returns the outcome ("done", "error", "cancelled")."""
    with qtbot.waitSignal(w.run_finished, timeout=60_000) as blocker:
        assert w.run() is not None, w.status.text()
    return blocker.args[0]


def test_widget_matches_library_and_places_result_on_guide_grid(qtbot, viewer):
    from napari_fusion._napari._upsample_widget import GuidedUpsampleWidget

    w = GuidedUpsampleWidget(viewer)
    qtbot.addWidget(w)
    w.set_selection("ms", "pan", method="guided_filter")
    assert w.scale_label.text().startswith("x4")
    assert not w.model.isEnabled()
    assert run_and_wait(qtbot, w) == "done", w.status.text()
    layer = w.output_layer
    assert layer is not None and layer.name == "ms upsampled"
    expected = nf.guided_upsample(
        viewer.layers["ms"].data, viewer.layers["pan"].data, method="guided_filter", band_axis=0
    )
    assert layer.data.shape == (4, 48, 64)
    np.testing.assert_allclose(layer.data, expected, rtol=1e-6)
    assert tuple(layer.scale[-2:]) == (0.5, 0.5)
    assert layer.metadata["napari_fusion"]["method"] == "guided_filter"
    # a second run updates the same layer; the output never becomes an input choice
    w.set_selection("ms", "pan", method="bicubic")
    assert run_and_wait(qtbot, w) == "done"
    assert w.output_layer is layer and len(viewer.layers) == 3
    assert "ms upsampled" not in [w.lowres.itemText(i) for i in range(w.lowres.count())]


def test_widget_reports_bad_input(qtbot, viewer):
    from napari_fusion._napari._upsample_widget import GuidedUpsampleWidget

    viewer.add_image(np.zeros((50, 50), np.float32), name="odd")
    w = GuidedUpsampleWidget(viewer)
    qtbot.addWidget(w)
    w.set_selection("ms", "odd", method="guided_filter")
    assert w.scale_label.text() == "-"
    assert w.run() is None
    assert "cannot upsample" in w.status.text()
    w.set_selection("ms", "pan", method="csc_mmfn")  # 4 bands + PAN: pansharpening model, if shipped
    assert w.model.isEnabled()
