"""The npe2 manifest: valid, discoverable from the installed distribution, and complete.

Needs npe2 and an installed napari-fusion distribution (editable or wheel); no display.
"""

from __future__ import annotations

import importlib
import importlib.util
from importlib import metadata
from pathlib import Path

import pytest

npe2 = pytest.importorskip("npe2")

REPO_MANIFEST = Path(__file__).resolve().parents[2] / "napari.yaml"


@pytest.fixture(scope="module")
def manifest():
    try:
        metadata.distribution("napari-fusion")
    except metadata.PackageNotFoundError:
        pytest.skip("napari-fusion is not installed (pip install -e .)")
    return npe2.PluginManifest.from_distribution("napari-fusion")


def test_manifest_found_through_entry_point_is_the_top_level_file(manifest):
    import napari_fusion

    packaged = Path(napari_fusion.__file__).parent / "napari.yaml"
    assert packaged.is_file()
    if REPO_MANIFEST.is_file():  # source checkout: the package copy is the design card itself
        assert packaged.read_text() == REPO_MANIFEST.read_text()
    assert manifest.name == "napari-fusion"
    assert manifest.package_metadata.name == "napari-fusion"


def test_manifest_lists_widget_samples_and_writer(manifest):
    contrib = manifest.contributions
    assert {"Image fusion", "Fusion metrics", "Focal stack", "Guided upsampling"} <= {
        w.display_name for w in contrib.widgets
    }
    assert {s.key for s in contrib.sample_data} == {"focal_stack", "exposure_series"}
    writer_types = sorted(lt for w in contrib.writers for lt in w.layer_types)
    assert writer_types == ["image", "labels"]
    assert all(set(w.filename_extensions) == {".tif", ".tiff"} for w in contrib.writers)
    # no reader on purpose: napari's builtin reader opens TIFF stacks and folders (docs/napari.md)
    assert not contrib.readers


def test_every_command_resolves_to_python(manifest):
    commands = {c.id: c for c in manifest.contributions.commands}
    used = (
        [w.command for w in manifest.contributions.widgets]
        + [s.command for s in manifest.contributions.sample_data]
        + [w.command for w in manifest.contributions.writers]
    )
    assert set(used) == set(commands)
    gui_stack = all(importlib.util.find_spec(m) is not None for m in ("napari", "qtpy"))
    for cmd in commands.values():
        module, _, attr = cmd.python_name.partition(":")
        assert module.startswith("napari_fusion._napari.")
        assert importlib.util.find_spec(module) is not None
        if gui_stack:  # importing the plugin modules needs napari and Qt bindings
            assert callable(getattr(importlib.import_module(module), attr))


def test_plugin_manager_discovers_plugin(manifest):
    pm = npe2.PluginManager()
    pm.discover(include_npe1=False)
    assert "napari-fusion" in pm
    widgets = [w.display_name for w in pm.iter_widgets() if w.plugin_name == "napari-fusion"]
    assert {"Image fusion", "Fusion metrics", "Focal stack"} <= set(widgets)
    samples = dict(pm.iter_sample_data()).get("napari-fusion", [])
    assert {s.key for s in samples} == {"focal_stack", "exposure_series"}
    writers = [w for w in pm.iter_compatible_writers(["labels"]) if w.plugin_name == "napari-fusion"]
    assert writers and ".tif" in writers[0].filename_extensions
