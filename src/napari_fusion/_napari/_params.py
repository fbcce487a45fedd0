"""A parameter panel generated from a method's :class:`napari_fusion.Param` metadata.

Editor per parameter kind:

* ``int`` -> :class:`QSpinBox` limited to ``[low, high]``;
* ``float`` -> :class:`FloatEditor`, a spin box limited to ``[low, high]`` that shows
  values with ``%g`` (so ``1e-06`` stays readable) and steps by factors of ten
  when the range spans many decades (regularisation constants);
* ``str`` with ``choices`` -> :class:`QComboBox`; free ``str`` -> :class:`QLineEdit`;
* ``bool`` -> :class:`QCheckBox`.

The help text becomes the tooltip, together with the range and the default.
Values are validated again by :meth:`MethodSpec.resolve_params` when fusion runs.
"""

from __future__ import annotations

import math
from typing import Any

from qtpy.QtGui import QValidator
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QLabel,
    QLineEdit,
    QSpinBox,
    QWidget,
)

from ..registry import MethodSpec, Param
from ._common import make_compact

_INT_LIMIT = 2**31 - 1
_FLOAT_LIMIT = 1e300


def is_log_scale(p: Param) -> bool:
    """True for a positive float range spanning four decades or more (e.g. 1e-12..10)."""
    return p.low is not None and p.high is not None and p.low > 0 and p.high / p.low >= 1e4


class FloatEditor(QDoubleSpinBox):
    """A float spin box with ``%g`` display; log-scale ranges step by factors of ten."""

    def __init__(self, param: Param, parent: QWidget | None = None):
        super().__init__(parent)
        self._log = is_log_scale(param)
        self.setDecimals(15)  # QDoubleSpinBox rounds to `decimals`: keep tiny values exact
        low = -_FLOAT_LIMIT if param.low is None else float(param.low)
        high = _FLOAT_LIMIT if param.high is None else float(param.high)
        self.setRange(low, high)
        if param.step is not None:
            self.setSingleStep(float(param.step))
        elif not self._log:
            span = (high - low) if math.isfinite(high - low) and high - low < 1e12 else abs(param.default) or 1.0
            self.setSingleStep(10.0 ** math.floor(math.log10(span / 100.0)) if span > 0 else 0.1)
        self.setKeyboardTracking(False)

    def textFromValue(self, value: float) -> str:  # noqa: N802 (Qt API)
        return f"{value:.6g}"

    def valueFromText(self, text: str) -> float:  # noqa: N802
        try:
            return float(text.strip())
        except ValueError:
            return self.value()

    def validate(self, text: str, pos: int):  # noqa: D102
        stripped = text.strip()
        try:
            value = float(stripped)
        except ValueError:
            # partial input such as "1e-" or "-" can still become a number
            ok = stripped == "" or all(c in "0123456789+-.eE" for c in stripped)
            return (QValidator.Intermediate if ok else QValidator.Invalid), text, pos
        if self.minimum() <= value <= self.maximum():
            return QValidator.Acceptable, text, pos
        return QValidator.Intermediate, text, pos

    def stepBy(self, steps: int) -> None:  # noqa: N802
        if not self._log:
            super().stepBy(steps)
            return
        value = self.value()
        if value <= 0:
            value = self.minimum()
        self.setValue(min(max(value * 10.0**steps, self.minimum()), self.maximum()))


def tooltip(p: Param) -> str:
    """Help text, range, choices and default of ``p``, for a tooltip."""
    lines = [p.help]
    if p.choices:
        lines.append("Choices: " + ", ".join(p.choices))
    if p.low is not None or p.high is not None:
        lo = "-inf" if p.low is None else f"{p.low:g}"
        hi = "inf" if p.high is None else f"{p.high:g}"
        lines.append(f"Range: {lo} .. {hi}")
    lines.append(f"Default: {p.default}")
    return "\n".join(lines)


