"""Every learned method reports progress from inside its network passes and stops when cancelled.

The widgets' Cancel raises :class:`FusionCancelled` from the progress callback,
so a method that reports only between large steps cannot be stopped for as
long as one step runs (minutes for a network over a large image). Each
learned method must report per tile / per batch, with fractions that advance
in small steps.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest

from napari_fusion import FusionCancelled, fuse, list_methods
from napari_fusion.methods import csc_ivfn, csc_mefn, li2018_vgg19
from napari_fusion.nets import liu2017_cnn as liu_net

LEARNED = [s.name for s in list_methods() if s.learned]


@pytest.fixture
def pair():
    rng = np.random.default_rng(3)
    a = rng.random((300, 300)).astype(np.float32)
    b = np.clip(a[::-1] * 0.8 + 0.1, 0, 1).astype(np.float32)
    return [a, b]


@pytest.fixture
def small_tiles(monkeypatch):
    for module in (csc_ivfn, csc_mefn, li2018_vgg19):
        monkeypatch.setattr(module, "NET_TILE", 128)
    monkeypatch.setattr(liu_net, "TILE", 96)  # 4 tiles of a 300^2 image, as for the others
    return {"tiis2018_fcn": {"tile": 128}}


def _network_for(name):
    if name != "li2018_vgg19":
        return contextlib.nullcontext()
    import torch

    from napari_fusion.nets.vgg19 import VGG19

    torch.manual_seed(0)
    return li2018_vgg19.untrained_network_for_tests(VGG19(depth=21, widths=(6, 8, 8, 12, 12)).eval())


def test_learned_methods_are_listed():
    assert {"csc_ivfn", "csc_mefn", "li2018_vgg19", "liu2017_cnn", "tiis2018_fcn", "veshki_cdl"} <= set(LEARNED)


@pytest.mark.parametrize("name", LEARNED)
def test_progress_in_small_steps(name, pair, small_tiles):
    fractions = []
    with _network_for(name):
        fuse(pair, method=name, progress=lambda d, t, m: fractions.append(d / t), **small_tiles.get(name, {}))
    assert fractions[-1] == pytest.approx(1.0)
    steps = np.diff([0.0, *fractions])
    assert (steps >= -1e-9).all(), "progress went backwards"
    assert len(fractions) >= 6, fractions
    assert steps.max() <= 0.35, f"{name}: a progress jump of {steps.max():.2f} (reports {fractions})"


@pytest.mark.parametrize("name", LEARNED)
def test_cancel_inside_the_network_pass(name, pair, small_tiles):
    reports = []

    def cancel_at_third(done, total, message):
        reports.append(done / total)
        if len(reports) == 3:
            raise FusionCancelled("cancelled by the test")

    with _network_for(name), pytest.raises(FusionCancelled):
        fuse(pair, method=name, progress=cancel_at_third, **small_tiles.get(name, {}))
    assert len(reports) == 3 and reports[-1] < 0.5
