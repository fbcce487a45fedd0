"""Weights and checkpoints are read without running code, and shipped weights match the in-code table."""

from __future__ import annotations

import json
import os
import shlex
import shutil
from pathlib import Path

import pytest
import torch

from napari_fusion.errors import WeightsUnavailableError
from napari_fusion.shipped_weights import SHIPPED_SHA256
from napari_fusion.training import run_options
from napari_fusion.training.checkpoints import export_weights, load_checkpoint, save_checkpoint
from napari_fusion.weights import PACKAGE_WEIGHTS_DIR, load_verified_weights, sha256_file, verified


class _Evil:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


def test_table_matches_every_shipped_file():
    shipped = sorted(p.name for p in PACKAGE_WEIGHTS_DIR.glob("*.pt"))
    assert shipped, "no shipped weights found"
    assert sorted(SHIPPED_SHA256) == shipped, "napari_fusion/shipped_weights.py lists other files than trained_weights/"
    for name in shipped:
        p = PACKAGE_WEIGHTS_DIR / name
        digest = sha256_file(p)
        assert SHIPPED_SHA256[name] == digest, f"{name}: table out of date (run the --install step)"
        assert json.loads(p.with_suffix(".json").read_text())["sha256"] == digest, f"{name}: manifest disagrees"


@pytest.fixture
def package_copy(tmp_path, monkeypatch):
    """A copy of the package's weights folder that the loader treats as the package."""
    dest = tmp_path / "trained_weights"
    shutil.copytree(PACKAGE_WEIGHTS_DIR, dest)
    monkeypatch.setattr(verified, "PACKAGE_WEIGHTS_DIR", dest)
    return dest


def test_consistently_tampered_shipped_weights_are_refused(package_copy):
    p = package_copy / "liu2017_slight.pt"
    state, _ = load_verified_weights(p)  # the untouched copy loads
    # the attacker changes the weights and updates the manifest's sha256 to match
    key = next(iter(state))
    state[key] = state[key] + 1.0
    torch.save(state, p)
    manifest = json.loads(p.with_suffix(".json").read_text())
    manifest["sha256"] = sha256_file(p)
    p.with_suffix(".json").write_text(json.dumps(manifest))
    with pytest.raises(WeightsUnavailableError, match="shipped_weights.py"):
        load_verified_weights(p)
    # a new file dropped into the package with a consistent manifest is refused too
    export_weights(state, package_copy / "extra.pt", manifest={"model": "x"})
    with pytest.raises(WeightsUnavailableError, match="not one of the shipped weights"):
        load_verified_weights(package_copy / "extra.pt")


def test_weights_outside_the_package_use_the_manifest_only(tmp_path):
    export_weights({"w": torch.ones(3)}, tmp_path / "mine.pt", manifest={"model": "mine"})
    state, manifest = load_verified_weights(tmp_path / "mine.pt", expect={"model": "mine"})
    assert manifest["model"] == "mine" and torch.equal(state["w"], torch.ones(3))


def test_malicious_weights_file_is_not_unpickled(tmp_path):
    marker = tmp_path / "pwned"
    p = tmp_path / "evil.pt"
    torch.save({"w": torch.ones(2), "x": _Evil(marker)}, p)
    # a consistent manifest outside the package: the checksum passes, unpickling must not
    (tmp_path / "evil.json").write_text(json.dumps({"sha256": sha256_file(p), "file": "evil.pt"}))
    with pytest.raises(WeightsUnavailableError, match="cannot read"):
        load_verified_weights(p)
    from napari_fusion.weights import load_state_dict

    with pytest.raises(WeightsUnavailableError):
        load_state_dict(p)
    assert not marker.exists()


def test_malicious_checkpoint_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    p = tmp_path / "run" / "checkpoint.pt"
    save_checkpoint(p, {"model": {"w": torch.ones(2)}, "step": 3, "evil": _Evil(marker)})
    with pytest.raises(WeightsUnavailableError, match="refused"):
        load_checkpoint(p)
    assert not marker.exists()


def test_old_format_checkpoint_is_refused_with_a_message(tmp_path):
    import numpy as np

    p = tmp_path / "checkpoint.pt"
    # what older versions could hold: numpy objects that weights_only=True does not allow
    torch.save({"step": 1, "numpy_rng": np.random.get_state()}, p)
    with pytest.raises(WeightsUnavailableError, match="older napari-fusion"):
        load_checkpoint(p)
    with pytest.raises(WeightsUnavailableError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_checkpoint_of_the_loop_loads_safely_and_restores_rng(tmp_path):
    import random

    import numpy as np

    from napari_fusion.training.loop import rng_states, set_rng_states

    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    random.gauss(0, 1)  # leaves a cached gaussian behind
    save_checkpoint(tmp_path / "c.pt", {"rng": rng_states()})
    want = (random.random(), random.gauss(0, 1), np.random.rand(3).tolist(), np.random.randn(), torch.rand(2).tolist())
    set_rng_states(load_checkpoint(tmp_path / "c.pt")["rng"])
    got = (random.random(), random.gauss(0, 1), np.random.rand(3).tolist(), np.random.randn(), torch.rand(2).tolist())
    assert got == want


def test_install_records_the_sha256_in_the_table(tmp_path, monkeypatch):
    real = Path(run_options.shipped_weights.__file__)
    table = tmp_path / "shipped_weights.py"
    shutil.copy(real, table)
    pkg = tmp_path / "trained_weights"
    monkeypatch.setattr(run_options, "PACKAGE_WEIGHTS_DIR", pkg)
    monkeypatch.setattr(verified, "PACKAGE_WEIGHTS_DIR", pkg)
    monkeypatch.setattr(run_options, "SHIPPED_TABLE_FILE", table)
    run = tmp_path / "run"
    export_weights({"w": torch.arange(4.0)}, run / "newnet.pt", manifest={"model": "newnet"})
    (run / "newnet.md").write_text("card")
    before = real.read_text()
    dest = run_options.install_weights(run, "newnet")
    assert real.read_text() == before  # the real table is untouched (a copy was named)
    ns: dict = {}
    exec(table.read_text(), ns)  # noqa: S102 - the rewritten module is valid Python
    assert ns["SHIPPED_SHA256"]["newnet.pt"] == sha256_file(dest)
    assert {k: v for k, v in ns["SHIPPED_SHA256"].items() if k != "newnet.pt"} == SHIPPED_SHA256
    assert "regenerated by ``napari-fusion train <model> --install``" in table.read_text()
    # the loader consults the in-memory table: with it updated, the new file loads
    monkeypatch.setitem(SHIPPED_SHA256, "newnet.pt", ns["SHIPPED_SHA256"]["newnet.pt"])
    state, _ = load_verified_weights(dest)
    assert torch.equal(state["w"], torch.arange(4.0))
