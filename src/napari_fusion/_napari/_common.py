"""Qt set-up shared by the dock widgets (Image fusion, Focal stack, Fusion metrics,
Guided upsampling).

The runner every widget uses (:class:`WorkerControls`: a napari thread worker,
Run/Cancel, a progress bar in the activity dock, status and errors, and a
one-time :func:`warm_up`), plus small helpers for what the widgets did line for
line the same: selectable status labels, the layer-list wiring, the stack-layer
and channel-layer choosers, the z-step field, the scrolling compact layout and
the decision legend. Each widget still builds its own panels and decides what a
run computes and shows; this module holds no fusion logic.
"""

from __future__ import annotations

import functools
import inspect
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from qtpy.QtCore import QObject, Qt, QTimer, Signal
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QFrame,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..errors import FusionCancelled, FusionError
from ._layers import unit_name

#: The layer-list events after which the widgets re-read the viewer's layers.
LAYER_EVENTS = ("inserted", "removed", "reordered", "renamed")


#: Width (pixels) a dock widget must fit without horizontal scrolling (napari docks are ~300-400 px).
DOCK_WIDTH = 400
#: Characters a combo box keeps visible when the dock is narrow (the full text is in its list).
COMBO_CHARS = 12


# ---------------------------------------------------------------------------- widgets


class _RaisedInWorker(Exception):
    """Carries an exception out of a generator worker (see :func:`_errors_reach_the_gui`)."""

    def __init__(self, original: BaseException):
        super().__init__(str(original))
        self.original = original


def _errors_reach_the_gui(func: Callable[..., Any]) -> Callable[..., Any]:
    """``func``, a generator function, with its RuntimeErrors wrapped in :class:`_RaisedInWorker`.

    superqt's generator worker takes any RuntimeError for the sign of a deleted
    worker and ends without emitting ``errored`` or ``finished``: the run
    never ended, the Run button stayed disabled. Missing weights
    (:class:`WeightsUnavailableError`) and torch errors are RuntimeErrors.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any):
        try:
            return (yield from func(*args, **kwargs))
        except RuntimeError as exc:
            raise _RaisedInWorker(exc) from exc

    return wrapper


def scrolling_layout(widget: QWidget) -> QVBoxLayout:
    """Give ``widget`` a frameless vertical scroll area and return the layout inside it.

    Everything added to the returned layout scrolls, so a tall widget fits a
    short dock; together with :func:`make_compact` the content fits
    :data:`DOCK_WIDTH` without a horizontal scroll bar.
    """
    outer = QVBoxLayout(widget)
    outer.setContentsMargins(0, 0, 0, 0)
    scroll = QScrollArea(widget)
    scroll.setWidgetResizable(True)
    scroll.setFrameShape(QFrame.NoFrame)
    inner = QWidget()
    inner.setObjectName("napari_fusion_scroll_content")
    scroll.setWidget(inner)
    outer.addWidget(scroll)
    return QVBoxLayout(inner)


def make_compact(root: QWidget) -> None:
    """Let ``root``'s combo boxes shrink to :data:`COMBO_CHARS` and its forms wrap long rows."""
    for combo in root.findChildren(QComboBox):
        combo.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
        combo.setMinimumContentsLength(COMBO_CHARS)
    for form in root.findChildren(QFormLayout):
        form.setRowWrapPolicy(QFormLayout.WrapLongRows)


def decision_legend() -> QTableWidget:
    """An empty table for the decision colours (colour, slice, z); hidden until filled."""
    table = QTableWidget(0, 3)
    table.setHorizontalHeaderLabels(["", "slice", "z"])
    table.verticalHeader().setVisible(False)
    table.setEditTriggers(QTableWidget.NoEditTriggers)
    table.setSelectionMode(QTableWidget.NoSelection)
    table.setMaximumHeight(160)
    table.setToolTip("Decision colours: slice k is label k + 1, coloured in slice order.")
    table.horizontalHeader().setStretchLastSection(True)
    table.setColumnWidth(0, 24)
    table.setVisible(False)
    return table


def fill_decision_legend(table: QTableWidget, colours, z, unit: str | None) -> None:
    """One row per slice: a swatch of its decision colour, its index and its z (with ``unit``)."""
    from qtpy.QtGui import QColor

    table.setRowCount(len(z))
    table.setHorizontalHeaderLabels(["", "slice", f"z ({unit})" if unit else "z"])
    for k, (colour, zk) in enumerate(zip(colours, z)):
        swatch = QTableWidgetItem("")
        swatch.setBackground(QColor.fromRgbF(*[float(c) for c in colour]))
        table.setItem(k, 0, swatch)
        table.setItem(k, 1, QTableWidgetItem(str(k)))
        table.setItem(k, 2, QTableWidgetItem(f"{float(zk):.4g}"))
        table.setRowHeight(k, 18)
    table.setVisible(len(z) > 0)


