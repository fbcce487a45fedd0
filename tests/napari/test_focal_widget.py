"""The "Focal stack" dock widget: alignment, height in microns, surface, retouching, channels."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("qtpy")
pytest.importorskip("pytestqt")

pytestmark = pytest.mark.gui

TIMEOUT_MS = 60_000


@pytest.fixture
def widget(qtbot, viewer):
    """The focal-stack widget (overrides conftest's fusion ``widget`` in this module)."""
    from napari_fusion._napari._focal import FocalStackWidget

    w = FocalStackWidget(viewer)
    qtbot.addWidget(w)
    # these tests check the widget's mechanics against focus_measure's exact selection
    # (height within half a slice of the label, recompose == fused); the default is
    # tested in test_default_method_gives_a_smooth_height_in_microns
    w.method.setCurrentIndex(w.method.findData("focus_measure"))
    return w


def test_default_method_gives_a_smooth_height_in_microns(qtbot, viewer, grey_stack):
    from napari_fusion import DEFAULT_METHOD
    from napari_fusion._napari._focal import FocalStackWidget

    w = FocalStackWidget(viewer)
    qtbot.addWidget(w)
    assert w.method.currentData() == DEFAULT_METHOD == "focus_pyramid"
    assert not w.refine.isEnabled()  # its height is its own weighted z; refine does not apply
    w.method.setCurrentIndex(w.method.findData("focus_measure"))
    assert w.refine.isEnabled()
    w.method.setCurrentIndex(w.method.findData("focus_pyramid"))
    layer = viewer.add_image(grey_stack, name="stack", scale=(0.3, 0.5, 0.5), units=("um", "um", "um"))
    w.set_stack_layer(layer)
    assert run_and_wait(qtbot, w) == "done", w.status.text()
    h = np.asarray(w.output_layers["height"].data)
    n = grey_stack.shape[0]
    assert h.dtype == np.float32 and h.min() >= 0.0 and h.max() <= 0.3 * (n - 1) + 1e-4
    assert w.output_layers["height"].metadata["napari_fusion"]["height_unit"] == "micrometer"
    # the weighted height is continuous: no jumps of a whole slice between neighbours
    assert float(np.abs(np.diff(h, axis=1)).max()) < 0.3


def run_and_wait(qtbot, widget) -> str:
    with qtbot.waitSignal(widget.run_finished, timeout=TIMEOUT_MS) as blocker:
        assert widget.run() is not None, widget.status.text()
    return blocker.args[0]


@pytest.fixture
def grey_stack(small_focal_stack):
    """uint16 grey focal stack (Z, Y, X) from the synthetic RGB stack."""
    from skimage.color import rgb2gray

    s = small_focal_stack
    return np.stack([np.rint(rgb2gray(sl) * 65535).astype(np.uint16) for sl in s.slices])


def test_height_in_microns_surface_and_inputs_unchanged(qtbot, viewer, widget, grey_stack):
    layer = viewer.add_image(grey_stack, name="stack", scale=(0.3, 0.5, 0.5), units=("um", "um", "um"))
    before = grey_stack.copy()
    widget.set_stack_layer(layer)
    assert widget.z_step.value() == pytest.approx(0.3)
    widget.make_surface.setChecked(True)
    assert run_and_wait(qtbot, widget) == "done", widget.status.text()
    fused = widget.output_layers["fused"]
    dec = widget.output_layers["decision"]
    height = widget.output_layers["height"]
    assert fused.data.dtype == np.uint16 and fused.data.shape == grey_stack.shape[1:]
    # height in the layer's z units: slice positions k * 0.3 um, refined below one slice
    h = np.asarray(height.data)
    n = grey_stack.shape[0]
    assert h.dtype == np.float32 and h.min() >= -0.15 - 1e-4 and h.max() <= 0.3 * (n - 1) + 0.15 + 1e-4
    idx = np.asarray(dec.data).astype(int) - 1
    assert np.all(np.abs(h - 0.3 * idx) <= 0.15 + 1e-4)
    assert height.metadata["napari_fusion"]["height_unit"] == "micrometer"
    assert tuple(height.scale) == (0.5, 0.5)
    # surface: vertices (z, row, col) in world units, z = the height map
    surf = widget.output_layers["surface"]
    verts, faces = surf.data[0], surf.data[1]
    assert verts.shape[1] == 3 and faces.shape[1] == 3
    assert verts[:, 0].min() >= h.min() - 1e-5 and verts[:, 0].max() <= h.max() + 1e-5
    assert verts[:, 1].max() == pytest.approx(0.5 * (grey_stack.shape[1] - 1))
    assert surf.texture is not None and surf.texture.shape[-1] == 3
    np.testing.assert_array_equal(layer.data, before)


def test_alignment_option_reports_shifts(qtbot, viewer, widget, grey_stack):
    from scipy import ndimage

    # shift every slice by a known translation: slice k moved by (k - 2) * (1.5, -1) px
    ref = 2
    shifted = np.stack(
        [
            np.rint(
                ndimage.shift(sl.astype(np.float64), ((k - ref) * 1.5, (k - ref) * -1.0), order=1, mode="nearest")
            ).astype(np.uint16)
            for k, sl in enumerate(grey_stack)
        ]
    )
    layer = viewer.add_image(shifted, name="shifted")
    widget.set_stack_layer(layer)
    widget.align.setCurrentText("translation")
    assert run_and_wait(qtbot, widget) == "done", widget.status.text()
    record = widget.output_layers["fused"].metadata["napari_fusion"]
    al = record["alignment"]
    assert al["mode"] == "translation"
    shifts = np.array(al["shifts_rows_cols"])
    n = shifted.shape[0]
    r = al["reference"]
    expected = np.array([((k - r) * 1.5, (k - r) * -1.0) for k in range(n)])
    np.testing.assert_allclose(shifts, expected, atol=0.35)
    assert "translation" in widget.alignment_label.text()
    assert (
        "magnification" in widget.alignment_label.toolTip()
        and len(widget.alignment_label.toolTip().splitlines()) == n + 1
    )
    # off again: no alignment in the record
    widget.align.setCurrentText("none")
    assert run_and_wait(qtbot, widget) == "done"
    assert widget.output_layers["fused"].metadata["napari_fusion"]["alignment"] is None


def recompose_and_wait(qtbot, widget) -> str:
    """Press Recompose (it runs in a worker) and wait for it; returns "done"/"error"/"cancelled"."""
    with qtbot.waitSignal(widget.run_finished, timeout=TIMEOUT_MS) as blocker:
        assert widget.recompose() is not None, widget.status.text()
    return blocker.args[0]


def _paint_and_recompose(qtbot, widget, lazy_stack_data, blend="none"):
    dec = widget.output_layers["decision"]
    old_labels = np.asarray(dec.data).astype(int) - 1
    old_fused = np.array(widget.output_layers["fused"].data, copy=True)
    old_height = np.array(widget.output_layers["height"].data, copy=True)
    # paint a block with the slice that was chosen least there (label = slice + 1)
    block = (slice(10, 30), slice(20, 45))
    counts = np.bincount(old_labels[block].ravel(), minlength=lazy_stack_data.shape[0])
    target = int(np.argmin(counts))
    painted = np.array(dec.data, copy=True)
    painted[block] = target + 1
    painted[0:3, 0:3] = 0  # erased pixels keep the previous decision
    dec.data = painted
    widget.blend.setCurrentText(blend)
    fused_layer = widget.output_layers["fused"]
    assert recompose_and_wait(qtbot, widget) == "done", widget.status.text()
    assert widget.output_layers["fused"] is fused_layer  # updated in place
    return old_labels, old_fused, old_height, block, target


def test_recompose_changes_exactly_the_painted_pixels(qtbot, viewer, widget, grey_stack):
    layer = viewer.add_image(grey_stack, name="stack", scale=(2.0, 1.0, 1.0))
    widget.set_stack_layer(layer)
    assert run_and_wait(qtbot, widget) == "done"
    old_labels, old_fused, old_height, block, target = _paint_and_recompose(qtbot, widget, grey_stack)
    new = widget.output_layers["fused"].data
    changed = np.zeros(old_labels.shape, bool)
    changed[block] = old_labels[block] != target
    assert changed.sum() > 50
    # painted pixels: exactly the painted slice's values; all others untouched
    np.testing.assert_array_equal(new[block], grey_stack[target][block])
    np.testing.assert_array_equal(new[~changed], old_fused[~changed])
    h = widget.output_layers["height"].data
    np.testing.assert_allclose(h[changed], 2.0 * target)
    np.testing.assert_array_equal(h[~changed], old_height[~changed])
    dec = widget.output_layers["decision"].data
    assert np.all(dec[block] == target + 1) and np.all(dec[0:3, 0:3] == old_labels[0:3, 0:3] + 1)
    assert widget.output_layers["fused"].metadata["napari_fusion"]["retouched"]["pixels_changed"] == changed.sum()


def test_recompose_on_lazy_rgb_stack_with_method_blend(qtbot, viewer, widget, small_focal_stack):
    da = pytest.importorskip("dask.array")
    stack = small_focal_stack.slices  # (Z, Y, X, 3) uint8
    lazy = da.from_array(stack, chunks=(1, *stack.shape[1:]))
    layer = viewer.add_image(lazy, name="lazy", rgb=True)
    widget.set_stack_layer(layer)
    widget.params.set_values({"blend": 1.5})
    assert run_and_wait(qtbot, widget) == "done", widget.status.text()
    assert isinstance(layer.data, da.Array)
    # recomposing the unedited labels with the method's blending reproduces the method
    fused0 = np.array(widget.output_layers["fused"].data, copy=True)
    assert recompose_and_wait(qtbot, widget) == "done"
    np.testing.assert_array_equal(widget.output_layers["fused"].data, fused0)
    old_labels, old_fused, _, block, target = _paint_and_recompose(qtbot, widget, stack, blend="method's blending")
    new = widget.output_layers["fused"].data
    assert new.dtype == np.uint8 and new.shape == stack.shape[1:]
    inner = (slice(16, 24), slice(28, 37))  # far from the seams: the painted slice's values
    assert np.abs(new[inner].astype(int) - stack[target][inner].astype(int)).max() <= 1
    far = np.ones(old_labels.shape, bool)
    far[5:35, 15:50] = False
    np.testing.assert_array_equal(new[far], old_fused[far])


def test_channel_axis_reference_channel(qtbot, viewer, widget, grey_stack):
    # channel 0 carries the focus information, channel 1 is a scaled copy, channel 2 flat
    c1 = (grey_stack // 2).astype(np.uint16)
    c2 = np.full_like(grey_stack, 1000)
    data = np.stack([grey_stack, c1, c2], axis=1)  # (Z, C, Y, X)
    layer = viewer.add_image(data, name="zc")
    widget.set_stack_layer(layer, axis=0)
    widget.channels.setCurrentText("channel axis of the layer")
    widget.channel_axis.setValue(1)
    widget.reference_channel.setValue(0)
    assert run_and_wait(qtbot, widget) == "done", widget.status.text()
    names = [k for k in widget.output_layers if k.startswith("fused")]
    assert len(names) == 3
    labels = np.asarray(widget.output_layers["decision"].data).astype(int) - 1
    rows, cols = np.indices(labels.shape)
    f0 = widget.output_layers[names[0]].data
    f1 = widget.output_layers[names[1]].data
    np.testing.assert_array_equal(f0, grey_stack[labels, rows, cols])
    np.testing.assert_array_equal(f1, c1[labels, rows, cols])  # same decision applied
    assert np.all(widget.output_layers[names[2]].data == 1000)


def test_separate_channel_layers(qtbot, viewer, widget, grey_stack):
    other = (65535 - grey_stack).astype(np.uint16)
    ref_layer = viewer.add_image(grey_stack, name="dapi", colormap="blue")
    other_layer = viewer.add_image(other, name="gfp", colormap="green")
    widget.set_stack_layer(ref_layer)
    widget.set_channel_layers([other_layer])
    assert run_and_wait(qtbot, widget) == "done", widget.status.text()
    labels = np.asarray(widget.output_layers["decision"].data).astype(int) - 1
    rows, cols = np.indices(labels.shape)
    fg = widget.output_layers["fused [gfp]"]
    assert fg.colormap.name == "green"
    np.testing.assert_array_equal(fg.data, other[labels, rows, cols])
    np.testing.assert_array_equal(widget.output_layers["fused [dapi]"].data, grey_stack[labels, rows, cols])
    np.testing.assert_array_equal(other_layer.data, (65535 - grey_stack).astype(np.uint16))


def test_bad_paint_is_reported(qtbot, viewer, widget, grey_stack):
    layer = viewer.add_image(grey_stack, name="stack")
    widget.set_stack_layer(layer)
    assert widget.recompose() is None and "run the fusion first" in widget.status.text()
    assert run_and_wait(qtbot, widget) == "done"
    dec = widget.output_layers["decision"]
    bad = np.array(dec.data, copy=True)
    bad[0, 0] = grey_stack.shape[0] + 5
    dec.data = bad
    fused = np.array(widget.output_layers["fused"].data, copy=True)
    assert recompose_and_wait(qtbot, widget) == "error" and "slice index + 1" in widget.status.text()
    np.testing.assert_array_equal(widget.output_layers["fused"].data, fused)


# ---------------------------------------------------------------------------- crop, units, fallback, first view
def _shifted(stack, step=(1.5, -1.0), ref=1):
    """Slice ``k`` of ``stack`` moved by ``(k - ref) * step`` pixels (a known shift)."""
    from scipy import ndimage

    out = [
        np.rint(ndimage.shift(sl.astype(np.float64), ((k - ref) * step[0], (k - ref) * step[1]), order=1)).astype(
            np.uint16
        )
        for k, sl in enumerate(stack)
    ]
    return np.stack(out)


def test_crop_places_outputs_at_the_crop_offset(qtbot, viewer, widget, grey_stack):
    shifted = _shifted(grey_stack)
    layer = viewer.add_image(shifted, name="shifted", scale=(1.0, 0.5, 0.5), translate=(0.0, 10.0, 20.0))
    widget.set_stack_layer(layer)
    widget.align.setCurrentText("translation")
    widget.crop.setChecked(True)
    assert run_and_wait(qtbot, widget) == "done", widget.status.text()
    r0, r1, c0, c1 = widget.result.alignment.valid_box()
    # slices moved by (k - 1) * (1.5, -1) px, k = 0..3: the common area starts below row 1.5
    # and right of column 2 (the alignment's own box, checked against the known shift)
    n = shifted.shape[0]
    assert r0 in (1, 2, 3) and c0 in (n - 3, n - 2, n - 1), (r0, c0)
    expected = (10.0 + 0.5 * r0, 20.0 + 0.5 * c0)
    for key in ("fused", "decision", "height"):
        out = widget.output_layers[key]
        assert tuple(out.translate) == pytest.approx(expected), key
        assert tuple(out.scale) == pytest.approx((0.5, 0.5)), key
        assert out.data.shape[:2] == (r1 - r0, c1 - c0), key
    # no crop: back at the input's origin
    widget.crop.setChecked(False)
    assert run_and_wait(qtbot, widget) == "done"
    assert tuple(widget.output_layers["fused"].translate) == pytest.approx((10.0, 20.0))


def test_units_from_layer_heights_in_microns_and_consistent_surface(qtbot, viewer, widget, grey_stack):
    import warnings

    layer = viewer.add_image(grey_stack, name="stack", scale=(0.5, 0.2, 0.2), units=("µm", "µm", "µm"))
    widget.set_stack_layer(layer)
    assert widget.z_step.value() == pytest.approx(0.5)
    assert widget.pixel_size.value() == pytest.approx(0.2)
    assert widget.unit.text() == "micrometer" and widget.z_unit.text() == "micrometer"
    assert "from the layer" in widget.calibration_label.text()
    widget.refine.setCurrentText("none")
    widget.make_surface.setChecked(True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert run_and_wait(qtbot, widget) == "done", widget.status.text()
        viewer.dims.ndisplay = 3
        viewer.reset_view()
    assert not [w for w in caught if "Inconsistent units" in str(w.message)]
    # napari's canvas warns "Inconsistent units across layers" exactly when this is None
    assert viewer.layers.extent.units is not None
    h = np.asarray(widget.output_layers["height"].data)
    np.testing.assert_allclose(h / 0.5, np.rint(h / 0.5), atol=1e-5)  # slice positions k * 0.5 um
    assert h.max() > 0
    for key in ("fused", "decision", "height"):
        out = widget.output_layers[key]
        assert tuple(out.scale) == pytest.approx((0.2, 0.2)), key
        assert [str(u) for u in out.units] == ["micrometer", "micrometer"], key
    assert [str(u) for u in widget.output_layers["surface"].units] == ["micrometer"] * 3
    assert widget.output_layers["height"].metadata["napari_fusion"]["height_unit"] == "micrometer"


def test_typed_calibration_and_missing_calibration(qtbot, viewer, widget, grey_stack):
    layer = viewer.add_image(grey_stack, name="plain")
    widget.set_stack_layer(layer)
    assert widget.unit.text() == "pixel"
    assert "calibration missing: sizes in pixels/slices" in widget.calibration_label.text()
    # the user types the microscope's calibration: heights and pixels follow it
    widget.z_step.setValue(2.0)
    widget.pixel_size.setValue(0.25)
    widget.unit.setText("um")
    widget.unit.textEdited.emit("um")
    assert widget.z_unit.text() == "um"
    widget.refine.setCurrentText("none")
    assert run_and_wait(qtbot, widget) == "done", widget.status.text()
    height = widget.output_layers["height"]
    assert height.metadata["napari_fusion"]["height_unit"] == "um"
    assert tuple(height.scale) == pytest.approx((0.25, 0.25))
    assert str(height.units[0]) == "micrometer"
    np.testing.assert_allclose(np.asarray(height.data) % 2.0, 0.0, atol=1e-5)


def test_calibration_from_the_layers_file(qtbot, viewer, widget, grey_stack, monkeypatch):
    from napari.layers import Image
    from napari.layers._source import layer_source

    from napari_fusion._napari import _focal
    from napari_fusion.microscopy import Calibration

    seen = []

    def fake_read(path):
        seen.append(path)
        return Calibration((0.3, 0.3), 1.5, "µm", "test")

    monkeypatch.setattr("napari_fusion.io.read_calibration", fake_read)
    monkeypatch.setattr(_focal, "_CALIBRATIONS", {})
    with layer_source(path="/data/stack.ome.tif"):
        layer = Image(grey_stack, name="from file")
    viewer.add_layer(layer)
    widget.set_stack_layer(layer)
    assert seen == ["/data/stack.ome.tif"]
    assert widget.z_step.value() == pytest.approx(1.5) and widget.pixel_size.value() == pytest.approx(0.3)
    assert widget.unit.text() == "µm" and "from the file" in widget.calibration_label.text()


def test_alignment_fallback_is_reported(qtbot, viewer, widget, grey_stack):
    noisy = grey_stack.copy()
    rng = np.random.default_rng(0)
    noisy[2] = rng.integers(0, 65535, size=noisy[2].shape, dtype=np.uint16)
    layer = viewer.add_image(noisy, name="noisy")
    widget.set_stack_layer(layer)
    widget.align.setCurrentText("translation")
    assert run_and_wait(qtbot, widget) == "done", widget.status.text()
    al = widget.result.alignment
    assert al.fallback, "the noise slice should make at least one pair fall back"
    status = widget.status.text()
    assert "fallback" in status and f"{al.fallback[0][0]}-{al.fallback[0][1]}" in status
    assert "fell back" in widget.alignment_label.text()
    table = widget.alignment_label.toolTip().splitlines()
    assert "confidence" in table[0] and len(table) == noisy.shape[0] + 1
    assert any("FALLBACK" in row for row in table[1:])


def test_first_view_fused_on_top_with_its_own_contrast(qtbot, viewer, widget, grey_stack):
    # the input is displayed saturated (limits far below its values), like a bright DAPI nucleus
    layer = viewer.add_image(grey_stack, name="stack", contrast_limits=(0, 1000))
    widget.set_stack_layer(layer)
    assert run_and_wait(qtbot, widget) == "done", widget.status.text()
    fused, dec, height = (widget.output_layers[k] for k in ("fused", "decision", "height"))
    names = [ly.name for ly in viewer.layers]
    assert names[-1] == "fused"
    assert names.index("height") < names.index("fused") and names.index("decision") < names.index("fused")
    f = np.asarray(fused.data)
    lo, hi = fused.contrast_limits
    assert hi > 1000 and lo >= f.min() and hi <= f.max()
    assert hi == pytest.approx(np.percentile(f, 99.9), rel=0.02)
    assert dec.opacity == pytest.approx(0.5)
    assert not height.visible or height.opacity <= 0.5
    # a re-run keeps that order even after the user moved a map on top
    viewer.layers.move(viewer.layers.index(dec), len(viewer.layers))
    assert run_and_wait(qtbot, widget) == "done"
    assert viewer.layers[-1] is widget.output_layers["fused"]


def test_slice_ordered_colours_legend_and_paint_from_the_viewed_slice(qtbot, viewer, widget, grey_stack):
    from napari_fusion._napari._layers import slice_colours

    layer = viewer.add_image(grey_stack, name="stack", scale=(0.3, 0.5, 0.5), units=("um", "um", "um"))
    widget.set_stack_layer(layer)
    assert run_and_wait(qtbot, widget) == "done", widget.status.text()
    dec = widget.output_layers["decision"]
    n = grey_stack.shape[0]
    colours = np.asarray(dec.colormap.map(np.arange(1, n + 1)))
    np.testing.assert_allclose(colours, slice_colours(n), atol=1e-6)
    assert dec.colormap.map(np.array([0]))[0][3] == 0  # 0 (no decision) is transparent
    # sequential: every step between neighbouring slices is smaller than first-to-last
    steps = np.linalg.norm(np.diff(colours[:, :3], axis=0), axis=1)
    assert steps.max() < np.linalg.norm(colours[0, :3] - colours[-1, :3])
    # the legend: one row per slice, its z in the stack's unit
    assert not widget.legend.isHidden() and widget.legend.rowCount() == n
    assert widget.legend.horizontalHeaderItem(2).text() == "z (micrometer)"
    assert [widget.legend.item(k, 2).text() for k in (0, 2)] == ["0", "0.6"]
    # paint from the viewed slice: the brush label follows the slider over the stack
    widget.paint_from_view.setChecked(True)
    viewer.dims.set_current_step(0, 3)
    assert dec.selected_label == 4
    viewer.dims.set_current_step(0, 1)
    assert dec.selected_label == 2
    widget.paint_from_view.setChecked(False)
    viewer.dims.set_current_step(0, 2)
    assert dec.selected_label == 2  # off: the brush stays where the user put it


def test_retouch_redoes_only_the_painted_box_and_live_recompose_keeps_undo(qtbot, viewer, grey_stack):
    """With the default (soft) method, a stroke changes the fused image only near the stroke;
    live recompose runs after the stroke by itself and leaves napari's undo working."""
    from napari_fusion._napari._focal import FocalStackWidget

    w = FocalStackWidget(viewer)
    qtbot.addWidget(w)
    layer = viewer.add_image(grey_stack, name="stack")
    w.set_stack_layer(layer)
    assert run_and_wait(qtbot, w) == "done", w.status.text()
    dec = w.output_layers["decision"]
    before = np.array(w.output_layers["fused"].data, copy=True)
    painted = np.array(dec.data, copy=True)
    target = 1 if int(np.median(painted[40:50, 60:70])) != 1 else 2
    painted[40:50, 60:70] = target
    dec.data = painted
    assert recompose_and_wait(qtbot, w) == "done", w.status.text()
    after = np.asarray(w.output_layers["fused"].data)
    diff = after != before
    assert diff[40:50, 60:70].any()
    reach = 4 * 2**4  # pyramid blending (the default's): box grown by 64 px
    far = np.ones_like(diff)
    far[max(0, 40 - reach) : 50 + reach, max(0, 60 - reach) : 70 + reach] = False
    assert not diff[far].any()  # unpainted pixels outside the box keep the soft result
    # live: one paint stroke, no button press; undo still restores the labels
    w.live_recompose.setChecked(True)
    dec.selected_label = target
    labels_before_stroke = np.array(dec.data, copy=True)
    status_before = w.status.text()
    dec.paint((20, 20), target, refresh=True)
    qtbot.waitUntil(lambda: w.status.text() != status_before and w.status.text().startswith("recomposed"), timeout=5000)
    assert w.output_layers["decision"] is dec
    dec.undo()
    np.testing.assert_array_equal(dec.data, labels_before_stroke)


def test_live_recompose_prepares_kept_pyramids_and_strokes_use_them(qtbot, viewer, grey_stack, monkeypatch):
    """Switching live recompose on computes the slices' pyramids in a worker (progress, status);
    strokes then use them and give the recomputed-per-box result, keeping the user's contrast and
    layer order; a
    new run replaces them with its own; without the memory for them, the status says so and strokes still
    recompose."""
    from napari_fusion._napari import _focal
    from napari_fusion._napari._focal import FocalStackWidget, retouch_blend, retouched

    w = FocalStackWidget(viewer)
    qtbot.addWidget(w)
    w.set_stack_layer(viewer.add_image(grey_stack, name="stack"))
    assert run_and_wait(qtbot, w) == "done", w.status.text()
    assert w._kept is None
    with qtbot.waitSignal(w.run_finished, timeout=TIMEOUT_MS) as blocker:
        w.live_recompose.setChecked(True)
    assert blocker.args[0] == "done" and w.status.text().startswith("live retouch ready"), w.status.text()
    kept = w._kept
    assert kept is not None and kept.pyramids is not None and kept.pyramids.complete()
    assert w.prepare_retouch() is None  # nothing left to prepare
    result, job = w.result, w.job
    dec = w.output_layers["decision"]
    painted = np.array(dec.data, copy=True)
    target = 1 if int(np.median(painted[40:50, 60:70])) != 1 else 2
    painted[40:50, 60:70] = target
    dec.data = painted
    fused_layer = w.output_layers["fused"]
    lo, hi = fused_layer.contrast_limits
    fused_layer.contrast_limits = (lo + 0.1 * (hi - lo), hi - 0.1 * (hi - lo))  # the user's contrast
    users = tuple(fused_layer.contrast_limits)
    viewer.layers.move(viewer.layers.index(dec), len(viewer.layers))  # painting: the decision on top
    assert recompose_and_wait(qtbot, w) == "done", w.status.text()
    assert tuple(w.output_layers["fused"].contrast_limits) == users  # a stroke keeps it
    assert viewer.layers[-1] is dec  # and the user's layer order
    want = retouched(job, result, painted, blend=retouch_blend(result, w.blend.currentText()))[0]
    got = np.asarray(w.output_layers["fused"].data)
    assert np.abs(got.astype(np.int64) - want.astype(np.int64)).max() <= 1
    assert w._kept is kept  # a stroke keeps them
    assert run_and_wait(qtbot, w) == "done"
    # a new result drops them and, live recompose being on, prepares its own
    qtbot.waitUntil(lambda: w.status.text().startswith("live retouch ready") and w.worker is None, timeout=10_000)
    assert w._kept is not kept and w._kept.matches(w.job, w.result) and w._kept.ready()
    monkeypatch.setattr(_focal, "RETOUCH_PYRAMIDS_SHARE", 0.0)
    w._kept = w._kept_for(w.job, w.result)
    w.live_recompose.setChecked(False)
    assert w._kept is None  # switching live recompose off gives their memory back
    with qtbot.waitSignal(w.run_finished, timeout=TIMEOUT_MS):
        w.live_recompose.setChecked(True)
    assert "each stroke recomputes them" in w.status.text(), w.status.text()
    assert w._kept.pyramids is None
    dec = w.output_layers["decision"]
    painted = np.array(dec.data, copy=True)
    painted[10:20, 10:20] = target
    dec.data = painted
    assert recompose_and_wait(qtbot, w) == "done", w.status.text()


def test_a_stroke_while_the_pyramids_are_prepared_is_recomposed_after(qtbot, viewer, grey_stack, monkeypatch):
    import time

    from napari_fusion._napari._focal import FocalStackWidget
    from napari_fusion.focalstack.recompose import SlicePyramids

    real_warm = SlicePyramids.warm

    def slow_warm(self, progress=None):
        time.sleep(1.0)
        return real_warm(self, progress)

    monkeypatch.setattr(SlicePyramids, "warm", slow_warm)
    w = FocalStackWidget(viewer)
    qtbot.addWidget(w)
    w.set_stack_layer(viewer.add_image(grey_stack, name="stack"))
    assert run_and_wait(qtbot, w) == "done", w.status.text()
    before = np.array(w.output_layers["fused"].data, copy=True)
    dec = w.output_layers["decision"]
    target = 1 if int(np.median(np.asarray(dec.data)[20:40, 20:40])) != 1 else 2
    w.live_recompose.setChecked(True)
    assert w._preparing and w.status.text().startswith("preparing live retouch")
    dec.paint((30, 30), target, refresh=True)  # a stroke while the pyramids are computed
    qtbot.waitUntil(lambda: w.status.text().startswith("recomposed"), timeout=10_000)
    assert w._kept.pyramids.complete()
    assert (np.asarray(w.output_layers["fused"].data) != before).any()


def _stroke_and_recomputed(qtbot, widget, box, label) -> np.ndarray:
    """Paint ``box`` with ``label``, recompose in the widget, and return the fused image of the same
    stroke with the pyramids recomputed per box (``retouched`` without kept pyramids)."""
    from napari_fusion._napari._focal import retouch_blend, retouched

    dec = widget.output_layers["decision"]
    painted = np.array(dec.data, copy=True)
    painted[box] = label
    dec.data = painted
    job, result = widget.job, widget.result
    assert recompose_and_wait(qtbot, widget) == "done", widget.status.text()
    return retouched(job, result, painted, blend=retouch_blend(result, "pyramid"))[0]


def test_kept_pyramids_with_separate_channel_layers(qtbot, viewer, widget, grey_stack):
    """Pyramid retouch with kept pyramids on a two-channel job: every channel's fused layer is
    recomposed as with pyramids recomputed, and each keeps its contrast."""
    other = (65535 - grey_stack).astype(np.uint16)
    widget.set_stack_layer(viewer.add_image(grey_stack, name="dapi"))
    widget.set_channel_layers([viewer.add_image(other, name="gfp")])
    assert run_and_wait(qtbot, widget) == "done", widget.status.text()
    widget.blend.setCurrentText("pyramid")
    with qtbot.waitSignal(widget.run_finished, timeout=TIMEOUT_MS):
        widget.live_recompose.setChecked(True)
    assert widget._kept.pyramids is not None and widget._kept.pyramids.channels == 2, widget.status.text()
    limits = {k: tuple(widget.output_layers[k].contrast_limits) for k in ("fused [dapi]", "fused [gfp]")}
    want = _stroke_and_recomputed(qtbot, widget, (slice(30, 50), slice(40, 70)), 2)
    for c, key in enumerate(("fused [dapi]", "fused [gfp]")):
        got = np.asarray(widget.output_layers[key].data)
        assert np.abs(got.astype(np.int64) - want[..., c].astype(np.int64)).max() <= 1
        assert tuple(widget.output_layers[key].contrast_limits) == limits[key]


def test_kept_pyramids_on_an_aligned_cropped_stack(qtbot, viewer, widget, grey_stack):
    """The kept pyramids are those of the slices as fused (aligned, then cropped): a stroke gives
    the result of pyramids recomputed from the aligned slices."""
    widget.set_stack_layer(viewer.add_image(_shifted(grey_stack), name="shifted"))
    widget.align.setCurrentText("translation")
    widget.crop.setChecked(True)
    widget.blend.setCurrentText("pyramid")
    assert run_and_wait(qtbot, widget) == "done", widget.status.text()
    with qtbot.waitSignal(widget.run_finished, timeout=TIMEOUT_MS):
        widget.live_recompose.setChecked(True)
    pyramids = widget._kept.pyramids
    assert pyramids is not None and (pyramids.height, pyramids.width) == widget.result.fused.shape[:2]
    want = _stroke_and_recomputed(qtbot, widget, (slice(20, 40), slice(30, 60)), 1)
    got = np.asarray(widget.output_layers["fused"].data)
    assert np.abs(got.astype(np.int64) - want.astype(np.int64)).max() <= 1


def test_memory_limit_fuses_a_stack_too_large_for_it_tile_by_tile(qtbot, viewer, widget, grey_stack, monkeypatch):
    """The focal widget's memory limit (the command line's --memory-limit) holds in its worker:
    under a limit smaller than the stack needs, the same image is fused tile by tile; the limit
    does not outlive the run."""
    from napari_fusion import memory

    monkeypatch.delenv(memory.ENV_VAR, raising=False)
    layer = viewer.add_image(grey_stack, name="stack")
    widget.set_stack_layer(layer)
    seen: dict[float, tuple[bool, np.ndarray]] = {}
    original = widget._progress_callback
    for gib in (0.0, 0.25):
        messages: list[str] = []

        def spy(done, total, message, messages=messages):
            messages.append(message)
            return original(done, total, message)

        widget._progress_callback = spy
        widget.memory_limit.setValue(gib)
        assert run_and_wait(qtbot, widget) == "done", widget.status.text()
        tiled = any("tile" in m for m in messages)
        seen[gib] = (tiled, np.asarray(widget.output_layers["fused"].data).copy())
    assert not seen[0.0][0] and seen[0.25][0]
    np.testing.assert_array_equal(seen[0.25][1], seen[0.0][1])
    assert widget.memory_limit_bytes() == 2**28
    assert memory.headroom() == memory.HEADROOM_BYTES  # nothing left behind in this thread


def test_a_4d_layer_starts_on_the_axis_before_yx_and_a_negative_z_scale_is_a_distance(
    qtbot, viewer, widget, grey_stack
):
    tzyx = np.stack([grey_stack, grey_stack[::-1]])  # (T=2, Z, Y, X)
    layer = viewer.add_image(tzyx, name="tzyx", scale=(1.0, -0.4, 0.5, 0.5))
    widget.set_stack_layer(layer)
    assert widget.stack_axis.value() == 1 and widget.z_step.value() == pytest.approx(0.4)
    assert "negative" in widget.calibration_label.text()
    assert run_and_wait(qtbot, widget) == "done", widget.status.text()
    assert f"of {grey_stack.shape[0]} slices used" in widget.status.text()  # the z slices, not the 2 time points
    dec = np.asarray(widget.output_layers["decision"].data)
    assert dec.max() <= grey_stack.shape[0] and dec.max() > 2  # labels over the z slices, not the 2 time points
    other = viewer.add_image(grey_stack, name="zyx")
    widget.stack_layer.setCurrentIndex(widget.stack_layer.findText("zyx"))  # picked in the list
    assert widget.stack_axis.value() == 0
    widget.stack_layer.setCurrentIndex(widget.stack_layer.findText("tzyx"))
    assert widget.stack_axis.value() == 1
    assert other.data is grey_stack


def test_a_float16_stack_is_converted_without_loss_and_said(qtbot, viewer, widget, grey_stack):
    data = (grey_stack // 64).astype(np.float16)  # exact in float16
    layer = viewer.add_image(data, name="half")
    widget.set_stack_layer(layer)
    assert run_and_wait(qtbot, widget) == "done", widget.status.text()
    assert "'half' read as float32 (from float16" in widget.status.text()
    from napari_fusion.focalstack import fuse_focal_stack

    expected = fuse_focal_stack(data.astype(np.float32), method="focus_measure")
    np.testing.assert_array_equal(np.asarray(widget.output_layers["decision"].data), expected.labels.astype(int) + 1)
    assert layer.data.dtype == np.float16


def test_an_rgba_stack_is_fused_without_its_alpha_and_said(qtbot, viewer, widget, small_focal_stack):
    rgb = np.stack(small_focal_stack.slices)
    rgba = np.concatenate([rgb, np.full(rgb.shape[:3] + (1,), 255, np.uint8)], axis=-1)
    layer = viewer.add_image(rgba, rgb=True, name="rgba")
    widget.set_stack_layer(layer)
    assert run_and_wait(qtbot, widget) == "done", widget.status.text()
    assert "alpha channel of 'rgba' is ignored" in widget.status.text()
    from napari_fusion.focalstack import fuse_focal_stack

    expected = fuse_focal_stack(rgb, method="focus_measure")
    np.testing.assert_array_equal(np.asarray(widget.output_layers["decision"].data), expected.labels.astype(int) + 1)
    np.testing.assert_array_equal(layer.data, rgba)  # input untouched
