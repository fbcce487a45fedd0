"""The fusion dock widget in a real napari viewer (run under ``xvfb-run -a``)."""

from __future__ import annotations

import json
import threading
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("qtpy")
pytest.importorskip("pytestqt")

from napari_fusion import fuse, list_methods  # noqa: E402
from napari_fusion.registry import MethodOutput, Param, register_method, unregister_method  # noqa: E402

pytestmark = pytest.mark.gui

TIMEOUT_MS = 30_000


@pytest.fixture
def grey_pair(small_focal_stack):
    """Two uint16 grey slices (near and far focus) and the truth of which is sharper."""
    from skimage.color import rgb2gray

    s = small_focal_stack
    grey = [np.rint(rgb2gray(s.slices[k]) * 65535).astype(np.uint16) for k in (0, 3)]
    near = np.abs(s.depth - s.focus_depths[0]) <= np.abs(s.depth - s.focus_depths[3])
    return grey, np.where(near, 0, 1)


@pytest.fixture
def blocking_method():
    """A registered test method that blocks between progress reports until released."""
    state = SimpleNamespace(started=threading.Event(), release=threading.Event(), reports=0, finished=False)
    name = "_test_blocking"

    @register_method(
        name=name,
        title="Test: blocking",
        tasks=("multi-focus",),
        mode="nway",
        params=(
            Param("steps", 5, int, "Number of blocking steps.", low=1, high=50),
            Param("flag", True, bool, "A switch."),
            Param("flavour", "b", str, "A choice.", choices=("a", "b")),
            Param("eps", 1e-6, float, "A tiny constant.", low=1e-12, high=10.0),
        ),
        description="Test method: waits between progress reports.",
    )
    def _run(stack, *, ctx, steps, flag, flavour, eps):
        for i in range(steps):
            ctx.report(i, steps, f"step {i}")
            state.reports += 1
            state.started.set()
            assert state.release.wait(20)
        state.finished = True
        return MethodOutput(fused=stack.mean(0))

    yield state
    state.release.set()
    unregister_method(name)


def run_and_wait(qtbot, w) -> str:
    with qtbot.waitSignal(w.run_finished, timeout=TIMEOUT_MS) as blocker:
        assert w.run() is not None, w.status.text()
    return blocker.args[0]


def test_widget_lists_registry(widget):
    listed = [widget.method.itemData(i) for i in range(widget.method.count())]
    assert listed == [s.name for s in list_methods()]
    assert widget.current_method() == "focus_pyramid"
    widget.task.setCurrentText("multi-exposure")
    listed = [widget.method.itemData(i) for i in range(widget.method.count())]
    assert listed == [s.name for s in list_methods("multi-exposure")] and "mertens" in listed
    assert [widget.device.itemText(i) for i in range(widget.device.count())] == ["auto", "cpu", "cuda"]


def test_param_panel_is_generated_from_registry(widget, blocking_method):
    from qtpy.QtWidgets import QCheckBox, QComboBox, QDoubleSpinBox, QSpinBox

    from napari_fusion import get_method

    widget.set_method("focus_measure")
    ed = widget.params.editors
    assert list(ed) == [p.name for p in get_method("focus_measure").params]
    assert {"measure", "window", "smooth", "consistency", "blend"} <= set(ed)
    assert isinstance(ed["measure"], QComboBox)
    assert [ed["measure"].itemText(i) for i in range(ed["measure"].count())] == ["variance", "sml", "tenengrad"]
    assert isinstance(ed["window"], QSpinBox) and (ed["window"].minimum(), ed["window"].maximum()) == (0, 64)
    assert isinstance(ed["smooth"], QDoubleSpinBox) and ed["smooth"].value() == 2.0
    assert "Radius (pixels)" in ed["window"].toolTip()

    widget.set_method("gff")
    assert list(widget.params.editors) == [
        "base_radius",
        "saliency_sigma",
        "saliency_radius",
        "r1",
        "eps1",
        "r2",
        "eps2",
    ]
    eps2 = widget.params.editors["eps2"]
    assert eps2.value() == 1e-6 and eps2.text() == "1e-06"
    eps2.stepBy(1)  # log-scale range: one step is a factor of ten
    assert eps2.value() == pytest.approx(1e-5)

    # a method registered after the widget was built shows up with generated editors
    widget.refresh_methods()
    widget.set_method("_test_blocking")
    ed = widget.params.editors
    assert isinstance(ed["steps"], QSpinBox) and (ed["steps"].minimum(), ed["steps"].maximum()) == (1, 50)
    assert isinstance(ed["flag"], QCheckBox) and ed["flag"].isChecked()
    assert isinstance(ed["flavour"], QComboBox) and ed["flavour"].currentText() == "b"
    assert "A tiny constant." in ed["eps"].toolTip()
    assert widget.params.values() == {"steps": 5, "flag": True, "flavour": "b", "eps": 1e-6}

    # edits are remembered per method for the session, and reset restores defaults
    widget.set_method("focus_measure")
    widget.params.editors["window"].setValue(7)
    widget.set_method("gff")
    widget.set_method("focus_measure")
    assert widget.params.values()["window"] == 7
    widget.params.reset()
    assert widget.params.values()["window"] == 4


