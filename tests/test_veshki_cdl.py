"""Coupled dictionary learning and the veshki_cdl fusion method."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import napari_fusion as nf
from napari_fusion.errors import FusionInputError, WeightsUnavailableError
from napari_fusion.methods.veshki_cdl import _centred_box_mean, default_dictionary_path
from napari_fusion.training import veshki_cdl as cdl
from napari_fusion.weights import read_manifest, sha256_file


@pytest.fixture(scope="module")
def synthetic_pair():
    from skimage import data

    from napari_fusion.synthetic import render_focal_stack

    photo = data.astronaut()[40:200, 140:340]
    return render_focal_stack(photo, n_slices=2, max_sigma=5.0, seed=11)


def psnr(a, b):
    mse = np.mean((a.astype(float) - b.astype(float)) ** 2)
    return 10 * np.log10(255.0**2 / mse)


@pytest.mark.parametrize("patch", [8, 16])
def test_shipped_dictionaries_match_their_manifest(patch):
    path = default_dictionary_path(patch)
    m = read_manifest(path)
    assert m["sha256"] == sha256_file(path) and m["patch"] == patch
    assert path.with_suffix(".md").is_file()
    state = torch.load(path, weights_only=True)
    assert state["Df"].shape == state["Db"].shape == (patch * patch, 4 * patch * patch)
    # atom 0 is the DC atom in both halves; unit-norm columns
    for d in (state["Df"], state["Db"]):
        torch.testing.assert_close(d.norm(dim=0), torch.ones(d.shape[1]))
        assert float(d[:, 0].std()) < 1e-5
    # learning did something: far from the initial DCT and the halves differ
    assert float((state["Df"] - state["Db"]).abs().max()) > 0.1
    assert m["training"]["val_accuracy"] > m["training"]["val_accuracy_dct_init"] + 0.2


def test_registry_entry():
    spec = nf.get_method("veshki_cdl")
    assert spec.mode == "pairwise" and spec.learned and spec.tasks == ("multi-focus",)
    assert spec.defaults()["patch"] == 8 and spec.defaults()["boundary"] in ("paper", "released")
    assert spec.halo_for(spec.defaults()) > 0


def test_cdl_iteration_keeps_dc_atom_and_normalisation():
    rng = np.random.default_rng(0)
    y = torch.from_numpy(rng.standard_normal((128, 600)).astype(np.float32))
    y[:64] -= y[:64].mean(0)
    y[64:] -= y[64:].mean(0)
    d0 = cdl.initial_dictionary(8, 256)
    for update, lam in (("ksvd", 0.0), ("incoherent", 0.1)):
        d, stats = cdl.cdl_iteration(y, d0, train_atoms=4, eps=0.0, update=update, lam=lam)
        torch.testing.assert_close(d[:, 0], d0[:, 0])
        torch.testing.assert_close(d[:64].norm(dim=0), torch.full((256,), 2**-0.5))
        torch.testing.assert_close(d[64:].norm(dim=0), torch.full((256,), 2**-0.5))
        assert stats["update_error"] < stats["coding_error"]  # the update lowers the error of the codes


@pytest.mark.data
@pytest.mark.parametrize("update", ["ksvd", "incoherent"])
def test_smoke_training_beats_dct_initialisation(data_dir, update):
    cfg = cdl.get_config("smoke", patch=8)
    cfg.update, cfg.lam, cfg.n_pairs, cfg.n_val_pairs, cfg.iterations = update, 0.05, 1500, 400, 2
    y, yv, info = cdl.make_pairs(cfg, log=lambda *a: None)
    assert y.shape[0] == 128 and info["train_pairs"] > 1000
    d, hist = cdl.learn(cfg, torch.from_numpy(y), torch.from_numpy(yv), log=lambda *a: None)
    assert hist[-1]["val_error"] < 0.8 * hist[0]["val_error"]
    assert hist[0]["val_accuracy"] < 0.7 < 0.85 < hist[-1]["val_accuracy"]


def _half_blurred(seed=0, size=96, sigma=2.5):
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    tex = gaussian_filter(rng.random((size, size)), 1.0)
    tex = (tex - tex.min()) / (tex.max() - tex.min())
    blur = gaussian_filter(tex, sigma)
    left = np.zeros((size, size), bool)
    left[:, : size // 2] = True
    a = np.where(left, blur, tex)  # A sharp on the right
    b = np.where(left, tex, blur)  # B sharp on the left
    return (a * 255).round().astype(np.uint8), (b * 255).round().astype(np.uint8), tex, left


@pytest.mark.parametrize("boundary", ["paper", "released"])
@pytest.mark.parametrize("patch", [8, 16])
def test_half_blurred_pair_picks_the_sharp_side(device, boundary, patch):
    a, b, tex, left = _half_blurred()
    res = nf.fuse([a, b], "veshki_cdl", device=device, boundary=boundary, patch=patch)
    truth = left.astype(int)  # label 1 (source B) on the left
    # the paper's per-pixel relabelling is noisier in the mixed band (16x16: 0.93 measured)
    assert (res.labels == truth).mean() > (0.9 if boundary == "paper" else 0.95)
    assert psnr(res.fused, tex * 255) > max(psnr(a, tex * 255), psnr(b, tex * 255)) + 5
    sw = nf.fuse([b, a], "veshki_cdl", device=device, boundary=boundary, patch=patch)
    assert (sw.labels != res.labels).mean() > 0.95


@pytest.mark.parametrize("boundary,floor", [("paper", 0.85), ("released", 0.95)])
def test_synthetic_focal_pair(device, synthetic_pair, boundary, floor):
    from scipy.ndimage import uniform_filter

    st = synthetic_pair
    res = nf.fuse(list(st.slices), "veshki_cdl", device=device, boundary=boundary)
    clear = np.abs(st.depth - 0.5) > 0.2
    g = st.ground_truth.mean(-1) / 255
    textured = uniform_filter(g * g, 9) - uniform_filter(g, 9) ** 2 > (10 / 255) ** 2
    # the method has no region clean-up: flat areas (no detail to code) are decided arbitrarily
    assert (res.labels == st.true_labels)[clear & textured].mean() > floor
    assert psnr(res.fused, st.ground_truth) > max(psnr(s, st.ground_truth) for s in st.slices) + 1


def test_stack_is_folded_pairwise(device, small_focal_stack):
    st = small_focal_stack
    res = nf.fuse(list(st.slices[:3]), "veshki_cdl", device=device)
    assert set(np.unique(res.labels)) <= {0, 1, 2} and len(np.unique(res.labels)) >= 2
    assert res.fused.shape == st.slices[0].shape and res.fused.dtype == st.slices.dtype


@pytest.fixture(scope="module")
def lytro_crop(data_dir):
    case = data_dir / "multifocus" / "lytro" / "lytro-01"
    if not case.is_dir():
        pytest.skip("lytro-01 not found")
    from napari_fusion.datasets import load_case

    a, b = load_case(case).load_sources()
    sl = (slice(200, 360), slice(40, 232))  # the golfer's arm/club (near) against the far background
    return a[sl], b[sl]


@pytest.mark.data
@pytest.mark.parametrize("boundary,floor", [("paper", 0.75), ("released", 0.9)])
def test_real_lytro_crop_agrees_with_focus_measure(device, lytro_crop, boundary, floor):
    a, b = lytro_crop
    res = nf.fuse([a, b], "veshki_cdl", device=device, boundary=boundary)
    ref = nf.fuse([a, b], "focus_measure", device=device)
    assert 0.15 < res.labels.mean() < 0.85
    # measured: released 0.93, paper 0.81 (the per-pixel relabelling is noisier than the vote)
    assert (res.labels == ref.labels).mean() >= floor


def test_centred_vote_has_no_shift_and_no_border_bias():
    x = torch.zeros(20, 20)
    x[:, 10:] = 1
    for size in (10, 11):
        v = _centred_box_mean(x, size)
        torch.testing.assert_close(v + v.flip(1), torch.ones(20, 20))  # symmetric about the edge
        assert bool(((v > 0.5) == (x > 0.5))[:, [9, 10]].all())
    torch.testing.assert_close(_centred_box_mean(torch.ones(12, 15), 10), torch.ones(12, 15))


def _conv_box_mean(x: torch.Tensor, size: int) -> torch.Tensor:
    """The vote's window mean as a separable convolution: the reference for the shifted sums."""
    k = torch.ones(size + (1 - size % 2), dtype=x.dtype)
    if size % 2 == 0:
        k[0] = k[-1] = 0.5
    r = (k.numel() - 1) // 2

    def filt(t):
        return F.conv2d(F.conv2d(t, k.view(1, 1, -1, 1), padding=(r, 0)), k.view(1, 1, 1, -1), padding=(0, r))

    x4 = x[None, None]
    return (filt(x4) / filt(torch.ones_like(x4)))[0, 0]