def content_width(root: QWidget) -> int:
    """Minimum width of the scrolled content of a widget built with :func:`scrolling_layout`."""
    inner = root.findChild(QWidget, "napari_fusion_scroll_content")
    return (inner or root).minimumSizeHint().width()


def text_label(tooltip: str | None = None) -> QLabel:
    """An empty, word-wrapped label whose text can be selected (status lines, descriptions)."""
    label = QLabel("")
    label.setWordWrap(True)
    label.setTextInteractionFlags(Qt.TextSelectableByMouse)
    if tooltip is not None:
        label.setToolTip(tooltip)
    return label


def z_step_row(minimum: float, tooltip: str) -> tuple[QDoubleSpinBox, QLabel, QHBoxLayout]:
    """``(z step spin box, unit label, row holding both)``; the step starts at 1.0."""
    z_step = QDoubleSpinBox()
    z_step.setDecimals(6)
    z_step.setRange(minimum, 1e9)
    z_step.setValue(1.0)
    z_step.setToolTip(tooltip)
    z_unit = QLabel("")
    row = QHBoxLayout()
    row.addWidget(z_step, 1)
    row.addWidget(z_unit)
    return z_step, z_unit, row


def memory_limit_box(tooltip: str) -> QDoubleSpinBox:
    """A spin box for the memory a run may use, in GiB; 0 shows "auto" (what the machine has)."""
    box = QDoubleSpinBox()
    box.setRange(0.0, 4096.0)
    box.setDecimals(2)
    box.setSingleStep(0.25)
    box.setSuffix(" GiB")
    box.setSpecialValueText("auto")  # shown at 0: what the machine has available
    box.setToolTip(tooltip)
    return box


def limit_bytes(box: QDoubleSpinBox) -> int | None:
    """The limit of a :func:`memory_limit_box` in bytes (None: what the machine has available)."""
    gib = float(box.value())
    return int(gib * 2**30) if gib > 0 else None


def start_on_default_stack_axis(stack_axis: QSpinBox, layer) -> None:
    """Put the stack-axis box of a newly chosen ``layer`` on the axis just before Y and X (no signal)."""
    if layer is None:
        return
    from ._layers import default_stack_axis

    stack_axis.blockSignals(True)
    stack_axis.setValue(default_stack_axis(layer))
    stack_axis.blockSignals(False)


def sync_z_step(z_step: QDoubleSpinBox, z_unit: QLabel, layer, axis: int, *, from_layer: bool) -> None:
    """Show ``layer``'s unit along ``axis``; with ``from_layer``, also take the step from its scale."""
    if from_layer:
        z_step.blockSignals(True)
        z_step.setValue(abs(float(layer.scale[axis])) or 1.0)  # a distance: a negative scale only flips the display
        z_step.blockSignals(False)
    z_unit.setText(unit_name(layer, axis))


# ---------------------------------------------------------------------------- layer choosers
def connect_layer_events(viewer, callback: Callable[..., Any]) -> None:
    """Call ``callback`` whenever the viewer's layer list changes (see :data:`LAYER_EVENTS`)."""
    events = viewer.layers.events
    for name in LAYER_EVENTS:
        emitter = getattr(events, name, None)
        if emitter is not None:
            emitter.connect(callback)


def fill_layer_combo(combo, layers: Iterable[Any], current) -> None:
    """Refill ``combo`` with ``layers`` (name, layer), re-selecting ``current``; no signals emitted."""
    combo.blockSignals(True)
    combo.clear()
    for ly in layers:
        combo.addItem(ly.name, ly)
    for i in range(combo.count()):
        if combo.itemData(i) is current:
            combo.setCurrentIndex(i)
    combo.blockSignals(False)


def layer_index(combo, layer) -> int:
    """Index of ``layer`` (object or name) in a stack-layer chooser; ValueError if absent."""
    name = layer if isinstance(layer, str) else layer.name
    index = combo.findText(name)
    if index < 0:
        raise ValueError(f"{name!r} is not an Image layer with 3 or more dimensions")
    return index


