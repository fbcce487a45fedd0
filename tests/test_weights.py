"""Shared weights handling (napari_fusion.weights) and the ``weights`` CLI."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from napari_fusion import WeightsUnavailableError
from napari_fusion import weights as W
from napari_fusion.cli import main
from napari_fusion.errors import FusionInputError

PAYLOAD = b"pretend these are network weights\n" * 100
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty torch hub cache, so real weights on this machine are never seen."""
    d = tmp_path / "hub" / "checkpoints"
    monkeypatch.setattr(W.catalogue, "hub_checkpoints_dir", lambda: d)
    return d


@pytest.fixture
def spec(tmp_path, hub, monkeypatch):
    """A registered test spec whose 'server' is a local file:// URL."""
    server = tmp_path / "server"
    server.mkdir()
    (server / "good.bin").write_bytes(PAYLOAD)
    s = W.WeightsSpec(
        name="testnet",
        filename=f"testnet-{DIGEST[:8]}.bin",
        url=(server / "good.bin").as_uri(),
        sha256=DIGEST[:8],
        env_var="NAPARI_FUSION_TESTNET_WEIGHTS",
        description="test network",
    )
    monkeypatch.delenv(s.env_var, raising=False)
    W.register_weights(s)
    yield s
    W.unregister_weights(s.name)


def test_missing_weights_message(spec, hub):
    with pytest.raises(WeightsUnavailableError) as err:
        W.locate_weights(spec)
    msg = str(err.value)
    assert "napari-fusion weights fetch testnet" in msg
    assert spec.env_var in msg and str(hub / spec.filename) in msg and spec.url in msg
    st = W.weights_status("testnet")
    assert not st.found and st.path is None


def test_locate_order_and_checksum(spec, hub, tmp_path, monkeypatch):
    hub.mkdir(parents=True)
    (hub / spec.filename).write_bytes(PAYLOAD)
    loc = W.locate_weights("testnet")
    assert loc.source == "torch hub cache" and loc.sha256 == DIGEST

    mine = tmp_path / "renamed_copy.pth"  # any name: the content is what is checked
    mine.write_bytes(PAYLOAD)
    monkeypatch.setenv(spec.env_var, str(mine))
    loc = W.locate_weights("testnet")
    assert loc.source.startswith("environment variable") and loc.path == mine
    assert W.locate_weights("testnet", str(mine)).source == "'weights' parameter"

    # an explicitly named file that is missing is an error, not a silent fall-back to the cache
    monkeypatch.setenv(spec.env_var, str(tmp_path / "nope.pth"))
    with pytest.raises(WeightsUnavailableError, match="does not exist"):
        W.locate_weights("testnet")
    with pytest.raises(WeightsUnavailableError, match="does not exist"):
        W.locate_weights("testnet", tmp_path / "also-nope.pth")


def test_corrupted_file_is_rejected(spec, hub, tmp_path):
    bad = tmp_path / "corrupt.pth"
    data = bytearray(PAYLOAD)
    data[100] ^= 0xFF  # one flipped byte
    bad.write_bytes(bytes(data))
    with pytest.raises(W.WeightsChecksumError) as err:
        W.locate_weights(spec, bad)
    assert DIGEST[:8] in str(err.value) and hashlib.sha256(bytes(data)).hexdigest() in str(err.value)
    truncated = tmp_path / "short.pth"
    truncated.write_bytes(PAYLOAD[:-10])
    with pytest.raises(W.WeightsChecksumError):
        W.verify_file(truncated, spec)
    # a corrupted copy in the cache is reported too (and is a WeightsUnavailableError)
    hub.mkdir(parents=True)
    (hub / spec.filename).write_bytes(bytes(data))
    with pytest.raises(WeightsUnavailableError):
        W.locate_weights(spec)


def test_fetch_downloads_verifies_and_keeps(spec, hub, tmp_path):
    path = W.fetch_weights("testnet", progress=False)
    assert path == hub / spec.filename and path.read_bytes() == PAYLOAD
    assert not list(hub.glob("*.partial"))
    assert W.weights_status("testnet").found
    mtime = path.stat().st_mtime_ns
    assert W.fetch_weights("testnet", progress=False) == path  # valid copy kept
    assert path.stat().st_mtime_ns == mtime


def test_fetch_rejects_wrong_download(spec, hub, tmp_path):
    (tmp_path / "server" / "bad.bin").write_bytes(PAYLOAD + b"x")
    bad = W.WeightsSpec(**{**spec.__dict__, "url": (tmp_path / "server" / "bad.bin").as_uri()})
    with pytest.raises(W.WeightsChecksumError, match="deleted"):
        W.fetch_weights(bad, progress=False)
    assert not (hub / spec.filename).exists() and not list(hub.glob("*"))