def make_editor(p: Param) -> QWidget:
    """A Qt editor for one parameter, showing its default."""
    if p.kind is bool:
        w = QCheckBox()
        w.setChecked(bool(p.default))
    elif p.kind is str and p.choices:
        w = QComboBox()
        w.addItems(list(p.choices))
        w.setCurrentText(str(p.default))
    elif p.kind is str:
        w = QLineEdit(str(p.default))
    elif p.kind is int:
        w = QSpinBox()
        w.setRange(
            -_INT_LIMIT if p.low is None else int(math.ceil(p.low)),
            _INT_LIMIT if p.high is None else int(math.floor(p.high)),
        )
        if p.step is not None:
            w.setSingleStep(max(int(p.step), 1))
        w.setValue(int(p.default))
        w.setKeyboardTracking(False)
    elif p.kind is float:
        w = FloatEditor(p)
        w.setValue(float(p.default))
    else:  # pragma: no cover - the registry only allows the kinds above
        raise TypeError(f"no editor for parameter kind {p.kind!r}")
    w.setObjectName(f"param_{p.name}")
    w.setToolTip(tooltip(p))
    return w


def editor_value(w: QWidget) -> Any:
    """The current value of an editor made by :func:`make_editor`."""
    if isinstance(w, QCheckBox):
        return w.isChecked()
    if isinstance(w, QComboBox):
        return w.currentText()
    if isinstance(w, QLineEdit):
        return w.text()
    if isinstance(w, (QSpinBox, QDoubleSpinBox)):
        w.interpretText()  # commit text typed but not yet confirmed
        return w.value()
    raise TypeError(type(w))  # pragma: no cover


def set_editor_value(w: QWidget, value: Any) -> None:
    if isinstance(w, QCheckBox):
        w.setChecked(bool(value))
    elif isinstance(w, QComboBox):
        w.setCurrentText(str(value))
    elif isinstance(w, QLineEdit):
        w.setText(str(value))
    elif isinstance(w, QSpinBox):
        w.setValue(int(value))
    elif isinstance(w, QDoubleSpinBox):
        w.setValue(float(value))
    else:  # pragma: no cover
        raise TypeError(type(w))


#: Labels for parameter names that do not read as words (the name stays in the tooltip).
LABELS = {
    "gf_radius": "guided filter radius",
    "gf_eps": "guided filter ε",
    "r1": "base filter radius",
    "eps1": "base filter ε",
    "r2": "detail filter radius",
    "eps2": "detail filter ε",
    "lam": "smoothing λ",
    "eps": "coding tolerance ε",
    "sigma": "weight σ",
    "saliency_sigma": "saliency σ",
    "halo_control": "halo control",
    "area_fraction": "small-region area",
    "max_atoms": "atoms per patch",
    "vote_size": "vote window",
    "chroma_source": "colour from",
    "weights": "weights file",
    "fold": "stack order",
}


def param_label(p: Param) -> str:
    """The form label of a parameter: :data:`LABELS`, else the name with spaces."""
    return LABELS.get(p.name, p.name.replace("_", " "))


class ParamPanel(QWidget):
    """Form of editors for the parameters of one method, rebuilt by :meth:`set_method`.

    Values edited for a method are remembered for the session, so switching to
    another method and back keeps them.
    """

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self._form = QFormLayout(self)
        self._form.setContentsMargins(0, 0, 0, 0)
        self.spec: MethodSpec | None = None
        self.editors: dict[str, QWidget] = {}
        self._memory: dict[str, dict[str, Any]] = {}

    def set_method(self, spec: MethodSpec | None) -> None:
        """Show the parameters of ``spec`` (or nothing for ``None``)."""
        if self.spec is not None:
            self._memory[self.spec.name] = self.values()
        while self._form.rowCount():
            self._form.removeRow(0)
        self.editors = {}
        self.spec = spec
        if spec is None:
            return
        if not spec.params:
            self._form.addRow(QLabel("(this method has no parameters)"))
            return
        remembered = self._memory.get(spec.name, {})
        for p in spec.params:
            editor = make_editor(p)
            if p.name in remembered:
                set_editor_value(editor, remembered[p.name])
            label = QLabel(param_label(p))
            editor.setToolTip(f"{p.name}: {editor.toolTip()}" if editor.toolTip() else p.name)
            label.setToolTip(editor.toolTip())
            self._form.addRow(label, editor)
            self.editors[p.name] = editor
        make_compact(self)

    def values(self) -> dict[str, Any]:
        """Current parameter values, by name."""
        return {name: editor_value(w) for name, w in self.editors.items()}

    def set_values(self, values: dict[str, Any]) -> None:
        for name, value in values.items():
            set_editor_value(self.editors[name], value)

    def reset(self) -> None:
        """Put every editor back to the method's default."""
        if self.spec is not None:
            self._memory.pop(self.spec.name, None)
            self.set_values(self.spec.defaults())
