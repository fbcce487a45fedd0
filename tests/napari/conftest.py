"""napari plugin tests: skipped cleanly when napari/Qt or a display is missing.

The viewers are never shown, so Qt's ``offscreen`` platform is used unless
``QT_QPA_PLATFORM`` is set: the tests then need no X server, and do not abort
where Qt's xcb plugin lacks system libraries (libxcb-icccm4, libxcb-keysyms1,
libxcb-xinerama0 for PyQt5). ``xvfb-run -a python -m pytest tests/napari -q``
works as well. The manifest test (test_manifest.py) needs only npe2.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


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
    reason = gui_skip_reason()
    if reason is None:
        return
    for item in gui_items:
        item.add_marker(pytest.mark.skip(reason=reason))
