"""Out-of-core I/O: lazy reading of TIFF / zarr / OME-Zarr, tile-by-tile writing, CLI --chunks."""

from __future__ import annotations

import json

import dask.array as da
import numpy as np
import pytest
import tifffile
import torch
import zarr
from scipy.ndimage import gaussian_filter

import napari_fusion as nf
from napari_fusion.cli import main
from napari_fusion.errors import FusionCancelled, FusionInputError
from napari_fusion.io import LazyTiff, open_lazy_stack, write_lazy


@pytest.fixture(autouse=True)
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def stack16():
    rng = np.random.default_rng(0)
    base = rng.random((300, 280))
    planes = [gaussian_filter(base, s) for s in (0.3, 1.5, 3.0, 1.0)]
    return (np.stack(planes) * 60000).astype(np.uint16)


def _not_loaded(arr):
    assert isinstance(arr, da.Array)
    assert arr.npartitions > 1 or arr.nbytes < 1e6


def test_open_tiff_strips_are_memory_mapped_and_chunked(tmp_path, stack16):
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, stack16)
    arr = open_lazy_stack(path, chunks=128)
    assert arr.shape == stack16.shape and arr.dtype == np.uint16
    assert arr.chunks[1] == (128, 128, 44) and arr.chunks[0] == (1, 1, 1, 1)
    np.testing.assert_array_equal(arr[2, 100:140, 50:70].compute(), stack16[2, 100:140, 50:70])


def test_open_compressed_tiled_tiff_uses_its_tiles(tmp_path, stack16):
    path = tmp_path / "tiled.tif"
    tifffile.imwrite(path, stack16, tile=(64, 64), compression="zlib")
    arr = open_lazy_stack(path)
    assert arr.chunks[1][0] == 64 and arr.chunks[2][0] == 64
    np.testing.assert_array_equal(arr.compute(), stack16)


def test_lazy_tiff_reader_pickles_without_its_file(tmp_path, stack16):
    import pickle

    path = tmp_path / "tiled.tif"
    tifffile.imwrite(path, stack16, tile=(64, 64), compression="zlib")
    reader = LazyTiff(path)
    reader[0, :2, :2]  # opens the file
    clone = pickle.loads(pickle.dumps(reader))
    np.testing.assert_array_equal(clone[1, 10:20, 30:40], stack16[1, 10:20, 30:40])


def test_open_folder_of_slices_and_rgb(tmp_path):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 255, (3, 40, 50, 3), dtype=np.uint8)
    for i, im in enumerate(rgb):
        tifffile.imwrite(tmp_path / f"slice_{i + 1}.tif", im, photometric="rgb")
    arr = open_lazy_stack(tmp_path)
    assert arr.shape == (3, 40, 50, 3)
    np.testing.assert_array_equal(arr.compute(), rgb)
    np.testing.assert_array_equal(open_lazy_stack(sorted(tmp_path.glob("*.tif"))).compute(), rgb)


def test_open_zarr_and_ome_zarr(tmp_path, stack16):
    z = zarr.create_array(str(tmp_path / "plain.zarr"), shape=stack16.shape, chunks=(1, 100, 100), dtype="u2")
    z[:] = stack16
    arr = open_lazy_stack(tmp_path / "plain.zarr")
    assert arr.chunks[1][0] == 100
    np.testing.assert_array_equal(arr.compute(), stack16)
    # OME-Zarr (NGFF 0.4 layout): t, c, z, y, x with singleton t and c
    g = zarr.open_group(str(tmp_path / "img.ome.zarr"), mode="w")
    a = g.create_array("0", shape=(1, 1) + stack16.shape, chunks=(1, 1, 1, 128, 128), dtype="u2")
    a[:] = stack16[None, None]
    g.create_array("1", shape=(1, 1, 4, 150, 140), chunks=(1, 1, 1, 128, 128), dtype="u2")
    axes = [{"name": n, "type": t} for n, t in zip("tczyx", ["time", "channel", "space", "space", "space"])]
    g.attrs["multiscales"] = [{"version": "0.4", "axes": axes, "datasets": [{"path": "0"}, {"path": "1"}]}]
    arr = open_lazy_stack(tmp_path / "img.ome.zarr")
    assert arr.shape == stack16.shape
    np.testing.assert_array_equal(arr.compute(), stack16)


