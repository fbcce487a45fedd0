"""Files from microscopes: calibration from metadata into depth maps and outputs, and the readers.

No microscope sample files are available here: OME-TIFF and OME-Zarr files are
written by the tests with known physical sizes; for CZI, ND2 and LIF only the
message for a missing bioio plugin is checked. bioio-specific tests skip when
bioio (or its plugin) is not installed.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import tifffile

from napari_fusion.cli import main
from napari_fusion.errors import FusionInputError
from napari_fusion.io import read_calibration
from napari_fusion.microscopy import Calibration, make_calibration, open_microscopy

Z_STEP = 0.5
PIXEL = 0.2


@pytest.fixture(scope="module")
def grey_stack():
    """A 4-slice 64x80 grey focal stack (uint16), each region sharpest in a different slice."""
    from napari_fusion.synthetic import render_focal_stack

    rng = np.random.default_rng(0)
    texture = (rng.random((64, 80)) * 255).astype(np.uint8)
    stack = render_focal_stack(texture, n_slices=4, max_sigma=3.0, seed=1)
    return np.stack([np.asarray(s, dtype=np.float64) for s in stack.slices]).astype(np.uint16)


def write_ome_tiff(path, data, *, z=Z_STEP, pixel=PIXEL, unit="µm", axes="ZYX", **extra):
    meta = {"axes": axes, "PhysicalSizeX": pixel, "PhysicalSizeY": pixel, "PhysicalSizeZ": z}
    meta.update({"PhysicalSizeXUnit": unit, "PhysicalSizeYUnit": unit, "PhysicalSizeZUnit": unit}, **extra)
    tifffile.imwrite(path, data, ome=True, photometric="minisblack", metadata=meta)
    return path


def write_ome_zarr(path, data, *, scale=(0.3, 0.1, 0.1), unit="micrometer", axes="zyx"):
    zarr = pytest.importorskip("zarr")
    group = zarr.open_group(str(path), mode="w", zarr_format=2)  # NGFF 0.4 is zarr v2
    group.create_array("0", data=data, chunks=(1,) * (data.ndim - 2) + (32, 32))
    group.attrs["multiscales"] = [
        {
            "version": "0.4",
            "name": "test",
            "axes": [_ngff_axis(a, unit) for a in axes],
            "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": list(scale)}]}],
        }
    ]
    return path


def _ngff_axis(name: str, unit: str | None) -> dict:
    if name in "zyx":
        return {"name": name, "type": "space", **({"unit": unit} if unit else {})}
    return {"name": name, "type": {"c": "channel", "t": "time"}[name]}


# --------------------------------------------------------------------------- calibration from metadata


def test_ome_tiff_calibration_is_read_from_its_metadata(tmp_path, grey_stack):
    path = write_ome_tiff(tmp_path / "s.ome.tif", grey_stack)
    cal = read_calibration(path)
    assert cal == Calibration((PIXEL, PIXEL), Z_STEP, "µm", "OME-XML")
    ms = open_microscopy(path)
    assert ms.calibration == cal
    assert ms.axes == "ZYX" and ms.shape == grey_stack.shape
    assert hasattr(ms.data, "dask")  # lazy
    np.testing.assert_array_equal(np.asarray(ms.data), grey_stack)
    assert cal.scale() == (Z_STEP, PIXEL, PIXEL)
    assert "z step 0.5 µm" in cal.describe()


def test_units_are_converted_to_micrometres(tmp_path, grey_stack):
    cal = read_calibration(write_ome_tiff(tmp_path / "nm.ome.tif", grey_stack, z=300.0, pixel=65.0, unit="nm"))
    assert cal.unit == "µm"
    assert cal.z_step == pytest.approx(0.3) and cal.pixel_size_yx == pytest.approx((0.065, 0.065))
    assert make_calibration(1.0, 1.0, 2.0, "parsec", source="x") == Calibration((1.0, 1.0), 2.0, "parsec", "x")
    assert not make_calibration(None, float("nan"), -1.0, source="x").known


def test_plain_tiff_and_folders_say_calibration_is_missing(tmp_path, grey_stack):
    tifffile.imwrite(tmp_path / "plain.tif", grey_stack, photometric="minisblack")
    folder = tmp_path / "slices"
    folder.mkdir()
    for i, s in enumerate(grey_stack):
        tifffile.imwrite(folder / f"z{i}.tif", s)
    for path in (tmp_path / "plain.tif", folder):
        cal = read_calibration(path)
        assert not cal.known and cal.z_step is None and cal.source == "none"
        assert "no calibration" in cal.describe()


def test_multichannel_ome_tiff_channels_and_timepoints_are_chosen(tmp_path, grey_stack):
    data = np.stack([grey_stack, grey_stack // 2])  # (C, Z, Y, X)
    data = np.stack([data, data + 1])  # (T, C, Z, Y, X)
    path = write_ome_tiff(tmp_path / "tc.ome.tif", data, axes="TCZYX")
    with pytest.raises(FusionInputError, match="2 timepoints; choose one"):
        open_microscopy(path)
    ms = open_microscopy(path, timepoint=1)
    assert ms.axes == "ZYXC" and ms.shape == grey_stack.shape + (2,)
    ms = open_microscopy(path, timepoint=0, channel=1)
    assert ms.axes == "ZYX"
    np.testing.assert_array_equal(np.asarray(ms.data), grey_stack // 2)
    assert ms.calibration.z_step == Z_STEP
    with pytest.raises(FusionInputError, match="no channel 5"):
        open_microscopy(path, timepoint=0, channel=5)


def test_ome_zarr_gives_its_scale(tmp_path, grey_stack):
    path = write_ome_zarr(tmp_path / "s.zarr", grey_stack, scale=(0.3, 0.1, 0.1))
    cal = read_calibration(path)
    assert cal.z_step == pytest.approx(0.3) and cal.pixel_size_yx == pytest.approx((0.1, 0.1))
    assert cal.unit == "µm" and cal.source == "OME-Zarr multiscales"
    ms = open_microscopy(path)
    assert ms.axes == "ZYX" and ms.calibration == cal
    np.testing.assert_array_equal(np.asarray(ms.data), grey_stack)


def test_ome_zarr_with_channels_and_without_units(tmp_path, grey_stack):
    data = np.stack([grey_stack, grey_stack // 3])
    path = write_ome_zarr(tmp_path / "c.zarr", data, scale=(1.0, 2.0, 0.5, 0.5), unit=None, axes="czyx")
    cal = read_calibration(path)
    assert cal.z_step == 2.0 and cal.pixel_size_yx == (0.5, 0.5) and cal.unit is None  # no unit stated: none given
    ms = open_microscopy(path, channel=1)
    np.testing.assert_array_equal(np.asarray(ms.data), grey_stack // 3)


# --------------------------------------------------------------------------- the command line


def test_fuse_takes_the_z_step_from_ome_tiff_metadata(tmp_path, grey_stack, capsys):
    path = write_ome_tiff(tmp_path / "s.ome.tif", grey_stack)
    out, depth = tmp_path / "fused.tif", tmp_path / "depth.tif"
    assert main(["fuse", str(path), "-m", "focus_measure", "-o", str(out), "--depth", str(depth), "-q"]) == 0
    err = capsys.readouterr().err
    assert "z step 0.5 µm from metadata" in err
    d = tifffile.imread(depth)
    assert d.max() > 0
    np.testing.assert_allclose(d / Z_STEP, np.round(d / Z_STEP), atol=1e-5)  # multiples of 0.5 µm
    assert d.max() <= (len(grey_stack) - 1) * Z_STEP + 1e-6
    # the outputs carry the physical pixel size
    for written in (out, depth):
        cal = read_calibration(written)
        assert cal.pixel_size_yx == pytest.approx((PIXEL, PIXEL)) and cal.unit == "µm"
        with tifffile.TiffFile(written) as tf:
            page = tf.pages[0]
            assert page.tags["ResolutionUnit"].value == 3  # centimetre
            num, den = page.tags["XResolution"].value
            assert num / den == pytest.approx(1e4 / PIXEL)
            assert json.loads(page.description)["calibration"]["z_step"] == Z_STEP


def test_fuse_z_step_option_wins_over_metadata(tmp_path, grey_stack, capsys):
    path = write_ome_tiff(tmp_path / "s.ome.tif", grey_stack)
    depth = tmp_path / "depth.tif"
    args = [
        "fuse",
        str(path),
        "-m",
        "focus_measure",
        "-o",
        str(tmp_path / "f.tif"),
        "--depth",
        str(depth),
        "--z-step",
        "2",
        "-q",
    ]
    assert main(args) == 0
    assert "replaces the z step 0.5" in capsys.readouterr().err
    d = tifffile.imread(depth)
    np.testing.assert_allclose(d / 2.0, np.round(d / 2.0), atol=1e-5)
    assert d.max() > Z_STEP * (len(grey_stack) - 1)


def test_fuse_of_uncalibrated_tiff_says_calibration_is_missing(tmp_path, grey_stack, capsys):
    tifffile.imwrite(tmp_path / "plain.tif", grey_stack, photometric="minisblack")
    depth = tmp_path / "depth.tif"
    assert (
        main(
            [
                "fuse",
                str(tmp_path / "plain.tif"),
                "-m",
                "focus_measure",
                "-o",
                str(tmp_path / "f.tif"),
                "--depth",
                str(depth),
                "-q",
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    assert "calibration missing" in err and "slice units" in err
    d = tifffile.imread(depth)
    np.testing.assert_allclose(d, np.round(d), atol=1e-5)  # slice indices, nothing guessed
    assert not read_calibration(depth).known


def test_fuse_tiled_from_ome_zarr_uses_its_scale(tmp_path, grey_stack, capsys):
    path = write_ome_zarr(tmp_path / "s.zarr", grey_stack, scale=(0.3, 0.1, 0.1))
    out, depth = tmp_path / "fused.tif", tmp_path / "depth.tif"
    assert (
        main(["fuse", str(path), "-m", "focus_measure", "-o", str(out), "--depth", str(depth), "--chunks", "32", "-q"])
        == 0
    )
    assert "z step 0.3 µm from metadata" in capsys.readouterr().err
    d = tifffile.imread(depth)
    np.testing.assert_allclose(d / 0.3, np.round(d / 0.3), atol=1e-4)
    assert read_calibration(out).pixel_size_yx == pytest.approx((0.1, 0.1))


def test_fuse_in_memory_from_ome_zarr_and_channel_choice(tmp_path, grey_stack, capsys):
    data = np.stack([grey_stack, grey_stack // 3])
    path = write_ome_zarr(tmp_path / "c.zarr", data, scale=(1.0, 0.3, 0.1, 0.1), axes="czyx")
    out = tmp_path / "f.tif"
    assert main(["fuse", str(path), "-o", str(out), "-q"]) == 2
    err = capsys.readouterr().err
    assert "2 channels" in err and "--channel" in err
    assert main(["fuse", str(path), "--channel", "0", "-o", str(out), "-q"]) == 0
    assert "z step 0.3 µm from metadata" in capsys.readouterr().err


def test_batch_takes_the_z_step_from_metadata(tmp_path, grey_stack, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    write_ome_tiff(inputs / "cal.ome.tif", grey_stack)
    tifffile.imwrite(inputs / "plain.tif", grey_stack, photometric="minisblack")
    outdir = tmp_path / "out"
    assert main(["batch", str(inputs), "-o", str(outdir), "-q"]) == 0
    err = capsys.readouterr().err
    assert "z step 0.5 µm from metadata" in err and "calibration missing" in err
    records = {p.name: json.loads(p.read_text()) for p in outdir.glob("*_record.json")}
    cal = next(r for n, r in records.items() if n.startswith("cal"))
    plain = next(r for n, r in records.items() if n.startswith("plain"))
    assert cal["z_step"] == Z_STEP and "metadata" in cal["z_step_source"]
    assert plain["z_step"] is None and "missing" in plain["z_step_source"]
    h = tifffile.imread(next(outdir.glob("cal*_height.tif")))
    assert h.max() <= (len(grey_stack) - 1) * Z_STEP + 1e-6 and h.max() > 0


# --------------------------------------------------------------------------- readers through bioio


@pytest.mark.parametrize(
    ("suffix", "plugin", "module"),
    [(".czi", "bioio-czi", "bioio_czi"), (".nd2", "bioio-nd2", "bioio_nd2"), (".lif", "bioio-lif", "bioio_lif")],
)
def test_absent_bioio_plugin_is_named(tmp_path, monkeypatch, suffix, plugin, module):
    path = tmp_path / f"sample{suffix}"
    path.write_bytes(b"\0" * 64)
    monkeypatch.setitem(sys.modules, module, None)  # the plugin is not installed
    if "bioio" in sys.modules or _importable("bioio"):
        with pytest.raises(FusionInputError, match=f"plugin {plugin}, which is not installed: pip install {plugin}"):
            open_microscopy(path)
    monkeypatch.setitem(sys.modules, "bioio", None)  # nor bioio itself
    with pytest.raises(FusionInputError, match=f"needs bioio and its reader plugin {plugin}"):
        open_microscopy(path)
    with pytest.raises(FusionInputError, match=plugin):
        read_calibration(path)


def test_cli_reports_an_absent_plugin_in_one_line(tmp_path, monkeypatch, capsys):
    path = tmp_path / "sample.nd2"
    path.write_bytes(b"\0" * 64)
    monkeypatch.setitem(sys.modules, "bioio_nd2", None)
    assert main(["fuse", str(path), "-o", str(tmp_path / "f.tif")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bioio-nd2" in err[0] and err[0].startswith("napari-fusion: error:")


def _importable(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except ValueError:
        return False


def test_bioio_reads_the_same_ome_tiff_and_calibration(tmp_path, grey_stack):
    pytest.importorskip("bioio")
    pytest.importorskip("bioio_ome_tiff")
    path = write_ome_tiff(tmp_path / "s.ome.tif", grey_stack)
    ms = open_microscopy(path, backend="bioio")
    assert ms.reader == "bioio-ome-tiff" and ms.axes == "ZYX"
    assert ms.calibration.z_step == pytest.approx(Z_STEP) and ms.calibration.pixel_size_yx == pytest.approx(
        (PIXEL,) * 2
    )
    assert ms.calibration.unit == "µm"
    np.testing.assert_array_equal(np.asarray(ms.data), grey_stack)


def test_bioio_reads_the_same_ome_zarr_and_calibration(tmp_path, grey_stack):
    pytest.importorskip("bioio")
    pytest.importorskip("bioio_ome_zarr")
    path = write_ome_zarr(tmp_path / "s.zarr", grey_stack, scale=(0.3, 0.1, 0.1))
    ms = open_microscopy(path, backend="bioio")
    assert ms.reader == "bioio-ome-zarr" and ms.axes == "ZYX"
    assert ms.calibration.z_step == pytest.approx(0.3) and ms.calibration.unit == "µm"
    np.testing.assert_array_equal(np.asarray(ms.data), grey_stack)


def test_bioio_reader_errors_name_the_file(tmp_path):
    pytest.importorskip("bioio")
    pytest.importorskip("bioio_czi")
    path = tmp_path / "broken.czi"
    path.write_bytes(b"not a czi file at all")
    with pytest.raises(FusionInputError, match="broken.czi"):
        open_microscopy(path)


def test_plain_four_axis_tiff_gets_a_clear_refusal_not_an_internal_error(tmp_path, capsys):
    """tifffile names the axes of a plain 4-D TIFF QQYX: the same letter twice."""
    path = tmp_path / "czyx.tif"
    tifffile.imwrite(path, np.zeros((2, 5, 16, 16), np.uint8))
    with pytest.raises(FusionInputError, match=r"axis 'Q' of size 5 .*no names in the file.*OME-TIFF"):
        open_microscopy(path, channel=0)
    assert main(["fuse", str(path), "--channel", "0", "-o", str(tmp_path / "a.tif")]) != 0
    assert main(["fuse", str(path), "-o", str(tmp_path / "b.tif")]) != 0
    err = capsys.readouterr().err
    assert "internal error" not in err and "unsupported image shape (2, 5, 16, 16)" in err and "--channel" in err
    assert not (tmp_path / "a.tif").exists() and not (tmp_path / "b.tif").exists()
    # a leading axis of size one is dropped: the rest is the z stack
    single = tmp_path / "qzyx.tif"
    tifffile.imwrite(single, np.arange(5 * 16 * 16, dtype=np.uint16).reshape(1, 5, 16, 16))
    assert open_microscopy(single, channel=0).shape == (5, 16, 16)
