"""Dock widget: fusion quality metrics of a fused layer against its source layers.

Pick the fused Image layer, check the source layers (and optionally a
ground-truth layer), press Compute: the metrics are computed in a worker
thread (progress in the activity dock, Cancel stops after the current metric)
and appear in a table that can be copied as CSV. The numbers come from
:mod:`napari_fusion.metrics`, the same code the ``napari-fusion evaluate``
command uses.

A source layer that is a stack (one more leading axis than the fused image,
e.g. the focal stack a fused image was made from) counts as one source per
slice when "each slice of a stack is a source" is on. With a ground truth and a
multiband fused image (RGB, or ``(bands, y, x)``), the spectral metrics SAM
and ERGAS are added (ERGAS needs the resolution ratio of the fusion).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import (
    QApplication,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QWidget,
)

from ..errors import FusionCancelled, FusionInputError
from ..metrics import METRICS, compute_metrics, default_metric_names, ergas, sam
from ._common import WorkerControls, make_compact, scrolling_layout, text_label

NONE = "(none)"
#: spectral metrics added when a ground truth is given for a multiband fused image
SPECTRAL = {"sam": "spectral angle (degrees; Yuhas et al. 1992)", "ergas": "relative global error (Wald 2000)"}


def _image_layers(viewer) -> list:
    return [layer for layer in viewer.layers if layer.__class__.__name__ == "Image"]


def _base_data(layer):
    return layer.data[0] if layer.multiscale else layer.data


def _plane_index(viewer, layer, keep: int) -> tuple:
    """Index of the leading axes of ``layer`` at the viewer's position, keeping the last ``keep`` axes."""
    data = _base_data(layer)
    n_lead = data.ndim - keep
    if n_lead <= 0:
        return ()
    steps = list(viewer.dims.current_step)[-(data.ndim - (1 if layer.rgb else 0)) :]
    return tuple(min(max(int(steps[i]), 0), data.shape[i] - 1) for i in range(n_lead))


def _plane(viewer, layer):
    """The 2-D (grey or RGB) image a layer shows at the viewer's current position (not read yet)."""
    data = _base_data(layer)
    return data[_plane_index(viewer, layer, 3 if layer.rgb else 2)]


def _source_planes(viewer, layer, *, per_slice: bool) -> list[tuple[str, Any]]:
    """``(name, plane)`` of a source layer: its shown plane, or every slice of a stack layer."""
    data = _base_data(layer)
    spatial = 3 if layer.rgb else 2
    if per_slice and data.ndim == spatial + 1:
        return [(f"{layer.name}[{k}]", data[k]) for k in range(data.shape[0])]
    if per_slice and data.ndim > spatial + 1:  # (..., Z, Y, X): the stack at the viewer's other positions
        index = _plane_index(viewer, layer, spatial + 1)
        stack = data[index]
        return [(f"{layer.name}[{k}]", stack[k]) for k in range(stack.shape[0])]
    return [(layer.name, _plane(viewer, layer))]


def _band_axis(layer) -> int | None:
    """The band axis of a layer for spectral metrics: RGB -> -1, ``(bands, y, x)`` -> 0, else None."""
    data = _base_data(layer)
    if layer.rgb:
        return -1
    if data.ndim == 3 and data.shape[0] > 1:
        return 0
    return None


