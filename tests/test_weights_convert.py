"""Converting VGG19 weights from Keras (.h5) and MatConvNet (.mat) files for li2018_vgg19.

The source files here are small synthetic files of the real layouts (layer names, array
orientation, channel order); the conversion is checked by computing a convolution by hand
from the source arrays in their own convention and comparing it with the converted network.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from napari_fusion.errors import FusionInputError, FusionOutputError
from napari_fusion.nets.vgg19 import VGG19, load_torchvision_state_dict
from napari_fusion.weights import WeightsChecksumError, verify_file
from napari_fusion.weights import convert as conv

WIDTHS = (4, 5, 6, 6, 7)


def _keras_layers(widths=WIDTHS, seed=0):
    """``{block{b}_conv{c}: (kernel (kh, kw, in, out), bias)}`` with random asymmetric kernels."""
    rng = np.random.default_rng(seed)
    layers, channels = {}, 3
    for (name, _), block in zip(conv.VGG19_CONVS, [b for b, n in enumerate((2, 2, 4, 4, 4)) for _ in range(n)]):
        out = widths[block]
        layers[name] = (
            rng.normal(size=(3, 3, channels, out)).astype(np.float32),
            rng.normal(size=out).astype(np.float32),
        )
        channels = out
    return layers


def write_keras_h5(path, layers):
    h5py = pytest.importorskip("h5py")
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [b"input_1"] + [n.encode() for n in layers] + [b"block5_pool"]
        f.create_group("input_1")
        for name, (kernel, bias) in layers.items():
            g = f.create_group(name)
            g.attrs["weight_names"] = [f"{name}_W_1:0".encode(), f"{name}_b_1:0".encode()]
            g.create_dataset(f"{name}_W_1:0", data=kernel)
            g.create_dataset(f"{name}_b_1:0", data=bias)


def write_matconvnet(path, layers):
    """MatConvNet's layout: a 1 x L cell of structs; conv kernels (kw, kh, in, out), biases (out, 1)."""
    from scipy.io import savemat

    cells = []
    for b, count in enumerate((2, 2, 4, 4, 4), start=1):
        for c in range(1, count + 1):
            name = f"block{b}_conv{c}"
            kernel, bias = layers[name]
            weights = np.empty((1, 2), dtype=object)
            weights[0, 0] = np.transpose(kernel, (1, 0, 2, 3))  # store as (kw, kh, in, out)
            weights[0, 1] = bias[:, None]
            cells.append({"name": f"conv{b}_{c}", "type": "conv", "weights": weights})
            cells.append({"name": f"relu{b}_{c}", "type": "relu", "weights": np.empty((0, 0))})
        cells.append({"name": f"pool{b}", "type": "pool", "weights": np.empty((0, 0))})
    fc = np.empty((1, 2), dtype=object)  # fc6 as MatConvNet stores it: a 7x7 convolution, ignored
    fc[0, 0] = np.zeros((7, 7, WIDTHS[-1], 3), np.float32)
    fc[0, 1] = np.zeros((3, 1), np.float32)
    cells.append({"name": "fc6", "type": "conv", "weights": fc})
    layer_cell = np.empty((1, len(cells)), dtype=object)
    for i, cell in enumerate(cells):
        layer_cell[0, i] = cell
    savemat(path, {"layers": layer_cell, "meta": {"normalization": np.zeros(3)}})


def _conv1_by_hand(kernel_hwio, bias, image_chw):
    """First convolution at the interior pixels, as a cross-correlation (Keras, Caffe, torch)."""
    c, h, w = image_chw.shape
    out = np.zeros((kernel_hwio.shape[3], h - 2, w - 2), np.float64)
    for dy in range(3):
        for dx in range(3):
            patch = image_chw[:, dy : dy + h - 2, dx : dx + w - 2]
            out += np.einsum("chw,co->ohw", patch, kernel_hwio[dy, dx].astype(np.float64))
    return out + bias[:, None, None]


def _converted_conv1(path, rgb):
    net = load_torchvision_state_dict(VGG19(widths=WIDTHS), torch.load(path, weights_only=True))
    with torch.inference_mode():
        got = net.extract(torch.from_numpy(rgb[None]), [0])[0][0].numpy()
    return got[:, 1:-1, 1:-1], net


def test_keras_h5_converts_to_an_rgb_torchvision_network(tmp_path):
    layers = _keras_layers()
    src = tmp_path / "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5"
    write_keras_h5(src, layers)
    before = src.read_bytes()
    out = conv.convert_vgg19(src, tmp_path / "vgg19-converted.pth")
    assert src.read_bytes() == before  # the source is only read
    rgb = np.random.default_rng(1).random((3, 12, 11)).astype(np.float32)
    got, net = _converted_conv1(out, rgb)
    # Keras (Caffe) takes B, G, R: by hand, on the BGR image with the Keras kernel as stored
    kernel, bias = layers["block1_conv1"]
    np.testing.assert_allclose(got, _conv1_by_hand(kernel, bias, rgb[::-1]), rtol=1e-5, atol=1e-4)
    # a deeper layer: same weights, transposed to (out, in, kh, kw)
    k33, b33 = layers["block3_conv3"]
    index = dict(conv.VGG19_CONVS)["block3_conv3"]
    np.testing.assert_array_equal(net.features[index].weight.detach().numpy(), np.transpose(k33, (3, 2, 0, 1)))
    np.testing.assert_array_equal(net.features[index].bias.detach().numpy(), b33)
    record = json.loads(conv.sidecar_path(out).read_text())
    assert record["converted_for"] == "vgg19" and record["source"]["format"] == "keras"
    assert record["known_source"] is False  # synthetic: not the published file
    assert record["widths"][0] == WIDTHS[0] and len(record["widths"]) == 16


