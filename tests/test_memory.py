"""Predicting memory before an untiled fusion: estimate, available memory, automatic tiling or a clear error."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest

import napari_fusion as nf
from napari_fusion import memory
from napari_fusion.errors import FusionInputError
from napari_fusion.ops import tiles


def _stack(n=3, h=64, w=64, c=1, seed=0):
    rng = np.random.default_rng(seed)
    shape = (n, h, w) if c == 1 else (n, h, w, c)
    return rng.integers(0, 4000, shape, dtype=np.uint16)


@pytest.mark.parametrize(
    "text, value",
    [("123", 123), ("2G", 2 * 2**30), ("512M", 512 * 2**20), ("1.5GiB", int(1.5 * 2**30)), ("800kb", 800 * 1024)],
)
def test_parse_size(text, value):
    assert memory.parse_size(text) == value


def test_available_memory_env_override_and_detection(monkeypatch):
    monkeypatch.setenv(memory.ENV_VAR, "3G")
    assert memory.available_memory() == 3 * 2**30
    monkeypatch.setenv(memory.ENV_VAR, "lots")
    with pytest.raises(FusionInputError, match=memory.ENV_VAR):
        memory.available_memory()
    monkeypatch.delenv(memory.ENV_VAR)
    assert 0 < memory.available_memory() < 2**60


def test_a_limit_set_by_the_user_caps_the_whole_process(monkeypatch):
    """Detected memory excludes what the process holds; a limit the user sets includes it, so more
    is kept free of it (the interpreter and torch take ~400 MiB)."""
    monkeypatch.delenv(memory.ENV_VAR, raising=False)
    assert memory.headroom() == memory.HEADROOM_BYTES
    monkeypatch.setenv(memory.ENV_VAR, "1.5G")
    assert memory.headroom() == memory.LIMIT_HEADROOM_BYTES >= 400 * 2**20
    with memory.limited_to(None):
        assert memory.headroom() == memory.LIMIT_HEADROOM_BYTES
    monkeypatch.delenv(memory.ENV_VAR)
    with memory.limited_to("2G"):
        assert memory.available_memory() == 2 * 2**30 and memory.headroom() == memory.LIMIT_HEADROOM_BYTES
        assert memory.ENV_VAR not in os.environ  # nothing process-wide
        seen = []
        other = threading.Thread(target=lambda: seen.append(memory.headroom()))
        other.start()
        other.join()
        assert seen == [memory.HEADROOM_BYTES]  # another thread is not limited
    assert memory.headroom() == memory.HEADROOM_BYTES


def test_input_geometry_layouts():
    g = memory.input_geometry
    assert g(np.zeros((4, 5, 6), np.uint16)) == (4, 5, 6, 1, np.dtype(np.uint16))
    assert g(np.zeros((4, 5, 6, 3), np.uint8)) == (4, 5, 6, 3, np.dtype(np.uint8))
    assert g(np.zeros((5, 6, 4), np.uint8), stack_axis=-1) == (4, 5, 6, 1, np.dtype(np.uint8))
    assert g(np.zeros((3, 4, 5, 6), np.uint8), stack_axis=1, channel_axis=0) == (4, 5, 6, 3, np.dtype(np.uint8))
    assert g([np.zeros((5, 6)), np.zeros((5, 6))]) == (2, 5, 6, 1, np.dtype(np.float64))
    assert g([np.zeros((5, 6)), np.zeros((5, 6, 3))], mixed_colour=True)[3] == 3
    assert g("not images") is None and g([[1, 2], [3, 4]]) is None and g(np.zeros((5, 6))) is None


def test_estimate_scales_and_check_fits():
    small = memory.estimate_peak_bytes(4, 512, 512, 1, np.uint16, "average")
    assert memory.estimate_peak_bytes(8, 512, 512, 1, np.uint16, "average") > 1.7 * small
    # a method that streams its slices grows by the input and its outputs, not by its working set
    e4, e8 = (memory.estimate_peak_bytes(n, 512, 512, 1, np.uint16, "focus_measure") for n in (4, 8))
    assert e8 - e4 == 4 * 512 * 512 * 2
    # the report's case: 10 x 12000 x 12000 uint16 needs over 10 GiB
    big = memory.estimate_peak_bytes(10, 12000, 12000, 1, np.uint16, "focus_measure")
    assert big > 10 * 2**30
    with pytest.raises(FusionInputError) as err:
        memory.check_fits(10, 12000, 12000, 1, np.uint16, "focus_measure", available=8 * 2**30)
    msg = str(err.value)
    assert "GiB" in msg and "8.00 GiB" in msg and "chunks=1024" in msg and "--chunks 1024" in msg
    assert memory.check_fits(2, 64, 64, 1, np.uint8, "average", available=2**34) > 0


def test_tileable_method_switches_to_tiles_with_the_same_result(device, monkeypatch):
    x = _stack()
    monkeypatch.delenv(memory.ENV_VAR, raising=False)
    want = nf.fuse(x, "focus_measure", device=device)
    monkeypatch.setenv(memory.ENV_VAR, "1")  # nothing fits: fuse must tile
    with pytest.warns(RuntimeWarning, match="tile by tile"):
        got = nf.fuse(x, "focus_measure", device=device)
    assert isinstance(got.fused, np.ndarray) and got.fused.dtype == want.fused.dtype
    np.testing.assert_array_equal(got.fused, want.fused)
    np.testing.assert_array_equal(got.labels, want.labels)
    np.testing.assert_array_equal(got.depth, want.depth)


def test_global_method_is_refused_without_allocating(device, monkeypatch):
    """li2018_vgg19 with no padding for its FFT split is global (its borders wrap around)."""
    monkeypatch.setenv(memory.ENV_VAR, "1")
    spec = nf.get_method("li2018_vgg19")
    assert spec.halo_for({**spec.defaults(), "pad": 0}) is None
    x = _stack()
    need = memory.estimate_peak_bytes(3, 64, 64, 1, np.uint16, "li2018_vgg19")
    called = []
    monkeypatch.setattr("napari_fusion.api.prepare", lambda *a, **k: called.append(1))
    with pytest.raises(FusionInputError) as err:
        nf.fuse(x, "li2018_vgg19", device=device, pad=0)
    msg = str(err.value)
    assert f"{need / 2**20:.1f} MiB" in msg and "global" in msg and "chunks" in msg
    assert not called  # refused before the stack was converted
    # a list input gets the same treatment
    with pytest.raises(FusionInputError, match="global.*chunks"):
        nf.fuse([x[0], x[1]], "li2018_vgg19", device=device, pad=0)


def test_fits_means_unchanged_path(device, monkeypatch):
    monkeypatch.setenv(memory.ENV_VAR, "64G")
    res = nf.fuse(_stack(), "average", device=device)
    assert res.weights is not None  # the in-memory path (tiled results carry no weights)


def test_estimate_is_close_to_the_measured_peak():
    n, h, w = 4, 1024, 1024
    measured = memory.measure_peak_rss(n, h, w, 1, np.uint16, "focus_measure", timeout=120)
    estimate = memory.estimate_peak_bytes(n, h, w, 1, np.uint16, "focus_measure")
    assert measured / 1.5 <= estimate <= measured * 1.5, (estimate, measured)


def test_a_two_input_method_is_estimated_by_its_pair_not_by_its_stack_depth():
    """Folded methods fuse one pair at a time: from 10 to 40 slices their estimate grows by the
    per-slice arrays (input, float32 stack, composed weights), not by 4x their pair's work; and a
    real fold's peak is within 1.5x of it."""
    from napari_fusion._engine import fold_height

    # the fold's pending results: memory counts a tree's levels without importing the engine (torch)
    for n in range(2, 70):
        pair = memory.PairWorkingSet(0.0, 0.0, 0.0)
        assert pair.bytes(n, 1, 1) - 4 * n - (8 * n if n > 2 else 0) == 12 * max(fold_height(n), 1)
    for method in memory.PAIR_WORKING_SETS:
        e10, e40 = (memory.estimate_peak_bytes(n, 1024, 1024, 1, np.uint16, method) for n in (10, 40))
        per_slice = 1024 * 1024 * (2 + 4 + 8 + 4)  # input, float32 stack, composed weights (2), output weights
        assert e40 - e10 <= 30 * per_slice * 1.05 and e40 < 3 * e10, method
    n, h, w = 5, 640, 640
    measured = memory.measure_peak_rss(n, h, w, 1, np.uint16, "veshki_cdl", timeout=300)
    estimate = memory.estimate_peak_bytes(n, h, w, 1, np.uint16, "veshki_cdl")
    assert measured / 1.5 <= estimate <= measured * 1.5, (estimate, measured)


