"""Dock widget: fusion quality metrics of a fused layer against its source layers.

Pick the fused Image layer, check the source layers (and optionally a
ground-truth layer), press Compute: the values appear in a table that can be
copied as CSV. The numbers come from :mod:`napari_fusion.metrics`, the same
code the ``napari-fusion evaluate`` command uses.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QApplication,
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..errors import FusionError
from ..metrics import METRICS, compute_metrics

NONE = "(none)"


def _image_layers(viewer) -> list:
    return [layer for layer in viewer.layers if layer.__class__.__name__ == "Image"]


def _plane(viewer, layer) -> np.ndarray:
    """The 2-D (grey or RGB) image a layer shows at the viewer's current position.

    Leading (non-spatial) axes are indexed by the viewer's current dims step.
    """
    data = layer.data
    if layer.multiscale:
        data = data[0]
    n_lead = data.ndim - (3 if layer.rgb else 2)
    if n_lead > 0:
        steps = list(viewer.dims.current_step)[-(data.ndim - (1 if layer.rgb else 0)) :]
        index = tuple(min(max(int(steps[i]), 0), data.shape[i] - 1) for i in range(n_lead))
        data = data[index]
    return np.asarray(data)


def metrics_table_csv(values: dict[str, float]) -> str:
    """``metric,value`` lines, the format the Copy button puts on the clipboard."""
    lines = ["metric,value"]
    lines += [f"{k},{v:.6g}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


class MetricsWidget(QWidget):
    """Compute fusion metrics for layers of the viewer."""

    def __init__(self, napari_viewer, parent: QWidget | None = None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.values: dict[str, float] = {}
        layout = QVBoxLayout(self)
        form = QFormLayout()
        self.fused = QComboBox()
        self.fused.setToolTip("The fused image to score.")
        self.gt = QComboBox()
        self.gt.setToolTip("Optional all-in-focus ground truth (adds MSE/PSNR/SSIM against it).")
        form.addRow("fused", self.fused)
        form.addRow("ground truth", self.gt)
        layout.addLayout(form)
        layout.addWidget(QLabel("sources"))
        self.sources = QListWidget()
        self.sources.setToolTip("Check the source layers the fused image was made from.")
        self.sources.setMinimumHeight(70)
        layout.addWidget(self.sources)
        row = QHBoxLayout()
        self.compute_button = QPushButton("Compute")
        self.copy_button = QPushButton("Copy as CSV")
        self.copy_button.setEnabled(False)
        row.addWidget(self.compute_button)
        row.addWidget(self.copy_button)
        layout.addLayout(row)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        layout.addWidget(self.status)
        self.table = QTableWidget(0, 3)
        self.table.setHorizontalHeaderLabels(["metric", "value", "variant"])
        layout.addWidget(self.table, 1)
        self.compute_button.clicked.connect(self.compute)
        self.copy_button.clicked.connect(self.copy_csv)
        for event in (napari_viewer.layers.events.inserted, napari_viewer.layers.events.removed):
            event.connect(self._refresh_layers)
        self._refresh_layers()

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

    def compute(self) -> dict[str, float]:
        layers = {layer.name: layer for layer in _image_layers(self.viewer)}
        src_names = [
            self.sources.item(i).text()
            for i in range(self.sources.count())
            if self.sources.item(i).checkState() == Qt.Checked
        ]
        fused_name = self.fused.currentText()
        if fused_name not in layers:
            self.status.setText("choose the fused layer")
            return {}
        src_names = [n for n in src_names if n != fused_name]
        gt_name = self.gt.currentText()
        try:
            fused = _plane(self.viewer, layers[fused_name])
            sources = [_plane(self.viewer, layers[n]) for n in src_names] or None
            gt = _plane(self.viewer, layers[gt_name]) if gt_name in layers else None
            self.values = compute_metrics(fused, sources, gt)
        except FusionError as exc:
            self.status.setText(f"cannot compute: {exc}")
            self.values = {}
            return {}
        self.status.setText(
            f"{fused_name} against {len(src_names)} source(s)"
            + (f" and ground truth {gt_name}" if gt is not None else "")
        )
        self.table.setRowCount(len(self.values))
        for row, (name, value) in enumerate(self.values.items()):
            self.table.setItem(row, 0, QTableWidgetItem(name))
            self.table.setItem(row, 1, QTableWidgetItem(f"{value:.6g}"))
            self.table.setItem(row, 2, QTableWidgetItem(METRICS[name].variant))
        self.copy_button.setEnabled(bool(self.values))
        return dict(self.values)

    def copy_csv(self) -> str:
        text = metrics_table_csv(self.values)
        QApplication.clipboard().setText(text)
        return text