def metrics_table_csv(values: dict[str, float]) -> str:
    """``metric,value`` lines, the format the Copy button puts on the clipboard."""
    lines = ["metric,value"]
    lines += [f"{k},{v:.6g}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


def compute_all(fused, sources, gt, spectral: dict[str, Any] | None, progress) -> dict[str, Any]:
    """Worker-thread body: read the planes, compute the metrics (``progress`` may raise to cancel).

    A metric that cannot be computed on these images (e.g. VIF on a crop too small for its
    coarsest scale) is left out, with its reason under the key ``"_skipped"`` (``{name: reason}``),
    so the others are still shown. When no metric can be computed, the first reason is raised."""
    fused = np.asarray(fused)
    sources = [np.asarray(s) for s in sources] or None
    gt = None if gt is None else np.asarray(gt)
    names = default_metric_names(sources, gt)
    values: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    for k, name in enumerate(names):

        def step(_done, _total, _message, k=k, name=name):
            progress(k + 1, len(names), name)

        try:
            values.update(compute_metrics(fused, sources, gt, names=[name], progress=step))
        except FusionInputError as exc:
            skipped[name] = str(exc)
            step(0, 0, "")
    if names and not values:
        raise FusionInputError(next(iter(skipped.values())))
    if spectral is not None:
        f, g = np.asarray(spectral["fused"]), np.asarray(spectral["gt"])
        if f.shape != g.shape:
            raise FusionInputError(f"SAM/ERGAS: fused {f.shape} and ground truth {g.shape} differ in shape")
        axis = spectral["band_axis"]
        values["sam"] = sam(f, g, band_axis=axis)
        values["ergas"] = ergas(f, g, scale=spectral["scale"], band_axis=axis)
        progress(1, 1, "spectral metrics")
    if skipped:
        values["_skipped"] = skipped
    return values


class MetricsWidget(WorkerControls, QWidget):
    """Compute fusion metrics for layers of the viewer."""

    #: Emitted when a computation ends, with "done", "cancelled" or "error".
    run_finished = Signal(str)
    input_error_prefix = "cannot compute"

    def __init__(self, napari_viewer, parent: QWidget | None = None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.values: dict[str, float] = {}
        self._init_worker_state()
        layout = scrolling_layout(self)
        form = QFormLayout()
        self.fused = QComboBox()
        self.fused.setToolTip("The fused image to score.")
        self.gt = QComboBox()
        self.gt.setToolTip("Optional all-in-focus ground truth (adds MSE/PSNR/SSIM against it).")
        form.addRow("fused", self.fused)
        form.addRow("ground truth", self.gt)
        self.ergas_scale = QDoubleSpinBox()
        self.ergas_scale.setRange(1.0, 64.0)
        self.ergas_scale.setValue(4.0)
        self.ergas_scale.setToolTip(
            "Resolution ratio (high / low) of the fusion, used by ERGAS (pansharpening: usually 4)."
        )
        form.addRow("ERGAS ratio", self.ergas_scale)
        layout.addLayout(form)
        layout.addWidget(QLabel("sources"))
        self.sources = QListWidget()
        self.sources.setToolTip("Check the source layers the fused image was made from.")
        self.sources.setMinimumHeight(70)
        layout.addWidget(self.sources)
        self.per_slice = QCheckBox("each slice of a stack is a source")
        self.per_slice.setChecked(True)
        self.per_slice.setToolTip(
            "A checked source layer with one more axis than the fused image (a focal stack, a stack of\n"
            "exposures) gives one source per slice; off: only the slice shown in the viewer."
        )
        layout.addWidget(self.per_slice)
        self.copy_button = QPushButton("Copy as CSV")
        self.copy_button.setEnabled(False)
        layout.addLayout(self._build_run_buttons(self.copy_button, run_text="Compute"))
        self.compute_button = self.run_button
        self.status = text_label()
        layout.addWidget(self.status)
        self.table = QTableWidget(0, 3)
        self.table.setHorizontalHeaderLabels(["metric", "value", "variant"])
        self.table.setMinimumHeight(160)
        layout.addWidget(self.table, 1)
        self.run_button.clicked.connect(self.compute)
        self.cancel_button.clicked.connect(self.cancel)
        self.copy_button.clicked.connect(self.copy_csv)
        for event in (napari_viewer.layers.events.inserted, napari_viewer.layers.events.removed):
            event.connect(self._refresh_layers)
        self._refresh_layers()
        make_compact(self)

    def _refresh_layers(self, event: Any = None) -> None:
        names = [layer.name for layer in _image_layers(self.viewer)]
        checked = {
            self.sources.item(i).text()
            for i in range(self.sources.count())
            if self.sources.item(i).checkState() == Qt.Checked
        }
        for combo, extra in ((self.fused, []), (self.gt, [NONE])):
            current = combo.currentText()
            combo.blockSignals(True)
            combo.clear()
            combo.addItems(extra + names)
            if current in extra + names:
                combo.setCurrentText(current)
            combo.blockSignals(False)
        self.sources.clear()
        for name in names:
            item = QListWidgetItem(name)
            item.setFlags(item.flags() | Qt.ItemIsUserCheckable)
            item.setCheckState(Qt.Checked if name in checked else Qt.Unchecked)
            self.sources.addItem(item)

    def set_selection(self, fused: str, sources: list[str], gt: str | None = None) -> None:
        """Choose layers programmatically (scripts and tests)."""
        self.fused.setCurrentText(fused)
        self.gt.setCurrentText(gt or NONE)
        for i in range(self.sources.count()):
            item = self.sources.item(i)
            item.setCheckState(Qt.Checked if item.text() in sources else Qt.Unchecked)

    def compute(self):
        """Start computing the metrics in a worker; returns it (None on bad input or while running)."""
        if self.worker is not None:
            return None
        layers = {layer.name: layer for layer in _image_layers(self.viewer)}
        fused_name = self.fused.currentText()
        if fused_name not in layers:
            self.status.setText("choose the fused layer")
            return None
        src_names = [
            self.sources.item(i).text()
            for i in range(self.sources.count())
            if self.sources.item(i).checkState() == Qt.Checked
        ]
        src_names = [n for n in src_names if n != fused_name and n in layers]
        gt_name = self.gt.currentText()
        fused_layer = layers[fused_name]
        per_slice = self.per_slice.isChecked()
        sources = [p for n in src_names for p in _source_planes(self.viewer, layers[n], per_slice=per_slice)]
        gt_layer = layers.get(gt_name)
        spectral = None
        axis = _band_axis(fused_layer)
        if gt_layer is not None and axis is not None:
            spectral = {
                "fused": _base_data(fused_layer) if axis == 0 else _plane(self.viewer, fused_layer),
                "gt": _base_data(gt_layer) if axis == 0 else _plane(self.viewer, gt_layer),
                "band_axis": axis,
                "scale": float(self.ergas_scale.value()),
            }
        self._summary = (
            f"{fused_name} against {len(sources)} source(s)"
            + (f" ({', '.join(n for n, _ in sources[:4])}{', ...' if len(sources) > 4 else ''})" if sources else "")
            + (f" and ground truth {gt_name}" if gt_layer is not None else "")
        )
        self._begin_run(f"computing metrics of {fused_name}...")
        return self._start_worker(
            compute_all,
            _plane(self.viewer, fused_layer),
            [p for _, p in sources],
            None if gt_layer is None else _plane(self.viewer, gt_layer),
            spectral,
            self._progress_callback,
            progress=f"Metrics of {fused_name}",
        )

    def _on_errored(self, exc: BaseException) -> None:
        if not isinstance(exc, FusionCancelled):  # a cancelled run keeps the previous table
            self.values = {}
        super()._on_errored(exc)

    def _on_returned(self, values: dict[str, Any]) -> None:
        skipped = values.pop("_skipped", {})
        self.values = values
        note = ""
        if skipped:
            first = next(iter(skipped.values()))
            note = f"; not computed here: {', '.join(skipped)} ({first})"
        self.status.setText(self._summary + note)
        self.table.setRowCount(len(values))
        for row, (name, value) in enumerate(values.items()):
            variant = METRICS[name].variant if name in METRICS else SPECTRAL.get(name, "")
            self.table.setItem(row, 0, QTableWidgetItem(name))
            self.table.setItem(row, 1, QTableWidgetItem(f"{value:.6g}"))
            self.table.setItem(row, 2, QTableWidgetItem(variant))
        self.copy_button.setEnabled(bool(values))
        self._outcome = "done"

    def copy_csv(self) -> str:
        text = metrics_table_csv(self.values)
        QApplication.clipboard().setText(text)
        return text
