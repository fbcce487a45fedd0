"""VGG19 ImageNet weights a user already has, converted for ``li2018_vgg19``.

``li2018_vgg19`` needs ImageNet VGG19 weights, which cannot be shipped (548 MB,
third-party terms) and may not be downloadable where napari-fusion runs.
Many users already hold a copy in another framework's format. This module
converts two of them into a torch state dict with torchvision's parameter
names (``features.{i}.weight`` / ``.bias``), written with a JSON sidecar
(``<file>.json``) that records where it came from:

* **Keras** (``vgg19_weights_tf_dim_ordering_tf_kernels[_notop].h5``, the
  files ``keras.applications.VGG19`` downloads; needs ``h5py``): one HDF5
  group per layer (``block1_conv1`` ...), kernels ``(kh, kw, in, out)``,
  input channels in Caffe's BGR order (flipped to RGB here);
* **MatConvNet** (``imagenet-vgg-verydeep-19.mat``, the file Li, Wu &
  Kittler's MATLAB code loads; read with scipy): a ``layers`` cell array of
  structs with ``name``, ``type`` and ``weights`` = {kernels, biases}, kernels
  ``(kw, kh, in, out)``, RGB input.

Both are conversions of the original VGG release (Simonyan & Zisserman 2015,
trained with Caffe), i.e. the network the authors of Li 2018 used; torchvision's
``vgg19-dcbb9e9d.pth`` is a different training of the same architecture. All
three expect mean-subtracted 0-255 input for classification; ``li2018_vgg19``
feeds its detail layers without normalisation, as the authors' code does, so
it uses any of them unchanged.

A source file whose checksum is in :data:`KNOWN_SOURCES` is named in the
sidecar as that file; another file of the same layout is converted too and
marked ``"known_source": false``. The catalogue's check of the VGG19 weights
(:func:`napari_fusion.weights.catalogue.verify_file`) accepts a converted file
when its sidecar says it was converted for those weights and the file's
SHA-256 is the one the sidecar records.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import FusionInputError

#: Convolutions per VGG19 block, and the torchvision ``features`` index of each convolution.
_CONVS_PER_BLOCK = (2, 2, 4, 4, 4)


def _conv_names() -> list[tuple[str, int]]:
    """``[(block{b}_conv{c}, torchvision index), ...]`` for the 16 convolutions of VGG19."""
    out, index = [], 0
    for b, count in enumerate(_CONVS_PER_BLOCK, start=1):
        for c in range(1, count + 1):
            out.append((f"block{b}_conv{c}", index))
            index += 2  # conv, relu
        index += 1  # pool
    return out


VGG19_CONVS = _conv_names()


@dataclass(frozen=True)
class KnownSource:
    """A published VGG19 weights file, identified by the digest its publisher gives."""

    filename: str
    format: str
    algorithm: str
    digest: str
    publisher: str


#: Checksums of published files, as their publishers give them (Keras: the ``file_hash``
#: that ``keras.applications.VGG19`` checks after downloading, an MD5).
KNOWN_SOURCES = (
    KnownSource(
        "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "keras",
        "md5",
        "253f8cb515780f3b799900260a226db6",
        "keras.applications.VGG19(include_top=False)",
    ),
    KnownSource(
        "vgg19_weights_tf_dim_ordering_tf_kernels.h5",
        "keras",
        "md5",
        "cbe5617147190e668d6c5d5026f83318",
        "keras.applications.VGG19(include_top=True)",
    ),
)

FORMATS = ("keras", "matconvnet")


def _digests(path: Path) -> dict[str, str]:
    md5, sha = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            md5.update(block)
            sha.update(block)
    return {"md5": md5.hexdigest(), "sha256": sha.hexdigest()}


def guess_format(path: str | Path) -> str:
    """``"keras"`` for HDF5 files (``.h5``/``.hdf5`` or the HDF5 signature), ``"matconvnet"`` for ``.mat``."""
    p = Path(path)
    if p.suffix.lower() == ".mat":
        return "matconvnet"
    with open(p, "rb") as fh:
        head = fh.read(8)
    if p.suffix.lower() in (".h5", ".hdf5") or head == b"\x89HDF\r\n\x1a\n":
        return "keras"
    raise FusionInputError(f"{p.name}: not a Keras .h5 or MatConvNet .mat file; give format= explicitly")


def read_keras_h5(path: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{block{b}_conv{c}: (kernel (kh, kw, in, out), bias)}`` from a Keras VGG19 weights file."""
    try:
        import h5py
    except ImportError:
        raise FusionInputError(
            "reading Keras .h5 weights needs h5py: pip install h5py (or pip install 'napari-fusion[convert]')"
        ) from None
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    with h5py.File(path, "r") as f:
        root = f.get("model_weights", f)  # a whole saved model, or weights only
        for name, _ in VGG19_CONVS:
            if name not in root:
                raise FusionInputError(f"{Path(path).name}: no layer {name!r}; not a Keras VGG19 weights file")
            arrays: list[np.ndarray] = []
            root[name].visititems(lambda _k, v: arrays.append(np.asarray(v)) if hasattr(v, "shape") else None)
            kernels = [a for a in arrays if a.ndim == 4]
            biases = [a for a in arrays if a.ndim == 1]
            if len(kernels) != 1 or len(biases) != 1:
                raise FusionInputError(f"{Path(path).name}: layer {name!r} does not hold one kernel and one bias")
            out[name] = (kernels[0], biases[0])
    return out