def test_two_image_layers_give_three_outputs_and_rerun_updates_in_place(qtbot, viewer, widget, grey_pair):
    images, truth = grey_pair
    meta = {"acquisition": "test"}
    a = viewer.add_image(images[0], name="near", scale=(0.5, 0.25), translate=(10.0, 20.0), metadata=meta)
    b = viewer.add_image(images[1], name="far", scale=(0.5, 0.25), translate=(10.0, 20.0))
    before = [images[0].copy(), images[1].copy()]
    widget.set_image_layers([a, b])
    widget.set_method("focus_measure")
    widget.device.setCurrentText("cpu")
    n_layers = len(viewer.layers)

    assert run_and_wait(qtbot, widget) == "done", widget.status.text()
    fused, dec, depth = (widget.output_layers[k] for k in ("fused", "decision", "depth"))
    assert len(viewer.layers) == n_layers + 3
    assert fused.data.dtype == np.uint16 and fused.data.shape == images[0].shape
    expected = fuse(images, method="focus_measure", device="cpu")
    np.testing.assert_array_equal(fused.data, expected.fused)
    for layer in (fused, dec, depth):
        assert tuple(layer.scale) == (0.5, 0.25) and tuple(layer.translate) == (10.0, 20.0)
    assert fused.metadata["acquisition"] == "test"
    assert fused.metadata["napari_fusion"]["method"] == "focus_measure"
    assert fused.metadata["napari_fusion"]["sources"] == ["near", "far"]

    # decision: label = source index + 1, features name each source
    from napari.layers import Image, Labels

    assert isinstance(dec, Labels) and isinstance(fused, Image) and isinstance(depth, Image)
    assert set(np.unique(dec.data)) <= {1, 2}
    np.testing.assert_array_equal(dec.data, expected.labels.astype(int) + 1)
    assert list(dec.features["index"]) == [1, 2]
    assert list(dec.features["source"]) == ["near", "far"]
    assert np.mean(dec.data - 1 == truth) > 0.7  # the sharper source wins most pixels
    assert depth.data.dtype == np.float32
    np.testing.assert_array_equal(depth.data, (dec.data - 1).astype(np.float32))

    # input layers untouched
    np.testing.assert_array_equal(a.data, before[0])
    np.testing.assert_array_equal(b.data, before[1])
    assert a.metadata == meta and "napari_fusion" not in a.metadata

    # re-run with other parameters: same layer objects, new data
    old_fused = fused.data.copy()
    widget.params.editors["window"].setValue(0)
    widget.params.editors["consistency"].setValue(0)
    widget.params.editors["smooth"].setValue(0.0)
    assert run_and_wait(qtbot, widget) == "done"
    assert widget.output_layers["fused"] is fused and widget.output_layers["decision"] is dec
    assert widget.output_layers["depth"] is depth
    assert len(viewer.layers) == n_layers + 3
    assert fused.metadata["napari_fusion"]["params"]["window"] == 0
    assert not np.array_equal(fused.data, old_fused)
    expected = fuse(images, method="focus_measure", device="cpu", window=0, consistency=0, smooth=0.0)
    np.testing.assert_array_equal(fused.data, expected.fused)

    # a method without a decision: the stale decision/depth layers are removed
    widget.set_method("average")
    assert run_and_wait(qtbot, widget) == "done"
    assert widget.output_layers["fused"] is fused and fused in viewer.layers
    assert dec not in viewer.layers and depth not in viewer.layers
    np.testing.assert_array_equal(fused.data, fuse(images, method="average").fused)
    np.testing.assert_array_equal(a.data, before[0])
    np.testing.assert_array_equal(b.data, before[1])