def test_csc_ivfn_streaming_its_sources_stays_within_its_estimate():
    """csc_ivfn codes three 640^2 sources again rather than keeping their codes: the real peak
    stays under the streamed model (which sizes its tiles), and the model is not far above it.
    Holding one more ``(C, H, W)`` map (a source's codes while the next is coded: 50 MB here)
    breaks the first bound."""
    n, h, w = 3, 640, 640
    assert not memory.SOURCE_STREAMING["csc_ivfn"].keeps(n, h * w)
    measured = memory.measure_peak_rss(n, h, w, 1, np.uint16, "csc_ivfn", timeout=300)
    estimate = memory.estimate_peak_bytes(n, h, w, 1, np.uint16, "csc_ivfn")
    assert measured <= estimate * 1.05 and estimate <= measured * 1.5, (estimate, measured)


def test_every_tile_hands_freed_memory_back(monkeypatch):
    """A tiled run trims the C allocator after every tile (glibc kept the tiles' freed tensors in
    its arenas, and a long run's resident size crept up by hundreds of MiB); where the C library has
    no malloc_trim, nothing is called and nothing fails."""
    calls = []
    monkeypatch.setattr(tiles, "_malloc_trim", lambda: calls.append)
    images = np.random.default_rng(0).random((3, 64, 96), dtype=np.float32)
    lazy = nf.fuse(images, "focus_measure", chunks=32, device="cpu")
    lazy.compute()
    assert len(calls) >= lazy.grid.n_tiles == 6
    assert set(calls) == {0}
    monkeypatch.setattr(tiles, "_malloc_trim", lambda: None)
    tiles.release_freed_memory()  # no C allocator to trim: a no-op


