"""Live retouch in a real napari window: the Focal stack widget on the PCB stack, three strokes.

Fuses the PCB focus stack (7 x 2048x1536 RGB, ``$NAPARI_FUSION_DATA/focalstack/pcb``) with the
default method, switches "paint from the viewed slice" and "live recompose" on (which prepares
the kept slice pyramids, when the code has them), then paints three strokes (60 px brush, a
sine across half the width) with slice 3 and prints, per stroke, the worker's recompose time
(from the status line), the time from the stroke's end until the result is shown (this includes
the 150 ms debounce and napari's layer refresh) and the longest GUI-thread gap (10 ms QTimer).
Saves a screenshot to ``/tmp/retouch_window.png``. Needs a display::

    PYTHONPATH=src NAPARI_FUSION_DATA=/work/shared/data QT_QPA_PLATFORM=xcb \
        xvfb-run -a -s "-screen 0 1600x1000x24" python benchmarks/retouch_window.py

To measure another revision, point ``PYTHONPATH`` at its ``src`` (e.g. a ``git worktree``).
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np


def main() -> int:
    os.environ.setdefault("QT_QPA_PLATFORM", "xcb")
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication
    from skimage.io import imread, imsave

    import napari
    from napari_fusion.datasets import shared_data_dir

    root = shared_data_dir()
    folder = None if root is None else root / "focalstack" / "pcb" / "pcb"
    if folder is None or not folder.is_dir():
        print("skipped: $NAPARI_FUSION_DATA/focalstack/pcb not found")
        return 0
    stack = np.stack([imread(p) for p in sorted(folder.glob("src_*.jpg"))])
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1500, 900)
    app = QApplication.instance()
    _, widget = viewer.window.add_plugin_dock_widget("napari-fusion", "Focal stack")
    widget.set_stack_layer(viewer.add_image(stack, name="pcb", rgb=True))
    gaps: list[float] = []
    last = [time.perf_counter()]

    def tick() -> None:
        now = time.perf_counter()
        gaps.append(now - last[0])
        last[0] = now

    timer = QTimer()
    timer.timeout.connect(tick)
    timer.start(10)

    def wait(done, timeout: float = 300.0) -> float:
        start = time.perf_counter()
        while not (done() and widget.worker is None):
            if time.perf_counter() - start > timeout:
                raise SystemExit(f"timed out; status: {widget.status.text()}")
            app.processEvents()
            time.sleep(0.002)
        return time.perf_counter() - start

    def restart_gaps() -> None:
        gaps.clear()
        last[0] = time.perf_counter()

    widget.run()
    print(f"fusion: {wait(lambda: 'done in' in widget.status.text()):.2f} s; {widget.status.text()}")
    restart_gaps()
    widget.paint_from_view.setChecked(True)
    widget.live_recompose.setChecked(True)
    if widget.status.text().startswith("preparing"):
        took = wait(lambda: widget.status.text().startswith("live retouch"))
        print(f"prepare: {took:.2f} s; {widget.status.text()}; longest GUI gap {max(gaps):.3f} s")
    else:
        print("prepare: none (this revision keeps no pyramids)")
    dec = widget.output_layers["decision"]
    dec.mode, dec.brush_size = "paint", 60
    viewer.dims.set_point(0, 2)
    app.processEvents()
    label = dec.selected_label
    h, w = dec.data.shape
    for i, y in enumerate((0.3, 0.5, 0.7)):
        before = widget.status.text()
        for t in np.linspace(0.0, 1.0, 30):
            dec.paint((int(h * y + 80 * np.sin(5 * t)), int(w * (0.2 + 0.5 * t))), label)
        restart_gaps()
        dec.events.paint(value=[])  # the end of the stroke (what the mouse-up emits)
        shown = wait(lambda b=before: widget.status.text().startswith("recomposed") and widget.status.text() != b)
        print(
            f"stroke {i}: shown {shown:.3f} s after its end; {widget.status.text()}; longest GUI gap {max(gaps):.3f} s"
        )
    for _ in range(20):
        app.processEvents()
        time.sleep(0.02)
    imsave("/tmp/retouch_window.png", viewer.screenshot(canvas_only=False, flash=False)[::2, ::2])
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