def _unwrap(value: Any) -> Any:
    """The single value inside scipy.io's nested 1x1 arrays (a MATLAB string -> str)."""
    while isinstance(value, np.ndarray):
        if value.size != 1:
            return value
        value = value.ravel()[0]
    return str(value).strip() if isinstance(value, (str, np.str_)) else value


def read_matconvnet(path: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{block{b}_conv{c}: (kernel (kh, kw, in, out), bias)}`` from MatConvNet's imagenet-vgg-verydeep-19.mat."""
    from scipy.io import loadmat

    data = loadmat(str(path))
    if "layers" not in data:
        raise FusionInputError(f"{Path(path).name}: no 'layers' array; not a MatConvNet network file")
    convs: list[tuple[np.ndarray, np.ndarray]] = []
    for cell in np.asarray(data["layers"]).ravel():
        layer = cell
        while isinstance(layer, np.ndarray) and layer.dtype.names is None and layer.size == 1:
            layer = layer.ravel()[0]  # cell -> struct
        fields = layer.dtype.names or ()
        if "type" not in fields or "weights" not in fields:
            raise FusionInputError(f"{Path(path).name}: a layer without 'type'/'weights'; not a MatConvNet file")
        if _unwrap(layer["type"]) != "conv":
            continue
        weights = np.asarray(layer["weights"]).ravel()
        while weights.size == 1 and weights.dtype == object:
            weights = np.asarray(weights[0]).ravel()
        if weights.size != 2:
            raise FusionInputError(f"{Path(path).name}: a conv layer without kernels and biases")
        kernel = np.asarray(weights[0], dtype=np.float32)
        bias = np.asarray(weights[1], dtype=np.float32).ravel()
        convs.append((np.transpose(kernel, (1, 0, 2, 3)), bias))  # MatConvNet is (kw, kh, in, out)
    if len(convs) < len(VGG19_CONVS):
        raise FusionInputError(
            f"{Path(path).name}: {len(convs)} convolutions, VGG19 has {len(VGG19_CONVS)} before its classifier"
        )
    # the first 16 convolutions are the feature extractor (fc6-fc8 follow as convolutions in MatConvNet)
    return {name: convs[i] for i, (name, _) in enumerate(VGG19_CONVS)}


def to_torchvision(layers: dict[str, tuple[np.ndarray, np.ndarray]], *, bgr: bool) -> dict[str, Any]:
    """torchvision-named tensors (``features.{i}.weight`` ``(out, in, kh, kw)``) from ``(kh, kw, in, out)`` kernels.

    ``bgr``: the first convolution's input channels are in B, G, R order (Keras, Caffe); they
    are reordered so that the converted network, like torchvision's, takes R, G, B.
    """
    import torch

    state: dict[str, Any] = {}
    previous_out = 3
    for name, index in VGG19_CONVS:
        kernel, bias = layers[name]
        if kernel.ndim != 4 or kernel.shape[:2] != (3, 3) or bias.shape != (kernel.shape[3],):
            raise FusionInputError(f"layer {name}: kernel {kernel.shape} / bias {bias.shape} is not a 3x3 convolution")
        if kernel.shape[2] != previous_out:
            raise FusionInputError(f"layer {name}: {kernel.shape[2]} input channels, expected {previous_out}")
        previous_out = kernel.shape[3]
        weight = np.transpose(np.asarray(kernel, dtype=np.float32), (3, 2, 0, 1))
        if index == 0 and bgr:
            weight = weight[:, ::-1]
        state[f"features.{index}.weight"] = torch.from_numpy(np.ascontiguousarray(weight))
        state[f"features.{index}.bias"] = torch.from_numpy(np.asarray(bias, dtype=np.float32).copy())
    return state


def convert_vgg19(
    source: str | Path, out: str | Path, *, format: str | None = None, spec: str = "vgg19", overwrite: bool = False
) -> Path:
    """Convert ``source`` (Keras .h5 or MatConvNet .mat) to a torch state dict at ``out`` with a sidecar.

    ``source`` is only read. ``out`` and its sidecar ``<out>.json`` are checked with
    :func:`napari_fusion.output_safety.check_output_path` before any work (never the source,
    never an existing file unless ``overwrite``) and written together under temporary names,
    renamed into place only when both are complete. Returns ``out``. The sidecar records the
    source file's name, format and digests, whether they match :data:`KNOWN_SOURCES`, and
    ``out``'s SHA-256.
    """
    import torch

    from ..output_safety import AtomicGroup, check_output_path

    src, dst = Path(source).expanduser(), Path(out).expanduser()
    if not src.is_file():
        raise FusionInputError(f"{src} does not exist or is not a file")
    side = sidecar_path(dst)
    for path, what in ((dst, "output"), (side, "output sidecar")):
        check_output_path(path, inputs=[src], overwrite=overwrite, what=what)
    fmt = format or guess_format(src)
    if fmt not in FORMATS:
        raise FusionInputError(f"format must be one of {', '.join(FORMATS)}; got {fmt!r}")
    layers = read_keras_h5(src) if fmt == "keras" else read_matconvnet(src)
    state = to_torchvision(layers, bgr=fmt == "keras")
    digests = _digests(src)
    known = next((k for k in KNOWN_SOURCES if digests.get(k.algorithm) == k.digest and k.format == fmt), None)
    with AtomicGroup() as group:
        tmp = group.temp_for(dst)
        torch.save(state, tmp)
        record = {
            "converted_for": spec,
            "sha256": _digests(tmp)["sha256"],
            "source": {"file": src.name, "format": fmt, **digests},
            "known_source": known is not None,
            "known_as": None if known is None else known.publisher,
            "input": "RGB (first convolution reordered from BGR)" if fmt == "keras" else "RGB",
            "widths": [int(layers[name][0].shape[3]) for name, _ in VGG19_CONVS],
        }
        group.temp_for(side).write_text(json.dumps(record, indent=2) + "\n")
    return dst


def sidecar_path(path: str | Path) -> Path:
    p = Path(path)
    return p.with_name(p.name + ".json")


def converted_record(path: str | Path, spec_name: str, digest: str) -> dict[str, Any] | None:
    """The sidecar of a file :func:`convert_vgg19` wrote for ``spec_name``, if ``digest`` is the file's recorded SHA-256."""
    side = sidecar_path(path)
    if not side.is_file():
        return None
    try:
        record = json.loads(side.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("converted_for") != spec_name or record.get("sha256") != digest:
        return None
    return record


__all__ = [
    "KNOWN_SOURCES",
    "FORMATS",
    "VGG19_CONVS",
    "convert_vgg19",
    "converted_record",
    "guess_format",
    "read_keras_h5",
    "read_matconvnet",
    "to_torchvision",
]
