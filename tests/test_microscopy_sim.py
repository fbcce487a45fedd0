"""Simulated microscopy focal stacks (napari_fusion.microscopy_sim) and the ground-truth quality measures."""

from __future__ import annotations

import numpy as np
import pytest

from napari_fusion.focalstack.quality import (
    background_height_noise,
    height_rmse,
    label_boundaries,
    seam_score,
)
from napari_fusion.microscopy_sim import (
    add_camera_noise,
    defocus_psf,
    nyquist_z_step,
    point_scene,
    simulate_focal_stack,
)

SMALL = dict(shape=(64, 64), n_planes=8, psf="gaussian")


def _models() -> list[str]:
    try:
        import psfmodels  # noqa: F401
    except ImportError:
        return ["gaussian"]
    return ["gaussian", "vectorial"]


@pytest.mark.parametrize("modality", ["widefield", "brightfield"])
def test_deterministic_for_a_seed(modality):
    a = simulate_focal_stack(modality, seed=3, **SMALL)
    b = simulate_focal_stack(modality, seed=3, **SMALL)
    c = simulate_focal_stack(modality, seed=4, **SMALL)
    assert a.stack.dtype == np.uint16 and a.stack.shape == (8, 64, 64)
    np.testing.assert_array_equal(a.stack, b.stack)
    np.testing.assert_array_equal(a.in_focus, b.in_focus)
    np.testing.assert_array_equal(a.height, b.height)
    assert not np.array_equal(a.stack, c.stack)


def test_ground_truth_height_is_inside_the_stack():
    sim = simulate_focal_stack("widefield", seed=0, **SMALL)
    h = sim.height[sim.mask]
    assert 0.2 < sim.mask.mean() < 0.9
    assert h.min() >= sim.z_positions[0] and h.max() <= sim.z_positions[-1]
    assert np.isnan(sim.height[~sim.mask]).all()
    assert sim.z_step == pytest.approx(nyquist_z_step())


@pytest.mark.parametrize("model", _models())
@pytest.mark.parametrize("plane", [2, 5])
def test_point_object_is_in_focus_at_its_height(model, plane):
    step = nyquist_z_step()
    scene = point_scene((33, 33), (16, 16), height=plane * step)
    kw = dict(shape=(33, 33), n_planes=8, psf=model, scene=scene, photons=2e4, read_noise=0.0)
    wf = simulate_focal_stack("widefield", **kw)
    bf = simulate_focal_stack("brightfield", **kw)
    assert int(np.argmax(wf.stack[:, 16, 16])) == plane
    assert int(np.argmin(bf.stack[:, 16, 16])) == plane
    assert wf.height[16, 16] == pytest.approx(plane * step)
    assert wf.in_focus.argmax() == 16 * 33 + 16


@pytest.mark.parametrize("model", _models())
def test_psf_slices_have_unit_sum_and_spread_with_defocus(model):
    psf, used = defocus_psf(np.array([0.0, 1.0, 3.0]), nx=63, model=model)
    assert used == model
    np.testing.assert_allclose(psf.sum(axis=(1, 2)), 1.0, rtol=1e-6)
    peaks = psf.max(axis=(1, 2))
    assert peaks[0] > peaks[1] > peaks[2]


def test_gaussian_fallback_without_psfmodels(monkeypatch):
    import napari_fusion.microscopy_sim as sim_mod

    monkeypatch.setattr(sim_mod, "_have_psfmodels", lambda: False)
    assert defocus_psf(np.array([0.0]), nx=15)[1] == "gaussian"
    assert simulate_focal_stack("widefield", shape=(32, 32), n_planes=4).psf_model == "gaussian"


@pytest.mark.parametrize("mean", [20.0, 500.0])
def test_shot_noise_variance_equals_mean(mean):
    rng = np.random.default_rng(0)
    img = add_camera_noise(np.full((256, 256), mean), rng, read_noise=0.0, offset=100.0)
    v = img.astype(np.float64)
    assert v.mean() - 100.0 == pytest.approx(mean, rel=0.01)
    assert v.var() == pytest.approx(mean, rel=0.05)


def test_read_noise_adds_its_variance():
    rng = np.random.default_rng(1)
    img = add_camera_noise(np.full((256, 256), 100.0), rng, read_noise=3.0, offset=100.0).astype(np.float64)
    assert img.var() == pytest.approx(100.0 + 9.0, rel=0.05)


def test_seam_score_zero_for_truth_and_positive_for_a_patchwork():
    sim = simulate_focal_stack("widefield", seed=0, photons=5000.0, shape=(96, 96), n_planes=12, psf="gaussian")
    truth = sim.in_focus
    true_labels = np.rint(np.nan_to_num(sim.height, nan=0.0) / sim.z_step).astype(int)
    assert seam_score(truth, truth, true_labels) == 0.0
    yy, xx = np.mgrid[0:96, 0:96]
    patch = ((yy // 12 + xx // 12) % 2).astype(int)  # checkerboard of two slices
    fused = np.where(patch == 0, sim.stack[3], sim.stack[8]).astype(np.float64)
    assert seam_score(fused, truth, patch) > 0.05
    assert seam_score(fused, truth, np.zeros_like(patch)) == 0.0


def test_label_boundaries_width():
    lab = np.zeros((10, 10), int)
    lab[:, 5:] = 1
    assert label_boundaries(lab, 1).sum() == 20
    assert label_boundaries(lab, 2).sum() == 40


def test_background_height_noise_and_rmse():
    rng = np.random.default_rng(0)
    bg = np.zeros((64, 64), bool)
    bg[:, :32] = True
    flat = np.full((64, 64), 3.0)
    assert background_height_noise(flat, bg, tolerance=0.5) == 0.0
    noisy = flat + np.where(bg, rng.uniform(-5, 5, flat.shape), 0.0)
    assert background_height_noise(noisy, bg, tolerance=0.5) > 0.7
    conf = np.zeros((64, 64))
    assert background_height_noise(noisy, bg, tolerance=0.5, confidence=conf, min_confidence=1.0) == 0.0
    truth = np.where(bg, np.nan, 2.0)
    assert height_rmse(flat, truth) == pytest.approx(1.0)