def test_stack_layer_rgb_with_physical_z(qtbot, viewer, widget, small_focal_stack):
    s = small_focal_stack  # (4, 96, 128, 3) uint8
    stack = viewer.add_image(s.slices, name="stack", rgb=True, scale=(2.5, 1.0, 1.0), translate=(100.0, 0.0, 0.0))
    before = s.slices.copy()
    widget.set_stack_layer(stack, axis=0)
    assert widget.z_step.value() == 2.5
    widget.set_method("focus_measure")
    assert run_and_wait(qtbot, widget) == "done", widget.status.text()
    fused, dec, depth = (widget.output_layers[k] for k in ("fused", "decision", "depth"))
    assert fused.rgb and fused.data.dtype == np.uint8 and fused.data.shape == (96, 128, 3)
    expected = fuse(s.slices, method="focus_measure")
    np.testing.assert_array_equal(fused.data, expected.fused)
    assert list(dec.features["source"]) == [f"stack [{k}]" for k in range(4)]
    # depth in the stack axis' physical units: translate + scale * slice index
    np.testing.assert_allclose(depth.data, 100.0 + 2.5 * (dec.data.astype(np.float32) - 1))
    assert list(dec.features["z"]) == [100.0, 102.5, 105.0, 107.5]
    assert tuple(fused.scale) == (1.0, 1.0)
    np.testing.assert_array_equal(stack.data, before)


def test_rgb_image_layers(qtbot, viewer, widget, small_focal_stack):
    s = small_focal_stack
    layers = [viewer.add_image(s.slices[k], name=f"rgb{k}", rgb=True) for k in (0, 2, 3)]
    widget.set_image_layers(layers)
    widget.set_method("laplacian_pyramid")
    assert run_and_wait(qtbot, widget) == "done", widget.status.text()
    fused = widget.output_layers["fused"]
    assert fused.rgb and fused.data.dtype == np.uint8 and fused.data.shape == s.slices[0].shape
    expected = fuse([s.slices[k] for k in (0, 2, 3)], method="laplacian_pyramid")
    np.testing.assert_array_equal(fused.data, expected.fused)
    assert list(widget.output_layers["decision"].features["source"]) == ["rgb0", "rgb2", "rgb3"]
    for k, layer in zip((0, 2, 3), layers):
        np.testing.assert_array_equal(layer.data, s.slices[k])


def test_stack_axis_and_other_axes_at_viewer_position(qtbot, viewer, widget, grey_pair):
    images, _ = grey_pair
    # (T=2, Z=2, Y, X): time point 1 has the two slices swapped
    tz = np.stack([np.stack(images), np.stack(images[::-1])])
    layer = viewer.add_image(tz, name="tz")
    widget.set_stack_layer(layer, axis=1)
    viewer.dims.set_current_step(0, 1)
    widget.set_method("focus_measure")
    assert run_and_wait(qtbot, widget) == "done", widget.status.text()
    dec = widget.output_layers["decision"]
    expected = fuse(images[::-1], method="focus_measure")
    np.testing.assert_array_equal(dec.data, expected.labels.astype(int) + 1)
    assert widget.output_layers["fused"].metadata["napari_fusion"]["fixed_indices"] == {"0": 1}
    assert list(dec.features["z"]) == [0.0, 1.0]  # layer scale 1 along the stack axis
    widget.z_step.setValue(0.5)  # user override of the z step
    assert run_and_wait(qtbot, widget) == "done"
    assert list(dec.features["z"]) == [0.0, 0.5]
    np.testing.assert_array_equal(widget.output_layers["depth"].data, 0.5 * (dec.data - 1))


def test_cancel_stops_a_running_fusion(qtbot, viewer, widget, grey_pair, blocking_method):
    images, _ = grey_pair
    a = viewer.add_image(images[0], name="a")
    b = viewer.add_image(images[1], name="b")
    widget.set_image_layers([a, b])
    widget.refresh_methods()
    widget.set_method("_test_blocking")
    n_layers = len(viewer.layers)
    with qtbot.waitSignal(widget.run_finished, timeout=TIMEOUT_MS) as blocker:
        worker = widget.run()
        assert worker is not None
        # the GUI thread keeps processing events while the worker is blocked
        qtbot.waitUntil(blocking_method.started.is_set, timeout=TIMEOUT_MS)
        assert not widget.run_button.isEnabled() and widget.cancel_button.isEnabled()
        widget.cancel_button.click()
        blocking_method.release.set()
    assert blocker.args == ["cancelled"]
    assert blocking_method.reports == 1 and not blocking_method.finished
    assert len(viewer.layers) == n_layers and widget.output_layers == {}
    assert widget.run_button.isEnabled() and not widget.cancel_button.isEnabled()
    assert "cancelled" in widget.status.text()
    assert widget.worker is None

    # the same method runs to the end when not cancelled
    blocking_method.started.clear()
    widget.params.editors["steps"].setValue(2)
    assert run_and_wait(qtbot, widget) == "done"
    assert blocking_method.finished and set(widget.output_layers) == {"fused"}