def test_tiled_runs_keep_large_allocations_mapped(monkeypatch):
    """A tiled run asks glibc (once per process) to map every allocation of 4 MiB or more on its
    own, so freed tiles do not fragment its heaps (a tiled run's peak grew pass after pass)."""
    calls = []
    monkeypatch.setattr(tiles, "_mallopt", lambda: lambda *a: calls.append(a) or 1)
    tiles._set_mmap_threshold.cache_clear()
    try:
        images = np.random.default_rng(0).random((3, 64, 96), dtype=np.float32)
        nf.fuse(images, "focus_measure", chunks=32, device="cpu").compute()
        # M_MMAP_THRESHOLD and M_TRIM_THRESHOLD (heaps keep 16 MiB at their top), once for the six tiles
        assert calls == [(-3, 4 * 2**20), (-1, 16 * 2**20)]
        assert tiles.large_allocations_mapped() is True
        assert tiles.keep_large_allocations_mapped() is True
        tiles._set_mmap_threshold.cache_clear()
        monkeypatch.setattr(tiles, "_mallopt", lambda: None)
        assert tiles.keep_large_allocations_mapped() is False  # no glibc: nothing done, nothing fails
        assert tiles.large_allocations_mapped() is False
    finally:
        tiles._set_mmap_threshold.cache_clear()


def test_malloc_trim_is_found_on_glibc():
    import platform

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("not glibc")
    assert callable(tiles._malloc_trim())
    tiles.release_freed_memory()
    assert callable(tiles._mallopt())


def test_fit_tile_to_memory_takes_the_largest_tile_whose_blocks_fit():
    def fit(room, tile=(1024, 1024), align=1, workers=2):
        return memory.fit_tile_to_memory(
            tile,
            halo=100,
            align=align,
            shape=(8192, 8192),
            n=10,
            channels=1,
            dtype=np.uint16,
            method="csc_ivfn",
            workers=workers,
            room=room,
        )

    def need(t, workers=2):
        return workers * memory.estimate_peak_bytes(10, t + 200, t + 200, 1, np.uint16, "csc_ivfn", tiled=True)

    assert fit(need(1024)) == (1024, 1024)  # fits: unchanged
    assert fit(need(1024) - 1) == (1008, 1008)  # not halved: the largest multiple of 16 that fits
    assert fit(need(600)) == (592, 592) and fit(need(592) - 1) == (576, 576)
    assert fit(need(600), tile=(600, 600)) == (600, 600)  # fits: unchanged, whatever its size
    assert fit(need(600) - 1, align=24) == (576, 576)  # multiples of align and 16
    assert fit(need(256)) == (256, 256)
    assert fit(need(256, workers=1), workers=1) == (256, 256)
    assert fit(0) == (memory.MIN_FITTED_TILE,) * 2  # never below the floor
    assert fit(0, tile=(1024, 96)) == (memory.MIN_FITTED_TILE, 96)  # a side already small is kept
    assert fit(need(256) - 1, tile=(1000, 1000), align=24) == (240, 240)  # 1000 -> 480 -> 240
    assert fit(0, align=512) == (512, 512)


