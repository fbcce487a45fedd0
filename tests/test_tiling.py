"""Lazy, tiled fusion: tiled == untiled, global steps, validation, OOM retry, progress/cancel."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools

import dask.array as da
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.ndimage import gaussian_filter

import napari_fusion as nf
from napari_fusion import tiling
from napari_fusion.errors import FusionCancelled, FusionError, FusionInputError
from napari_fusion.focalstack.pipeline import OWN_HEIGHT_METHODS
from napari_fusion.registry import get_method

SETTINGS = settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny tiles on a shared machine: torch's intra-op threads only add contention."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _stack(seed: int, n: int, h: int, w: int, colour: bool = False) -> np.ndarray:
    """A focal-stack-like float32 stack: one texture, blurred differently per slice and region."""
    rng = np.random.default_rng(seed)
    shape = (h, w, 3) if colour else (h, w)
    base = rng.random(shape).astype(np.float32)
    sig = (1, 1, 0) if colour else (1, 1)
    out = []
    for _ in range(n):
        s = rng.uniform(0, 2.5)
        sl = gaussian_filter(base, [s, s, 0] if colour else s)
        mask = rng.random((h, w)) < 0.5
        mask = gaussian_filter(mask.astype(float), 4) > 0.5
        sharp = gaussian_filter(base, [0.3 * v for v in sig] if colour else 0.3)
        sl = np.where(mask[..., None] if colour else mask, sharp, sl)
        out.append(sl + 0.01 * rng.random(shape))
    return np.stack(out).astype(np.float32)


def _compare(images, method, chunks, *, tol=1e-5, **params):
    ref = nf.fuse(images, method, device="cpu", **params)
    lazy = nf.fuse(images, method, device="cpu", chunks=chunks, **params)
    assert isinstance(lazy.fused, da.Array)
    got = lazy.compute(scheduler="synchronous")
    assert got.fused.dtype == ref.fused.dtype and got.fused.shape == ref.fused.shape
    np.testing.assert_allclose(got.fused.astype(np.float64), ref.fused.astype(np.float64), rtol=0, atol=tol)
    if ref.labels is not None:
        assert got.labels.dtype == ref.labels.dtype
        np.testing.assert_array_equal(got.labels, ref.labels)
        if method in OWN_HEIGHT_METHODS:  # a weighted (float) height: equal to float rounding
            np.testing.assert_allclose(got.depth, ref.depth, rtol=0, atol=1e-5)
        else:
            np.testing.assert_array_equal(got.depth, ref.depth)
    return lazy, got, ref


sizes = st.integers(8, 56)
tiles = st.one_of(st.integers(8, 40), st.tuples(st.integers(8, 40), st.integers(8, 40)))


@SETTINGS
@given(
    seed=st.integers(0, 10_000),
    n=st.integers(2, 4),
    h=sizes,
    w=sizes,
    chunks=tiles,
    measure=st.sampled_from(["sml", "variance", "tenengrad"]),
    window=st.integers(0, 4),
    smooth=st.sampled_from([0.0, 0.7, 2.0]),
    consistency=st.integers(0, 3),
    blend=st.sampled_from([0.0, 1.0]),
)
def test_focus_measure_tiled_equals_untiled(seed, n, h, w, chunks, measure, window, smooth, consistency, blend):
    images = _stack(seed, n, h, w)
    _compare(
        images,
        "focus_measure",
        chunks,
        measure=measure,
        window=window,
        smooth=smooth,
        consistency=consistency,
        blend=blend,
    )


@SETTINGS
@given(
    seed=st.integers(0, 10_000),
    n=st.integers(2, 4),
    h=st.integers(8, 64),
    w=st.integers(8, 64),
    chunks=tiles,
    colour=st.booleans(),
    smooth=st.sampled_from([0.0, 1.5, 4.0]),
    softness=st.sampled_from([0.0, 2.0]),
    feather=st.sampled_from([0.0, 1.5]),
    levels=st.integers(1, 3),
    prefilter=st.sampled_from([0.0, 1.0]),
)
def test_focus_pyramid_tiled_equals_untiled(
    seed, n, h, w, chunks, colour, smooth, softness, feather, levels, prefilter
):
    params = dict(smooth=smooth, softness=softness, feather=feather, levels=levels, prefilter=prefilter)
    lazy, _, _ = _compare(_stack(seed, n, h, w, colour), "focus_pyramid", chunks, **params)
    assert all(e % (2 ** (levels - 1)) == 0 for e in lazy.grid.row_edges[:-1] + lazy.grid.col_edges[:-1])


@SETTINGS
@given(seed=st.integers(0, 10_000), n=st.integers(2, 4), h=sizes, w=sizes, chunks=tiles, colour=st.booleans())
def test_average_tiled_equals_untiled(seed, n, h, w, chunks, colour):
    _compare(_stack(seed, n, h, w, colour), "average", chunks)


@SETTINGS
@given(
    seed=st.integers(0, 10_000),
    n=st.integers(2, 3),
    h=st.integers(8, 64),
    w=st.integers(8, 64),
    chunks=tiles,
    r1=st.integers(1, 6),
    base_radius=st.integers(1, 4),
    saliency_radius=st.integers(1, 3),
    r2=st.integers(1, 3),
)
def test_gff_tiled_equals_untiled(seed, n, h, w, chunks, r1, base_radius, saliency_radius, r2):
    images = _stack(seed, n, h, w)
    _compare(
        images,
        "gff",
        chunks,
        r1=r1,
        base_radius=base_radius,
        saliency_radius=saliency_radius,
        r2=r2,
        saliency_sigma=1.0,
    )


@SETTINGS
@given(
    seed=st.integers(0, 10_000),
    h=st.integers(16, 64),
    w=st.integers(16, 64),
    chunks=tiles,
    levels=st.integers(1, 4),
    method=st.sampled_from(["laplacian_pyramid", "mertens"]),
)
def test_pyramid_with_fixed_levels_tiles_on_an_aligned_grid(seed, h, w, chunks, levels, method):
    images = _stack(seed, 3, h, w)
    lazy, _, _ = _compare(images, method, chunks, levels=levels)
    assert all(e % (2 ** (levels - 1)) == 0 for e in lazy.grid.row_edges[:-1] + lazy.grid.col_edges[:-1])


def test_colour_uint16_default_parameters_on_a_larger_image():
    images = (_stack(5, 3, 150, 170, colour=True) * 40000).astype(np.uint16)
    # default gff halo (134 px) and focus_measure defaults; uint16 rounding may differ by one count
    _compare(images, "gff", 64, tol=1)
    _compare(images, "focus_measure", (48, 80), tol=1)


def test_a_too_small_halo_makes_seams(device):
    """The equality tests above can fail: with no halo, tile borders change the result."""
    images = _stack(3, 3, 64, 64)
    ref = nf.fuse(images, "focus_measure", device=device)
    bad = tiling.fuse_lazy(images, "focus_measure", device=device, chunks=16, halo=0).compute()
    assert np.abs(bad.fused - ref.fused).max() > 1e-3
    assert (bad.labels != ref.labels).any()


@pytest.fixture
def global_method():
    """A method that declares itself global (halo None): the image minus its own mean, plus 0.5."""
    from napari_fusion.registry import MethodOutput, temporary_method

    def run(stack, *, ctx):
        return MethodOutput(fused=stack[0] - stack[0].mean() + 0.5, labels=torch.zeros(stack.shape[-2:]).long())

    with temporary_method(
        run, name="_global", title="t", tasks=("multi-focus",), mode="nway", outputs=("fused", "labels"), halo=None
    ) as spec:
        yield spec.name


def test_global_method_is_refused_unless_one_tile(device, global_method):
    images = _stack(1, 3, 48, 40)
    with pytest.raises(FusionInputError, match="global.*chunks >= the image size"):
        nf.fuse(images, global_method, chunks=16)
    with pytest.raises(FusionInputError, match="global"):
        nf.fuse(images, global_method, chunks=(48, 16))
    one = nf.fuse(images, global_method, chunks=64, device=device)
    assert one.grid.n_tiles == 1
    ref = nf.fuse(images, global_method, device=device)
    np.testing.assert_allclose(one.compute().fused, ref.fused, atol=1e-6)


def test_pyramids_of_automatic_depth_tile_exactly(device):
    """levels=0: the depth follows the whole image; the coarse levels are a whole-image step and
    tiles compute the finest ones (on a 16-pixel grid), so the result is the untiled one, and the
    untiled split equals the pyramid with the same depth given explicitly, bit for bit."""
    from napari_fusion.ops.pyramids import pyramid_levels

    images = _stack(4, 3, 150, 133, colour=True)
    for name in ("laplacian_pyramid", "mertens"):
        ref = nf.fuse(images, name, device=device)
        explicit = nf.fuse(images, name, device=device, levels=pyramid_levels(150, 133))
        np.testing.assert_array_equal(ref.fused, explicit.fused)
        lazy = nf.fuse(images, name, device=device, chunks=40)
        assert lazy.grid.tile == (48, 48) and lazy.grid.n_tiles == 12  # 40 rounded up to the 16-pixel grid
        got = lazy.compute()
        np.testing.assert_array_equal(got.fused, ref.fused)
        np.testing.assert_array_equal(got.labels, ref.labels)


def test_global_intensity_statistics_come_from_the_whole_stack():
    """Tiles see only part of the range; the scaling must still be the global one."""
    images = _stack(2, 3, 40, 60)
    images[:, :20] *= 0.1  # the top half is dark: per-tile min/max would rescale it
    images = (images * 1000 + 5).astype(np.int32)
    _compare(images, "focus_measure", 20, tol=0)
    _compare(images, "average", 20, tol=0)


def test_dask_input_uses_its_own_chunks_and_stays_lazy(device):
    images = _stack(4, 3, 60, 50)
    calls = []
    spec = get_method("focus_measure")

    def counting(stack, *, ctx, **p):
        calls.append(tuple(stack.shape[-2:]))
        return spec.run(stack, ctx=ctx, **p)

    probe = dataclasses.replace(spec, run=counting)
    x = da.from_array(images, chunks=(1, 25, 20))
    lazy = tiling.fuse_lazy(x, probe, device=device)
    assert calls == []  # nothing fused yet
    assert lazy.grid.tile == (25, 20) and lazy.grid.n_tiles == 9
    assert lazy.fused.chunks == ((25, 25, 10), (20, 20, 10))
    lazy.fused[:25, :20].compute(scheduler="synchronous")
    assert len(calls) == 1  # only the tile that was asked for
    ref = nf.fuse(images, "focus_measure", device=device)
    np.testing.assert_array_equal(nf.fuse(x, "focus_measure", device=device).compute().fused, ref.fused)


def test_list_of_dask_arrays_and_axes(device):
    images = _stack(6, 3, 32, 40, colour=True)
    ref = nf.fuse(images, "average", device=device)
    lst = [da.from_array(a, chunks=16) for a in images]
    np.testing.assert_allclose(nf.fuse(lst, "average", device=device).fused.compute(), ref.fused, atol=1e-6)
    moved = da.from_array(np.moveaxis(images, [0, 3], [2, 0]))  # (C, H, N, W)
    got = nf.fuse(moved, "average", stack_axis=2, channel_axis=0, device=device, chunks=16)
    np.testing.assert_allclose(got.fused.compute(), ref.fused, atol=1e-6)


def _message(func):
    with pytest.raises(FusionInputError) as info:
        func()
    return str(info.value)


@pytest.mark.parametrize(
    "images",
    [
        [np.zeros((9, 9), np.uint8), np.zeros((9, 9), np.uint16)],
        [np.zeros((9, 9, 4), np.uint8)] * 2,
        [np.zeros((9, 9), np.uint8), np.zeros((9, 9, 3), np.uint8)],
        [np.zeros((9, 9), np.uint8), np.zeros((9, 10), np.uint8)],
        [np.zeros((5, 5), np.uint8)] * 2,
        [np.zeros((9, 9), bool)] * 2,
        [np.zeros((9, 9), np.uint8)],
        [np.zeros((9, 9), np.float32), np.full((9, 9), np.nan, np.float32)],
    ],
)
def test_lazy_validation_gives_the_in_memory_errors(images):
    eager = _message(lambda: nf.fuse(images))
    lazy = _message(lambda: nf.fuse([da.from_array(a) for a in images]))
    assert lazy == eager


def test_lazy_validation_of_axes_chunks_and_positions():
    x = da.zeros((3, 16, 16), dtype=np.uint8)
    assert _message(lambda: nf.fuse(x, stack_axis=4)) == _message(
        lambda: nf.fuse(np.zeros((3, 16, 16), np.uint8), stack_axis=4)
    )
    assert "at least two" in _message(lambda: nf.fuse(da.zeros((16, 16))))
    assert "chunks" in _message(lambda: nf.fuse(x, chunks=0))
    assert "chunks" in _message(lambda: nf.fuse(x, chunks="big"))
    assert "z_positions has 2 values for 3 images" in _message(lambda: nf.fuse(x, z_positions=[0, 1]))
    assert "unknown parameter" in _message(lambda: nf.fuse(x, bogus=1))
    assert "unknown device" in _message(lambda: nf.fuse(x, device="tpu"))


def test_metadata_errors_come_before_any_read(global_method):
    """A graph that raises when computed is never run for a metadata error."""

    def boom(block):
        raise AssertionError("pixels were read")

    bad = da.zeros((3, 16, 16, 4), dtype=np.uint8, chunks=8).map_blocks(boom, dtype=np.uint8)
    with pytest.raises(FusionInputError, match="RGBA"):
        nf.fuse(bad)
    bad = da.zeros((3, 16, 16), dtype=np.uint8, chunks=8).map_blocks(boom, dtype=np.uint8)
    with pytest.raises(FusionInputError, match="unknown parameter"):
        nf.fuse(bad, bogus=2)
    with pytest.raises(FusionInputError, match="global"):
        nf.fuse(bad, global_method, chunks=8)


def test_depth_uses_z_positions(device):
    images = _stack(8, 4, 40, 40)
    z = [0.5, 1.0, 2.5, 4.0]
    lazy = nf.fuse(images, "focus_measure", z_positions=z, chunks=16, device=device).compute()
    np.testing.assert_array_equal(lazy.depth, np.asarray(z, np.float32)[lazy.labels])
    # the default's depth is its own fractional height mapped onto z, tiled as untiled
    soft = nf.fuse(images, z_positions=z, chunks=16, device=device).compute()
    whole = nf.fuse(images, z_positions=z, device=device)
    np.testing.assert_allclose(soft.depth, np.interp(whole.extras["index"], np.arange(4), z), rtol=1e-5, atol=1e-4)
    assert soft.depth.min() >= 0.5 and soft.depth.max() <= 4.0


def _oom_spec(limit_pixels: int, calls: list):
    spec = get_method("focus_measure")

    def fragile(stack, *, ctx, **p):
        h, w = stack.shape[-2:]
        calls.append((h, w))
        if h * w > limit_pixels:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (fake)")
        return spec.run(stack, ctx=ctx, **p)

    return dataclasses.replace(spec, run=fragile)


def test_out_of_memory_retries_with_smaller_tiles(device):
    images = _stack(9, 3, 150, 140)
    calls = []
    limit = 80 * 80  # pixels of a block (core + halo) the fake device can hold
    spec = _oom_spec(limit, calls)
    lazy = tiling.fuse_lazy(images, spec, device=device, chunks=(150, 140))  # one big tile
    got = lazy.compute(scheduler="synchronous")
    ref = nf.fuse(images, "focus_measure", device=device)
    np.testing.assert_array_equal(got.fused, ref.fused)
    np.testing.assert_array_equal(got.labels, ref.labels)
    assert calls[0] == (150, 140)  # the first try, which failed
    fitted = [c for c in calls if c[0] * c[1] <= limit]
    assert len(fitted) >= 4  # it really finished in sub-tiles (first 2x2, then smaller where needed)
    assert len(calls) > len(fitted)


def test_out_of_memory_gives_up_with_a_clear_error(device):
    images = _stack(9, 2, 64, 64)
    spec = _oom_spec(1, [])
    with pytest.raises(FusionError, match="out of memory .* even for a tile"):
        tiling.fuse_lazy(images, spec, device=device, chunks=64).compute(scheduler="synchronous")


def test_other_errors_are_not_retried():
    spec = dataclasses.replace(get_method("average"), run=lambda stack, *, ctx: (_ for _ in ()).throw(ValueError("x")))
    with pytest.raises(ValueError, match="x"):
        tiling.fuse_lazy(_stack(1, 2, 16, 16), spec, chunks=8).compute(scheduler="synchronous")


def test_progress_counts_tiles_and_cancel_stops_scheduling(device):
    images = _stack(10, 3, 64, 64)
    seen = []
    lazy = nf.fuse(images, chunks=16, device=device, progress=lambda d, t, m: seen.append((d, t, m)))
    lazy.compute(scheduler="synchronous")
    finished = [s for s in seen if ": " not in s[2]]  # the others are the method's reports from inside a tile
    assert [s[0] for s in finished] == list(range(1, 17)) and seen[-1][1] == 16 and seen[-1][2] == "tile 16/16"
    assert len(seen) > len(finished) and [s[0] for s in seen] == sorted(s[0] for s in seen)

    calls = []
    spec = get_method("focus_measure")

    def counting(stack, *, ctx, **p):
        calls.append(1)
        return spec.run(stack, ctx=ctx, **p)

    def cancel_after_three(done, total, message):
        if done >= 3:
            raise FusionCancelled("stop")

    lazy = tiling.fuse_lazy(images, dataclasses.replace(spec, run=counting), chunks=16, device=device)
    with pytest.raises(FusionCancelled):
        lazy.compute(progress=cancel_after_three, scheduler="synchronous")
    assert len(calls) == 3  # no tile was started after the cancel


def test_real_widefield_stack_tiled_equals_untiled(dataset):
    from napari_fusion.io import read_stack

    folder = dataset("focalstack/dapi_widefield/dapi")
    images = np.stack(read_stack(folder)[10:30])  # 20 planes of 201x101 uint16
    assert images.dtype == np.uint16
    _compare(images, "focus_measure", (64, 48), tol=1)
    _compare(images, "gff", 50, tol=1, r1=8, base_radius=5)


def test_real_rgb_pcb_stack_tiled_equals_untiled(dataset):
    from napari_fusion.io import read_stack

    folder = dataset("focalstack/pcb/pcb")
    images = np.stack([a[700:956, 500:756] for a in read_stack(folder)])  # 7 x 256x256 RGB uint8
    _compare(images, "focus_measure", 100, tol=1)


def test_outputs_computed_separately_fuse_each_tile_once(device):
    """napari computes the fused, decision and depth layers one by one: the tile cache makes
    that one fusion per tile, and never serves one fusion's tiles to another."""
    images = _stack(2, 3, 64, 64)
    calls = []
    spec = get_method("focus_measure")

    def counting(stack, *, ctx, **p):
        calls.append(1)
        return spec.run(stack, ctx=ctx, **p)

    probe = dataclasses.replace(spec, run=counting)
    lazy = tiling.fuse_lazy(images, probe, device=device, chunks=32)
    n = lazy.grid.n_tiles
    assert n == 4
    fused = lazy.fused.compute(scheduler="synchronous")
    labels = lazy.labels.compute(scheduler="threads")
    depth = lazy.depth.compute(scheduler="synchronous")
    assert len(calls) == n
    ref = nf.fuse(images, "focus_measure", device=device)
    np.testing.assert_allclose(fused, ref.fused, atol=1e-5)
    np.testing.assert_array_equal(labels, ref.labels)
    np.testing.assert_array_equal(depth, ref.depth)
    again = tiling.fuse_lazy(images, probe, device=device, chunks=32)
    again.fused.compute(scheduler="synchronous")
    assert len(calls) == 2 * n  # a new fusion of the same data is fused again