def checkable_item(text: str, layer, checked: bool) -> QListWidgetItem:
    """A checkable list item carrying ``layer`` as its user data."""
    item = QListWidgetItem(text)
    item.setFlags(item.flags() | Qt.ItemIsUserCheckable)
    item.setCheckState(Qt.Checked if checked else Qt.Unchecked)
    item.setData(Qt.UserRole, layer)
    return item


def checked_layers(layer_list: QListWidget) -> list:
    """The layers of the checked items, in list order."""
    return [
        layer_list.item(i).data(Qt.UserRole)
        for i in range(layer_list.count())
        if layer_list.item(i).checkState() == Qt.Checked
    ]


def check_exactly(layer_list: QListWidget, layers) -> None:
    """Check the items of ``layers`` (objects or names) and uncheck every other one."""
    wanted = {ly if isinstance(ly, str) else ly.name for ly in layers}
    for i in range(layer_list.count()):
        item = layer_list.item(i)
        item.setCheckState(Qt.Checked if item.data(Qt.UserRole).name in wanted else Qt.Unchecked)


def viewer_data_point(viewer, layer):
    """The viewer's current position in ``layer``'s data coordinates (None on exotic transforms)."""
    try:
        return layer.world_to_data(viewer.dims.point[-layer.ndim :])
    except Exception:  # noqa: BLE001 - callers fall back to index 0
        return None


def drop_layer(viewer, output_layers: dict[str, Any], key: str) -> None:
    """Forget output ``key`` and remove its layer from the viewer if it is still there."""
    old = output_layers.pop(key, None)
    if old is not None and old in viewer.layers:
        viewer.layers.remove(old)


# ---------------------------------------------------------------------------- run plumbing
#: Resolution of the napari progress bars (steps from 0 to 1).
PROGRESS_STEPS = 1000
#: Shortest interval between changes of a progress bar's text (each change processes events).
DESCRIBE_SECONDS = 0.1


_WARM = threading.Event()


def warm_up() -> None:
    """First-use costs paid once, when the first dock opens, rather than during a run.

    Each of these took 0.2-0.5 s the first time and, during a run, either ran on
    the GUI thread or held the GIL in the worker (which stalls the GUI thread
    just the same): importing napari's thread workers; scikit-image's colour
    module, which napari loads for the first Labels layer; and dask's first
    threaded compute (its reductions and scheduler modules).
    """
    if _WARM.is_set():
        return
    import dask
    import dask.array as da
    import napari.qt.threading  # noqa: F401
    import skimage.color.colorconv  # noqa: F401 - skimage.color loads it lazily

    tiny = da.zeros((2, 4, 4), chunks=1, dtype="uint16")
    dask.compute(tiny.min(), tiny.max(), scheduler="threads")
    _WARM.set()


class ProgressBridge(QObject):
    """Carries progress reports from a worker thread to the GUI thread (a queued signal)."""

    changed = Signal(float, float, str)


