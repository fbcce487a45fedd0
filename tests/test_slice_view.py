"""Methods that stream slices get a view that converts each slice when read, with the same results.

``fuse`` hands a method registered with ``streams_slices=True`` a
:class:`~napari_fusion._inputs.ScaledSlices` view instead of a float32 copy of
the whole stack (the memory of issue 18); these tests hold that the results
are bit for bit those of the materialised stack, that nothing materialises it,
and that the view refuses what a streaming method must not do.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import napari_fusion as nf
import napari_fusion.tiling  # noqa: F401 - bound its own scale_stack before a test patches _inputs'
from napari_fusion import _inputs
from napari_fusion._engine import build_result, run_method, slice_positions
from napari_fusion.registry import FusionContext, MethodOutput, get_method, register_method, unregister_method
from napari_fusion.synthetic import render_focal_stack

STREAMING = [
    ("focus_pyramid", {}),
    ("focus_pyramid", {"softness": 0.0, "levels": 2}),
    ("focus_measure", {}),
    ("focus_measure", {"blend": 0.0, "consistency": 0}),
    ("focus_measure", {"blend": 1.5, "measure": "tenengrad"}),
    ("laplacian_pyramid", {}),
    ("laplacian_pyramid", {"levels": 3, "window": 0}),
    ("gff", {}),
    ("mertens", {}),
    ("mertens", {"levels": 2}),
]


def _stack(kind: str) -> list[np.ndarray]:
    rng = np.random.default_rng(5)
    base = render_focal_stack(rng.random((72, 80)), n_slices=4, seed=1).slices
    if kind == "uint16":
        return [(s.astype(np.float64) * 250 + 1000).astype(np.uint16) for s in base]
    if kind == "rgb":
        return [np.stack([s, s[::-1], s[:, ::-1]], -1).astype(np.uint8) for s in base]
    return [s.astype(np.float32) / 255 * 3.0 - 1.0 for s in base]


def _materialised(images, method, params):
    spec = get_method(method)
    resolved = spec.resolve_params(params)
    prepared = _inputs.prepare(images, intensity=spec.intensity)
    with torch.inference_mode():
        out = run_method(spec, prepared.to_tensor(torch.device("cpu")), ctx=FusionContext("cpu"), params=resolved)
    return build_result(spec, out, prepared, slice_positions(None, prepared.n), resolved)


@pytest.mark.parametrize("kind", ["uint16", "rgb", "float32"])
@pytest.mark.parametrize("method,params", STREAMING)
def test_streamed_results_equal_the_materialised_stack(monkeypatch, kind, method, params):
    images = _stack(kind)
    expected = _materialised(images, method, params)

    def refuse(*args, **kwargs):
        raise AssertionError("a streaming method's stack was materialised")

    monkeypatch.setattr(_inputs, "scale_stack", refuse)
    got = nf.fuse(images, method=method, device="cpu", **params)
    assert get_method(method).streams_slices
    np.testing.assert_array_equal(got.fused, expected.fused)
    for name in ("labels", "depth", "weights"):
        np.testing.assert_array_equal(getattr(got, name), getattr(expected, name))


def test_view_slices_equal_the_scaled_stack_and_refuse_other_indexing():
    images = _stack("rgb")
    prepared = _inputs.prepare(images, materialise=False)
    assert prepared.data is None and prepared.n == 4
    view = prepared.slice_view(torch.device("cpu"))
    whole = _inputs.scale_stack(images, colour=True, offset=prepared.offset, scale=prepared.scale)
    assert view.shape == torch.Size(whole.shape) and len(view) == 4 and view.dtype == torch.float32
    for k in range(4):
        assert torch.equal(view[k], torch.from_numpy(whole[k]))
    for bad in (slice(0, 2), (0, 1), Ellipsis):
        with pytest.raises(TypeError, match="one slice at a time"):
            view[bad]
    with pytest.raises(RuntimeError, match="slice_view"):
        prepared.to_tensor(torch.device("cpu"))


def test_a_streaming_method_that_indexes_the_whole_stack_fails_clearly():
    """Control: the view is what the method gets, so whole-stack indexing is caught, not silently slow."""

    @register_method(name="_test_bad_streamer", title="t", tasks=("multi-focus",), mode="nway", streams_slices=True)
    def _bad(stack, *, ctx):
        return MethodOutput(fused=stack[:, 0].mean(0)[None])

    try:
        with pytest.raises(TypeError, match="one slice at a time"):
            nf.fuse(_stack("uint16"), method="_test_bad_streamer", device="cpu")
    finally:
        unregister_method("_test_bad_streamer")


def test_streams_slices_needs_an_nway_method():
    with pytest.raises(ValueError, match="nway"):
        register_method(
            name="_test_pair_streamer", title="t", tasks=("multi-focus",), mode="pairwise", streams_slices=True
        )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_restore_scales_a_copy_never_the_methods_tensor(dtype):
    """``restore`` scales one float64 buffer in place; a float64 result is copied first, so the
    method's own tensor (a tile may still be read) is never changed."""
    prepared = _inputs.prepare(_stack("uint16"))
    fused = torch.rand(1, 72, 80, dtype=dtype, generator=torch.Generator().manual_seed(0))
    before = fused.clone()
    out = prepared.restore(fused)
    assert torch.equal(fused, before)
    expected = np.rint(
        np.clip(before.double().numpy()[0] * prepared.scale + prepared.offset, prepared.low, prepared.high)
    )
    np.testing.assert_array_equal(out, expected.astype(np.uint16))


@pytest.mark.parametrize("method", ["focus_pyramid", "laplacian_pyramid"])
def test_streamed_fusion_of_the_real_dapi_stack_equals_the_materialised_stack(dataset, method):
    """On a real widefield stack (40 uint16 slices, shared data), the slice view gives the
    materialised stack's fused image and depth bit for bit."""
    from napari_fusion.io import read_stack

    images = read_stack(dataset("focalstack/dapi_widefield/dapi"))
    expected = _materialised(images, method, {})
    got = nf.fuse(images, method=method, device="cpu")
    assert got.fused.dtype == np.uint16 and got.fused.shape == images[0].shape
    np.testing.assert_array_equal(got.fused, expected.fused)
    np.testing.assert_array_equal(got.depth, expected.depth)
