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
import sys

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


def display_available() -> bool:
    if os.environ.get("QT_QPA_PLATFORM", "") in ("offscreen", "minimal"):
        return True
    if sys.platform.startswith("linux"):
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return True


def gui_skip_reason() -> str | None:
    for module in ("napari", "qtpy", "pytestqt"):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed"
    if not display_available():
        return "no display (run under xvfb-run -a)"
    return None


def pytest_collection_modifyitems(config, items):
    reason = gui_skip_reason()
    if reason is None:
        return
    for item in items:
        if item.get_closest_marker("gui") is not None:
            item.add_marker(pytest.mark.skip(reason=reason))