@pytest.mark.parametrize("size", [2, 3, 10, 11, 40])
def test_vote_window_means_equal_the_convolution_exactly(size):
    g = torch.Generator().manual_seed(size)
    x = (torch.rand(37, 53, generator=g) > 0.5).float()  # a decision map
    torch.testing.assert_close(_centred_box_mean(x, size), _conv_box_mean(x, size), rtol=0, atol=0)
    y = torch.rand(37, 53, generator=g)  # any image: equal up to rounding
    torch.testing.assert_close(_centred_box_mean(y, size), _conv_box_mean(y, size), rtol=1e-5, atol=1e-6)


def test_bad_parameters_and_inputs(device):
    a, b, _, _ = _half_blurred(size=40)
    for bad in ({"patch": 12}, {"stride": 9}, {"boundary": "magic"}, {"max_atoms": 0}, {"eps": -1}):
        with pytest.raises(FusionInputError):
            nf.fuse([a, b], "veshki_cdl", device=device, **bad)
    with pytest.raises(FusionInputError, match="at least 16x16"):
        nf.fuse([a[:12], b[:12]], "veshki_cdl", device=device, patch=16)


def test_missing_corrupt_or_mismatched_dictionary(device, tmp_path):
    a, b, _, _ = _half_blurred(size=40)
    with pytest.raises(WeightsUnavailableError, match="napari-fusion train veshki_cdl"):
        nf.fuse([a, b], "veshki_cdl", device=device, dictionary=str(tmp_path / "none.pt"))
    src = default_dictionary_path(8)
    bad = tmp_path / "d.pt"
    shutil.copy(src, bad)
    shutil.copy(src.with_suffix(".json"), bad.with_suffix(".json"))
    with open(bad, "r+b") as f:
        f.seek(2000)
        byte = f.read(1)
        f.seek(2000)
        f.write(bytes([byte[0] ^ 0x01]))
    with pytest.raises(WeightsUnavailableError, match="sha256"):
        nf.fuse([a, b], "veshki_cdl", device=device, dictionary=str(bad))
    with pytest.raises(WeightsUnavailableError):  # an 8x8 dictionary used for 16x16 patches
        nf.fuse([a, b], "veshki_cdl", device=device, dictionary=str(src), patch=16)