def test_outputs_computed_together_keep_no_tiles_in_the_cache(device, tmp_path):
    """compute(), write_lazy and iter_tiles need each tile once for all outputs: the cache (up to
    TILE_CACHE_BYTES held through a long run) keeps none of their tiles, and still serves the
    outputs napari computes one by one afterwards."""
    from napari_fusion.io import write_lazy

    images = _stack(2, 3, 64, 64)
    tiling.TILE_CACHE.clear()
    lazy = tiling.fuse_lazy(images, get_method("focus_measure"), device=device, chunks=32)
    lazy.compute()
    write_lazy(lazy, tmp_path / "out.zarr")
    list(lazy.iter_tiles())
    assert tiling.TILE_CACHE._bytes == 0
    before = tiling.TILE_CACHE.computed
    lazy.fused.compute(scheduler="synchronous")
    lazy.labels.compute(scheduler="synchronous")
    assert tiling.TILE_CACHE.computed - before == lazy.grid.n_tiles  # the separate computes still share tiles
    assert tiling.TILE_CACHE._bytes > 0


def _every_method() -> list[tuple[str, dict]]:
    """Every registered method, with its defaults; the pyramid methods, whose default depth follows
    the image size (global, refused in tiles: test_global_method_is_refused_unless_one_tile),
    with a fixed depth."""
    cases = []
    for spec in nf.list_methods():
        extra = {} if spec.halo_for(spec.defaults()) is not None else {"levels": 3}
        assert spec.halo_for({**spec.defaults(), **extra}) is not None, spec.name
        cases.append((spec.name, extra))
    return cases


