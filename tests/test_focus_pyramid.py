"""focus_pyramid, the focal-stack default: its parts, and its behaviour on simulated and real microscope stacks.

The generic checks (dtypes, tiling == untiled, permutation, sharp-half pair)
are in ``test_method_contract.py``; here are the method's own claims:
the noise temperature is right, the decision is soft only where the data is
ambiguous, it beats the old default on a physically simulated widefield stack
(image, seams, background heights) and it leaves no patchwork on the real DAPI
stack.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio

from napari_fusion.focalstack import fuse_focal_stack
from napari_fusion.focalstack.quality import background_height_noise, boundary_gradient_excess, seam_score
from napari_fusion.methods.focus_pyramid import noise_cv, soft_weights
from napari_fusion.microscopy_sim import simulate_focal_stack
from napari_fusion.ops.filters import gaussian_filter, laplacian

OLD_DEFAULT = ("focus_measure", {})


@pytest.mark.parametrize("prefilter,smooth", [(1.0, 6.0), (0.0, 3.0)])
def test_noise_cv_matches_white_noise(prefilter, smooth):
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(768, 768, generator=gen, dtype=torch.float64)
    pre = gaussian_filter(noise, prefilter) if prefilter > 0 else noise
    f = gaussian_filter(laplacian(pre) ** 2, smooth)[40:-40, 40:-40]
    measured = float(f.std() / f.mean())
    assert noise_cv(prefilter, smooth) == pytest.approx(measured, rel=0.1)


def test_soft_weights_hard_where_clear_uniform_where_not():
    focus = torch.ones(4, 2, 3)
    focus[2, 0] = 100.0  # row 0: slice 2 stands out by far more than the noise
    w = soft_weights(focus.clone(), softness=2.0, cv=0.1)
    assert torch.allclose(w.sum(0), torch.ones(2, 3))
    assert torch.all(w[2, 0] > 0.999)
    assert torch.allclose(w[:, 1], torch.full((4, 3), 0.25))  # row 1: all equal -> averaged
    hard = soft_weights(focus.clone(), softness=0.0, cv=0.1)
    assert set(hard.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(hard.argmax(0), focus.argmax(0))


def _score(sim, res):
    truth = sim.in_focus.astype(np.float64)
    fused = np.asarray(res.fused, dtype=np.float64)
    rng = float(truth.max() - truth.min())
    return {
        "psnr": peak_signal_noise_ratio(truth, fused, data_range=rng),
        "seam": seam_score(fused, truth, res.labels.astype(np.int64), mask=sim.mask),
        "bg": background_height_noise(res.height, ~sim.mask, tolerance=sim.z_step),
    }


@pytest.mark.parametrize("photons", [30.0, 1000.0])
def test_beats_old_default_on_simulated_widefield(photons):
    sim = simulate_focal_stack(
        "widefield", photons=photons, shape=(112, 112), n_planes=12, psf="gaussian", seed=3
    )  # fmt: skip
    new = _score(sim, fuse_focal_stack(sim.stack, method="focus_pyramid", z_step=sim.z_step))
    old = _score(sim, fuse_focal_stack(sim.stack, method=OLD_DEFAULT[0], params=OLD_DEFAULT[1], z_step=sim.z_step))
    assert new["psnr"] > old["psnr"] + 1.0, (new, old)
    assert new["seam"] <= old["seam"] + 1e-9, (new, old)
    assert new["bg"] < 0.5 * old["bg"], (new, old)


def test_labels_name_the_sharp_slice_and_height_follows():
    rng = np.random.default_rng(0)
    texture = rng.random((64, 96)) * 200 + 20
    blurred = gaussian_filter(torch.from_numpy(texture), 3.0).numpy()
    s0, s1 = blurred.copy(), blurred.copy()
    s0[:, :48], s1[:, 48:] = texture[:, :48], texture[:, 48:]
    res = fuse_focal_stack(np.stack([s0, s1]).astype(np.uint16), method="focus_pyramid", z_step=2.0)
    assert np.mean(res.labels[:, :40] == 0) > 0.98 and np.mean(res.labels[:, 56:] == 1) > 0.98
    assert np.median(res.height[:, :40]) < 0.2 and np.median(res.height[:, 56:]) > 1.8
    assert res.options["height_from"] == "method"  # the weighted z, not the parabola refinement
    np.testing.assert_allclose(res.height, 2.0 * res.index, rtol=1e-6)
    fm = fuse_focal_stack(np.stack([s0, s1]).astype(np.uint16), method="focus_measure", z_step=2.0)
    assert fm.options["height_from"] == "refine"


def test_textureless_background_gets_a_smooth_height():
    """Pure shot noise on a flat field: no slice is in focus; the height is flat, not random."""
    rng = np.random.default_rng(1)
    stack = rng.poisson(50.0, size=(10, 80, 80)).astype(np.uint16) + 100
    res = fuse_focal_stack(stack, method="focus_pyramid", z_step=1.0)
    fm = fuse_focal_stack(stack, method="focus_measure", z_step=1.0)
    assert float(np.std(res.height)) < 0.25 * float(np.std(fm.height))
    assert abs(float(np.mean(res.height)) - 4.5) < 1.0


@pytest.mark.data
def test_no_patchwork_on_real_dapi_stack(dataset):
    """The real widefield DAPI stack: the old default's seams are measurable; the new default has none.

    Measured (2026-11-30): boundary gradient excess 0.315 for ``focus_measure``
    defaults (the dark "bites" and seams of docs/focalstack.md), 0.127 with
    ``blend=3 smooth=6``, 0.000 for ``focus_pyramid``.
    """
    from napari_fusion.io import read_stack

    stack = np.stack(read_stack(dataset("focalstack/dapi_widefield/dapi")))
    new = fuse_focal_stack(stack, method="focus_pyramid", z_step=0.3)
    old = fuse_focal_stack(stack, method=OLD_DEFAULT[0], params=OLD_DEFAULT[1], z_step=0.3)
    assert boundary_gradient_excess(new.fused, new.labels) < 0.03
    assert boundary_gradient_excess(old.fused, old.labels) > 0.2  # control: the measure sees seams
    # background heights: smooth (a narrow range), where the old default jumps end to end
    assert float(np.ptp(new.height)) < 0.5 * float(np.ptp(old.height))


@pytest.mark.parametrize("shape", [(1, 5, 7), (4, 33, 9), (7, 40, 3), (20, 3, 300)])
def test_blocked_median_equals_torch_median(monkeypatch, shape):
    """The noise floor's median is taken per block of rows (no whole-stack transposed copy); blocks
    of a few pixels give torch's median bit for bit, ties and even counts included."""
    from napari_fusion.methods import focus_pyramid as fp

    focus = torch.randint(0, 5, shape, generator=torch.Generator().manual_seed(2)).float()  # many ties
    expected = focus.median(dim=0).values
    for pixels in (1, 10, 1 << 16):
        monkeypatch.setattr(fp, "MEDIAN_BLOCK_PIXELS", pixels)
        assert torch.equal(fp.median_over_slices(focus), expected)


