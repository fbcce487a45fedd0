"""Dock widget "Guided upsampling": a low-resolution multiband layer + a high-resolution
guide layer -> the multiband image at the guide's resolution (pansharpening,
hyperspectral + RGB). The work is done by :func:`napari_fusion.guided_upsample`.

Layer layouts: a multiband layer is ``(bands, y, x)`` (bands as the leading
axis, napari's usual way) or an RGB layer; the guide is grey ``(y, x)``, RGB, or
``(channels, y, x)``. The scale factor is read from the shapes and shown. The
result is an Image layer ``(bands, Y, X)`` placed on the guide's pixel grid.
The work runs in a thread worker (progress in the activity dock, Cancel).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from qtpy.QtCore import Signal
from qtpy.QtWidgets import QComboBox, QFormLayout, QLabel, QWidget

from ..errors import FusionError
from ..upsample import MODELS, UPSAMPLE_METHODS, guided_upsample, infer_layout
from ._common import WorkerControls, make_compact, scrolling_layout, text_label

AUTO = "auto (match band counts)"


def _image_layers(viewer) -> list:
    return [layer for layer in viewer.layers if layer.__class__.__name__ == "Image"]


def _layer_array(layer) -> tuple[Any, int | None]:
    """(data, band axis) of a layer: RGB -> last axis, 3-D -> first axis, 2-D -> None (data not read)."""
    data = layer.data[0] if layer.multiscale else layer.data
    if layer.rgb:
        return data, -1
    if data.ndim == 3:
        return data, 0
    if data.ndim == 2:
        return data, None
    raise FusionError(f"layer {layer.name!r} has shape {data.shape}; expected (y, x), (bands, y, x) or RGB")


def _upsample(low, gd, method: str, model: str | None, la, ga, progress):
    """Worker-thread body: read the layers and run :func:`guided_upsample`."""
    progress(0, 2, "reading the layers")
    low, gd = np.asarray(low), np.asarray(gd)
    progress(1, 2, f"upsampling ({method})")
    out = guided_upsample(low, gd, method=method, model=model, band_axis=la, guide_axis=ga)
    progress(2, 2, "done")
    return out


class GuidedUpsampleWidget(WorkerControls, QWidget):
    """Choose the multiband and guide layers and a method, press Run."""

    #: Emitted when a run ends, with "done", "cancelled" or "error".
    run_finished = Signal(str)
    input_error_prefix = "cannot upsample"

    def __init__(self, napari_viewer, parent: QWidget | None = None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.output_layer = None
        self._init_worker_state()
        layout = scrolling_layout(self)
        form = QFormLayout()
        self.lowres = QComboBox()
        self.lowres.setToolTip("Low-resolution multiband layer: (bands, y, x) or RGB.")
        self.guide = QComboBox()
        self.guide.setToolTip(
            "High-resolution guide layer of the same scene: panchromatic (y, x), RGB or (channels, y, x)."
        )
        self.method = QComboBox()
        self.method.addItems(list(UPSAMPLE_METHODS))
        self.method.setToolTip(
            "csc_mmfn: convolutional sparse coding network (shipped models: cave = 31 bands + RGB, "
            "pansharpening = 4 bands + PAN); bicubic; guided_filter: bicubic + guided filter by the guide."
        )
        self.model = QComboBox()
        self.model.addItems([AUTO, *MODELS])
        self.model.setToolTip("CSC-MMFN model (only for csc_mmfn).")
        form.addRow("multiband (low-res)", self.lowres)
        form.addRow("guide (high-res)", self.guide)
        form.addRow("method", self.method)
        form.addRow("model", self.model)
        self.scale_label = QLabel("")
        form.addRow("scale", self.scale_label)
        layout.addLayout(form)
        layout.addLayout(self._build_run_buttons())
        self.status = text_label()
        layout.addWidget(self.status)
        layout.addStretch(1)
        self.run_button.clicked.connect(self.run)
        self.cancel_button.clicked.connect(self.cancel)
        self.method.currentTextChanged.connect(self._method_changed)
        for combo in (self.lowres, self.guide):
            combo.currentTextChanged.connect(self._update_scale)
        for event in (napari_viewer.layers.events.inserted, napari_viewer.layers.events.removed):
            event.connect(self._refresh_layers)
        self._refresh_layers()
        self._method_changed(self.method.currentText())
        make_compact(self)

    def _layers(self) -> dict[str, Any]:
        return {layer.name: layer for layer in _image_layers(self.viewer)}

    def _refresh_layers(self, event: Any = None) -> None:
        names = [n for n in self._layers() if self.output_layer is None or n != self.output_layer.name]
        for i, combo in enumerate((self.lowres, self.guide)):
            current = combo.currentText()
            combo.blockSignals(True)
            combo.clear()
            combo.addItems(names)
            if current in names:
                combo.setCurrentText(current)
            elif i == 1 and len(names) > 1:
                combo.setCurrentIndex(1)
            combo.blockSignals(False)
        self._update_scale()

    def _method_changed(self, method: str) -> None:
        self.model.setEnabled(method == "csc_mmfn")

    def set_selection(self, lowres: str, guide: str, method: str = "csc_mmfn", model: str | None = None) -> None:
        """Choose layers and method programmatically (scripts and tests)."""
        self.lowres.setCurrentText(lowres)
        self.guide.setCurrentText(guide)
        self.method.setCurrentText(method)
        self.model.setCurrentText(model or AUTO)
        self._update_scale()

    def _inputs(self):
        layers = self._layers()
        lo_name, g_name = self.lowres.currentText(), self.guide.currentText()
        if lo_name not in layers or g_name not in layers:
            raise FusionError("choose a multiband layer and a guide layer")
        if lo_name == g_name:
            raise FusionError("the multiband and the guide layer must differ")
        low, la = _layer_array(layers[lo_name])
        gd, ga = _layer_array(layers[g_name])
        return layers[lo_name], layers[g_name], low, la, gd, ga

    def _update_scale(self, *_: Any) -> None:
        try:
            _, _, low, la, gd, ga = self._inputs()
            lay = infer_layout(low.shape, gd.shape, band_axis=la, guide_axis=ga)
        except FusionError as exc:
            self.scale_label.setText("-")
            self.status.setText(str(exc))
            return
        self.scale_label.setText(
            f"x{lay.scale} ({lay.bands} bands, {lay.low_size[0]}x{lay.low_size[1]} -> "
            f"{lay.high_size[0]}x{lay.high_size[1]})"
        )
        self.status.setText("")

    def run(self):
        """Start upsampling in a worker; returns it (None on bad input or while running)."""
        if self.worker is not None:
            return None
        method = self.method.currentText()
        model = self.model.currentText()
        try:
            lo_layer, g_layer, low, la, gd, ga = self._inputs()
            lay = infer_layout(low.shape, gd.shape, band_axis=la, guide_axis=ga)
        except FusionError as exc:
            self.status.setText(f"cannot upsample: {exc}")
            return None
        self._job = (method, model, lo_layer, g_layer, lay, la)
        self._begin_run(f"{method}: upsampling {lo_layer.name} x{lay.scale}...")
        return self._start_worker(
            _upsample,
            low,
            gd,
            method,
            None if model == AUTO else model,
            la,
            ga,
            self._progress_callback,
            progress=f"Guided upsampling ({method})",
        )

    def _on_returned(self, out: np.ndarray) -> None:
        """Show the result (on the GUI thread): a new layer, or the previous one updated in place."""
        method, model, lo_layer, g_layer, lay, la = self._job
        rgb = la == -1 and out.ndim == 3 and out.shape[-1] in (3, 4)
        name = f"{lo_layer.name} upsampled"
        scale = tuple(g_layer.scale[-2:])
        translate = tuple(g_layer.translate[-2:])
        if out.ndim == 3 and not rgb:
            scale = (1.0, *scale)
            translate = (0.0, *translate)
        meta = {
            "napari_fusion": {
                "task": "guided_upsample",
                "method": method,
                "model": model,
                "lowres": lo_layer.name,
                "guide": g_layer.name,
            }
        }
        reuse = (
            self.output_layer is not None
            and self.output_layer in self.viewer.layers
            and self.output_layer.rgb == rgb
            and self.output_layer.data.shape == out.shape
        )
        if reuse:
            self.output_layer.data = out
            self.output_layer.name = name
            self.output_layer.metadata = meta
            self.output_layer.scale = scale
            self.output_layer.translate = translate
        else:
            self.output_layer = self.viewer.add_image(
                out, name=name, rgb=rgb, scale=scale, translate=translate, metadata=meta
            )
            self._refresh_layers()  # the result is not an input choice
        self.status.setText(f"{method}: {lo_layer.name} x{lay.scale} with guide {g_layer.name}")
        self._outcome = "done"
