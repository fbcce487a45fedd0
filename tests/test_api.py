"""The public API: input handling, dtypes, colour, folding, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import napari_fusion as nf
from napari_fusion.errors import FusionCancelled, FusionInputError
from napari_fusion.registry import MethodOutput, temporary_method


def _pair(dtype=np.uint8, colour=False, size=(32, 40), seed=0):
    rng = np.random.default_rng(seed)
    shape = size + ((3,) if colour else ())
    if np.issubdtype(dtype, np.integer):
        hi = np.iinfo(dtype).max
        a = rng.integers(0, hi, shape, endpoint=True).astype(dtype)
        b = rng.integers(0, hi, shape, endpoint=True).astype(dtype)
    else:
        a = rng.random(shape).astype(dtype)
        b = rng.random(shape).astype(dtype)
    return a, b


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32, np.float64, np.int16])
@pytest.mark.parametrize("method", ["average", "focus_measure", "gff", "laplacian_pyramid", "mertens"])
def test_dtype_and_range_preserved(dtype, method):
    """The inputs fill only a band inside the dtype's range, so the range check can fail.

    (Inputs spanning the whole range of an integer dtype would make any value
    of that dtype pass.) A dropped offset, a wrong scale or an overshoot that
    is not clipped leaves ``[lo, hi]``; a result pinned to a bound does not
    stay inside it.
    """
    rng = np.random.default_rng(0)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        span = float(info.max) - float(info.min)
        band = (info.min + 0.3 * span, info.min + 0.6 * span)
    else:
        band = (0.3, 0.6)
    a, b = (rng.uniform(*band, (32, 40)).astype(dtype) for _ in range(2))
    r = nf.fuse([a, b], method=method)
    assert r.fused.dtype == np.dtype(dtype)
    assert r.fused.shape == a.shape
    lo = min(a.min(), b.min())
    hi = max(a.max(), b.max())
    assert r.fused.min() >= lo and r.fused.max() <= hi
    fused = r.fused.astype(np.float64)
    assert ((fused > lo) & (fused < hi)).mean() > 0.9, "fused pinned to the inputs' bounds"
    middle = (float(a.mean()) + float(b.mean())) / 2
    assert abs(fused.mean() - middle) < 0.2 * (float(hi) - float(lo))


def test_uint16_not_rescaled():
    """A dim 16-bit stack keeps its grey levels: averaging two images gives their mean."""
    a = np.full((16, 16), 1000, np.uint16)
    b = np.full((16, 16), 3000, np.uint16)
    r = nf.fuse([a, b], method="average")
    assert r.fused.dtype == np.uint16
    assert np.all(r.fused == 2000)


def test_inputs_not_modified(small_focal_stack):
    stack = small_focal_stack.slices
    before = stack.copy()
    nf.fuse(stack, method="gff")
    nf.fuse(list(stack), method="focus_measure")
    np.testing.assert_array_equal(stack, before)


def test_sequence_and_stack_array_agree(small_focal_stack):
    s = small_focal_stack.slices
    r1 = nf.fuse(list(s), method="focus_measure")
    r2 = nf.fuse(s, method="focus_measure")
    r3 = nf.fuse(np.moveaxis(s, 0, 2), stack_axis=2, method="focus_measure")
    np.testing.assert_array_equal(r1.fused, r2.fused)
    np.testing.assert_array_equal(r1.fused, r3.fused)
    np.testing.assert_array_equal(r1.labels, r3.labels)


def test_channel_axis_for_stack_arrays(small_focal_stack):
    s = small_focal_stack.slices  # (N, H, W, 3)
    chw = np.moveaxis(s, -1, 1)  # (N, 3, H, W)
    r = nf.fuse(chw, channel_axis=1, method="focus_measure")
    np.testing.assert_array_equal(r.fused, nf.fuse(s, method="focus_measure").fused)


def test_colour_decided_on_luminance(small_focal_stack):
    """The RGB decision equals the decision on the luminance of the same stack."""
    s = small_focal_stack.slices
    grey = (s.astype(np.float64) @ np.array([0.299, 0.587, 0.114])).astype(np.float32)
    rc = nf.fuse(s, method="focus_measure")
    rg = nf.fuse(grey, method="focus_measure")
    assert (rc.labels == rg.labels).mean() > 0.99
    # every channel of each pixel comes from the labelled slice
    n, h, w, _ = s.shape
    picked = s[rc.labels, np.arange(h)[:, None], np.arange(w)[None, :]]
    np.testing.assert_array_equal(rc.fused, picked)


def test_depth_uses_z_positions(small_focal_stack):
    s = small_focal_stack.slices
    z = [0.0, 0.3, 0.6, 0.9]
    r = nf.fuse(s, method="focus_measure", z_positions=z)
    np.testing.assert_allclose(r.depth, np.asarray(z, np.float32)[r.labels])
    with pytest.raises(FusionInputError, match="z_positions has 3 values for 4 images"):
        nf.fuse(s, method="focus_measure", z_positions=z[:3])


def test_average_gives_no_labels():
    a, b = _pair()
    r = nf.fuse([a, b], method="average")
    assert r.labels is None and r.depth is None
    assert r.weights.shape == (2, 32, 40)


def test_list_methods_metadata():
    specs = nf.list_methods()
    names = {s.name for s in specs}
    assert {"average", "laplacian_pyramid", "gff", "mertens", "focus_measure"} <= names
    for s in specs:
        d = s.as_dict()
        assert d["citation"] and d["tasks"] and d["mode"] in ("nway", "pairwise")
        assert "fused" in d["outputs"]
        for p in d["params"]:
            assert p["help"] and "default" in p
    assert [s.name for s in nf.list_methods("multi-exposure")] == [
        "average",
        "csc_mefn",
        "csc_mefn_pyramid",
        "gff",
        "mertens",
    ]


# --- pairwise folding -------------------------------------------------------


@pytest.fixture
def pick_sharper_pair_method():
    """A test-only pairwise method: per pixel, the input with larger local variance wins."""
    from napari_fusion.methods.focus_measure import focus_measure

    name = "_test_pair_sharper"

    def run(stack, *, ctx):
        assert stack.shape[0] == 2
        fm = torch.stack([focus_measure(stack[i].mean(0), "variance", 2) for i in range(2)])
        labels = (fm[1] > fm[0]).long()
        w = torch.stack([1.0 - labels.float(), labels.float()])
        fused = (stack * w[:, None]).sum(0)
        return MethodOutput(fused=fused, labels=labels, weights=w)

    outputs = ("fused", "labels", "weights", "depth")
    with temporary_method(run, name=name, title="test", tasks=("multi-focus",), mode="pairwise", outputs=outputs):
        yield name


@pytest.mark.parametrize("fold", ["sequential", "tree"])
def test_pairwise_fold_carries_labels(pick_sharper_pair_method, small_focal_stack, fold):
    s = small_focal_stack.slices
    r = nf.fuse(s, method=pick_sharper_pair_method, fold=fold)
    assert r.labels.max() <= 3 and np.unique(r.labels).size > 1
    n, h, w, _ = s.shape
    # a hard-choice pair method: every fused pixel equals the labelled source pixel
    picked = s[r.labels, np.arange(h)[:, None], np.arange(w)[None, :]]
    np.testing.assert_array_equal(r.fused, picked)
    np.testing.assert_allclose(r.weights.sum(0), 1.0, atol=1e-6)
    np.testing.assert_array_equal(r.weights.argmax(0), r.labels)


@pytest.mark.parametrize("n", [2, 3, 4, 5, 8, 10, 40])
def test_fold_orders_use_every_slice_once_and_chain_at_most_log2_n_steps_as_a_tree(n):
    from napari_fusion._engine import fold_height, fold_steps

    for order in ("sequential", "tree"):
        steps = fold_steps(n, order)
        assert len(steps) == n - 1
        ready = {(k, k + 1): 0 for k in range(n)}  # result -> its height
        for step in steps:  # each step fuses two ready, adjacent results, left before right
            assert step.left[1] == step.right[0]
            assert step.depth == max(ready.pop(step.left), ready.pop(step.right))
            ready[(step.left[0], step.right[1])] = step.depth + 1
        assert ready == {(0, n): fold_height(n, order)}
    assert fold_height(n, "sequential") == n - 1
    assert fold_height(n, "tree") == int(np.ceil(np.log2(n)))
    assert [(s.left, s.right) for s in fold_steps(n, "sequential")] == [((0, k), (k, k + 1)) for k in range(1, n)]


def test_fold_is_a_parameter_of_pairwise_methods_only(pick_sharper_pair_method, small_focal_stack):
    assert nf.get_method(pick_sharper_pair_method).param("fold").choices == ("tree", "sequential")
    with pytest.raises(FusionInputError, match="fold"):
        nf.fuse(small_focal_stack.slices, method=pick_sharper_pair_method, fold="random")
    with pytest.raises(FusionInputError, match="unknown parameter"):
        nf.fuse(small_focal_stack.slices, method="focus_measure", fold="tree")


# --- progress and cancellation -----------------------------------------------


def test_progress_reports_monotonic(small_focal_stack):
    seen = []
    nf.fuse(small_focal_stack.slices, method="focus_measure", progress=lambda d, t, m: seen.append(d / t))
    assert seen[-1] == 1.0
    assert all(b >= a for a, b in zip(seen, seen[1:]))
    assert len(seen) >= 4


def test_cancel_from_progress(small_focal_stack):
    calls = []

    def cb(done, total, msg):
        calls.append(done)
        if len(calls) == 2:
            raise FusionCancelled("stop")

    with pytest.raises(FusionCancelled):
        nf.fuse(small_focal_stack.slices, method="focus_measure", progress=cb)
    assert len(calls) == 2


# --- bad input: one clear error each ------------------------------------------


def test_error_shapes_differ():
    with pytest.raises(FusionInputError, match="different sizes"):
        nf.fuse([np.zeros((20, 20), np.uint8), np.zeros((20, 21), np.uint8)])


def test_error_one_image():
    with pytest.raises(FusionInputError, match="at least two images"):
        nf.fuse([np.zeros((20, 20), np.uint8)])
    with pytest.raises(FusionInputError, match="at least two"):
        nf.fuse(np.zeros((20, 20), np.uint8))


def test_error_grey_mixed_with_rgb():
    with pytest.raises(FusionInputError, match="grey and RGB images are mixed"):
        nf.fuse([np.zeros((20, 20), np.uint8), np.zeros((20, 20, 3), np.uint8)])


def test_error_non_finite():
    a = np.zeros((20, 20), np.float32)
    b = a.copy()
    b[3, 4] = np.nan
    with pytest.raises(FusionInputError, match="non-finite"):
        nf.fuse([a, b])


@pytest.mark.parametrize("dtype", [bool, np.complex64, np.int64, object])
def test_error_unsupported_dtype(dtype):
    a = np.zeros((20, 20), dtype)
    with pytest.raises(FusionInputError, match="unsupported dtype"):
        nf.fuse([a, a])


def test_error_mixed_dtypes():
    with pytest.raises(FusionInputError, match="different dtypes"):
        nf.fuse([np.zeros((20, 20), np.uint8), np.zeros((20, 20), np.uint16)])


def test_error_unknown_method_and_param():
    a, b = _pair()
    with pytest.raises(FusionInputError, match="unknown method 'nope'; available methods: .*gff"):
        nf.fuse([a, b], method="nope")
    with pytest.raises(FusionInputError, match="unknown parameter.*'radius'.*valid parameters: .*window"):
        nf.fuse([a, b], method="focus_measure", radius=3)
    with pytest.raises(FusionInputError, match="must be <= 64"):
        nf.fuse([a, b], method="focus_measure", window=1000)
    with pytest.raises(FusionInputError, match="must be one of"):
        nf.fuse([a, b], method="focus_measure", measure="bogus")
    with pytest.raises(FusionInputError, match="whole number"):
        nf.fuse([a, b], method="focus_measure", window=2.5)


def test_error_bad_shapes_and_rgba():
    with pytest.raises(FusionInputError, match="4 channels"):
        nf.fuse([np.zeros((20, 20, 4), np.uint8)] * 2)
    with pytest.raises(FusionInputError, match="must be 2-D grey"):
        nf.fuse([np.zeros((20, 20, 5), np.uint8)] * 2)
    with pytest.raises(FusionInputError, match="at least 8x8"):
        nf.fuse([np.zeros((4, 20), np.uint8)] * 2)


def test_error_bad_axes_file_names_progress_and_a_conversion_hint():
    a, b = _pair()
    stack = np.stack([a, b])
    with pytest.raises(FusionInputError, match="channel_axis 5 is out of range"):
        nf.fuse(stack, channel_axis=5)
    with pytest.raises(FusionInputError, match="channel_axis and stack_axis are the same axis"):
        nf.fuse(stack, channel_axis=-3)
    with pytest.raises(FusionInputError, match="not file names; to read files use napari_fusion.io.read_stack"):
        nf.fuse(["a.tif", "b.tif"])
    with pytest.raises(FusionInputError, match="progress must be a callable"):
        nf.fuse([a, b], progress=5)
    with pytest.raises(FusionInputError, match=r"convert first, e.g. images.astype\(np.float32\)"):
        nf.fuse([a.astype(np.float16), b.astype(np.float16)])


def test_error_unknown_device():
    a, b = _pair()
    with pytest.raises(FusionInputError, match="unknown device"):
        nf.fuse([a, b], device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(FusionInputError, match="no CUDA GPU"):
            nf.fuse([a, b], device="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("method", ["focus_measure", "gff", "laplacian_pyramid", "mertens"])
def test_cuda_matches_cpu(device, method, small_focal_stack):
    s = small_focal_stack.slices.astype(np.float32) / 255
    rc = nf.fuse(s, method=method, device=device)
    rg = nf.fuse(s, method=method, device="cuda")
    np.testing.assert_allclose(rc.fused, rg.fused, atol=1e-4)


def test_engine_is_shared_and_imports_no_front_end():
    """``api`` re-exports the engine; the engine and the tiled path never import ``api`` back."""
    import ast
    from pathlib import Path

    from napari_fusion import _engine, api

    assert api.label_dtype is _engine.label_dtype and api.run_method is _engine.run_method
    assert api.fold_pairwise is _engine.fold_pairwise
    src = Path(_engine.__file__).parent
    for rel in ("_engine.py", "tiling.py", "memory.py", "_inputs.py", "registry.py", "focalstack/height.py"):
        tree = ast.parse((src / rel).read_text())
        imported = {
            f"{node.module or ''}.{a.name}" if isinstance(node, ast.ImportFrom) else a.name
            for node in ast.walk(tree)
            if isinstance(node, (ast.Import, ast.ImportFrom))
            for a in node.names
        } | {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        assert not {m for m in imported if m.split(".")[-1] == "api"}, rel
