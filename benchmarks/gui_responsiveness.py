"""How quickly the dock widgets stop on Cancel, and how long the GUI thread is ever held.

For each widget and method: start a run in a real napari window (under Xvfb
on a headless machine), press Cancel after ``--cancel-after`` seconds, and
print the time from the click to the end of the run, the longest interval
between progress reports before the click, and the longest event-loop gap
(a 10 ms QTimer) over the whole run. A second table runs the Image fusion
widget's background tiling on a 10 x 4096^2 uint16 dask stack to the end and
prints the longest gaps before the first output layers appear, while they
are made and after; a third table pans and zooms over 8192^2 and 16384^2
outputs shown as plain layers or as the widgets' display pyramid.

    QT_QPA_PLATFORM=xcb xvfb-run -a -s "-screen 0 1600x1000x24" \\
        python benchmarks/gui_responsiveness.py [--size 1024] [--cancel-after 3]

Learned methods run on a 2 x ``--size``^2 grey pair (li2018_vgg19 needs its
ImageNet weights and is skipped without them); the focal-stack rows run the
default method with similarity alignment on a 7-slice stack.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "napari"))

LEARNED = ("csc_ivfn", "csc_mefn", "liu2017_cnn", "tiis2018_fcn", "veshki_cdl", "li2018_vgg19")


class GapMeter:
    """Longest event-loop gap, measured with a 10 ms QTimer."""

    def __init__(self):
        from qtpy.QtCore import QTimer

        self.ticks = [time.perf_counter()]
        self.timer = QTimer()
        self.timer.setInterval(10)
        self.timer.timeout.connect(lambda: self.ticks.append(time.perf_counter()))
        self.timer.start()

    def stop(self) -> np.ndarray:
        self.timer.stop()
        self.ticks.append(time.perf_counter())
        return np.asarray(self.ticks)


def wait_until(app, predicate, timeout: float) -> bool:
    end = time.perf_counter() + timeout
    while time.perf_counter() < end:
        app.processEvents()
        if predicate():
            return True
        time.sleep(0.005)
    return False


def cancel_row(app, widget, cancel_after: float) -> dict:
    """Run, click Cancel after ``cancel_after`` s, wait for the end; the measured figures."""
    reports: list[float] = []
    original = widget._progress_callback

    def recording(done, total, message):
        reports.append(time.perf_counter())
        return original(done, total, message)

    widget._progress_callback = recording
    outcome: list[str] = []
    widget.run_finished.connect(outcome.append)
    meter = GapMeter()
    start = time.perf_counter()
    if widget.run() is None:
        meter.stop()
        return {"outcome": f"refused: {widget.status.text()[:60]}"}
    wait_until(app, lambda: bool(outcome), cancel_after)
    clicked = time.perf_counter()
    if not outcome:
        widget.cancel_button.click()
    wait_until(app, lambda: bool(outcome), 600)
    ended = time.perf_counter()
    ticks = meter.stop()
    widget._progress_callback = original
    widget.run_finished.disconnect(outcome.append)
    before = [t for t in [start, *reports] if t <= clicked]
    report_gap = float(np.diff(before).max()) if len(before) > 1 else float("nan")
    result = outcome[0] if outcome else "timeout"
    if result == "error":
        result = f"error: {widget.status.text()[7:60]}"
    return {
        "outcome": result,
        "latency": ended - clicked if outcome and outcome[0] == "cancelled" else float("nan"),
        "report_gap": report_gap,
        "gui_gap": float(np.diff(ticks).max()),
    }


def learned_pair(size: int) -> list[np.ndarray]:
    from scipy.ndimage import gaussian_filter
    from skimage import data
    from skimage.transform import resize

    img = resize(data.camera().astype(np.float32) / 255.0, (size, size), anti_aliasing=True).astype(np.float32)
    left = np.zeros_like(img, bool)
    left[:, : size // 2] = True
    blurred = gaussian_filter(img, 3.0)
    return [np.where(left, img, blurred), np.where(left, blurred, img)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--cancel-after", type=float, default=3.0)
    ap.add_argument("--skip-background", action="store_true")
    ap.add_argument("--skip-cancel", action="store_true", help="only the background-tiling and panning tables")
    args = ap.parse_args()

    from qtpy.QtWidgets import QApplication

    import napari
    from napari_fusion._napari._focal import FocalStackWidget
    from napari_fusion._napari._widget import TILING_LAZY, FusionWidget

    viewer = napari.Viewer(show=True)
    app = QApplication.instance()
    rows = []
    a, b = learned_pair(args.size)
    la = viewer.add_image(a, name="near")
    lb = viewer.add_image(b, name="far")
    fusion = FusionWidget(viewer)
    viewer.window.add_dock_widget(fusion)
    fusion.set_image_layers([la, lb])
    if not args.skip_cancel:
        for name in LEARNED:
            fusion.set_method(name)
            rows.append(("Image fusion", name, f"2 x {args.size}^2", cancel_row(app, fusion, args.cancel_after)))

        from skimage import data
        from skimage.transform import resize

        from napari_fusion.synthetic import render_focal_stack

        photo = (resize(data.astronaut(), (args.size, args.size), anti_aliasing=True) * 255).astype(np.uint8)
        stack = render_focal_stack(photo, n_slices=7, seed=0).slices
        sl = viewer.add_image(stack, name="stack", rgb=True)
        focal = FocalStackWidget(viewer)
        viewer.window.add_dock_widget(focal)
        focal.set_stack_layer(sl)
        focal.align.setCurrentText("similarity")
        rows.append(
            (
                "Focal stack",
                f"{focal.method.currentData()} + similarity",
                f"7 x {args.size}^2 RGB",
                cancel_row(app, focal, 1.0),
            )
        )

        print(f"\nCancel after {args.cancel_after:.1f} s (Focal stack: 1.0 s); times in seconds")
        print("| widget | method | input | outcome | cancel latency | longest report gap | longest GUI gap |")
        print("|---|---|---|---|---|---|---|")
        for widget, method, what, r in rows:
            if "latency" not in r:
                print(f"| {widget} | {method} | {what} | {r['outcome']} | - | - | - |")
                continue
            print(
                f"| {widget} | {method} | {what} | {r['outcome']} | {r['latency']:.2f} | {r['report_gap']:.2f} "
                f"| {r['gui_gap']:.3f} |"
            )

    if args.skip_background:
        return
    import dask.array as da
    from test_runner import big_lazy_stack

    for layer in list(viewer.layers):
        layer.visible = False
    lazy = viewer.add_image(big_lazy_stack(da), name="lazy stack", contrast_limits=(0, 4000))
    fusion.set_stack_layer(lazy)
    fusion.tiling.setCurrentText(TILING_LAZY)
    fusion.tile_size.setValue(1024)
    print("\nBackground tiling, 10 x 4096^2 uint16 dask stack, tiles of 1024, run to the end (seconds);")
    print("each run starts after 1 s idle; 'new layers' = the outputs are created, else updated in place")
    print(
        "| method | layers | total | first tile shown at | longest GUI gap before it | while layers are made "
        "| longest GUI gap after | gaps > 0.2 s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, fresh in (
        ("focus_measure", True),
        ("focus_measure", False),
        ("focus_pyramid", False),
        ("focus_pyramid", False),
    ):
        fusion.set_method(name)
        if fresh:
            for key in list(fusion.output_layers):
                layer = fusion.output_layers.pop(key)
                if layer is not None and layer in viewer.layers:
                    viewer.layers.remove(layer)
        idle(app, 1.0)
        outcome: list[str] = []
        fusion.run_finished.connect(outcome.append)
        seen: list[float] = []
        meter = GapMeter()
        start = time.perf_counter()
        worker = fusion.run()
        worker.yielded.connect(lambda v: seen.append(time.perf_counter()) if v[0] == "layers" else None)
        wait_until(app, lambda: fusion._gui_caught_up.is_set() and bool(seen), 600)
        made = time.perf_counter()
        wait_until(app, lambda: bool(outcome), 600)
        ticks = meter.stop()
        fusion.run_finished.disconnect(outcome.append)
        gaps = np.diff(ticks)
        first = seen[0] if seen else ticks[-1]
        ends = ticks[1:]
        before, making, after = gaps[ends <= first], gaps[(ends > first) & (ends <= made)], gaps[ends > made]
        print(
            f"| {name} | {'new' if fresh else 'in place'} | {ticks[-1] - start:.1f} | {first - start:.2f} "
            f"| {_max(before):.3f} | {_max(making):.3f} | {_max(after):.3f} | {int((gaps > 0.2).sum())} |"
        )
    for layer in list(viewer.layers):
        layer.visible = True  # removing layers next to a hidden 3-D layer segfaults in vispy (docs/napari.md)
    viewer.layers.clear()
    pan_table(app, viewer)


def _max(values: np.ndarray) -> float:
    return float(values.max()) if values.size else 0.0


def idle(app, seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        app.processEvents()
        time.sleep(0.005)


def pan_table(app, viewer, steps: int = 24) -> None:
    """Panning and zooming over a large output, shown as the widgets show it.

    For each size: a fused float32 image and a decision Labels layer, either
    plain arrays or the display pyramid the widgets make
    (:func:`napari_fusion._napari._layers.display_pyramid`); ``steps`` pans
    by a quarter of the view at full resolution, then zooms out to the whole
    image and pans again. Prints the time to add the layers, the median and
    worst time per step (from the camera move until the event loop is idle),
    and the longest GUI gap.
    """
    from napari_fusion._napari._layers import display_pyramid

    print("\nPanning and zooming over a large output (fused float32 + decision labels); seconds")
    print("| output | layers | add layers | median step | worst step | longest GUI gap while panning |")
    print("|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for size, pyramid in ((8192, False), (8192, True), (16384, True)):
        fused = np.empty((size, size), np.float32)
        for r in range(0, size, 1024):  # a textured pattern, written in strips (no full-size temporaries)
            fused[r : r + 1024] = rng.random((min(1024, size - r), size), dtype=np.float32)
        labels = (fused * 9).astype(np.uint8)
        t0 = time.perf_counter()
        image_data = display_pyramid(fused) if pyramid else fused
        label_data = display_pyramid(labels) if pyramid else labels
        layers = [
            viewer.add_image(image_data, name=f"fused {size}", contrast_limits=(0, 1)),
            viewer.add_labels(label_data, name=f"decision {size}", opacity=0.5),
        ]
        idle(app, 0.2)
        added = time.perf_counter() - t0 - 0.2
        viewer.reset_view()
        idle(app, 0.3)
        meter = GapMeter()  # the interaction only (adding the layers is timed above)
        times = []
        zoom = viewer.camera.zoom
        for step in range(steps):
            if step == steps // 2:
                viewer.camera.zoom = zoom  # back to the whole image
            elif step < steps // 2:
                viewer.camera.zoom = 1.0  # full resolution
            cy, cx = viewer.camera.center[-2:]
            span = (size / 8) if step >= steps // 2 else 400.0
            t = time.perf_counter()
            viewer.camera.center = (cy + span * ((step % 4) - 1.5) / 4, cx + span / 4)
            app.processEvents()
            times.append(time.perf_counter() - t)
            idle(app, 0.05)
        ticks = meter.stop()
        print(
            f"| {size}^2 | {'pyramid' if pyramid else 'plain'} | {added:.2f} | {np.median(times):.3f} "
            f"| {max(times):.3f} | {np.diff(ticks).max():.3f} |"
        )
        for layer in layers:  # hidden, not removed: removals here crashed vispy (see docs/napari.md)
            layer.visible = False


if __name__ == "__main__":
    main()
