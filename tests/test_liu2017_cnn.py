"""The liu2017_cnn fusion method with the shipped weights, on synthetic and real pairs."""

from __future__ import annotations

import shutil
import warnings

import numpy as np
import pytest

import napari_fusion as nf
from napari_fusion.errors import FusionInputError, WeightsUnavailableError
from napari_fusion.methods.liu2017_cnn import default_weights_path
from napari_fusion.weights import read_manifest, sha256_file


@pytest.fixture(scope="module")
def synthetic_pair():
    """A 2-slice synthetic focal stack (near / far focus) with known labels."""
    from skimage import data

    from napari_fusion.synthetic import render_focal_stack

    photo = data.astronaut()[40:200, 140:340]
    return render_focal_stack(photo, n_slices=2, max_sigma=5.0, seed=11)


def psnr(a, b):
    mse = np.mean((a.astype(float) - b.astype(float)) ** 2)
    return 10 * np.log10(255.0**2 / mse)


def test_shipped_weights_match_their_manifest():
    path = default_weights_path("slight")
    manifest = read_manifest(path)
    assert manifest["sha256"] == sha256_file(path)
    assert manifest["variant"] == "slight" and manifest["parameters"] == 435_202
    assert path.with_suffix(".md").is_file()


def test_registry_entry():
    spec = nf.get_method("liu2017_cnn")
    assert spec.mode == "pairwise" and spec.learned and "multi-focus" in spec.tasks
    assert spec.defaults() == {
        "variant": "slight",
        "threshold": 0.5,
        "area_fraction": 0.01,
        "gf_radius": 8,
        "gf_eps": 0.1,
        "weights": "",
        "precision": "float32",
        "fold": "tree",
    }
    assert nf.get_method("liu2017_cnn_nway").mode == "nway"


def test_synthetic_pair_decision_and_fusion(device, synthetic_pair):
    st = synthetic_pair
    res = nf.fuse(list(st.slices), "liu2017_cnn", device=device)
    clear = np.abs(st.depth - 0.5) > 0.2  # pixels clearly nearer one focal plane
    acc = (res.labels == st.true_labels)[clear].mean()
    assert acc >= 0.9, acc
    fm = res.extras["focus_map"]
    assert fm.shape == st.depth.shape and fm.min() >= 0 and fm.max() <= 1
    # where slice 0 is focused the map says "first input in focus"
    assert fm[clear & (st.true_labels == 0)].mean() > 0.7 > 0.3 > fm[clear & (st.true_labels == 1)].mean()
    p_fused = psnr(res.fused, st.ground_truth)
    assert p_fused > max(psnr(s, st.ground_truth) for s in st.slices) + 1
    w = res.weights
    np.testing.assert_allclose(w.sum(0), 1, atol=1e-5)


def test_nway_on_three_slices(device, small_focal_stack):
    st = small_focal_stack  # 4 slices, 96x128
    for name in ("liu2017_cnn", "liu2017_cnn_nway"):
        res = nf.fuse(list(st.slices[:3]), name, device=device, area_fraction=0.0)
        assert set(np.unique(res.labels)) <= {0, 1, 2}
        assert res.fused.shape == st.slices[0].shape and res.fused.dtype == st.slices.dtype
    # the N-way decision is at least as good as chance by a wide margin on this stack
    truth = np.abs(st.depth[None] - np.linspace(0, 1, 3)[:, None, None]).argmin(0)
    assert (res.labels == truth).mean() > 0.6


def test_fold_reuses_scores_without_changing_decisions(device, small_focal_stack, monkeypatch):
    import napari_fusion.methods.liu2017_cnn as mod

    slices = list(small_focal_stack.slices)  # 4 slices, 96x128: a fold of 3 pairs
    reused = []
    real = mod.stack_terms

    def spy(*args, known=None, **kw):
        reused.append(known is not None)
        return real(*args, known=known, **kw)

    monkeypatch.setattr(mod, "stack_terms", spy)
    mod.clear_score_cache()
    res = nf.fuse(slices, "liu2017_cnn", device=device, area_fraction=0.0)
    assert reused == [False, True, True]
    monkeypatch.setattr(mod, "stack_terms", lambda *a, known=None, **kw: real(*a, **kw))
    ref = nf.fuse(slices, "liu2017_cnn", device=device, area_fraction=0.0)
    np.testing.assert_array_equal(res.labels, ref.labels)
    np.testing.assert_array_equal(res.fused, ref.fused)