#: fused-image tolerance per method, in the output's units (float inputs in [0, 1]); integer
#: outputs may also differ by one count where the float result sits on a rounding boundary
TILED_TOLERANCE = {"tiis2018_fcn": 1e-4, "csc_mefn": 1e-4, "csc_mefn_pyramid": 1e-4, "li2018_vgg19": 2e-5}
#: fraction of label pixels that may differ: near-ties of soft weights (argmax of weights that
#: differ by float rounding between a tile and the whole image)
LABEL_TOLERANCE = {"tiis2018_fcn": 0.002, "csc_mefn": 0.002, "csc_mefn_pyramid": 0.002, "li2018_vgg19": 0.02}


def _vgg_for_tests():
    """li2018_vgg19 without the ImageNet file: a small VGG-shaped network (same layers, so the
    same receptive field and strides)."""
    from napari_fusion.methods.li2018_vgg19 import untrained_network_for_tests
    from napari_fusion.nets.vgg19 import VGG19

    torch.manual_seed(0)
    return untrained_network_for_tests(VGG19(depth=21, widths=(6, 8, 8, 12, 12)).eval())


@pytest.mark.parametrize("name, extra", _every_method(), ids=[n for n, _ in _every_method()])
@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    n=st.integers(2, 3),
    h=st.integers(16, 48),
    w=st.integers(16, 48),
    chunks=tiles,
    colour=st.booleans(),
    dtype=st.sampled_from(["float32", "uint8", "uint16"]),
)
def test_every_method_tiled_equals_untiled(name, extra, seed, n, h, w, chunks, colour, dtype):
    """The lazy engine's contract for every registered method: tiled == untiled, for any image
    size, tile size, stack depth, grey/RGB and input dtype (whole-image steps included)."""
    spec = nf.get_method(name)
    if spec.mode == "pairwise" and n > 2 and name == "tiis2018_fcn":
        n = 2  # keep the network's runs short
    images = _stack(seed, n, h, w, colour)
    if dtype != "float32":
        images = np.rint(images.clip(0, 1) * np.iinfo(dtype).max).astype(dtype)
    tol = TILED_TOLERANCE.get(name, 1e-5)
    if dtype != "float32":
        tol = max(1.0, tol * np.iinfo(dtype).max)
    with _vgg_for_tests() if name == "li2018_vgg19" else contextlib.nullcontext():
        ref = nf.fuse(images, name, device="cpu", **extra)
        got = nf.fuse(images, name, device="cpu", chunks=chunks, **extra).compute(scheduler="synchronous")
    assert got.fused.dtype == ref.fused.dtype and got.fused.shape == ref.fused.shape
    np.testing.assert_allclose(got.fused.astype(np.float64), ref.fused.astype(np.float64), rtol=0, atol=tol)
    if ref.labels is not None:
        assert (got.labels != ref.labels).mean() <= LABEL_TOLERANCE.get(name, 0.0)


