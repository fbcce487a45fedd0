"""Reading and writing images, stacks and dataset cases."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_fusion.datasets import iter_cases, load_case
from napari_fusion.errors import FusionInputError
from napari_fusion.io import read_image, read_stack, write_image


def test_tiff_roundtrip_keeps_dtype(tmp_path):
    for dtype in (np.uint8, np.uint16, np.float32):
        a = (np.arange(20 * 30).reshape(20, 30) % 250).astype(dtype)
        p = write_image(tmp_path / f"a_{np.dtype(dtype).name}.tif", a, metadata={"k": 1})
        b = read_image(p)
        assert b.dtype == a.dtype
        np.testing.assert_array_equal(a, b)


def test_read_stack_variants(tmp_path):
    grey = np.random.default_rng(0).integers(0, 65535, (5, 16, 18), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "grey.tif", grey)
    assert len(read_stack(tmp_path / "grey.tif")) == 5
    rgb = np.random.default_rng(1).integers(0, 255, (3, 16, 18, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    imgs = read_stack(tmp_path / "rgb.tif")
    assert len(imgs) == 3 and imgs[0].shape == (16, 18, 3)
    single = read_stack([tmp_path / "rgb.tif", tmp_path / "rgb.tif"])
    assert len(single) == 6


def test_png_with_alpha_drops_alpha(tmp_path):
    import imageio.v3 as iio

    rgba = np.zeros((10, 12, 4), np.uint8)
    rgba[..., 3] = 255
    iio.imwrite(tmp_path / "a.png", rgba)
    assert read_image(tmp_path / "a.png").shape == (10, 12, 3)


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_16bit_png_keeps_all_16_bits(tmp_path, channels):
    """Pillow reads 16-bit grey+alpha, RGB and RGBA PNG as 8 bits (1000 became 3) and cannot write
    16-bit RGB at all; written by libpng, every sample must come back exactly."""
    imagecodecs = pytest.importorskip("imagecodecs")
    shape = (9, 11) if channels == 1 else (9, 11, channels)
    a = np.random.default_rng(channels).integers(0, 65536, shape, dtype=np.uint16)
    (tmp_path / "in.png").write_bytes(imagecodecs.png_encode(a))
    b = read_image(tmp_path / "in.png")
    want = a if channels == 1 else a[..., 0] if channels == 2 else a[..., :3]
    assert b.dtype == np.uint16
    np.testing.assert_array_equal(b, want)
    if channels == 3:  # and our writer round-trips it
        np.testing.assert_array_equal(read_image(write_image(tmp_path / "out.png", a)), a)


def test_16bit_colour_png_without_imagecodecs_is_a_clear_error(tmp_path, monkeypatch):
    import builtins
    import sys

    imagecodecs = pytest.importorskip("imagecodecs")
    (tmp_path / "in.png").write_bytes(imagecodecs.png_encode(np.zeros((4, 5, 3), np.uint16)))
    real_import = builtins.__import__

    def no_imagecodecs(name, *args, **kwargs):
        if name == "imagecodecs":
            raise ImportError("no imagecodecs")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "imagecodecs")
    monkeypatch.setattr(builtins, "__import__", no_imagecodecs)
    for call in (
        lambda: read_image(tmp_path / "in.png"),
        lambda: write_image(tmp_path / "o.png", np.zeros((4, 5, 3), np.uint16)),
    ):
        with pytest.raises(FusionInputError, match="16-bit colour PNG needs the imagecodecs package"):
            call()
    assert not (tmp_path / "o.png").exists()


def test_8bit_png_roundtrip(tmp_path):
    a = np.random.default_rng(5).integers(0, 256, (13, 7, 3), dtype=np.uint8)
    np.testing.assert_array_equal(read_image(write_image(tmp_path / "a.png", a)), a)


def test_errors(tmp_path):
    with pytest.raises(FusionInputError, match="file not found"):
        read_image(tmp_path / "nope.tif")
    (tmp_path / "junk.tif").write_bytes(b"junk")
    with pytest.raises(FusionInputError, match="junk.tif is not a TIFF file"):
        read_image(tmp_path / "junk.tif")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FusionInputError, match="no image files"):
        read_stack(tmp_path / "empty")
    with pytest.raises(FusionInputError, match="cannot write float32"):
        write_image(tmp_path / "x.png", np.zeros((4, 4), np.float32))


def test_reading_never_modifies_files(tmp_path):
    p = tmp_path / "s.tif"
    tifffile.imwrite(p, np.ones((3, 8, 8), np.uint16))
    before = p.read_bytes()
    read_stack(p)
    assert p.read_bytes() == before


@pytest.mark.data
def test_dataset_layout(dataset):
    cases = iter_cases(dataset("multifocus/lytro"))
    assert len(cases) == 20
    c = cases[0]
    assert [p.name for p in c.sources] == ["src_00.jpg", "src_01.jpg"]
    assert c.gt is None and len(c.references) > 3
    voc = load_case(next(iter(sorted(dataset("multifocus/mf_voc").iterdir()))))
    assert voc.gt is not None and voc.load_gt().shape == (224, 224, 3)
