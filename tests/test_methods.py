"""Classical methods: behaviour on synthetic data with known answers and on real data."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import spearmanr

import napari_fusion as nf
from napari_fusion.io import read_stack


def _psnr(gt, x):
    mse = np.mean((gt.astype(np.float64) - x.astype(np.float64)) ** 2)
    return 10 * np.log10(255.0**2 / max(mse, 1e-12))


@pytest.mark.parametrize("method", ["focus_measure", "gff", "laplacian_pyramid"])
def test_multifocus_methods_beat_average_and_every_slice(method, small_focal_stack):
    s = small_focal_stack
    fused = nf.fuse(s.slices, method=method).fused
    best_slice = max(_psnr(s.ground_truth, sl) for sl in s.slices)
    avg = _psnr(s.ground_truth, nf.fuse(s.slices, method="average").fused)
    ours = _psnr(s.ground_truth, fused)
    assert ours > best_slice + 3.0
    assert ours > avg + 5.0


@pytest.mark.parametrize("measure", ["variance", "sml", "tenengrad"])
def test_focus_measure_labels_find_the_focused_slice(measure, small_focal_stack):
    s = small_focal_stack
    r = nf.fuse(s.slices, method="focus_measure", measure=measure)
    # within one slice of the nearest-focused slice almost everywhere
    assert np.mean(np.abs(r.labels.astype(int) - s.true_labels) <= 1) > 0.9
    assert np.mean(r.labels == s.true_labels) > 0.6
    rho = spearmanr(r.depth.ravel(), s.depth.ravel())[0]
    assert rho > 0.7


def test_focus_measure_blend_smooths_transitions(small_focal_stack):
    s = small_focal_stack
    hard = nf.fuse(s.slices, method="focus_measure").fused
    soft = nf.fuse(s.slices, method="focus_measure", blend=2.0).fused
    assert not np.array_equal(hard, soft)
    assert _psnr(s.ground_truth, soft) > _psnr(s.ground_truth, s.slices[0]) + 3


def test_gff_weights_normalised_and_labels(small_focal_stack):
    r = nf.fuse(small_focal_stack.slices, method="gff")
    np.testing.assert_allclose(r.weights.sum(0), 1.0, atol=1e-5)
    assert np.mean(np.abs(r.labels.astype(int) - small_focal_stack.true_labels) <= 1) > 0.85


def test_mertens_recovers_exposure_series():
    """Fusing an exposure bracket gets closer to the original photo than any single exposure's
    clipped extremes, and well-exposed pixels dominate the weights."""
    from skimage import data
    from skimage.transform import resize

    from napari_fusion.synthetic import render_exposure_series

    photo = (resize(data.astronaut(), (128, 128), anti_aliasing=True) * 255).astype(np.uint8)
    series = render_exposure_series(photo, n_exposures=3, stops=2.0)
    r = nf.fuse(series, method="mertens")
    assert r.fused.dtype == np.uint8
    # where the brightest exposure is blown out, the fused image keeps detail from the others
    blown = series[2].mean(-1) >= 250
    assert blown.mean() > 0.001
    assert np.mean(r.fused.mean(-1)[blown] >= 250) < 0.2
    # where the middle exposure is mid-grey it carries the largest weight on average
    mid = (series[1].mean(-1) > 80) & (series[1].mean(-1) < 170)
    assert r.weights[1][mid].mean() > r.weights[0][mid].mean()
    assert r.weights[1][mid].mean() > r.weights[2][mid].mean()


@pytest.mark.data
def test_mf_voc_gff_beats_average(dataset):
    """Real multi-focus triplets with ground truth: GFF beats the plain average by a clear margin.

    Measured on all 40 MF-VOC triplets (PSNR of the mean MSE): average 28.0 dB, GFF 38.3 dB,
    focus_measure 39.3 dB, laplacian_pyramid 40.2 dB.
    """
    from napari_fusion.datasets import iter_cases

    cases = iter_cases(dataset("multifocus/mf_voc"))
    assert len(cases) == 40
    mse = {"average": [], "gff": [], "focus_measure": []}
    for case in cases[:12]:
        src, gt = case.load_sources(), case.load_gt()
        for m in mse:
            f = nf.fuse(src, method=m).fused
            mse[m].append(np.mean((gt.astype(np.float64) - f) ** 2))
    psnr = {m: 10 * np.log10(255**2 / np.mean(v)) for m, v in mse.items()}
    assert psnr["gff"] > psnr["average"] + 6.0, psnr
    assert psnr["focus_measure"] > psnr["average"] + 6.0, psnr


@pytest.mark.data
def test_dapi_widefield_uint16_stack(dataset):
    folder = dataset("focalstack/dapi_widefield/dapi")
    stack = read_stack(folder)
    assert len(stack) == 40 and stack[0].dtype == np.uint16
    before = [s.copy() for s in stack]
    r = nf.fuse(stack, method="focus_measure", z_positions=np.arange(40) * 0.3)
    assert r.fused.dtype == np.uint16
    lo, hi = min(s.min() for s in stack), max(s.max() for s in stack)
    assert lo <= r.fused.min() and r.fused.max() <= hi
    assert np.unique(r.labels).size >= 20  # many planes contribute
    assert r.depth.max() <= 39 * 0.3 + 1e-6
    for a, b in zip(stack, before):
        np.testing.assert_array_equal(a, b)
    # the nucleus (bright part) is decided mostly in the planes the dataset notes as sharpest
    nucleus = r.fused > np.percentile(r.fused, 75)
    assert 10 <= np.median(r.labels[nucleus]) <= 30


@pytest.mark.data
def test_pcb_labels_follow_board_tilt(dataset):
    """On the tilted PCB stack, far (top) parts of the board focus in later slices."""
    stack = read_stack(dataset("focalstack/pcb/pcb"))
    assert len(stack) == 7 and stack[0].shape == (1536, 2048, 3)
    r = nf.fuse(stack, method="focus_measure")
    lab = r.labels.astype(float)
    rows = np.arange(lab.shape[0])[:, None] * np.ones_like(lab)
    rho = spearmanr(rows.ravel()[::53], lab.ravel()[::53])[0]
    assert rho < -0.4, rho
    top, bottom = lab[: lab.shape[0] // 4].mean(), lab[-lab.shape[0] // 4 :].mean()
    assert top > bottom + 2


# --- the registry helper ------------------------------------------------------


def test_registry_refuses_duplicates_and_names_the_known_entries():
    from napari_fusion._registry_base import Registry
    from napari_fusion.errors import FusionInputError

    reg = Registry("widget")
    reg.register("b", 2)
    reg.register("a", 1)
    with pytest.raises(ValueError, match="widget 'a' is already registered"):
        reg.register("a", 3)
    with pytest.raises(FusionInputError, match="unknown widget 'c'; available widgets: a, b"):
        reg.get("c")
    assert reg.get("a") == 1 and reg.names() == ["b", "a"] and "a" in reg and len(reg) == 2
    with reg.temporarily("c", 3):
        assert reg.get("c") == 3
    assert "c" not in reg
    assert reg.unregister("a") == 1 and reg.unregister("a") is None
    assert reg.entries == {"b": 2}


def test_temporary_and_unregistered_methods(device):
    from napari_fusion import registry

    def run(stack, *, ctx):
        return registry.MethodOutput(fused=stack.mean(0))

    name = "_test_temporary_mean"
    with registry.temporary_method(run, name=name, title="test", tasks=("multi-focus",), mode="nway") as spec:
        assert nf.get_method(name) is spec and name in [s.name for s in nf.list_methods()]
        r = nf.fuse(np.ones((2, 16, 16), np.float32), method=name, device=device)
        np.testing.assert_array_equal(r.fused, np.ones((16, 16), np.float32))
        with pytest.raises(ValueError, match="already registered"):
            registry.register_method(name=name, title="t", tasks=("multi-focus",), mode="nway")(run)
    with pytest.raises(nf.FusionInputError, match=f"unknown method '{name}'"):
        nf.get_method(name)
    registry.register_method(name=name, title="test", tasks=("multi-focus",), mode="nway")(run)
    assert registry.unregister_method(name).run is run
    assert registry.unregister_method(name) is None
    assert registry._ensure_loaded is registry.ensure_methods_loaded
    assert registry._REGISTRY is registry.METHODS.entries
