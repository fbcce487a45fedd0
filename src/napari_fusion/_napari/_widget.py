"""The "Image fusion" dock widget.

Inputs are either several 2-D Image layers (checked in a list, fused in layer-list
order) or one Image layer holding a stack plus the axis the images lie along.
The method list comes from :func:`napari_fusion.list_methods` (optionally filtered
by task) and the parameter panel is generated from the chosen method's
:class:`napari_fusion.Param` metadata, so registering a method is enough for it
to appear here. The fusion runs in a napari thread worker; progress goes to a
napari progress bar (the activity dock), and Cancel makes the next progress
report raise :class:`napari_fusion.FusionCancelled`, which stops the run.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import numpy as np
from qtpy.QtCore import Qt, QTimer, Signal
from qtpy.QtWidgets import (
    QComboBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QPushButton,
    QSpinBox,
    QStackedWidget,
    QVBoxLayout,
    QWidget,
)

from ..api import DEFAULT_METHOD, fuse
from ..errors import FusionCancelled, FusionError
from ..memory import limited_to
from ..registry import TASKS, get_method, list_methods
from . import _layers
from ._common import (
    WorkerControls,
    check_exactly,
    checkable_item,
    checked_layers,
    connect_layer_events,
    drop_layer,
    fill_layer_combo,
    layer_index,
    limit_bytes,
    make_compact,
    memory_limit_box,
    scrolling_layout,
    start_on_default_stack_axis,
    sync_z_step,
    text_label,
    viewer_data_point,
    z_step_row,
)
from ._params import ParamPanel

MODE_IMAGES = "image layers"
MODE_STACK = "stack layer"
DEVICES = ("auto", "cpu", "cuda")
TILING_OFF = "off (whole image in memory)"
TILING_NOW = "tiles, compute now"
TILING_LAZY = "tiles, in the background (shown as they finish)"
#: Seconds between refreshes of the output layers while background tiles fill in. Outputs above
#: 2048 px are display pyramids, so a refresh redraws about a screenful whatever the output size
#: (three layers: 0.09 s at 4096^2, 0.10 s at 16384^2 in a real window here).
REFRESH_SECONDS = 0.5
#: Background tiling: milliseconds between making one output layer and the next, so that
#: paints and input events run in between (a zero-delay chain ran them back to back).
LAYER_STEP_MS = 15
TILINGS = (TILING_OFF, TILING_NOW, TILING_LAZY)
ALL_TASKS = "all tasks"


class _MethodCombo(QComboBox):
    """Method chooser that re-reads the registry each time it opens."""

    about_to_show = Signal()

    def showPopup(self) -> None:  # noqa: N802 (Qt API)
        self.about_to_show.emit()
        super().showPopup()


class FusionWidget(WorkerControls, QWidget):
    """Dock widget: fuse image layers with any registered method.

    Output layers (``fused``, ``decision``, ``depth``) are created on the first
    run and updated in place by later runs; see :mod:`._layers`.
    """

    #: Emitted when a run ends, with "done", "cancelled" or "error".
    run_finished = Signal(str)

    def __init__(self, napari_viewer, parent: QWidget | None = None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.output_layers: dict[str, Any] = {}
        self.last_result = None
        self._whole_note = ""
        self._layer_steps: list = []  # background tiling: layers still to make, one per event-loop turn
        self._gui_caught_up = threading.Event()  # background tiling: the GUI has shown the last yield
        self._partial = False  # background tiling: the output layers already show this run's tiles
        self._init_worker_state()
        self._z_step_from_layer = True
        self._tiling_seen_layer: int | None = None

        layout = scrolling_layout(self)
        layout.addWidget(self._build_inputs_box())
        layout.addWidget(self._build_method_box())
        layout.addWidget(self._build_params_box())
        layout.addLayout(self._build_run_options())
        layout.addLayout(self._build_run_buttons())
        self.status = text_label()
        layout.addWidget(self.status)
        layout.addStretch(1)

        self._connect_controls()
        connect_layer_events(self.viewer, self.refresh_layers)
        self.refresh_layers()
        self.refresh_methods()
        self._on_mode()
        make_compact(self)

    # ------------------------------------------------------------------ building
    def _build_inputs_box(self) -> QGroupBox:
        """Input mode, the two input pages (checked layers / stack layer) and the z step."""
        box = QGroupBox("Inputs")
        form = QVBoxLayout(box)
        row = QHBoxLayout()
        row.addWidget(QLabel("fuse"))
        self.input_mode = QComboBox()
        self.input_mode.addItems([MODE_IMAGES, MODE_STACK])
        self.input_mode.setToolTip(
            "image layers: check two or more 2-D (grey or RGB) layers, fused in layer-list order.\n"
            "stack layer: one layer holding the images along one axis (e.g. a focal stack)."
        )
        row.addWidget(self.input_mode, 1)
        form.addLayout(row)
        self.input_pages = QStackedWidget()
        self.image_list = QListWidget()
        self.image_list.setToolTip("Check the 2-D Image layers to fuse (at least two).")
        self.image_list.setMinimumHeight(80)
        self.input_pages.addWidget(self.image_list)
        self.input_pages.addWidget(self._build_stack_page())
        form.addWidget(self.input_pages)
        zrow = QFormLayout()
        zrow.setContentsMargins(0, 0, 0, 0)
        self.z_step, self.z_unit, zbox = z_step_row(
            1e-6,
            "Distance between consecutive images, in the units of the depth map.\n"
            "Taken from the stack layer's scale along the stack axis; edit to override.",
        )
        zrow.addRow("z step", zbox)
        form.addLayout(zrow)
        return box

    def _build_stack_page(self) -> QWidget:
        page = QWidget()
        stack_form = QFormLayout(page)
        stack_form.setContentsMargins(0, 0, 0, 0)
        self.stack_layer = QComboBox()
        self.stack_layer.setToolTip("Image layer with at least 3 dimensions holding the images.")
        self.stack_axis = QSpinBox()
        self.stack_axis.setToolTip(
            "Axis of the layer along which the images lie (the last two axes are Y, X).\n"
            "Other non-spatial axes (e.g. time) are taken at the viewer's current position."
        )
        stack_form.addRow("layer", self.stack_layer)
        stack_form.addRow("stack axis", self.stack_axis)
        return page

    def _build_method_box(self) -> QGroupBox:
        """Task filter, method chooser, the method's description and its weights status."""
        box = QGroupBox("Method")
        mform = QFormLayout(box)
        self.task = QComboBox()
        self.task.addItems([ALL_TASKS, *TASKS])
        self.task.setToolTip("Show only the methods made for this task.")
        self.method = _MethodCombo()
        self.method.setToolTip("Fusion method (from the napari-fusion registry).")
        self.description = text_label()
        mform.addRow("task", self.task)
        mform.addRow("method", self.method)
        mform.addRow(self.description)
        self.weights_status = text_label("Where the learned method's weights come from.")
        mform.addRow(self.weights_status)
        return box

    def _build_params_box(self) -> QGroupBox:
        box = QGroupBox("Parameters")
        pbox = QVBoxLayout(box)
        self.params = ParamPanel()
        pbox.addWidget(self.params)
        self.reset_button = QPushButton("Reset to defaults")
        self.reset_button.clicked.connect(self.params.reset)
        pbox.addWidget(self.reset_button)
        return box

    def _build_run_options(self) -> QFormLayout:
        """Device, tiling mode, tile size and memory limit."""
        dform = QFormLayout()
        self.device = QComboBox()
        self.device.addItems(list(DEVICES))
        self.device.setToolTip("auto: CUDA GPU when available (then Apple MPS), else CPU.")
        dform.addRow("device", self.device)
        self.tiling = QComboBox()
        self.tiling.addItems(list(TILINGS))
        self.tiling.setToolTip(
            "off: load the inputs and fuse them in one piece.\n"
            "tiles, compute now: fuse tile by tile with overlapping halos (bounded memory; the\n"
            "progress bar counts tiles, Cancel stops before the next tile).\n"
            "tiles, in the background: the output layers appear after the first tile and fill in\n"
            "tile by tile (nearest the view centre first) while the viewer stays responsive; each\n"
            "tile is computed once for all outputs. Chosen automatically for lazy (dask/zarr) stack layers."
        )
        self.tile_size = QSpinBox()
        self.tile_size.setRange(64, 65536)
        self.tile_size.setSingleStep(256)
        self.tile_size.setValue(1024)
        self.tile_size.setSuffix(" px")
        self.tile_size.setToolTip("Edge of a square tile (before its halo), in pixels.")
        dform.addRow("tiling", self.tiling)
        dform.addRow("tile size", self.tile_size)
        self.memory_limit = memory_limit_box(
            "Memory a fusion may use (the command line's --memory-limit): tiles computed side by side\n"
            "shrink to fit it, and a stack that does not fit in it is fused tile by tile. auto: the\n"
            "memory this machine has available, and for tiles about 1.5 GiB in all (a tile estimated\n"
            "to need more is computed in sub-tiles; a larger limit lets it run whole, faster)."
        )
        dform.addRow("memory limit", self.memory_limit)
        return dform

    def memory_limit_bytes(self) -> int | None:
        """The memory limit chosen, in bytes (None: what the machine has available)."""
        return limit_bytes(self.memory_limit)

    def _connect_controls(self) -> None:
        self.input_mode.currentIndexChanged.connect(self._on_mode)
        self.stack_layer.currentIndexChanged.connect(self._on_stack_layer_chosen)
        self.stack_axis.valueChanged.connect(self._on_stack_choice)
        self.z_step.valueChanged.connect(self._on_z_step_edited)
        self.task.currentIndexChanged.connect(self.refresh_methods)
        self.method.currentIndexChanged.connect(self._on_method)
        self.method.about_to_show.connect(self.refresh_methods)
        self.run_button.clicked.connect(self.run)
        self.cancel_button.clicked.connect(self.cancel)

    # ------------------------------------------------------------------ inputs
    def _image_candidates(self) -> list:
        return [ly for ly in self.viewer.layers if _layers.is_image_layer(ly) and ly.ndim == 2]

    def _stack_candidates(self) -> list:
        return [ly for ly in self.viewer.layers if _layers.is_image_layer(ly) and ly.ndim >= 3]

    def refresh_layers(self, *_args) -> None:
        """Re-read the viewer's layers into the input choosers, keeping selections."""
        checked = {id(ly) for ly in self.selected_image_layers()}
        self.image_list.blockSignals(True)
        self.image_list.clear()
        for ly in self._image_candidates():
            self.image_list.addItem(checkable_item(f"{ly.name}{'  (RGB)' if ly.rgb else ''}", ly, id(ly) in checked))
        self.image_list.blockSignals(False)

        current = self.stack_layer.currentData()
        fill_layer_combo(self.stack_layer, self._stack_candidates(), current)
        if self.stack_layer.currentData() is not current:
            self._z_step_from_layer = True
        self._on_stack_layer()

    def selected_image_layers(self) -> list:
        """Checked Image layers, in layer-list order."""
        return checked_layers(self.image_list)

    def set_image_layers(self, layers) -> None:
        """Check exactly ``layers`` (layer objects or names) and switch to image-layer mode."""
        check_exactly(self.image_list, layers)
        self.input_mode.setCurrentText(MODE_IMAGES)

    def set_stack_layer(self, layer, axis: int | None = None) -> None:
        """Choose ``layer`` (object or name) as the stack, along ``axis`` (None: the axis just
        before Y and X, as when the layer is picked in the list)."""
        index = layer_index(self.stack_layer, layer)
        self.input_mode.setCurrentText(MODE_STACK)
        self._z_step_from_layer = True
        self.stack_layer.setCurrentIndex(index)
        chosen = self.stack_layer.currentData()
        self._on_stack_layer()  # the axis range of this layer
        self.stack_axis.setValue(_layers.default_stack_axis(chosen) if axis is None else axis)
        self._on_stack_layer()

    def _on_mode(self, *_args) -> None:
        stack = self.input_mode.currentText() == MODE_STACK
        self.input_pages.setCurrentIndex(1 if stack else 0)
        self._on_stack_layer()

    def _on_stack_layer(self, *_args) -> None:
        layer = self.stack_layer.currentData()
        axes = _layers.stack_axes(layer) if layer is not None else [0]
        self.stack_axis.blockSignals(True)
        self.stack_axis.setRange(0, max(axes[-1] if axes else 0, 0))
        self.stack_axis.blockSignals(False)
        if self.input_mode.currentText() == MODE_STACK and layer is not None:
            sync_z_step(self.z_step, self.z_unit, layer, self.stack_axis.value(), from_layer=self._z_step_from_layer)
            self._suggest_tiling(layer)
        else:
            self.z_unit.setText("")

    def _suggest_tiling(self, layer) -> None:
        """Switch to tiled fusion when a newly chosen stack layer is lazy (dask/zarr)."""
        if layer is None or id(layer) == self._tiling_seen_layer:
            return
        self._tiling_seen_layer = id(layer)
        if _layers.is_lazy_layer(layer) and self.tiling.currentText() == TILING_OFF:
            self.tiling.setCurrentText(TILING_LAZY)

    def _on_stack_choice(self, *_args) -> None:
        # a new layer or axis: take the z step from its scale again
        self._z_step_from_layer = True
        self._on_stack_layer()

    def _on_stack_layer_chosen(self, *_args) -> None:
        # a new layer starts on the axis just before Y and X (z in ZYX, CZYX, TZYX)
        self._on_stack_layer()  # the axis range of the new layer
        start_on_default_stack_axis(self.stack_axis, self.stack_layer.currentData())
        self._on_stack_choice()

    def _on_z_step_edited(self, *_args) -> None:
        self._z_step_from_layer = False

    def make_job(self) -> _layers.FusionJob:
        """Gather the inputs chosen in the widget (raises FusionInputError with a clear message)."""
        if self.input_mode.currentText() == MODE_STACK:
            layer = self.stack_layer.currentData()
            if layer is None:
                raise FusionError("no stack layer: add an Image layer with 3 or more dimensions")
            return _layers.job_from_stack_layer(
                layer,
                axis=self.stack_axis.value(),
                z_step=self.z_step.value(),
                data_point=viewer_data_point(self.viewer, layer),
            )
        name = self.current_method()
        mixed = bool(name) and get_method(name).mixed_colour
        return _layers.job_from_image_layers(
            self.selected_image_layers(), z_step=self.z_step.value(), mixed_colour=mixed
        )

    # ------------------------------------------------------------------ method
    def refresh_methods(self, *_args) -> None:
        """Re-read the registry into the method chooser (keeps the current method if listed)."""
        task = self.task.currentText()
        specs = list_methods(None if task == ALL_TASKS else task)
        current = self.method.currentData() or DEFAULT_METHOD
        names = [s.name for s in specs]
        if [self.method.itemData(i) for i in range(self.method.count())] != names:
            self.method.blockSignals(True)
            self.method.clear()
            for s in specs:
                self.method.addItem(f"{s.title}  [{s.name}]", s.name)
                self.method.setItemData(self.method.count() - 1, s.description, Qt.ToolTipRole)
            if current in names:
                self.method.setCurrentIndex(names.index(current))
            self.method.blockSignals(False)
        if self.params.spec is None or self.params.spec.name != self.method.currentData():
            self._on_method()

    def current_method(self) -> str | None:
        return self.method.currentData()

    def set_method(self, name: str) -> None:
        """Select method ``name`` (clearing the task filter if it hides the method)."""
        index = self.method.findData(name)
        if index < 0:
            self.task.setCurrentText(ALL_TASKS)
            self.refresh_methods()
            index = self.method.findData(name)
        if index < 0:
            get_method(name)  # raises FusionInputError naming the known methods
        self.method.setCurrentIndex(index)

    def _on_method(self, *_args) -> None:
        name = self.method.currentData()
        spec = get_method(name) if name else None
        self.params.set_method(spec)
        self.weights_status.setText(weights_line(spec) if spec is not None else "")
        if spec is None:
            self.description.setText("no method for this task")
            return
        kind = "learned" if spec.learned else "classical"
        outputs = ", ".join(o for o in spec.outputs if o != "weights")
        self.description.setText(f"{spec.description}\n({kind}; {spec.n_inputs}; outputs: {outputs})")
        self.description.setToolTip(spec.citation)

    # --------------------------------------------------------------------- run
    def run(self):
        """Start fusing in a thread worker; returns the worker (None if the inputs are invalid)."""
        if self.worker is not None:
            return self.worker
        try:
            job = self.make_job()
            method = self.current_method()
            if method is None:
                raise FusionError("choose a method")
            spec = get_method(method)
            params = spec.resolve_params(self.params.values())
        except FusionError as exc:
            self._fail(str(exc))
            return None
        device = self.device.currentText()
        tiling = (self.tiling.currentText(), int(self.tile_size.value()))
        self._whole_note = job.note
        self._partial = False
        if tiling[0] != TILING_OFF and spec.halo_for(params) is None:
            # a global method cannot be tiled without seams: fuse the whole image (loaded in the
            # worker; the memory guard refuses a stack that does not fit) and say so
            tiling = (TILING_OFF, tiling[1])
            self._whole_note += f"; {method} is global (cannot be tiled), so the whole stack was fused in memory"
        self._begin_run(f"running {method} on {job.n} images...")
        limit = self.memory_limit_bytes()
        if tiling[0] == TILING_LAZY:
            self._gui_caught_up = threading.Event()
            work, extra = _compute_in_background, (tiling[1], self._view_centre(job), self._gui_caught_up, limit)
            title = ", tile by tile"
        else:
            work, extra, title = _compute, (tiling, limit), ""
        return self._start_worker(
            work,
            job,
            method,
            params,
            device,
            self._progress_callback,
            self._cancel,
            *extra,
            progress=f"Fusing {job.n} images ({method}){title}",
        )

    def _view_centre(self, job) -> tuple[float, float] | None:
        """The viewer's camera centre in the output's pixel coordinates (row, column), if known."""
        try:
            ref = job.reference
            centre = self.viewer.camera.center[-2:]
            scale, translate = ref.scale[-2:], ref.translate[-2:]
            return tuple(float((c - t) / s) for c, t, s in zip(centre, translate, scale))  # type: ignore[return-value]
        except (AttributeError, TypeError, ValueError, ZeroDivisionError):
            return None

    def _show_outputs(
        self, job, result, device: str, seconds: float, limits, decision=None, *, one_per_turn: bool = False
    ) -> None:
        """Create or update the output layers (GUI thread; no pixel is computed here).

        ``one_per_turn``: make one layer per turn of the event loop (napari takes
        about 0.1 s to set up a large layer; three at once would hold the viewer).
        """
        self.last_result = result
        record = _layers.provenance(job, result, device=device, seconds=seconds)
        specs = _layers.output_layer_data(job, result, record, limits, decision=decision)
        for key, (data, kwargs, layer_type) in list(specs.items()):
            if isinstance(data, np.ndarray):  # large outputs: a display pyramid of views (no copy)
                specs[key] = (_layers.display_pyramid(data, rgb=bool(kwargs.get("rgb"))), kwargs, layer_type)
        steps = []
        for key in ("fused", "decision", "depth"):
            if key in specs:
                steps.append(lambda key=key: self._put_output(key, *specs[key]))
            else:
                # the method gives no such output: drop the stale layer of a previous run
                steps.append(lambda key=key: drop_layer(self.viewer, self.output_layers, key))
        # first view: the fused image on top, the translucent maps beneath it
        steps.append(
            lambda: _layers.arrange_outputs(
                self.viewer, [self.output_layers.get(k) for k in ("depth", "decision", "fused")]
            )
        )
        if not one_per_turn:
            for step in steps:
                step()
            return
        self._layer_steps = steps
        self._next_layer_step()

    def _next_layer_step(self) -> None:
        steps = self._layer_steps
        if steps:
            steps.pop(0)()
        if steps:
            QTimer.singleShot(LAYER_STEP_MS, self._next_layer_step)
        else:
            self._gui_caught_up.set()  # the worker computes the next tiles from here on

    def _put_output(self, key: str, data, kwargs: dict[str, Any], layer_type: str) -> None:
        self.output_layers[key] = _layers.update_or_add(
            self.viewer, self.output_layers.get(key), data, kwargs, layer_type
        )

    def _on_yielded(self, value) -> None:
        """Background tiling: the first tile (create the layers) or more tiles (refresh them)."""
        if value[0] == "layers":
            _, job, result, device, limits, decision = value
            self._partial = True
            self._show_outputs(job, result, device, 0.0, limits, decision=decision, one_per_turn=True)
            return
        if self._layer_steps:
            return  # the layers are still being made; they show the current data when they are
        for layer in self.output_layers.values():
            if layer is not None and layer in self.viewer.layers:
                layer.refresh()
        self._gui_caught_up.set()

    def _on_errored(self, exc: BaseException) -> None:
        super()._on_errored(exc)
        if self._partial:  # background tiling: the layers were made and hold the tiles done so far
            what = "cancelled" if isinstance(exc, FusionCancelled) else "stopped by an error"
            self.status.setText(
                f"{what}: the output layers show the tiles fused so far (the others are empty); last {self._last_message}"
            )

    def _on_returned(self, value) -> None:
        if value[0] == "background":
            _, job, result, device, seconds, tiles = value
            while self._layer_steps:  # a very short run: finish making the layers
                self._next_layer_step()
            self._on_yielded(("refresh",))
            if self.output_layers.get("fused") is not None:
                record = _layers.provenance(job, result, device=device, seconds=seconds)
                for layer in self.output_layers.values():
                    meta = dict(layer.metadata)
                    meta["napari_fusion"] = {**meta.get("napari_fusion", {}), **record}
                    layer.metadata = meta
            self.last_result = result
            self.status.setText(f"{result.method}: {tiles} tiles done in {seconds:.2f} s on {device}{self._whole_note}")
            self._outcome = "done"
            return
        job, result, device, seconds, limits = value
        self._show_outputs(job, result, device, seconds, limits)
        used = result.n_sources_used
        extra = f", {used} of {job.n} sources used" if result.labels is not None else ""
        self.status.setText(f"{result.method}: done in {seconds:.2f} s on {device}{extra}{self._whole_note}")
        self._outcome = "done"


