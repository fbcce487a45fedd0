"""Output-layer helpers: updates touch only what changed (each change re-renders in a window)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")


def test_arrange_outputs_moves_nothing_when_in_order(viewer):
    from napari_fusion._napari._layers import arrange_outputs

    a, b, c = (viewer.add_image(np.zeros((4, 4)), name=n) for n in "abc")
    moves = []
    viewer.layers.events.moved.connect(lambda e: moves.append(e))
    arrange_outputs(viewer, [b, c])
    assert moves == []
    arrange_outputs(viewer, [c, b])
    assert [ly.name for ly in viewer.layers] == ["a", "c", "b"] and moves
    moves.clear()
    arrange_outputs(viewer, [None, c, b])  # a missing output is skipped
    assert moves == []


def test_update_in_place_sets_only_changed_geometry(viewer):
    from napari_fusion._napari._layers import update_or_add

    layer = update_or_add(viewer, None, np.zeros((4, 4)), {"name": "x", "scale": (2.0, 2.0)}, "image")
    seen = []
    layer.events.scale.connect(lambda e: seen.append("scale"))
    layer.events.translate.connect(lambda e: seen.append("translate"))
    same = update_or_add(viewer, layer, np.ones((4, 4)), {"scale": (2.0, 2.0), "translate": (0.0, 0.0)}, "image")
    assert same is layer and seen == [] and layer.data.max() == 1
    update_or_add(viewer, layer, np.ones((4, 4)), {"scale": (3.0, 2.0), "translate": (1.0, 0.0)}, "image")
    assert seen == ["scale", "translate"] and tuple(layer.scale) == (3.0, 2.0)