def test_bad_input_is_reported_not_raised(qtbot, viewer, widget, grey_pair):
    images, _ = grey_pair
    a = viewer.add_image(images[0], name="only one")
    widget.set_image_layers([a])
    assert widget.run() is None
    assert "at least two" in widget.status.text()
    b = viewer.add_image(images[1][:50], name="smaller")
    widget.set_image_layers([a, b])
    assert run_and_wait(qtbot, widget) == "error"
    assert "different sizes" in widget.status.text()
    assert widget.output_layers == {}


def test_rgba_layers_lose_their_alpha_and_off_grid_layers_are_noted(qtbot, viewer, widget, small_focal_stack):
    s = small_focal_stack
    alpha = np.full(s.slices[0].shape[:2] + (1,), 255, np.uint8)
    rgba = [np.concatenate([s.slices[k], alpha], axis=-1) for k in (0, 3)]
    layers = [viewer.add_image(a, rgb=True, name=f"rgba{k}") for k, a in enumerate(rgba)]
    widget.set_image_layers(layers)
    widget.set_method("focus_measure")
    assert run_and_wait(qtbot, widget) == "done", widget.status.text()
    text = widget.status.text()
    assert "alpha channel of 'rgba0' is ignored" in text and "not on one pixel grid" not in text
    expected = fuse([s.slices[0], s.slices[3]], method="focus_measure")
    np.testing.assert_array_equal(widget.output_layers["fused"].data, expected.fused)
    for layer, a in zip(layers, rgba):
        np.testing.assert_array_equal(layer.data, a)  # inputs untouched
    layers[1].scale = (2.0, 2.0)
    assert run_and_wait(qtbot, widget) == "done"
    assert "not on one pixel grid" in widget.status.text() and "take 'rgba0''s geometry" in widget.status.text()


