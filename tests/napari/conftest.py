"""napari plugin tests: skipped cleanly when napari/Qt or a display is missing.

Where a display is available (pytest-xvfb starts Xvfb and sets ``DISPLAY``;
``xvfb-run -a`` works too) and Qt's xcb platform can start, the tests run on
that real (virtual) display. Otherwise they fall back to Qt's ``offscreen``
platform (e.g. where the xcb plugin lacks system libraries: libxcb-icccm4,
libxcb-keysyms1, libxcb-xinerama0 for PyQt5, which ``.ci/run`` installs).
``QT_QPA_PLATFORM`` set by the user wins. The manifest test
(test_manifest.py) needs only npe2.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest


def _qt_starts(platform: str) -> bool:
    probe = "from qtpy.QtWidgets import QApplication; QApplication([])"
    env = dict(os.environ, QT_QPA_PLATFORM=platform)
    try:
        done = subprocess.run([sys.executable, "-c", probe], capture_output=True, timeout=120, env=env)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def choose_qt_platform() -> None:
    """xcb on a working display, else offscreen; called after pytest-xvfb has set DISPLAY."""
    if "QT_QPA_PLATFORM" in os.environ:
        return
    use_xcb = bool(os.environ.get("DISPLAY")) and importlib.util.find_spec("qtpy") is not None and _qt_starts("xcb")
    os.environ["QT_QPA_PLATFORM"] = "xcb" if use_xcb else "offscreen"


def qt_can_start() -> bool:
    """Whether a QApplication starts here (checked in a subprocess: Qt aborts, not raises).

    A display may exist (xvfb-run, pytest-xvfb) while Qt's platform plugin still
    cannot load, e.g. xcb without its system libraries; the probe catches both.
    """
    probe = "from qtpy.QtWidgets import QApplication; QApplication([])"
    try:
        done = subprocess.run([sys.executable, "-c", probe], capture_output=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def gui_skip_reason() -> str | None:
    for module in ("napari", "qtpy", "pytestqt"):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed"
    if not qt_can_start():
        platform = os.environ.get("QT_QPA_PLATFORM") or "default"
        return f"Qt cannot start a QApplication (platform {platform!r}); try QT_QPA_PLATFORM=offscreen"
    return None


def pytest_collection_modifyitems(config, items):
    gui_items = [item for item in items if item.get_closest_marker("gui") is not None]
    if not gui_items:
        return
    choose_qt_platform()
    reason = gui_skip_reason()
    if reason is None:
        return
    for item in gui_items:
        item.add_marker(pytest.mark.skip(reason=reason))


# --------------------------------------------------------------------------- shared GUI fixtures
# (a test module may override one with its own fixture of the same name, e.g.
# test_focal_widget.py's ``widget`` and test_upsample_widget.py's ``viewer``)


@pytest.fixture
def viewer():
    """A viewer model without a window: the widgets only need layers and dims (fast)."""
    from napari.components import ViewerModel

    return ViewerModel()


@pytest.fixture
def widget(qtbot, viewer):
    """The generic fusion dock widget on ``viewer``, closed by qtbot after the test."""
    from napari_fusion._napari._widget import FusionWidget

    w = FusionWidget(viewer)
    qtbot.addWidget(w)
    return w