def test_filtered_weights_exact_away_from_the_boundary():
    import torch

    from napari_fusion.methods.liu2017_cnn import _exact_where_flat

    d = torch.zeros(60, 80)
    d[:, 40:] = 1
    wa = d + 1e-7 * torch.randn(60, 80)
    out = _exact_where_flat(wa, d, 4)  # support radius 8: columns 32..47 keep the filter's values
    assert torch.equal(out[:, :32], d[:, :32]) and torch.equal(out[:, 48:], d[:, 48:])
    assert torch.equal(out[:, 32:48], wa[:, 32:48])


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
def test_nway_blend_streamed_over_slices_equals_the_whole_weight_stack():
    """The N-way blend filters one slice's choice map at a time (the guide's statistics once); it
    equals normalising the guided filter of the whole one-hot stack and summing, also where every
    filtered weight is 0 (the sources' mean), and keeps the weights only when asked."""
    import torch

    from napari_fusion.methods.liu2017_cnn import _blend_smoothed_choices
    from napari_fusion.ops.blend import normalise_weights, one_hot, weighted_sum
    from napari_fusion.ops.guided import guided_filter, guided_filter_of

    g = torch.Generator().manual_seed(4)
    stack = torch.rand(5, 3, 48, 40, generator=g)
    labels = torch.randint(0, 4, (48, 40), generator=g)  # slice 4 chosen nowhere
    guide = torch.rand(48, 40, generator=g)
    ref_w = normalise_weights(guided_filter(guide, one_hot(labels, 5), 3, 0.01))
    fused, w = _blend_smoothed_choices(stack, labels, guided_filter_of(guide, 3, 0.01), keep_weights=True)
    torch.testing.assert_close(fused, weighted_sum(stack, ref_w), atol=2e-6, rtol=0)
    torch.testing.assert_close(w, ref_w, atol=2e-6, rtol=0)
    assert _blend_smoothed_choices(stack, labels, guided_filter_of(guide, 3, 0.01), keep_weights=False)[1] is None
    zero, _ = _blend_smoothed_choices(stack, labels, lambda m: m * 0, keep_weights=False)
    torch.testing.assert_close(zero, stack.mean(0))


def test_real_lytro_pair_agrees_with_focus_measure_and_commutes(device, lytro_crop):
    a, b = lytro_crop
    res = nf.fuse([a, b], "liu2017_cnn", device=device)
    ref = nf.fuse([a, b], "focus_measure", device=device)
    # both sources own a real share of this crop, and the CNN agrees with a classical focus measure
    assert 0.15 < res.labels.mean() < 0.85
    assert (res.labels == ref.labels).mean() >= 0.9
    swapped = nf.fuse([b, a], "liu2017_cnn", device=device)
    total = res.extras["focus_map"] + swapped.extras["focus_map"]
    assert abs(total.mean() - 1) < 0.02
    assert np.abs(total - 1).mean() < 0.05
    assert (res.labels != swapped.labels).mean() > 0.97
    np.testing.assert_allclose(res.fused.astype(float), swapped.fused.astype(float), atol=2.0)


def test_bfloat16_precision_on_a_real_pair_keeps_the_decisions_and_the_image(device, lytro_crop):
    """``precision="bfloat16"`` (the branch in bfloat16) changes few decisions on a real pair, the
    fused image hardly, and its scorer is kept per network (a fold reuses the previous pair's)."""
    import torch

    from napari_fusion.methods.liu2017_cnn import scorer_for

    a, b = lytro_crop
    r32 = nf.fuse([a, b], "liu2017_cnn", device=device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # slower on CPUs without bfloat16 units, still correct
        r16 = nf.fuse([a, b], "liu2017_cnn", device=device, precision="bfloat16")
        dev = torch.device(device)
        assert scorer_for("slight", None, dev, "bfloat16") is scorer_for("slight", None, dev, "bfloat16")
        assert scorer_for("slight", None, dev, "bfloat16").dtype == torch.bfloat16
    assert not np.array_equal(r32.extras["focus_map"], r16.extras["focus_map"])  # it did run in bfloat16
    assert np.abs(r32.extras["focus_map"] - r16.extras["focus_map"]).max() < 0.3
    assert (r32.labels != r16.labels).mean() < 0.02
    assert psnr(r32.fused, r16.fused) > 45


def test_bfloat16_on_a_cpu_without_bfloat16_units_warns(monkeypatch):
    import torch

    from napari_fusion.methods import liu2017_cnn as L
    from napari_fusion.nets import _conv

    monkeypatch.setattr(_conv, "cpu_has_bfloat16", lambda: False)
    with pytest.warns(UserWarning, match="slower than float32 on this CPU"):
        L.scorer_for("slight", None, torch.device("cpu"), "bfloat16")
    with pytest.raises(ValueError, match="precision"):
        L.scorer_for("slight", None, torch.device("cpu"), "float16")
    with pytest.raises(ValueError, match="precision"):
        nf.fuse([np.zeros((32, 32))] * 2, "liu2017_cnn", precision="half")


def test_missing_or_corrupt_weights_refused(device, tmp_path, synthetic_pair):
    pair = list(synthetic_pair.slices)
    with pytest.raises(WeightsUnavailableError, match="napari-fusion train liu2017_cnn"):
        nf.fuse(pair, "liu2017_cnn", weights=str(tmp_path / "none.pt"), device=device)
    src = default_weights_path("slight")
    bad = tmp_path / "liu2017_slight.pt"
    shutil.copy(src, bad)
    shutil.copy(src.with_suffix(".json"), bad.with_suffix(".json"))
    with open(bad, "r+b") as f:
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 0x01]))
    with pytest.raises(WeightsUnavailableError, match="sha256"):
        nf.fuse(pair, "liu2017_cnn", weights=str(bad), device=device)
    # weights of the slight model cannot be used as the original model
    with pytest.raises(WeightsUnavailableError):
        nf.fuse(pair, "liu2017_cnn", weights=str(src), variant="original", device=device)