def weights_line(spec) -> str:
    """One line per weights file a learned method needs: found where, or how to get it.

    Presence only (no checksum: hashing a 550 MB file would stall the GUI); the
    method verifies the checksum when it runs and refuses a wrong file.
    """
    if spec is None or not spec.learned:
        return ""
    from ..errors import WeightsUnavailableError
    from ..weights import locate_weights, weights_for_method

    needed = weights_for_method(spec.name)
    if not needed:
        return "weights: trained here, shipped with napari-fusion (see its model card)"
    lines = []
    for ws in needed:
        try:
            loc = locate_weights(ws, verify=False)
        except WeightsUnavailableError:
            lines.append(
                f"{ws.description} weights: MISSING. Run `napari-fusion weights fetch {ws.name}` on a "
                f"computer with internet access, set ${ws.env_var} to the file, or give it in the "
                "'weights' parameter."
            )
        else:
            lines.append(f"{ws.description} weights: found ({loc.source}: {loc.path}); checksum verified at run time")
    return "\n".join(lines)


def _compute(job, method, params, device, progress, cancel, tiling=(TILING_OFF, 0), memory_limit=None):
    """Worker-thread body: run :func:`fuse` (whole or tiled) and time it, within ``memory_limit``
    bytes (None: what the machine has available)."""
    if cancel.is_set():
        raise FusionCancelled("fusion cancelled by the user")
    start = time.perf_counter()
    images = job.images
    mode, tile = tiling
    common = {"method": method, "stack_axis": 0, "z_positions": job.z_positions, "device": device}
    if mode == TILING_OFF:
        if not isinstance(images, list):
            images = np.asarray(images)  # materialise lazy (dask) stacks here, off the GUI thread
        else:
            images = [np.asarray(im) for im in images]
        with limited_to(memory_limit):  # this worker thread only
            result = fuse(images, **common, progress=progress, **params)
    else:
        with limited_to(memory_limit):  # the tiles are fitted to it when planned
            lazy = fuse(images, **common, chunks=int(tile), progress=progress, **params)
        result = lazy.compute(progress=progress)
    if cancel.is_set():
        raise FusionCancelled("fusion cancelled by the user")
    seconds = time.perf_counter() - start
    from ..device import resolve_device

    limits = _layers.display_limits(result.fused, rgb=job.rgb)  # here, not on the Qt thread
    return job, result, str(resolve_device(device)), seconds, limits


