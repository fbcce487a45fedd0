"""A lazy result in napari: nothing is fused before a layer is shown, and each tile once."""

from __future__ import annotations

import dataclasses
import importlib.util

import dask.array as da
import numpy as np
import pytest

from napari_fusion import tiling
from napari_fusion.registry import get_method


def test_viewer_model_computes_tiles_only_when_shown_and_once(device):
    components = pytest.importorskip("napari.components")
    calls = []
    spec = get_method("focus_measure")

    def counting(stack, *, ctx, **params):
        calls.append(stack.shape)
        return spec.run(stack, ctx=ctx, **params)

    images = (np.random.default_rng(0).random((4, 300, 250)) * 1000).astype(np.uint16)
    x = da.from_array(images, chunks=(1, 100, 125))
    res = tiling.fuse_lazy(x, dataclasses.replace(spec, run=counting), device=device)
    viewer = components.ViewerModel()
    viewer.add_image(x, name="stack")
    assert calls == []  # fusing and showing the input fused nothing
    viewer.add_labels(res.labels, name="labels")
    viewer.add_image(res.fused, name="fused")
    assert res.grid.n_tiles == 6
    if importlib.util.find_spec("cachey") is not None:
        assert len(calls) == 6  # napari's dask cache shares the tiles between the two layers
    else:
        assert 6 <= len(calls) <= 12
    np.testing.assert_array_equal(np.asarray(viewer.layers["fused"].data), res.fused.compute())
