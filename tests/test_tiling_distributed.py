"""Tiled fusion on a dask.distributed cluster of worker processes, including the loss of a worker."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest
import tifffile
from scipy.ndimage import gaussian_filter

import napari_fusion as nf
from napari_fusion import tiling
from napari_fusion.io import open_lazy_stack, write_lazy
from napari_fusion.registry import Param, get_method

distributed = pytest.importorskip("distributed")

pytestmark = pytest.mark.slow  # starting worker processes that import torch takes ~10-20 s here


def _set_one_thread():
    import torch

    torch.set_num_threads(1)


def _tiles_ran_here() -> bool:
    import sys

    return "napari_fusion.tiling" in sys.modules


@pytest.fixture(scope="module")
def client():
    import sys

    import cloudpickle

    # workers need this module's functions; send them by value rather than by import
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    cluster = distributed.LocalCluster(
        n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None, silence_logs=40
    )
    c = distributed.Client(cluster)
    c.run(_set_one_thread)
    yield c
    c.close()
    cluster.close()


@pytest.fixture(scope="module")
def tiff_stack(tmp_path_factory):
    rng = np.random.default_rng(3)
    base = rng.random((200, 180))
    stack = (np.stack([gaussian_filter(base, s) for s in (0.3, 2.0, 1.0)]) * 60000).astype(np.uint16)
    path = tmp_path_factory.mktemp("dist") / "stack.tif"
    tifffile.imwrite(path, stack, tile=(128, 128), compression="zlib")
    return path, stack


def test_cluster_gives_the_untiled_result(device, client, tiff_stack, tmp_path):
    path, stack = tiff_stack
    ref = nf.fuse(stack, "gff", device=device, r1=6, base_radius=4)
    lazy = nf.fuse(open_lazy_stack(path), "gff", device=device, chunks=100, r1=6, base_radius=4)
    got = lazy.compute()  # runs on the default client's worker processes
    np.testing.assert_array_equal(got.fused, ref.fused)
    np.testing.assert_array_equal(got.labels, ref.labels)
    assert any(client.run(_tiles_ran_here).values())  # the tiles really ran in the worker processes
    out = write_lazy(lazy, tmp_path / "out.zarr")[0]
    import zarr

    np.testing.assert_array_equal(zarr.open_group(str(out), mode="r")["fused"][:], ref.fused)


def _average_or_die(stack, *, ctx, marker):
    """Average; but the first tile to run anywhere kills its worker process."""
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        fd = None
    if fd is not None:
        os.close(fd)
        os._exit(1)  # the worker dies mid-run, without a Python exception
    return get_method("average").run(stack, ctx=ctx)


def test_cluster_survives_losing_a_worker(device, client, tiff_stack, tmp_path):
    path, stack = tiff_stack
    marker = tmp_path / "died"
    spec = dataclasses.replace(
        get_method("average"),
        name="average_or_die",
        run=_average_or_die,
        params=(Param("marker", "", str, "file created by the tile that kills its worker"),),
    )
    lazy = tiling.fuse_lazy(open_lazy_stack(path), spec, device=device, chunks=100, marker=str(marker))
    got = lazy.compute()
    assert marker.exists()  # a worker did die
    np.testing.assert_array_equal(got.fused, nf.fuse(stack, "average", device=device).fused)


def test_cluster_runs_whole_image_steps(device, client, tiff_stack):
    """Collect passes on the cluster: the tiles' parts (Collected, with their finish closures)
    come back from worker processes; region removal and the pyramid's coarse levels as untiled."""
    path, stack = tiff_stack
    for name in ("liu2017_cnn_nway", "laplacian_pyramid"):
        ref = nf.fuse(stack, name, device=device)
        got = nf.fuse(open_lazy_stack(path), name, device=device, chunks=64).compute()
        np.testing.assert_array_equal(got.fused, ref.fused)
        np.testing.assert_array_equal(got.labels, ref.labels)