def _tile_order(grid, centre: tuple[float, float] | None) -> list[tuple[int, int]]:
    """Grid indices by distance of their centres from ``centre`` (row, col pixels); row by row without one."""
    rows, cols = grid.row_edges, grid.col_edges
    order = [(i, j) for i in range(len(rows) - 1) for j in range(len(cols) - 1)]
    if centre is None:
        return order

    def distance(ij: tuple[int, int]) -> float:
        i, j = ij
        cy, cx = (rows[i] + rows[i + 1]) / 2.0, (cols[j] + cols[j + 1]) / 2.0
        return (cy - centre[0]) ** 2 + (cx - centre[1]) ** 2

    return sorted(order, key=distance)


def _handed_to_gui(value, event: threading.Event | None, cancel: threading.Event, *, limit: float = 10.0):
    """Yield ``value`` to the GUI thread, then wait (at most ``limit`` s) until it sets ``event``.

    Raises :class:`FusionCancelled` when Cancel is pressed meanwhile.
    """
    if event is not None:
        event.clear()
    yield value
    if event is None:
        return
    end = time.perf_counter() + limit
    while not event.wait(0.02) and time.perf_counter() < end:
        if cancel.is_set():
            raise FusionCancelled("fusion cancelled by the user")


def _compute_in_background(
    job, method, params, device, progress, cancel, tile, centre, gui_caught_up=None, memory_limit=None
):
    """Worker-thread body (a generator) of background tiling.

    Plans the tiles (the lazy path: nothing fused yet), computes the tile
    nearest the view centre, yields the output buffers so the GUI thread makes
    the layers (contrast from that first tile), then fills the buffers tile by
    tile - each tile once for all outputs - yielding a refresh every
    :data:`REFRESH_SECONDS`. ``progress`` raises when the user cancels.
    ``gui_caught_up`` (a :class:`threading.Event`): set by the GUI thread once
    it has made the layers or refreshed them; the next tiles wait for it, so
    that napari's layer set-up and redraws (0.05-0.2 s per layer on this
    machine's GUI thread) do not compete with the tile computation for the GIL.
    """
    from ..api import FusionResult
    from ..device import resolve_device

    if cancel.is_set():
        raise FusionCancelled("fusion cancelled by the user")
    start = time.perf_counter()
    common = {"method": method, "stack_axis": 0, "z_positions": job.z_positions, "device": device}
    with limited_to(memory_limit):  # the tiles are fitted to it when planned (this worker thread only)
        lazy = fuse(job.images, **common, chunks=int(tile), progress=progress, **params)  # whole-image passes
    lazy.progress = None
    arrays = lazy.arrays()
    buffers = {name: np.zeros(a.shape, a.dtype) for name, a in arrays.items() if name != "labels"}
    decision = None
    if "labels" in arrays:
        decision = np.zeros(arrays["labels"].shape, _layers.label_dtype(job.n + 1))
    result = FusionResult(
        fused=buffers["fused"],
        labels=None,
        depth=buffers.get("depth"),
        method=lazy.method,
        params=dict(lazy.params),
    )
    order = _tile_order(lazy.grid, centre)
    total = len(order)
    interval = REFRESH_SECONDS
    device_name = str(resolve_device(device))
    last = time.perf_counter()
    batch = max(1, min(4, os.cpu_count() or 1))  # tiles computed side by side after the first
    for k, ((rows, cols), planes) in enumerate(lazy.iter_tiles(order, batch=batch, progress=progress)):
        for name, plane in planes.items():
            if name == "labels":
                decision[rows, cols] = plane + 1
            else:
                buffers[name][rows, cols] = plane
        progress(k + 1, total, f"tile {k + 1}/{total}")
        if k == 0:
            limits = _layers.display_limits(planes["fused"], rgb=job.rgb)
            yield from _handed_to_gui(("layers", job, result, device_name, limits, decision), gui_caught_up, cancel)
            last = time.perf_counter()
        elif time.perf_counter() - last >= interval:
            yield from _handed_to_gui(("refresh",), gui_caught_up, cancel)
            last = time.perf_counter()
    if decision is not None:
        result.labels = (decision - 1).astype(_layers.label_dtype(job.n))
    return ("background", job, result, device_name, time.perf_counter() - start, total)