def test_too_small_images_refused(device):
    img = np.zeros((12, 40), np.uint8)
    with pytest.raises(FusionInputError, match="16x16"):
        nf.fuse([img, img + 1], "liu2017_cnn", device=device)


# --- tiled: the consistency verification as a whole-image step -----------------------------


@pytest.fixture(scope="module")
def three_slices():
    """A 3-slice synthetic focal stack of a real photograph: every slice owns part of the image."""
    from skimage import data

    from napari_fusion.synthetic import render_focal_stack

    return np.asarray(render_focal_stack(data.astronaut()[20:220, 120:340], n_slices=3, seed=0).slices)


@pytest.mark.parametrize("name", ["liu2017_cnn", "liu2017_cnn_nway"])
@pytest.mark.parametrize("chunks", [50, (64, 96)])
def test_tiled_equals_untiled_with_region_removal(device, three_slices, name, chunks):
    """Region removal (1 % of the whole image) runs once on the assembled decision (collect passes:
    two for the pairwise fold of three slices, one N-way); the rest per tile. Exact."""
    ref = nf.fuse(three_slices, name, device=device)
    assert len(np.unique(ref.labels)) == 3  # a real decision, not one source everywhere
    lazy = nf.fuse(three_slices, name, device=device, chunks=chunks)
    assert lazy.grid.n_tiles > 4
    got = lazy.compute()
    np.testing.assert_array_equal(got.labels, ref.labels)
    np.testing.assert_array_equal(got.fused, ref.fused)
    np.testing.assert_array_equal(got.depth, ref.depth)


@pytest.mark.parametrize("name", ["liu2017_cnn", "liu2017_cnn_nway"])
def test_tiled_control_cnn_context_too_small(device, three_slices, name, monkeypatch):
    """Control: the collect pass's CNN with too little context (reach 7 instead of 19) changes the
    decision, so the equality above can fail; so does a tile without the guided filter's halo."""
    import napari_fusion.methods.liu2017_cnn as liu

    ref = nf.fuse(three_slices, name, device=device)
    monkeypatch.setattr(liu, "CNN_REACH", 7)
    bad = nf.fuse(three_slices, name, device=device, chunks=50).compute()
    assert (bad.labels != ref.labels).sum() > 20
    monkeypatch.undo()
    no_halo = nf.fuse(three_slices, name, device=device, chunks=50, halo=0).compute()
    assert np.abs(no_halo.fused.astype(int) - ref.fused.astype(int)).max() > 2


@pytest.mark.data
def test_tiled_real_lytro_pair(device, lytro_crop):
    a, b = lytro_crop
    ref = nf.fuse([a, b], "liu2017_cnn", device=device)
    got = nf.fuse([a, b], "liu2017_cnn", device=device, chunks=64).compute()
    np.testing.assert_array_equal(got.labels, ref.labels)
    np.testing.assert_array_equal(got.fused, ref.fused)


def test_tiled_passes_report_progress_and_cancel(device, three_slices):
    """The collect passes report per tile and stop at once on cancel."""
    from napari_fusion.errors import FusionCancelled

    seen = []

    def progress(done, total, message):
        seen.append(message)

    nf.fuse(three_slices, "liu2017_cnn", device=device, chunks=64, progress=progress)
    assert any(m.startswith("whole-image pass 1: tile") for m in seen)
    assert any(m.startswith("whole-image pass 2: tile") for m in seen)

    def cancel(done, total, message):
        raise FusionCancelled("stop")

    with pytest.raises(FusionCancelled):
        nf.fuse(three_slices, "liu2017_cnn", device=device, chunks=64, progress=cancel)