def test_tiles_too_large_for_memory_shrink_with_a_warning(device, monkeypatch):
    """A tile that, two at a time, needs more memory than is available is split (same result)."""
    x = _stack(3, 512, 512)
    monkeypatch.delenv(memory.ENV_VAR, raising=False)
    want = nf.fuse(x, "focus_measure", device=device)
    monkeypatch.setattr(memory, "tiles_at_once", lambda: 2)
    spec = nf.get_method("focus_measure")
    side = 256 + 2 * spec.halo_for(spec.defaults())
    need_256 = 2 * memory.estimate_peak_bytes(3, side, side, 1, x.dtype, "focus_measure", tiled=True)
    monkeypatch.setenv(memory.ENV_VAR, str(memory.LIMIT_HEADROOM_BYTES + need_256))
    with pytest.warns(RuntimeWarning, match=r"512x512 tiles .* fusing in 256x256 tiles instead"):
        lazy = nf.fuse(x, "focus_measure", device=device, chunks=512)
    assert lazy.fused.chunks[0] == (256, 256)
    got = lazy.compute()
    np.testing.assert_array_equal(got.fused, want.fused)
    np.testing.assert_array_equal(got.labels, want.labels)


def test_tiles_fitted_to_memory_count_the_input_chunks_they_read(device, monkeypatch):
    """A dask input's chunks are read by the tiles through a cache, counted when the tiles are
    fitted (a numpy input's are views of memory already held, and are not)."""
    import dask.array as da

    x = da.from_array(_stack(3, 1024, 1024), chunks=(1, 64, 64))
    monkeypatch.setattr(memory, "tiles_at_once", lambda: 2)
    spec = nf.get_method("focus_measure")
    costs = dict(halo=spec.halo_for(spec.defaults()), shape=(1024, 1024), n=3, channels=1, dtype=x.dtype,
                 method="focus_measure", workers=2)  # fmt: skip
    with_cache = memory.tiles_need((256, 256), **costs, input_chunks=(64, 64))
    # two blocks' chunks: 284 px blocks span at most 6 chunks of 64 px each way
    assert with_cache - memory.tiles_need((256, 256), **costs) == 2 * 3 * 2 * 384 * 384
    monkeypatch.setenv(memory.ENV_VAR, str(memory.LIMIT_HEADROOM_BYTES + with_cache))
    with pytest.warns(RuntimeWarning, match=r"512x512 tiles .* fusing in 256x256 tiles instead"):
        lazy = nf.fuse(x, "focus_measure", device=device, chunks=512)
    assert lazy.input_chunks is not None and lazy.input_chunks.max_bytes == 2 * 3 * 2 * 384 * 384
    np.testing.assert_array_equal(lazy.compute().fused, nf.fuse(x.compute(), "focus_measure", device=device).fused)


def test_tiles_at_once_follows_dask_num_workers():
    import os

    import dask

    with dask.config.set(num_workers=3):
        assert memory.tiles_at_once() == 3
    with dask.config.set(num_workers=None):
        assert memory.tiles_at_once() == max(1, os.cpu_count() or 1)


def test_csc_ivfn_estimate_follows_its_source_streaming():
    """csc_ivfn fuses its codes one source at a time: the estimate grows little with the number
    of sources, and its code cache is the method's own limit."""
    from napari_fusion.methods import csc_ivfn

    model = memory.SOURCE_STREAMING["csc_ivfn"]
    assert (model.cap, model.sources) == (csc_ivfn.KEEP_CODES_BYTES, csc_ivfn.KEEP_CODES_SOURCES)

    def est(n, side):
        return memory.estimate_peak_bytes(n, side, side, 1, np.uint16, "csc_ivfn")

    assert est(10, 1000) < 1.5 * est(2, 1000)  # the old all-codes model: 5x
    assert est(2, 200) > 2 * 200 * 200 * 64 * 4  # small: every source's codes kept, and counted
    # large: nothing kept from 3 sources on; seven more cost under a quarter of what they did
    # when every source's codes were held (143 float32 values per source pixel)
    assert est(10, 1000) - est(3, 1000) < 7 * 1000 * 1000 * 143 * 4 / 4
    assert est(3, 1000) < est(3, 500) * 4  # 3 x 500^2 codes are kept (192 MB), 3 x 1000^2 are not
    assert est(2, 1000) > est(2, 500) * 4 - 1  # a pair's codes are always kept
