"""How quickly the dock widgets stop on Cancel, and how long the GUI thread is ever held.

For each widget and method: start a run in a real napari window (under Xvfb
on a headless machine), press Cancel after ``--cancel-after`` seconds, and
print the time from the click to the end of the run, the longest interval
between progress reports before the click, and the longest event-loop gap
(a 10 ms QTimer) over the whole run. A second table runs the Image fusion
widget's background tiling on a 10 x 4096^2 uint16 dask stack to the end and
prints the longest gaps before and after the first output layers appear.

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
    print("\nBackground tiling, 10 x 4096^2 uint16 dask stack, tiles of 1024, run to the end (seconds)")
    print("| method | total | first tile shown at | longest GUI gap before it | longest GUI gap after it |")
    print("|---|---|---|---|---|")
    for name in ("focus_pyramid", "focus_measure"):
        fusion.set_method(name)
        outcome: list[str] = []
        fusion.run_finished.connect(outcome.append)
        seen: list[float] = []
        meter = GapMeter()
        start = time.perf_counter()
        worker = fusion.run()
        worker.yielded.connect(lambda v: seen.append(time.perf_counter()) if v[0] == "layers" else None)
        wait_until(app, lambda: bool(outcome), 600)
        ticks = meter.stop()
        fusion.run_finished.disconnect(outcome.append)
        gaps = np.diff(ticks)
        first = seen[0] if seen else ticks[-1]
        before, after = gaps[ticks[1:] <= first], gaps[ticks[1:] > first]
        print(
            f"| {name} | {ticks[-1] - start:.1f} | {first - start:.2f} | {before.max() if before.size else 0:.3f} "
            f"| {after.max() if after.size else 0:.3f} |"
        )
        for key in list(fusion.output_layers):
            layer = fusion.output_layers[key]
            if layer is not None:
                layer.visible = False


if __name__ == "__main__":
    main()