def test_open_errors(tmp_path):
    with pytest.raises(FusionInputError, match="not found"):
        open_lazy_stack(tmp_path / "missing.tif")
    (tmp_path / "a.png").write_bytes(b"")
    with pytest.raises(FusionInputError, match="only TIFF and zarr"):
        open_lazy_stack(tmp_path / "a.png")
    g = zarr.open_group(str(tmp_path / "two.zarr"), mode="w")
    g.create_array("a", shape=(2, 8, 8), dtype="u1")
    g.create_array("b", shape=(2, 8, 8), dtype="u1")
    with pytest.raises(FusionInputError, match="component"):
        open_lazy_stack(tmp_path / "two.zarr")
    assert open_lazy_stack(tmp_path / "two.zarr", component="b").shape == (2, 8, 8)


def test_folder_of_png_and_jpeg_slices_opens_lazily(device, tmp_path):
    """Slices that cannot be read in parts are one chunk each, decoded only when computed; the tiled
    fusion of a folder of them equals the in-memory one. A slice of another size is refused when the
    stack is opened, one of another colour layout when it is decoded, with the file named."""
    from napari_fusion.io import read_stack, write_image

    rng = np.random.default_rng(5)
    folder = tmp_path / "slices"
    folder.mkdir()
    for k in range(3):
        write_image(folder / f"z{k}.png", (rng.random((40, 50, 3)) * 255).astype(np.uint8))
    arr = open_lazy_stack(folder)
    assert arr.shape == (3, 40, 50, 3) and arr.dtype == np.uint8 and arr.numblocks[0] == 3
    eager = read_stack(folder)
    np.testing.assert_array_equal(arr.compute(), np.stack(eager))
    tiled = nf.fuse(arr, method="focus_measure", chunks=16, device=device).compute()
    ref = nf.fuse(eager, method="focus_measure", device=device)
    np.testing.assert_array_equal(tiled.fused, ref.fused)
    np.testing.assert_array_equal(tiled.labels, ref.labels)

    (tmp_path / "odd").mkdir()  # (writers refuse paths inside an input folder)
    slices = sorted(folder.iterdir())
    write_image(tmp_path / "odd" / "wide.jpg", np.zeros((40, 51, 3), np.uint8))
    with pytest.raises(FusionInputError, match="wide.jpg is 40x51 pixels"):
        open_lazy_stack([*slices, tmp_path / "odd" / "wide.jpg"])
    write_image(tmp_path / "odd" / "grey.png", np.zeros((40, 50), np.uint8))  # grey among colour slices
    arr = open_lazy_stack([*slices, tmp_path / "odd" / "grey.png"])
    with pytest.raises(FusionInputError, match="grey.png decodes to 40x50 uint8"):
        arr.compute()


def test_fuse_from_tiff_write_tiff_and_zarr_equal_untiled(device, tmp_path, stack16):
    src = tmp_path / "stack.tif"
    tifffile.imwrite(src, stack16, tile=(64, 64))
    ref = nf.fuse(stack16, "focus_measure", device=device)
    lazy = nf.fuse(open_lazy_stack(src), "focus_measure", device=device, chunks=(100, 90))
    ticks = []
    written = write_lazy(
        lazy,
        tmp_path / "f.tif",
        labels=tmp_path / "l.tif",
        depth=tmp_path / "d.tif",
        progress=lambda d, t, m: ticks.append(d) if ": " not in m else None,  # finished tiles only
    )
    assert ticks == list(range(1, lazy.grid.n_tiles + 1))  # each tile computed once for all three files
    np.testing.assert_array_equal(tifffile.imread(written[0]), ref.fused)
    np.testing.assert_array_equal(tifffile.imread(written[1]), ref.labels)
    np.testing.assert_array_equal(tifffile.imread(written[2]), ref.depth)
    with tifffile.TiffFile(written[0]) as tf:
        assert tf.pages[0].is_tiled
        assert json.loads(tf.pages[0].description)["method"] == "focus_measure"
    out = write_lazy(lazy, tmp_path / "out.zarr")[0]
    g = zarr.open_group(str(out), mode="r")
    assert g.attrs["method"] == "focus_measure"
    assert g["fused"].chunks == (100, 90)
    np.testing.assert_array_equal(g["fused"][:], ref.fused)
    np.testing.assert_array_equal(g["labels"][:], ref.labels)
    np.testing.assert_array_equal(g["depth"][:], ref.depth)


