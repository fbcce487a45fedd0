"""Regenerate the screenshots of the napari "Focal stack" widget used in the docs.

Runs a REAL napari window, so it needs a display; on a headless machine use a
virtual one::

    QT_QPA_PLATFORM=xcb xvfb-run -a -s "-screen 0 1600x1000x24" python docs/make_screenshots.py

(with ``PYTHONPATH=src`` from a source checkout; ``NAPARI_FUSION_DATA`` for the
DAPI screenshot, which is skipped when the data is absent). Writes PNGs under
docs/images/ (downsized and colour-quantised to stay small):

* ``focal_first_view.png`` - the window exactly as a run leaves it: the fused
  image on top (contrast from its own values), the translucent decision and
  height beneath, the slice legend in the dock;
* ``focal_widget.png`` - the same run with the decision labels moved on top:
  the slice-ordered (viridis) colours and the legend of slice, z and colour;
* ``focal_retouch.png`` - retouching: "paint from the viewed slice" with the
  viewer on slice 5, one brush stroke, "live recompose" redoing only its box;
* ``focal_surface.png`` - the height map as a 3-D surface textured with the
  fused image (the sample's slices are put 20 pixels apart so the relief shows);
* ``focal_dapi_height.png`` - the real DAPI widefield stack (300 nm z-step, 130 nm
  pixels): the height map in microns beside the fused image.

``--check`` also writes ``/tmp/focal_surface_top.png``, the surface seen from
straight above next to the fused image, to check the texture orientation.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
OUT = HERE / "images"
WIDTH = 1100  # pixels of the saved PNGs (window screenshots are downsized to this)


def _save(img: np.ndarray, path: Path, *, width: int = WIDTH, colours: int = 192) -> None:
    from PIL import Image

    im = Image.fromarray(np.asarray(img)[..., :3])
    if im.width > width:
        im = im.resize((width, round(im.height * width / im.width)), Image.LANCZOS)
    im = im.quantize(colors=colours, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    im.save(path, optimize=True)
    print(f"{path.relative_to(HERE.parent)}: {im.width}x{im.height}, {path.stat().st_size / 1024:.0f} KB")


def _wait(app, widget, timeout_s: float = 120.0) -> None:
    import time

    done = []
    widget.run_finished.connect(done.append)
    assert widget.run() is not None, widget.status.text()
    t0 = time.time()
    while not done:
        app.processEvents()
        time.sleep(0.02)
        if time.time() - t0 > timeout_s:
            raise TimeoutError("fusion did not finish")
    assert done[0] == "done", widget.status.text()


def _settle(app, n: int = 20) -> None:
    import time

    for _ in range(n):
        app.processEvents()
        time.sleep(0.02)
    _dismiss_toasts(app)


def _dismiss_toasts(app) -> None:
    """Close napari's notification toasts (e.g. its PyQt5 deprecation notice) that cover the canvas."""
    try:
        from napari._qt.dialogs.qt_notification import NapariQtNotification
    except ImportError:  # napari moved it: leave the toasts
        return
    for w in app.allWidgets():
        if isinstance(w, NapariQtNotification):
            w.close()
    app.processEvents()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="also write /tmp/focal_surface_top.png")
    args = ap.parse_args(argv)
    os.environ.setdefault("QT_QPA_PLATFORM", "xcb")
    from qtpy.QtWidgets import QApplication, QScrollArea

    import napari
    from napari_fusion._napari._focal import FocalStackWidget

    OUT.mkdir(exist_ok=True)
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1500, 900)
    app = QApplication.instance()
    _, widget = viewer.window.add_plugin_dock_widget("napari-fusion", "Focal stack")
    assert isinstance(widget, FocalStackWidget)

    # 1. sample focal stack fused: fused image with the decision labels on top
    viewer.open_sample("napari-fusion", "focal_stack")
    stack = viewer.layers["focal stack"]
    stack.scale = (20.0, 1.0, 1.0)  # slices 20 pixels apart, so the 3-D relief shows
    widget.set_stack_layer(stack)
    widget.make_surface.setChecked(True)
    _wait(app, widget)
    _settle(app)
    _save(viewer.screenshot(canvas_only=False, flash=False), OUT / "focal_first_view.png")
    stack.visible = False
    dec = widget.output_layers["decision"]
    dec.opacity = 0.35
    viewer.layers.move(viewer.layers.index(dec), len(viewer.layers))  # the run puts fused on top
    viewer.layers.selection = {dec}
    viewer.reset_view()
    scroll = widget.findChild(QScrollArea)
    scroll.verticalScrollBar().setValue(scroll.verticalScrollBar().maximum())  # the legend
    _settle(app)
    _save(viewer.screenshot(canvas_only=False, flash=False), OUT / "focal_widget.png")

    # 1b. retouching: brush from the viewed slice, live recompose of the stroke's box
    widget.paint_from_view.setChecked(True)
    widget.live_recompose.setChecked(True)
    viewer.dims.set_point(0, 5 * stack.scale[0])  # the viewer shows slice 5 of the stack (world units)
    _settle(app, 5)
    assert dec.selected_label == 6, dec.selected_label  # label = viewed slice + 1
    dec.mode = "paint"
    dec.brush_size = 40
    h, w = dec.data.shape
    before = widget.status.text()
    for t in np.linspace(0.0, 1.0, 25):  # one stroke across the middle
        dec.paint((int(h * 0.5 + h * 0.15 * np.sin(6 * t)), int(w * (0.15 + 0.7 * t))), dec.selected_label)
    dec.events.paint(value=[])  # the end of the stroke (what the mouse-up emits)
    for _ in range(300):
        _settle(app, 1)
        if widget.status.text() != before and widget.status.text().startswith("recomposed"):
            break
    print("retouch:", widget.status.text())
    dec = widget.output_layers["decision"]
    dec.opacity = 0.45
    viewer.layers.move(viewer.layers.index(dec), len(viewer.layers))  # the stroke on top of the result
    scroll.verticalScrollBar().setValue(scroll.verticalScrollBar().maximum())
    _settle(app)
    _save(viewer.screenshot(canvas_only=False, flash=False), OUT / "focal_retouch.png")
    widget.live_recompose.setChecked(False)
    widget.paint_from_view.setChecked(False)

    # 2. the textured height surface in 3-D
    surf = widget.output_layers["surface"]
    for ly in viewer.layers:
        ly.visible = ly is surf
    viewer.dims.ndisplay = 3
    viewer.reset_view()
    viewer.camera.angles = (-20.0, 35.0, 140.0)
    viewer.camera.zoom *= 1.2
    _settle(app)
    _save(viewer.screenshot(canvas_only=True, flash=False), OUT / "focal_surface.png", width=800)
    if args.check:
        # straight from above (looking down the z axis), beside the fused image
        viewer.camera.angles = (0.0, 0.0, 90.0)
        viewer.reset_view()
        _settle(app)
        top = viewer.screenshot(canvas_only=True, flash=False)
        fused = widget.output_layers["fused"].data
        from PIL import Image

        Image.fromarray(top[..., :3]).save("/tmp/focal_surface_top.png")
        Image.fromarray(np.asarray(fused)).save("/tmp/focal_fused.png")
        print("wrote /tmp/focal_surface_top.png and /tmp/focal_fused.png")
    viewer.dims.ndisplay = 2

    # 3. real DAPI widefield stack: height in microns
    from napari_fusion import datasets

    base = datasets.shared_data_dir()
    root = None if base is None else base / "focalstack" / "dapi_widefield" / "dapi"
    if root is None or not root.is_dir():
        print("NAPARI_FUSION_DATA/focalstack/dapi_widefield not found: skipping focal_dapi_height.png")
    else:
        from napari_fusion.io import read_stack

        for ly in list(viewer.layers):
            viewer.layers.remove(ly)
        data = np.stack(read_stack(root))
        layer = viewer.add_image(data, name="dapi", scale=(0.3, 0.13, 0.13), units=("um", "um", "um"), colormap="gray")
        widget.set_stack_layer(layer)
        widget.make_surface.setChecked(False)
        _wait(app, widget)
        layer.visible = False
        widget.output_layers["decision"].visible = False
        fused = widget.output_layers["fused"]
        height = widget.output_layers["height"]
        height.visible = True
        height.opacity = 1.0  # the run shows maps at 0.5 under the fused image; here it has its own grid cell
        viewer.grid.enabled = True
        viewer.grid.shape = (1, 2)
        viewer.layers.selection = {height}
        viewer.reset_view()
        _settle(app)
        _save(viewer.screenshot(canvas_only=False, flash=False), OUT / "focal_dapi_height.png")
        print(
            f"DAPI height range: {float(height.data.min()):.2f} - {float(height.data.max()):.2f} um; "
            f"fused {fused.data.dtype}"
        )
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