def test_iter_tiles_in_any_order_and_batch_equal_compute(device):
    images = _stack(2, 3, 70, 90)
    lazy = nf.fuse(images, "focus_measure", device=device, chunks=32)
    whole = lazy.compute()
    order = [(2, 2), (0, 1), (1, 0), (0, 0), (2, 0), (1, 1), (0, 2), (2, 1), (1, 2)]
    for batch in (1, 4):
        seen, fused = [], np.zeros_like(whole.fused)
        labels = np.zeros_like(whole.labels)
        for (rows, cols), planes in lazy.iter_tiles(order, batch=batch):
            seen.append((rows.start // 32, cols.start // 32))
            fused[rows, cols] = planes["fused"]
            labels[rows, cols] = planes["labels"]
        assert seen == order  # the order asked for (the widget: nearest the view centre first)
        np.testing.assert_array_equal(fused, whole.fused)
        np.testing.assert_array_equal(labels, whole.labels)


def test_tiles_report_from_inside_and_are_cancelled_there(device):
    """A method's own progress reports reach the callback from inside each tile (local
    schedulers), and a callback that raises stops the tile at that report."""
    from napari_fusion.registry import MethodOutput, temporary_method

    reached = []

    def run(stack, *, ctx):
        for i in range(4):
            reached.append(i)
            ctx.report(i + 1, 4, f"step {i + 1}")
        return MethodOutput(fused=stack.mean(0), labels=torch.zeros(stack.shape[-2:]).long())

    images = _stack(3, 2, 40, 40)
    with temporary_method(run, name="_reports", title="t", tasks=("multi-focus",), mode="nway", halo=0):
        lazy = nf.fuse(images, "_reports", device=device, chunks=20)
        seen = []
        lazy.compute(progress=lambda d, t, m: seen.append((d, t, m)), scheduler="synchronous")
        inside = [(d, m) for d, t, m in seen if ": step" in m]
        assert len(inside) == 4 * lazy.grid.n_tiles
        assert inside[0][1] == "tile 1/4: step 1" and inside[-1][1] == "tile 4/4: step 4"
        values = [d for d, _, _ in seen]
        assert values == sorted(values) and values[-1] == 4  # tiles done plus the fraction of the current one

        def cancel_at_step_2(done, total, message):
            if message.endswith("step 2"):
                raise FusionCancelled("stop")

        reached.clear()
        with pytest.raises(FusionCancelled):  # a new fusion (the finished tiles above are cached)
            nf.fuse(images, "_reports", device=device, chunks=20).compute(
                progress=cancel_at_step_2, scheduler="synchronous"
            )
        assert reached == [0, 1]  # the first tile stopped at its second report
        # the widget's background path: iter_tiles(progress=...) reports from inside too
        seen.clear()
        list(nf.fuse(images, "_reports", device=device, chunks=20).iter_tiles(progress=lambda d, t, m: seen.append(m)))
        assert seen[0] == "tile 1/4: step 1" and seen[-1] == "tile 4/4: step 4"


def test_tiles_of_a_pairwise_fold_compose_no_weights(device, monkeypatch):
    """Tiled outputs have no weights, so a tile's fold does not build the (N, H, W) weights
    (a 74 MB float32 map per 1358^2 block of ten slices); the untiled fold still does."""
    from napari_fusion import _engine
    from napari_fusion.registry import MethodOutput, temporary_method

    def run(stack, *, ctx):
        pick = (stack[1] > stack[0]).float()[0]
        return MethodOutput(
            fused=pick * stack[1] + (1 - pick) * stack[0], labels=pick.long(), weights=torch.stack([1 - pick, pick])
        )

    composed = []
    real = _engine._compose_weights
    monkeypatch.setattr(_engine, "_compose_weights", lambda *a: composed.append(1) or real(*a))
    with temporary_method(
        run, name="_pair_max", title="t", tasks=("multi-focus",), mode="pairwise", outputs=("fused", "labels"), halo=0
    ) as spec:
        images = _stack(1, 4, 48, 40)
        ref = nf.fuse(images, spec.name, device=device)
        assert len(composed) == 3 and ref.weights.shape == (4, 48, 40)
        composed.clear()
        tiled = nf.fuse(images, spec.name, chunks=16, device=device).compute()
        assert not composed
        np.testing.assert_array_equal(tiled.fused, ref.fused)
        np.testing.assert_array_equal(tiled.labels, ref.labels)


def test_stop_running_tiles_stops_the_tiles_under_way_at_their_next_report():
    """The command line's Ctrl-C: dask's threads cannot be stopped, and the process waited for
    the tiles under way before it exited; they now stop at their next progress report."""
    import threading
    import time

    from napari_fusion import tiling
    from napari_fusion.registry import MethodOutput, temporary_method

    steps = 3000
    reports: list[int] = []
    started = threading.Event()

    def run(stack, *, ctx):
        for k in range(steps):
            ctx.report(k, steps)
            reports.append(k)
            started.set()
            time.sleep(0.001)
        return MethodOutput(fused=stack.mean(0))

    errors: list[BaseException] = []
    with temporary_method(run, name="_slow_tiles", title="t", tasks=("multi-focus",), mode="nway", halo=0):
        lazy = nf.fuse(np.ones((2, 64, 64), np.float32), "_slow_tiles", chunks=32, device="cpu")

        def compute():
            try:
                lazy.compute()
            except nf.FusionCancelled as exc:
                errors.append(exc)

        worker = threading.Thread(target=compute)
        worker.start()
        assert started.wait(60)
        tiling.stop_running_tiles()
        worker.join(120)
        assert not worker.is_alive() and errors and "interrupted" in str(errors[0])
        assert len(reports) < steps  # four tiles of 3000 reports each without the stop
        # a run started after the stop is not affected
        steps = 3
        again = nf.fuse(np.ones((2, 64, 64), np.float32), "_slow_tiles", chunks=32, device="cpu").compute()
        np.testing.assert_array_equal(again.fused, np.ones((64, 64), np.float32))


def test_tiles_side_by_side_share_the_torch_threads(device):
    """Two tiles computed at once run one torch thread each (two teams of two OpenMP threads
    oversubscribed two cores); a lone tile and the caller keep the caller's count."""
    import threading

    import dask

    from napari_fusion.ops.tiles import _threads_are_per_thread
    from napari_fusion.registry import MethodOutput, temporary_method

    if not _threads_are_per_thread():
        pytest.skip("torch's thread count is not per calling thread here (not OpenMP)")
    seen: list[tuple[int, bool]] = []

    def run(stack, *, ctx):
        seen.append((torch.get_num_threads(), threading.current_thread() is threading.main_thread()))
        return MethodOutput(fused=stack.mean(0), labels=torch.zeros(stack.shape[-2:], dtype=torch.long))

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with (
            temporary_method(
                run,
                name="_threads",
                title="t",
                tasks=("multi-focus",),
                mode="nway",
                outputs=("fused", "labels"),
                halo=0,
            ) as spec,
            dask.config.set(num_workers=2, scheduler="threads"),
        ):
            images = _stack(2, 2, 64, 64)
            nf.fuse(images, spec.name, chunks=16, device=device).compute()
            in_workers = {n for n, main in seen if not main}
            assert in_workers == {1}, seen
            assert torch.get_num_threads() == 2  # the caller's count is unchanged
            seen.clear()
            nf.fuse(images, spec.name, chunks=64, device=device).compute()  # one tile: nothing to share
            assert {n for n, _ in seen} == {2}, seen
            seen.clear()
            with dask.config.set(scheduler="synchronous"):  # one tile at a time: nothing to share
                nf.fuse(images, spec.name, chunks=16, device=device).compute()
            assert {n for n, _ in seen} == {2}, seen
    finally:
        torch.set_num_threads(before)


def _sub_tiled(monkeypatch):
    """Any tile estimated to need memory is computed in sub-tiles of 16 px (no limit set)."""
    from napari_fusion import memory

    monkeypatch.delenv(memory.ENV_VAR, raising=False)
    monkeypatch.setattr(memory, "TILED_ROOM", 1)
    monkeypatch.setattr(memory, "MIN_FITTED_TILE", 16)


def test_split_range_into_parts_of_at_most_the_size():
    for a, b, size, align in [(0, 1024, 416, 16), (5, 300, 64, 1), (0, 100, 100, 4), (32, 96, 16, 8), (0, 7, 4, 8)]:
        parts = tiling._split_range_into(a, b, size, align)
        assert parts[0][0] == a and parts[-1][1] == b
        assert all(p[1] == q[0] for p, q in itertools.pairwise(parts))
        assert all(hi - lo <= max(align, size // align * align) for lo, hi in parts)
        assert all((lo - a) % align == 0 for lo, _ in parts)
        assert len(parts) == -(-(b - a) // max(align, size // align * align))
    assert tiling._split_range_into(0, 1024, 416, 16) == [(0, 352), (352, 704), (704, 1024)]


@pytest.mark.parametrize("name, extra", _every_method(), ids=[n for n, _ in _every_method()])
def test_tiles_computed_in_sub_tiles_equal_whole_tiles(name, extra, monkeypatch):
    """Without a memory limit a tile too large for :data:`memory.TILED_ROOM` is computed as
    sub-tiles, each with the method's halo; the result is that of whole tiles (and of the untiled
    run) and the output keeps the chunks asked for."""
    from napari_fusion import memory

    spec = nf.get_method(name)
    images = _stack(4, 3, 40, 44, colour=name == "li2018_vgg19")
    blocks: list[tuple[int, int]] = []

    def recorded(stack, *, ctx, **p):
        blocks.append(tuple(stack.shape[-2:]))
        return spec.run(stack, ctx=ctx, **p)

    watched = dataclasses.replace(spec, run=recorded)
    with _vgg_for_tests() if name == "li2018_vgg19" else contextlib.nullcontext():
        with memory.limited_to("64G"):  # a limit set: whole tiles
            whole = tiling.fuse_lazy(images, watched, device="cpu", chunks=32, **extra).compute(scheduler="synchronous")
        whole_calls = len(blocks)
        blocks.clear()
        _sub_tiled(monkeypatch)
        lazy = tiling.fuse_lazy(images, watched, device="cpu", chunks=32, **extra)
        assert lazy.fused.chunks[0][0] == 32 and lazy.fused.chunks[1][0] == 32
        got = lazy.compute(scheduler="synchronous")
    halo = lazy.grid.halo
    align = lazy.grid.align
    assert max(max(b) for b in blocks) <= max(16, align) + 2 * halo, (blocks, halo)
    if align <= 16:  # 2 x 2 tiles of 32, computed as 3 x 3 sub-tiles of 16 (the last ones 8 x 12)
        assert len(blocks) >= 2 * whole_calls, (len(blocks), whole_calls)
    tol = TILED_TOLERANCE.get(name, 1e-5)
    np.testing.assert_allclose(got.fused.astype(np.float64), whole.fused.astype(np.float64), rtol=0, atol=tol)
    if whole.labels is not None:
        assert (got.labels != whole.labels).mean() <= LABEL_TOLERANCE.get(name, 0.0)


def test_sub_tiles_only_without_a_limit_and_not_for_a_lone_tile_with_whole_image_steps(monkeypatch):
    from napari_fusion import memory

    _sub_tiled(monkeypatch)
    cpu = torch.device("cpu")

    def sub(name, tile, shape=(64, 64)):
        spec = nf.get_method(name)
        params = spec.resolve_params({})
        grid = tiling.plan_grid(spec, params, shape, chunks=tile, n=3)
        return tiling.sub_tile_for(grid, spec, params, n=3, channels=1, dtype=np.float32, device=cpu)

    assert sub("focus_measure", 64) == (16, 16)
    assert sub("liu2017_cnn_nway", 32) == (16, 16)
    assert sub("liu2017_cnn_nway", 64) is None  # one tile for the whole image: it runs untiled
    with memory.limited_to("1G"):
        assert sub("focus_measure", 64) is None  # the limit fits the tiles themselves
    monkeypatch.setattr(memory, "TILED_ROOM", 2**40)
    assert sub("focus_measure", 64) is None


def test_sub_tiles_cut_a_tile_in_the_parts_that_compute_the_fewest_pixels(monkeypatch):
    """Every sub-tile computes its halo again: a tile just too large is cut in two, not four."""
    from napari_fusion import memory

    monkeypatch.delenv(memory.ENV_VAR, raising=False)
    spec = nf.get_method("focus_measure")
    params = spec.resolve_params({})
    grid = tiling.plan_grid(spec, params, (256, 256), chunks=128, n=3)
    costs = dict(halo=grid.halo, shape=grid.shape, n=3, channels=1, dtype=np.float32, method=spec.name,
                 workers=tiling._tiles_side_by_side(grid.n_tiles), device="cpu")  # fmt: skip

    def sub(room):
        monkeypatch.setattr(memory, "TILED_ROOM", room)
        return tiling.sub_tile_for(grid, spec, params, n=3, channels=1, dtype=np.float32, device=torch.device("cpu"))

    assert sub(memory.tiles_need((128, 128), **costs)) is None
    assert sub(memory.tiles_need((128, 64), **costs)) == (128, 64)
    assert sub(memory.tiles_need((64, 64), **costs)) == (64, 64)
    assert sub(memory.tiles_need((64, 43), **costs)) == (64, 43)  # 2 x 3 parts, not 3 x 3

    # the input chunks the tiles read are cached for their whole blocks: taken off the room first
    chunked = dict(costs, input_chunks=(32, 32))
    cache = memory.tiles_need((128, 128), **chunked) - memory.tiles_need((128, 128), **costs)
    monkeypatch.setattr(memory, "TILED_ROOM", memory.tiles_need((128, 64), **costs) + cache)
    got = tiling.sub_tile_for(grid, spec, params, n=3, channels=1, dtype=np.float32, device=torch.device("cpu"),
                              input_chunks=(32, 32))  # fmt: skip
    assert got == (128, 64)
