"""The input chunks of tiled runs: read by the tiles through a bounded cache, not held by dask."""

from __future__ import annotations

import pickle
import threading

import dask
import dask.array as da
import numpy as np
from dask.callbacks import Callback

import napari_fusion as nf
from napari_fusion import io
from napari_fusion._tile_inputs import InputChunks, cache_bytes, span_bytes


def test_a_block_spans_at_most_one_chunk_more_than_it_covers_and_never_more_than_the_image():
    assert span_bytes((676, 676), chunks=(512, 512), shape=(8192, 8192), plane_bytes=20) == 1536 * 1536 * 20
    assert span_bytes((512, 512), chunks=(512, 512), shape=(8192, 8192), plane_bytes=1) == 1024 * 1024
    assert span_bytes((676, 676), chunks=(512, 512), shape=(700, 900), plane_bytes=1) == 700 * 900
    # slices read whole (one chunk each): the whole image, however many blocks are computed at once
    whole = 600 * 800 * 30
    assert cache_bytes((100, 100), chunks=(600, 800), shape=(600, 800), plane_bytes=30, workers=4) == whole
    assert cache_bytes((100, 100), chunks=(32, 32), shape=(600, 800), plane_bytes=1, workers=3) == 3 * 160 * 160


def _input(shape=(3, 96, 160), chunks=(1, 32, 32)):
    rng = np.random.default_rng(1)
    return da.from_array(rng.integers(0, 4000, shape, dtype=np.uint16), chunks=chunks)


def test_input_chunks_are_the_arrays_chunks_read_once_while_they_fit():
    x = _input()
    chunk = 32 * 32 * 2
    reader = InputChunks(x, max_bytes=4 * chunk)
    keys = [(x.name, 0, 0, 0), (x.name, 1, 2, 3), (x.name, 2, 1, 4)]
    got = reader.read(keys)
    for key, value in zip(keys, got):
        _, k, i, j = key
        np.testing.assert_array_equal(value, x.blocks[k, i, j].compute())
    assert reader.read(keys[:2])[1] is got[1] and reader.reads == 3  # hits: not read again
    reader.read([(x.name, 0, i, 0) for i in range(3)])  # 2 more: the least recently used goes
    assert reader.reads == 5 and reader.held_peak <= 4 * chunk
    reader.read([keys[2]])
    assert reader.reads == 6  # it was the one dropped
    reader.clear()
    reader.read(keys[:1])
    assert reader.reads == 7
    copy = pickle.loads(pickle.dumps(reader))  # for workers: without its cached chunks
    assert copy.read(keys[1:2])[0].tobytes() == got[1].tobytes() and copy.reads == 8


def test_a_chunk_larger_than_the_cache_is_read_but_not_kept():
    x = _input()
    reader = InputChunks(x, max_bytes=100)
    reader.read([(x.name, 0, 0, 0)] * 2)
    assert reader.reads == 2 and reader.held_peak == 0


class _InputHeld(Callback):
    """The most bytes of the input's chunks dask's scheduler held at once."""

    def __init__(self, name):
        super().__init__()
        self.name, self.most, self.lock = name, 0, threading.Lock()

    def _posttask(self, key, value, dsk, state, worker_id):
        held = sum(v.nbytes for k, v in list(state["cache"].items()) if isinstance(k, tuple) and k[0] == self.name)
        with self.lock:
            self.most = max(self.most, held)


def test_a_tiled_write_keeps_input_chunks_for_its_tiles_only_not_for_the_image_width(tmp_path):
    """Given as dask dependencies, each chunk stayed in memory until the last tile reading it had
    run: about a band of chunk rows as wide as the image (here 12x the reader's cache)."""
    x = _input((3, 128, 2048))
    with dask.config.set(num_workers=2):
        lazy = nf.fuse(x, "focus_measure", chunks=32)
        reader = lazy.input_chunks
        assert reader is not None
        held = _InputHeld(reader.name)
        with held:
            io.write_lazy(lazy, tmp_path / "out.zarr")
    want = nf.fuse(x.compute(), "focus_measure")
    import zarr

    group = zarr.open_group(str(tmp_path / "out.zarr"), mode="r")
    np.testing.assert_array_equal(group["fused"][...], want.fused)
    np.testing.assert_array_equal(group["labels"][...], want.labels)
    band = 96 * 2048 * 3 * 2  # three chunk rows (the blocks of one tile row) across the image
    assert held.most + reader.held_peak <= reader.max_bytes < band / 10
    assert reader.held_peak > 0 and reader._bytes == 0  # used, and emptied when the write ended
    assert reader.reads < 4 * x.npartitions  # each chunk read a few times, not once per tile