@pytest.mark.parametrize(("dtype", "read_as"), [(np.float16, "float32"), (np.int64, "float64"), (bool, "uint8")])
def test_layers_of_a_dtype_that_converts_without_loss_are_fused(qtbot, viewer, widget, grey_pair, dtype, read_as):
    images, _ = grey_pair
    data = [(im > 30000) if dtype is bool else (im // 64).astype(dtype) for im in images]
    layers = [viewer.add_image(d, name=f"s{k}") for k, d in enumerate(data)]
    widget.set_image_layers(layers)
    widget.set_method("focus_measure")
    assert run_and_wait(qtbot, widget) == "done", widget.status.text()
    assert f"'s0' read as {read_as}" in widget.status.text()
    expected = fuse([d.astype(read_as) for d in data], method="focus_measure")
    np.testing.assert_array_equal(widget.output_layers["decision"].data, expected.labels.astype(int) + 1)
    for layer, d in zip(layers, data):
        assert layer.data.dtype == np.dtype(dtype)  # the layers keep their data
        np.testing.assert_array_equal(layer.data, d)


def test_plugin_in_real_viewer_sample_data_run_rerun_and_writer(qtbot, make_napari_viewer, tmp_path):
    """The whole path a user takes: plugin menu, sample data, run, re-run, save."""
    import tifffile

    from napari_fusion._napari._widget import FusionWidget

    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-fusion", "Image fusion")
    assert isinstance(widget, FusionWidget)

    viewer.open_sample("napari-fusion", "focal_stack")
    stack = viewer.layers["focal stack"]
    truth = viewer.layers["all-in-focus truth"].data
    assert stack.rgb and stack.data.shape == (6, 256, 256, 3) and stack.data.dtype == np.uint8
    before = np.array(stack.data, copy=True)
    widget.set_stack_layer(stack)
    assert run_and_wait(qtbot, widget) == "done", widget.status.text()
    fused, dec = widget.output_layers["fused"], widget.output_layers["decision"]
    n_layers = len(viewer.layers)
    from napari_fusion._napari._layers import slice_colours

    np.testing.assert_allclose(dec.colormap.map(np.arange(1, 7)), slice_colours(6), atol=1e-6)  # slice order

    def psnr(x):
        err = np.mean((x.astype(float) - truth.astype(float)) ** 2)
        return 10 * np.log10(255.0**2 / err)

    best_slice = max(psnr(sl) for sl in stack.data)
    assert psnr(fused.data) > best_slice + 3  # fusion beats every single slice

    widget.params.editors["smooth"].setValue(3.0)
    assert run_and_wait(qtbot, widget) == "done"
    assert widget.output_layers["fused"] is fused and widget.output_layers["decision"] is dec
    assert len(viewer.layers) == n_layers
    assert fused.metadata["napari_fusion"]["params"]["smooth"] == 3.0
    np.testing.assert_array_equal(stack.data, before)

    viewer.open_sample("napari-fusion", "exposure_series")
    series = viewer.layers["exposure series"]
    assert series.data.shape == (3, 256, 256, 3) and series.data.dtype == np.uint8
    assert series.data[0].mean() < series.data[1].mean() < series.data[2].mean()

    # writer keeps dtype and data and records provenance
    out = tmp_path / "decision.tif"
    viewer.layers.selection = {dec}
    written = viewer.layers.save(str(out), selected=True, plugin="napari-fusion")
    assert written == [str(out)]
    with tifffile.TiffFile(out) as tif:
        back = tif.asarray()
        desc = json.loads(tif.pages[0].description)
    assert back.dtype == dec.data.dtype
    np.testing.assert_array_equal(back, dec.data)
    assert desc["napari_fusion"]["method"] == "focus_pyramid"


def _tile_messages(widget):
    seen = []
    original = widget._progress_callback

    def spy(done, total, message):
        seen.append(message)
        return original(done, total, message)

    widget._progress_callback = spy
    return seen


def test_lazy_stack_layer_is_fused_tile_by_tile_with_tile_progress(qtbot, viewer, widget, grey_pair):
    import dask.array as da

    from napari_fusion._napari._widget import TILING_LAZY, TILING_OFF

    images, _ = grey_pair  # 2 x (96, 128) uint16
    stack = np.stack(images)
    layer = viewer.add_image(da.from_array(stack, chunks=(1, 48, 64)), name="lazy")
    assert widget.tiling.currentText() == TILING_OFF
    widget.set_stack_layer(layer, axis=0)
    assert widget.tiling.currentText() == TILING_LAZY  # background tiles: chosen for a dask layer
    widget.tile_size.setValue(64)
    widget.set_method("focus_measure")
    messages = _tile_messages(widget)
    assert run_and_wait(qtbot, widget) == "done", widget.status.text()
    fused, dec = widget.output_layers["fused"], widget.output_layers["decision"]
    assert isinstance(fused.data, np.ndarray)
    expected = fuse(stack, method="focus_measure")
    np.testing.assert_allclose(fused.data.astype(np.float64), expected.fused.astype(np.float64), atol=1)
    assert (np.asarray(dec.data) == expected.labels + 1).mean() > 0.999
    tiles = [m for m in messages if m.startswith("tile ")]
    assert tiles and tiles[-1] == "tile 4/4"  # (96, 128) in tiles of 64: 2 x 2


def test_background_tiles_fill_the_layers_each_tile_once(qtbot, viewer, widget, grey_pair, monkeypatch):
    from napari_fusion import tiling
    from napari_fusion._napari import _widget as W

    images, _ = grey_pair
    a = viewer.add_image(images[0], name="a")
    b = viewer.add_image(images[1], name="b")
    widget.set_image_layers([a, b])
    widget.set_method("focus_measure")
    widget.tiling.setCurrentText(W.TILING_LAZY)
    widget.tile_size.setValue(64)
    monkeypatch.setattr(W, "REFRESH_SECONDS", 0.0)  # refresh after every tile
    calls = []
    real = tiling.TileJob.run

    def counting(self, block, block_box, core):
        calls.append(core)
        return real(self, block, block_box, core)

    monkeypatch.setattr(tiling.TileJob, "run", counting)
    yielded = []
    with qtbot.waitSignal(widget.run_finished, timeout=TIMEOUT_MS) as blocker:
        worker = widget.run()
        worker.yielded.connect(lambda v: yielded.append(v[0]))
    assert blocker.args == ["done"], widget.status.text()
    fused, dec, depth = (widget.output_layers[k] for k in ("fused", "decision", "depth"))
    assert all(isinstance(ly.data, np.ndarray) for ly in (fused, dec, depth))
    assert "4 tiles done" in widget.status.text()
    assert len(calls) == 4 and len(set(calls)) == 4  # each tile once, for all three outputs
    assert yielded[0] == "layers" and yielded.count("refresh") >= 1
    expected = fuse(images, method="focus_measure")
    np.testing.assert_array_equal(dec.data, expected.labels + 1)
    np.testing.assert_array_equal(fused.data, expected.fused)
    np.testing.assert_array_equal(depth.data, expected.depth)
    assert widget.output_layers["fused"] is viewer.layers[-1]  # the fused image on top


def test_tile_order_starts_at_the_view_centre():
    from napari_fusion._napari._widget import _tile_order
    from napari_fusion.tiling import TileGrid

    grid = TileGrid(shape=(300, 300), tile=(100, 100), halo=0)
    assert _tile_order(grid, None)[:2] == [(0, 0), (0, 1)]
    order = _tile_order(grid, (260.0, 40.0))
    assert order[0] == (2, 0) and set(order) == {(i, j) for i in range(3) for j in range(3)}


def test_cancel_stops_tiled_fusion_early(qtbot, viewer, widget, grey_pair):
    """Cancel during the first tile (tiles pass the method's reports on: "tile 1/4: ...") stops
    the run there; at most the tiles already running report."""
    import re

    from napari_fusion._napari._widget import TILING_NOW

    images, _ = grey_pair
    a = viewer.add_image(images[0], name="a")
    b = viewer.add_image(images[1], name="b")
    widget.set_image_layers([a, b])
    widget.set_method("focus_measure")
    widget.tiling.setCurrentText(TILING_NOW)
    widget.tile_size.setValue(64)
    original = widget._progress_callback
    seen = []

    def cancel_in_first_tile(done, total, message):
        tile = re.match(r"tile (\d+)/", message)
        if tile:
            seen.append(int(tile.group(1)))
            widget._cancel.set()  # as the Cancel button does
        return original(done, total, message)

    widget._progress_callback = cancel_in_first_tile
    with qtbot.waitSignal(widget.run_finished, timeout=TIMEOUT_MS) as blocker:
        assert widget.run() is not None
    assert blocker.args == ["cancelled"]
    assert widget.output_layers == {}
    assert seen and max(seen) <= 2  # two tiles run side by side at most (2 cores); 4 in all


@pytest.mark.parametrize("tiling_mode", ["now", "background"])
def test_memory_limit_fits_the_tiles_of_a_run_to_it(qtbot, viewer, widget, monkeypatch, tiling_mode):
    """The widget's memory limit (the command line's --memory-limit) holds in its worker thread:
    a limit below the process's own share gives the smallest tiles (128 px: 3 x 3 on 300^2), none
    gives one 1024 tile; the limit does not outlive the run."""
    import re

    from napari_fusion import memory
    from napari_fusion._napari import _widget as W

    monkeypatch.delenv(memory.ENV_VAR, raising=False)
    rng = np.random.default_rng(4)
    a = viewer.add_image(rng.random((300, 300)).astype(np.float32), name="a")
    b = viewer.add_image(np.roll(a.data, 5, 0) ** 2, name="b")
    widget.set_image_layers([a, b])
    widget.set_method("focus_measure")
    widget.tiling.setCurrentText(W.TILING_NOW if tiling_mode == "now" else W.TILING_LAZY)
    widget.tile_size.setValue(1024)
    counts = {}
    for gib in (0.0, 0.25):
        widget.memory_limit.setValue(gib)
        messages = _tile_messages(widget)
        assert run_and_wait(qtbot, widget) == "done", widget.status.text()
        totals = {int(m.group(1)) for m in map(re.compile(r"tile \d+/(\d+)").match, messages) if m}
        counts[gib] = totals
    assert counts == {0.0: {1}, 0.25: {9}}
    assert widget.memory_limit_bytes() == 2**28
    assert memory.headroom() == memory.HEADROOM_BYTES  # nothing left behind in this thread


def test_weights_status_line_for_learned_methods(widget, monkeypatch, tmp_path):
    monkeypatch.setenv("NAPARI_FUSION_VGG19_WEIGHTS", str(tmp_path / "absent.pth"))
    widget.set_method("li2018_vgg19")
    text = widget.weights_status.text()
    assert "MISSING" in text and "napari-fusion weights fetch vgg19" in text
    present = tmp_path / "vgg19.pth"
    present.write_bytes(b"not checked here")
    monkeypatch.setenv("NAPARI_FUSION_VGG19_WEIGHTS", str(present))
    widget.set_method("gff")
    assert widget.weights_status.text() == ""  # classical: no weights line
    widget.set_method("li2018_vgg19")
    assert "found" in widget.weights_status.text() and str(present) in widget.weights_status.text()
    widget.set_method("liu2017_cnn")
    assert "shipped with napari-fusion" in widget.weights_status.text()


def test_first_view_fused_on_top_translucent_maps_and_own_contrast(qtbot, viewer, widget, small_focal_stack):
    from skimage.color import rgb2gray

    grey = np.stack([np.rint(rgb2gray(sl) * 65535).astype(np.uint16) for sl in small_focal_stack.slices])
    stack = viewer.add_image(grey, name="stack", contrast_limits=(0, 1000))  # input shown saturated
    widget.set_stack_layer(stack, axis=0)
    widget.set_method("focus_measure")
    assert run_and_wait(qtbot, widget) == "done", widget.status.text()
    fused, dec, depth = (widget.output_layers[k] for k in ("fused", "decision", "depth"))
    assert viewer.layers[-1] is fused
    assert viewer.layers.index(depth) < viewer.layers.index(fused)
    assert viewer.layers.index(dec) < viewer.layers.index(fused)
    assert dec.opacity == pytest.approx(0.5) and depth.opacity == pytest.approx(0.5)
    lo, hi = fused.contrast_limits
    f = np.asarray(fused.data)
    assert hi > 1000 and hi == pytest.approx(np.percentile(f, 99.9), rel=0.02) and lo >= f.min()


def test_liu2017_on_a_lazy_stack_is_fused_tile_by_tile(qtbot, viewer, widget, grey_pair):
    """A dask stack switches tiling on; liu2017_cnn (small-region removal over the whole decision,
    a whole-image step) is fused tile by tile in the background and gives the untiled result."""
    import dask.array as da

    from napari_fusion._napari._widget import TILING_LAZY

    images, _ = grey_pair
    stack = np.stack(images)
    layer = viewer.add_image(da.from_array(stack, chunks=(1, 48, 64)), name="lazy")
    widget.set_stack_layer(layer, axis=0)
    assert widget.tiling.currentText() == TILING_LAZY
    widget.tile_size.setValue(32)
    widget.set_method("liu2017_cnn")
    assert run_and_wait(qtbot, widget) == "done", widget.status.text()
    assert "global" not in widget.status.text() and "tile" in widget.status.text()
    expected = fuse(stack, method="liu2017_cnn")
    np.testing.assert_array_equal(widget.output_layers["fused"].data, expected.fused)
    np.testing.assert_array_equal(widget.output_layers["decision"].data, expected.labels + 1)
    assert isinstance(layer.data, da.Array)  # the input layer is left as it was


@pytest.fixture
def global_method():
    """A method that declares itself global (halo None), registered before the widget is made."""
    import torch

    from napari_fusion.registry import MethodOutput, temporary_method

    def run(stack, *, ctx):
        return MethodOutput(
            fused=(stack[0] - stack[0].mean() + 0.5).clamp(0, 1), labels=torch.zeros(stack.shape[-2:]).long()
        )

    with temporary_method(
        run, name="_global", title="t", tasks=("multi-focus",), mode="nway", outputs=("fused", "labels"), halo=None
    ) as spec:
        yield spec.name


def test_global_method_on_a_lazy_stack_is_fused_whole_with_a_note(qtbot, global_method, viewer, widget, grey_pair):
    """A global method (every output pixel may depend on the whole image) is fused in memory
    instead of being refused, and the status says so."""
    import dask.array as da

    images, _ = grey_pair
    stack = np.stack(images)
    layer = viewer.add_image(da.from_array(stack, chunks=(1, 48, 64)), name="lazy")
    widget.set_stack_layer(layer, axis=0)
    widget.set_method(global_method)
    assert run_and_wait(qtbot, widget) == "done", widget.status.text()
    assert "global (cannot be tiled)" in widget.status.text()
    expected = fuse(stack, method=global_method)
    np.testing.assert_array_equal(widget.output_layers["fused"].data, expected.fused)


def test_display_pyramid_is_views_of_one_buffer_above_2048():
    from napari_fusion._napari._layers import PYRAMID_TOP, display_pyramid, full_resolution

    small = np.zeros((2048, 1000), np.float32)
    assert display_pyramid(small) is small
    grey = np.zeros((4097, 3000), np.uint16)
    levels = display_pyramid(grey)
    assert [lv.shape for lv in levels] == [(4097, 3000), (2049, 1500), (1025, 750), (513, 375)]
    assert max(levels[-1].shape) <= PYRAMID_TOP < max(levels[-2].shape)
    grey[4096, 2992] = 7  # a tile written into the buffer shows at every level that samples it
    assert levels[2][1024, 748] == 7 and levels[3][512, 374] == 7
    assert full_resolution(levels) is grey
    rgb = np.zeros((3000, 2100, 3), np.uint8)
    assert [lv.shape for lv in display_pyramid(rgb, rgb=True)] == [(3000, 2100, 3), (1500, 1050, 3), (750, 525, 3)]


def test_writer_writes_a_multiscale_layer_at_full_resolution(tmp_path):
    import tifffile

    from napari_fusion._napari._io import write_tiff
    from napari_fusion._napari._layers import display_pyramid

    data = np.arange(2500 * 2200, dtype=np.uint16).reshape(2500, 2200)
    written = write_tiff(str(tmp_path / "fused.tif"), display_pyramid(data), {"name": "fused"})
    np.testing.assert_array_equal(tifffile.imread(written[0]), data)


@pytest.mark.parametrize("tiling_mode", ["now", "background"])
@pytest.mark.parametrize("name", [s.name for s in list_methods()])
def test_every_method_fuses_a_dask_stack_in_tiles(qtbot, viewer, widget, grey_pair, name, tiling_mode):
    """Issue 19: the widget fuses a dask stack with every registered method, in tiles computed now
    or in the background, and gives what the library's tiled run gives (which the method contract
    compares with the untiled result). A method whose weights are missing ends with the way to get
    them, never a traceback."""
    import dask.array as da

    from napari_fusion._napari import _widget as W
    from napari_fusion.weights import method_weights_status

    images, _ = grey_pair
    stack = np.stack(images)
    layer = viewer.add_image(da.from_array(stack, chunks=(1, 48, 64)), name="lazy")
    widget.set_stack_layer(layer, axis=0)
    widget.tiling.setCurrentText(W.TILING_NOW if tiling_mode == "now" else W.TILING_LAZY)
    widget.tile_size.setValue(64)
    widget.set_method(name)
    missing = [st for st in method_weights_status(name) if not st.found]
    result = run_and_wait(qtbot, widget)
    if missing:
        assert result == "error" and "napari-fusion weights fetch" in widget.status.text(), widget.status.text()
        return
    assert result == "done", widget.status.text()
    fused = widget.output_layers["fused"].data
    assert isinstance(fused, np.ndarray) and fused.shape == stack.shape[1:] and fused.dtype == stack.dtype
    want = fuse(stack, method=name, chunks=64).compute()
    np.testing.assert_allclose(fused.astype(np.float64), want.fused.astype(np.float64), atol=1)
    if want.labels is not None:
        assert (np.asarray(widget.output_layers["decision"].data) == want.labels + 1).mean() > 0.999
    assert isinstance(layer.data, da.Array)  # the input layer is left as it was


def test_runtime_error_in_background_tiles_ends_the_run(qtbot, viewer, widget, grey_pair):
    """superqt's generator worker ends silently on a RuntimeError (it takes it for a deleted
    worker): the run never finished and Run stayed disabled. Torch errors and missing weights are
    RuntimeErrors; the run must end with the error on the status line."""
    from napari_fusion._napari import _widget as W
    from napari_fusion.registry import temporary_method

    def run(stack, *, ctx):
        raise RuntimeError("boom inside a tile")

    with temporary_method(run, name="_raises", title="t", tasks=("multi-focus",), mode="nway", halo=0) as spec:
        images, _ = grey_pair
        a, b = viewer.add_image(images[0], name="a"), viewer.add_image(images[1], name="b")
        widget.set_image_layers([a, b])
        widget.set_method(spec.name)
        widget.tiling.setCurrentText(W.TILING_LAZY)
        widget.tile_size.setValue(64)
        assert run_and_wait(qtbot, widget) == "error"
        assert "boom inside a tile" in widget.status.text() and widget.run_button.isEnabled()


def test_a_4d_stack_layer_starts_on_the_axis_before_yx(qtbot, viewer, widget, grey_pair):
    images, _ = grey_pair
    tz = np.stack([np.stack(images), np.stack(images[::-1])])  # (T=2, Z=2, Y, X)
    layer = viewer.add_image(tz, name="tz", scale=(1.0, -0.5, 1.0, 1.0))
    widget.set_stack_layer(layer)
    assert widget.stack_axis.value() == 1 and widget.z_step.value() == pytest.approx(0.5)
    viewer.add_image(np.stack(images), name="zyx")
    widget.stack_layer.setCurrentIndex(widget.stack_layer.findText("zyx"))  # picked in the list
    assert widget.stack_axis.value() == 0
    widget.stack_layer.setCurrentIndex(widget.stack_layer.findText("tz"))
    assert widget.stack_axis.value() == 1
    widget.set_stack_layer(layer, axis=0)  # an explicit axis wins
    assert widget.stack_axis.value() == 0