def test_write_rgb_tiff_and_plain_arrays(device, tmp_path):
    rng = np.random.default_rng(2)
    rgb = rng.integers(0, 255, (3, 70, 300, 3), dtype=np.uint8)
    lazy = nf.fuse(rgb, "average", chunks=64, device=device)
    write_lazy(lazy, tmp_path / "avg.tif")
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "avg.tif"), nf.fuse(rgb, "average", device=device).fused)
    arr = np.arange(50 * 60, dtype=np.float32).reshape(50, 60)
    write_lazy(arr, tmp_path / "plain.tif")
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "plain.tif"), arr)


def test_write_errors_and_cancel_leaves_no_file(device, tmp_path, stack16):
    lazy = nf.fuse(stack16, "average", chunks=64, device=device)
    with pytest.raises(FusionInputError, match="unsupported output format"):
        write_lazy(lazy, tmp_path / "x.png")
    with pytest.raises(FusionInputError, match="no labels"):
        write_lazy(lazy, tmp_path / "x.tif", labels=tmp_path / "l.tif")

    def cancel(done, total, message):
        if done == 2:
            raise FusionCancelled("stop")

    with pytest.raises(FusionCancelled):
        write_lazy(lazy, tmp_path / "x.tif", progress=cancel)
    assert not (tmp_path / "x.tif").exists()


def test_cli_chunks_matches_in_memory_cli(tmp_path, stack16, capsys):
    src = tmp_path / "stack.tif"
    tifffile.imwrite(src, stack16)
    assert (
        main(
            [
                "fuse",
                str(src),
                "-o",
                str(tmp_path / "a.tif"),
                "--labels",
                str(tmp_path / "al.tif"),
                "--device",
                "cpu",
                "-q",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "fuse",
                str(src),
                "-o",
                str(tmp_path / "b.tif"),
                "--labels",
                str(tmp_path / "bl.tif"),
                "--depth",
                str(tmp_path / "bd.tif"),
                "--device",
                "cpu",
                "--chunks",
                "96x128",
                "-q",
            ]
        )
        == 0
    )
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "a.tif"), tifffile.imread(tmp_path / "b.tif"))
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "al.tif"), tifffile.imread(tmp_path / "bl.tif"))
    assert main(["fuse", str(src), "-o", str(tmp_path / "c.zarr"), "--chunks", "auto", "-q", "--device", "cpu"]) == 0
    np.testing.assert_array_equal(
        zarr.open_group(str(tmp_path / "c.zarr"), mode="r")["fused"][:], tifffile.imread(tmp_path / "a.tif")
    )
    # a pyramid whose depth follows the image size tiles too (its coarse levels in a first pass)
    for out, extra in (("d.tif", ["--chunks", "64"]), ("e.tif", [])):
        assert main(["fuse", str(src), "-o", str(tmp_path / out), "-m", "laplacian_pyramid", "-q", *extra]) == 0
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "d.tif"), tifffile.imread(tmp_path / "e.tif"))
    # a global method is refused with the library's message and exit status 2
    args = [
        "fuse",
        str(src),
        "-o",
        str(tmp_path / "f.tif"),
        "-m",
        "li2018_vgg19",
        "-p",
        "pad=0",
        "--chunks",
        "64",
        "-q",
    ]
    capsys.readouterr()
    assert main(args) == 2
    assert "is global" in capsys.readouterr().err  # not the missing weights: refused before loading them