def test_matconvnet_mat_converts_to_the_same_network(tmp_path):
    layers = _keras_layers(seed=2)
    src = tmp_path / "imagenet-vgg-verydeep-19.mat"
    write_matconvnet(src, layers)
    out = conv.convert_vgg19(src, tmp_path / "vgg19-matconvnet.pth")
    rgb = np.random.default_rng(3).random((3, 9, 14)).astype(np.float32)
    got, _ = _converted_conv1(out, rgb)
    kernel, bias = layers["block1_conv1"]  # MatConvNet is RGB: no reordering
    np.testing.assert_allclose(got, _conv1_by_hand(kernel, bias, rgb), rtol=1e-5, atol=1e-4)
    assert json.loads(conv.sidecar_path(out).read_text())["source"]["format"] == "matconvnet"


def test_the_weights_check_accepts_a_converted_file_only_with_its_sidecar(tmp_path):
    src = tmp_path / "w.h5"
    write_keras_h5(src, _keras_layers())
    out = conv.convert_vgg19(src, tmp_path / "v.pth")
    assert verify_file(out, "vgg19") == json.loads(conv.sidecar_path(out).read_text())["sha256"]
    tampered = tmp_path / "t.pth"
    tampered.write_bytes(out.read_bytes() + b"\0")
    conv.sidecar_path(tampered).write_text(conv.sidecar_path(out).read_text())
    with pytest.raises(WeightsChecksumError):
        verify_file(tampered, "vgg19")  # the sidecar's SHA-256 is not this file's
    conv.sidecar_path(out).unlink()
    with pytest.raises(WeightsChecksumError):
        verify_file(out, "vgg19")  # no record: just some file


def test_a_published_file_is_recognised_by_its_checksum(tmp_path, monkeypatch):
    import hashlib

    src = tmp_path / "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5"
    write_keras_h5(src, _keras_layers())
    md5 = hashlib.md5(src.read_bytes(), usedforsecurity=False).hexdigest()
    fake = conv.KnownSource(src.name, "keras", "md5", md5, "keras.applications.VGG19(include_top=False)")
    monkeypatch.setattr(conv, "KNOWN_SOURCES", (fake,))
    record = json.loads(conv.sidecar_path(conv.convert_vgg19(src, tmp_path / "o.pth")).read_text())
    assert record["known_source"] is True and record["known_as"] == fake.publisher
    assert record["source"]["md5"] == md5


def test_known_sources_are_the_keras_published_digests():
    digests = {k.filename: k.digest for k in conv.KNOWN_SOURCES}
    assert digests["vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5"] == "253f8cb515780f3b799900260a226db6"
    assert all(len(k.digest) == 32 and k.algorithm == "md5" for k in conv.KNOWN_SOURCES)


def test_bad_sources_are_refused_with_a_message(tmp_path):
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"not weights at all")
    with pytest.raises(FusionInputError, match="not a Keras .h5 or MatConvNet .mat"):
        conv.convert_vgg19(junk, tmp_path / "o.pth")
    with pytest.raises(FusionInputError, match="does not exist"):
        conv.convert_vgg19(tmp_path / "missing.h5", tmp_path / "o.pth")
    src = tmp_path / "w.h5"
    write_keras_h5(src, _keras_layers())
    before = src.read_bytes()
    with pytest.raises(FusionOutputError, match="is the input"):
        conv.convert_vgg19(src, src, overwrite=True)
    assert src.read_bytes() == before
    layers = _keras_layers()
    del layers["block4_conv2"]
    broken = tmp_path / "broken.h5"
    write_keras_h5(broken, layers)
    with pytest.raises(FusionInputError, match="no layer 'block4_conv2'"):
        conv.convert_vgg19(broken, tmp_path / "o.pth")
    # nothing written, not even a partial file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.h5", "junk.bin", "w.h5"]


def test_an_existing_output_is_replaced_only_when_asked(tmp_path):
    src = tmp_path / "w.h5"
    write_keras_h5(src, _keras_layers())
    out = tmp_path / "v.pth"
    out.write_bytes(b"someone's file")
    with pytest.raises(FusionOutputError, match="already exists"):
        conv.convert_vgg19(src, out)
    assert out.read_bytes() == b"someone's file" and not conv.sidecar_path(out).exists()
    conv.convert_vgg19(src, out, overwrite=True)
    assert verify_file(out, "vgg19")
    # the pair is written together: no temporary file is left beside them
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.pth", "v.pth.json", "w.h5"]


def test_cli_convert(tmp_path, capsys):
    from napari_fusion.cli import main

    src = tmp_path / "w.h5"
    write_keras_h5(src, _keras_layers())
    assert main(["weights", "convert", "vgg19", str(src), "-o", str(tmp_path / "c.pth")]) == 0
    printed = capsys.readouterr().out
    assert "converted from w.h5 (keras, a file not in the checksum table)" in printed
    assert (tmp_path / "c.pth.json").is_file()


def test_li2018_runs_with_weights_converted_from_keras(tmp_path):
    """The whole route a user takes: a full-size Keras file -> convert -> li2018_vgg19(weights=...)."""
    import napari_fusion as nf

    src = tmp_path / "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5"
    layers = _keras_layers(widths=(64, 128, 256, 512, 512), seed=4)
    write_keras_h5(src, {k: (v[0] * 0.05, v[1] * 0.01) for k, v in layers.items()})
    out = conv.convert_vgg19(src, tmp_path / "vgg19-converted.pth")
    rng = np.random.default_rng(5)
    a, b = rng.random((2, 48, 40)).astype(np.float32)
    result = nf.fuse([a, b], method="li2018_vgg19", weights=str(out))
    assert result.fused.shape == (48, 40) and np.isfinite(result.fused).all()