class WorkerControls:
    """The runner every dock widget shares: a napari thread worker with Run/Cancel,
    a progress bar in napari's activity dock, status text and error display (a mixin).

    The widget provides ``run_finished`` (a ``Signal(str)``: "done", "cancelled"
    or "error"), ``status`` (a label) and ``_on_returned(value)``, and calls
    :meth:`_init_worker_state` in its ``__init__``. Work runs in
    :meth:`_start_worker`; the work function gets :meth:`_progress_callback`
    (or checks ``self._cancel``) so that Cancel - the button or the activity
    dock's - raises :class:`FusionCancelled` at its next report. A run still
    going when the widget is closed stops there too. Only ``_on_returned``
    (putting results into layers) runs on the GUI thread.
    """

    def _init_worker_state(self) -> None:
        warm_up()
        self.worker = None
        self._cancel = threading.Event()
        self._outcome = "error"
        self._pbar = None
        self._pbar_n = 0
        self._pbar_desc = ""
        self._pbar_described = 0.0
        self._last_message = ""
        self._bridge = ProgressBridge()
        self._bridge.changed.connect(self._on_progress)
        cancel = self._cancel  # not self: the lambda must outlive the widget
        self.destroyed.connect(lambda *_: cancel.set())

    def _build_run_buttons(self, *extra: QPushButton, run_text: str = "Run") -> QHBoxLayout:
        """``Run`` and a disabled ``Cancel`` button (then ``extra``) in one row."""
        buttons = QHBoxLayout()
        self.run_button = QPushButton(run_text)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        for button in (self.run_button, self.cancel_button, *extra):
            buttons.addWidget(button)
        return buttons

    def _begin_run(self, message: str) -> None:
        self._cancel.clear()
        self._last_message = ""
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.status.setText(message)

    def _start_worker(self, func: Callable[..., Any], *args: Any, progress: str | None = None):
        """Run ``func(*args)`` in a thread worker; ``progress``: the activity-dock bar's title."""
        from napari.qt.threading import create_worker

        if progress is not None:
            self._start_progress(progress)
        if inspect.isgeneratorfunction(func):
            func = _errors_reach_the_gui(func)
        self.worker = create_worker(func, *args, _start_thread=False, _ignore_errors=True)
        self.worker.returned.connect(self._on_returned)
        if hasattr(self.worker, "yielded") and hasattr(self, "_on_yielded"):  # a generator: partial results
            self.worker.yielded.connect(self._on_yielded)
        self.worker.errored.connect(self._on_errored)
        self.worker.finished.connect(self._on_worker_finished)
        # started on the next turn of the event loop: the caller can connect to the worker first,
        # and a run started right after the previous one ended no longer holds the loop (starting
        # it in the same turn stalled the GUI thread 0.3-0.4 s, tests/napari/test_runner.py)
        QTimer.singleShot(0, self.worker.start)
        return self.worker

    def cancel(self) -> None:
        """Ask the running work to stop at its next progress report."""
        if self.worker is None:
            return
        self._cancel.set()
        self.cancel_button.setEnabled(False)
        self.status.setText("cancelling...")

    # progress: reported from the worker thread, shown on the GUI thread
    def _progress_callback(self, done: float, total: float, message: str) -> None:
        """``progress(done, total, message)`` for the work function (thread-safe).

        Raises :class:`FusionCancelled` once Cancel was pressed.
        """
        pbar = self._pbar
        if self._cancel.is_set() or (pbar is not None and getattr(pbar, "is_canceled", False)):
            raise FusionCancelled("cancelled by the user")
        self._bridge.changed.emit(float(done), float(total), str(message))

    def _start_progress(self, desc: str) -> None:
        from napari.utils import cancelable_progress

        self._close_progress()
        self._pbar = cancelable_progress(total=PROGRESS_STEPS, desc=desc, cancel_callback=self._cancel.set)
        self._pbar_desc = desc
        self._pbar_n = 0
        self._pbar_described = 0.0

    def _on_progress(self, done: float, total: float, message: str) -> None:
        if message:
            self._last_message = message
        pbar = self._pbar
        if pbar is None:  # a report queued before the run ended
            return
        frac = 0.0 if total <= 0 else min(max(done / total, 0.0), 1.0)
        n = int(round(frac * PROGRESS_STEPS))
        if n > self._pbar_n:
            self._pbar_n = n
            pbar.update(n - pbar.n)
        now = time.perf_counter()
        if message and now - self._pbar_described >= DESCRIBE_SECONDS:
            # napari's progress bar processes events on each change: at most a few per second
            self._pbar_described = now
            pbar.set_description(f"{self._pbar_desc}: {message}")

    def _close_progress(self) -> None:
        if self._pbar is not None:
            self._pbar.close()
            self._pbar = None

    #: Widgets whose bad input is common (metrics, upsampling) set this: their input errors then
    #: go to the status line as "<prefix>: <message>", without a notification.
    input_error_prefix: str | None = None

    # end of a run
    def _on_errored(self, exc: BaseException) -> None:
        exc = getattr(exc, "original", exc)  # unwrapped (_errors_reach_the_gui)
        prefix = self.input_error_prefix
        if prefix and isinstance(exc, FusionError) and not isinstance(exc, FusionCancelled):
            self.status.setText(f"{prefix}: {exc}")
            self._outcome = "error"
            return
        if isinstance(exc, FusionCancelled):
            self.status.setText("cancelled; output layers unchanged")
            self._outcome = "cancelled"
            return
        self._fail(str(exc) if isinstance(exc, FusionError) else f"{type(exc).__name__}: {exc}")
        self._outcome = "error"

    def _on_worker_finished(self) -> None:
        self._finish_run()

    def _finish_run(self) -> None:
        self._close_progress()
        self.worker = None
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        self.run_finished.emit(self._outcome)
        self._outcome = "error"

    def _fail(self, message: str) -> None:
        from napari.utils.notifications import show_error

        self.status.setText(f"error: {message}")
        show_error(f"napari-fusion: {message}")