def test_fetch_without_network_fails_clearly(spec, hub, tmp_path):
    offline = W.WeightsSpec(**{**spec.__dict__, "url": (tmp_path / "no-such-file.bin").as_uri()})
    with pytest.raises(WeightsUnavailableError) as err:
        W.fetch_weights(offline, progress=False)
    assert "could not download" in str(err.value) and spec.env_var in str(err.value)
    assert not (hub / spec.filename).exists()


def test_cli_status_and_fetch(spec, hub, tmp_path, capsys, monkeypatch):
    assert main(["weights", "status", "testnet"]) == 0
    out = capsys.readouterr().out
    assert "MISSING" in out and "napari-fusion weights fetch testnet" in out
    assert main(["weights", "status", "--check", "testnet"]) == 1
    capsys.readouterr()
    assert main(["weights", "status", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert "vgg19" in rows and "li2018_vgg19" in rows["vgg19"]["methods"]

    assert main(["weights", "fetch", "-q", "testnet"]) == 0
    assert "SHA-256 verified" in capsys.readouterr().out
    assert main(["weights", "path", "testnet"]) == 0
    assert capsys.readouterr().out.strip() == str(hub / spec.filename)

    W.register_weights(W.WeightsSpec(**{**spec.__dict__, "url": (tmp_path / "gone").as_uri()}), replace=True)
    assert main(["weights", "fetch", "-q", "--force", "testnet"]) == 2
    err = capsys.readouterr().err
    assert "could not download" in err and "Traceback" not in err
    assert (hub / spec.filename).read_bytes() == PAYLOAD  # the good copy survived the failed retry
    assert main(["weights", "fetch", "no-such-weights"]) == 2


def test_method_weights_status(hub, monkeypatch):
    monkeypatch.delenv("NAPARI_FUSION_VGG19_WEIGHTS", raising=False)
    st = W.method_weights_status("li2018_vgg19")
    assert [s.name for s in st] == ["vgg19"] and not st[0].found
    assert W.method_weights_status("gff") == []


def test_unknown_weights_name():
    with pytest.raises(FusionInputError, match="vgg19"):
        W.get_weights_spec("nonexistent")


def test_vgg19_spec_matches_torchvision_name():
    s = W.get_weights_spec("vgg19")
    assert s.filename == "vgg19-dcbb9e9d.pth" and s.sha256 == "dcbb9e9d"
    assert s.url.endswith("/" + s.filename)


@pytest.mark.parametrize("legacy", [False, True])
def test_load_state_dict_formats(tmp_path, legacy):
    state = {"features.0.weight": torch.randn(4, 3, 3, 3), "features.0.bias": torch.randn(4)}
    p = tmp_path / "w.pth"
    torch.save(state, p, _use_new_zipfile_serialization=not legacy)
    got = W.load_state_dict(p)
    assert set(got) == set(state) and torch.equal(got["features.0.weight"], state["features.0.weight"])
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    with pytest.raises(WeightsUnavailableError, match="cannot read"):
        W.load_state_dict(tmp_path / "junk.pth")


# --- one loader for released weights: verify, build once, cache -------------------


def test_load_weights_builds_once_and_reloads_a_changed_file(device, tmp_path):
    import os

    from napari_fusion.training.checkpoints import export_weights

    p = tmp_path / "mine.pt"
    export_weights({"w": torch.ones(3)}, p, manifest={"model": "mine"})
    calls = []

    def build(w):
        calls.append(w.path)
        return w.state["w"].to(w.device) * 2

    W.clear_cache()
    a = W.load_weights(p, build=build, device=device, expect={"model": "mine"}, name="mine")
    b = W.load_weights(p, build=build, device=device, expect={"model": "mine"}, name="mine")
    assert a is b and len(calls) == 1 and torch.equal(a, torch.full((3,), 2.0))
    # a new file at the same path (other mtime and size) is read and verified again
    export_weights({"w": torch.zeros(5)}, p, manifest={"model": "mine"})
    st = p.stat()
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    c = W.load_weights(p, build=build, device=device, expect={"model": "mine"}, name="mine")
    assert len(calls) == 2 and c.shape == (5,)
    with pytest.raises(WeightsUnavailableError, match="expected 'other'"):
        W.load_weights(p, build=build, expect={"model": "other"})
    with pytest.raises(WeightsUnavailableError, match="not found"):
        W.load_shipped("no_such_weights", build=build, how_to_get=W.how_to_train("x"))
    W.clear_cache()


def test_inference_code_does_not_import_training():
    """methods/, nets/, upsample.py and weights/ never import napari_fusion.training."""
    import ast
    from pathlib import Path

    import napari_fusion

    root = Path(napari_fusion.__file__).parent
    files = [*root.glob("methods/*.py"), *root.glob("nets/*.py"), *root.glob("weights/*.py"), root / "upsample.py"]
    bad = []
    for f in files:
        for node in ast.walk(ast.parse(f.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom):
                mod = node.module or ""
                names = [mod] if node.level == 0 else ["." * node.level + mod]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            bad += [f"{f.name}: {n}" for n in names if "training" in n]
    assert not bad, bad