def test_derived_halo_tiles_exactly_and_the_filters_alone_do_not(small_focal_stack):
    """focus_pyramid's halo is its filters' reach plus the pyramid blend's derived reach
    (2 * 2**levels - 4): tiles then equal the untiled result to float rounding; with half the
    filters' reach they do not (the control; the error falls about 10x per 8 px of halo)."""
    import math

    from napari_fusion import fuse, tiling
    from napari_fusion.registry import get_method

    images = [s.astype(np.float32) / 255 for s in small_focal_stack.slices]
    spec = get_method("focus_pyramid")
    p = spec.defaults()
    filters = math.ceil(3 * p["prefilter"]) + 1 + math.ceil(3 * p["smooth"]) + math.ceil(3 * p["feather"])
    assert spec.halo_for(p) == filters + 2 * 2 ** p["levels"] - 4
    ref = fuse(images, "focus_pyramid", device="cpu")
    tiled = tiling.fuse_lazy(images, "focus_pyramid", device="cpu", chunks=40).compute()
    assert np.abs(tiled.fused - ref.fused).max() < 1e-6
    short = tiling.fuse_lazy(images, "focus_pyramid", device="cpu", chunks=40, halo=filters // 2).compute()
    assert np.abs(short.fused - ref.fused).max() > 1e-5
