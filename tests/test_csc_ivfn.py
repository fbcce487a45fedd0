"""CSC-IVFN: network, autoencoder training, fusion rules, the registered method and mixed grey/RGB input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_fusion import fuse
from napari_fusion.errors import FusionInputError, WeightsUnavailableError
from napari_fusion.methods.csc_ivfn import (
    default_weights_path,
    fuse_codes,
    l1_weights,
    saliency,
    saliency_weights,
)
from napari_fusion.nets.csc_ivfn import CSCIVFN, box_split
from napari_fusion.training import csc_ivfn as tr
from napari_fusion.training.loop import TrainConfig, train

SHIPPED = default_weights_path()
needs_weights = pytest.mark.skipif(not SHIPPED.is_file(), reason="shipped csc_ivfn weights not installed")


# --------------------------------------------------------------------------- network


def test_box_split_sums_to_input_and_base_is_box_mean():
    x = torch.rand(1, 1, 40, 50)
    base, detail = box_split(x, 11)
    torch.testing.assert_close(base + detail, x)
    torch.testing.assert_close(base[0, 0, 20, 25], x[0, 0, 15:26, 20:31].mean())
    with pytest.raises(ValueError):
        box_split(x, 4)


def test_signal_variants_differ_only_after_the_first_dcu():
    torch.manual_seed(0)
    paper = CSCIVFN(8, 3, signal="paper").eval()
    released = CSCIVFN(8, 3, signal="released").eval()
    released.load_state_dict(paper.state_dict())
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(paper(x), released(x))
        one_p, one_r = CSCIVFN(8, 1, signal="paper").eval(), CSCIVFN(8, 1, signal="released").eval()
        one_r.load_state_dict(one_p.state_dict())
        torch.testing.assert_close(one_p(x), one_r(x))
    assert paper(x).shape == x.shape and ((paper(x) > 0) & (paper(x) < 1)).all()
    with pytest.raises(ValueError):
        CSCIVFN(8, 2, signal="other")


def _smooth_images(n: int, size: int, seed: int) -> np.ndarray:
    """Random smooth grey images with edges (blurred blobs plus a step), in [0, 1]."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    out = np.empty((n, 1, size, size), np.float32)
    for i in range(n):
        a = gaussian_filter(rng.random((size, size)), 2.0)
        a = (a - a.min()) / (np.ptp(a) + 1e-9)
        a[:, : size // 2] *= 0.5
        out[i, 0] = a
    return out


def test_smoke_autoencoder_training_reduces_the_loss(tmp_path):
    torch.manual_seed(0)
    model = CSCIVFN(8, 2)
    train_set = tr.Crops(_smooth_images(64, 24, 0))
    val_set = tr.Crops(_smooth_images(16, 24, 1))
    step = tr.make_step(5.0)
    with torch.no_grad():
        before = float(step(model.eval(), val_set.batch(torch.arange(16)))[0])
    cfg = TrainConfig(
        seed=0,
        batch_size=8,
        epochs=6,
        optimizer="adam",
        lr=1e-2,
        weight_decay=0.0,
        schedule="step",
        lr_drop_at=(0.5,),
        checkpoint_every=1000,
        val_batch_size=16,
        threads=1,
    )
    res = train(model, train_set, val_set, step, cfg, run_dir=tmp_path, progress=False, log=lambda s: None)
    assert res.val_loss < 0.5 * before, (before, res.val_loss)
    scores = tr.reconstruction_scores(res.model, val_set)
    assert scores["psnr"] > 18


def test_ssim_map_is_one_for_identical_images_and_lower_for_noise():
    x = torch.from_numpy(_smooth_images(2, 32, 3))
    assert float(tr.ssim_map(x, x).mean()) == pytest.approx(1.0, abs=1e-5)
    noisy = (x + 0.2 * torch.randn_like(x)).clamp(0, 1)
    assert float(tr.ssim_map(noisy, x).mean()) < 0.7
    assert float(tr.autoencoder_loss(x, x)) == pytest.approx(0.0, abs=1e-5)


def test_smoke_run_training_writes_verified_weights_usable_by_the_method(device, tmp_path, data_dir):
    cfg = tr.get_config("smoke")
    cfg.data.n_train, cfg.data.n_val = 64, 16
    cfg.train.epochs = 1
    manifest = tr.run_training(cfg, tmp_path, progress=False, log=lambda s: None, command="test")
    pt = tmp_path / "csc_ivfn.pt"
    assert pt.is_file() and (tmp_path / "csc_ivfn.json").is_file()
    assert "PSNR" in (tmp_path / "csc_ivfn.md").read_text()
    assert manifest["model"] == "csc_ivfn" and manifest["net_config"]["channels"] == 8
    rng = np.random.default_rng(0)
    a, b = rng.random((40, 48)).astype(np.float32), rng.random((40, 48)).astype(np.float32)
    out = fuse([a, b], "csc_ivfn", weights=str(pt), device=device)
    assert out.fused.shape == (40, 48) and np.isfinite(out.fused).all()


# --------------------------------------------------------------------------- fusion rules


def test_saliency_hand_computed():
    lev = torch.tensor([[0, 0], [0, 255]])
    s = saliency(lev)
    # H(0) = 3/4, H(255) = 1/4: S(0) = 255/4, S(255) = 3*255/4
    torch.testing.assert_close(s, torch.tensor([[63.75, 63.75], [63.75, 191.25]]))


def test_l1_weights_follow_activity_and_sum_to_one():
    codes = torch.zeros(2, 4, 10, 10)
    codes[0, :, :, :5] = 1.0
    codes[1, :, :, 5:] = -2.0
    w = l1_weights(codes)
    torch.testing.assert_close(w.sum(0), torch.ones(10, 10))
    assert (w[0, :, :3] == 1).all() and (w[1, :, 7:] == 1).all()


def test_saliency_weights_favour_the_salient_source():
    # source 0: a bright square on a flat background (salient), source 1: flat noise
    g = torch.Generator().manual_seed(0)
    a = torch.zeros(1, 2, 64, 64)
    a[..., 24:40, 24:40] = 1.0
    b = 0.5 + 0.01 * torch.randn(1, 2, 64, 64, generator=g)
    w = saliency_weights(torch.cat([a, b]), radius=4, eps=0.01)
    torch.testing.assert_close(w.sum(0), torch.ones(2, 64, 64))
    assert float(w[0, :, 28:36, 28:36].mean()) > 0.6


@pytest.mark.parametrize("strategy", ["saliency", "l1", "average"])
def test_fuse_codes_strategies(strategy):
    g = torch.Generator().manual_seed(1)
    base, detail = torch.rand(2, 4, 20, 24, generator=g), torch.randn(2, 4, 20, 24, generator=g)
    fb, fd, wd, wb = fuse_codes(base, detail, strategy=strategy, gf_radius=5)
    assert fb.shape == fd.shape == (4, 20, 24) and wb.shape == (2, 20, 24)
    if strategy == "average":
        assert wd is None
        torch.testing.assert_close(fb, base.mean(0))
    else:
        torch.testing.assert_close(fd, (wd.unsqueeze(1) * detail).sum(0))
    # a convex combination: inside the sources' range
    assert (fb <= base.amax(0) + 1e-5).all() and (fb >= base.amin(0) - 1e-5).all()


# --------------------------------------------------------------------------- the method (shipped weights)


def _tno_pair(dataset, name="pair-01"):
    from napari_fusion.io import read_image

    d = dataset("irvis/tno_li2018") / name
    return read_image(d / "src_00.png"), read_image(d / "src_01.png")


@needs_weights
def test_shipped_weights_reconstruct_an_unseen_photograph(data_dir):
    from napari_fusion.methods.csc_ivfn import load_network
    from napari_fusion.training.data import list_photos, load_photos

    folder = data_dir / "train" / "bsds500" / "test"
    if not folder.is_dir():
        pytest.skip("bsds500/test not found")
    photo = load_photos(list_photos(folder)[:1])[0][:160, :160]
    net = load_network("", torch.device("cpu"))
    x = torch.from_numpy(photo)[None, None]
    with torch.no_grad():
        y = net(x)
    psnr = float(10 * torch.log10(1 / ((y - x) ** 2).mean()))
    # measured 23.6 dB for the shipped cpu weights (predicting the mean gives about 13 dB)
    assert psnr > 21.0, psnr


@needs_weights
@pytest.mark.parametrize("strategy", ["saliency", "l1", "average"])
def test_each_strategy_runs_on_a_real_pair(device, dataset, strategy):
    """Every strategy runs, and fuses: the result is not the plain average of the pair.

    Measured on this crop: mean |fused - average| 6.3 (average), 6.9 (saliency),
    7.7 (l1) grey levels; gradient energy 4.39 / 4.93 / 4.92 against 3.90 for
    the average; detail weights |w - 1/2| 0.107 (saliency, l1).
    """
    ir, vis = _tno_pair(dataset)
    ir, vis = ir[:96, :128], vis[:96, :128]
    before = (ir.copy(), vis.copy())
    out = fuse([ir, vis], "csc_ivfn", strategy=strategy, device=device)
    assert out.fused.shape == ir.shape and out.fused.dtype == ir.dtype
    np.testing.assert_array_equal(ir, before[0])
    np.testing.assert_array_equal(vis, before[1])
    assert out.weights.shape == (2, 96, 128)
    np.testing.assert_allclose(out.weights.sum(0), 1.0, atol=1e-5)
    assert (out.labels is None) == (strategy == "average")
    assert out.extras["base_weight"].shape == (2, 96, 128)

    def grad_energy(img):
        gy, gx = np.gradient(img)
        return np.hypot(gx, gy).mean()

    fused = out.fused.astype(np.float64)
    avg = (ir.astype(np.float64) + vis) / 2
    assert np.abs(fused - avg).mean() > 3.0, "csc_ivfn returned (nearly) the plain average"
    assert grad_energy(fused) > 1.05 * grad_energy(avg)
    if strategy != "average":  # detail codes chosen by activity: sharper than averaging, weights decided
        assert grad_energy(fused) > 1.15 * grad_energy(avg)
        assert np.abs(out.weights - 0.5).mean() > 0.05


@needs_weights
def test_fusion_keeps_hot_targets_and_visible_texture(device, dataset):
    """On a TNO pair the fused image keeps the IR hot spots (brighter there than the plain
    average) and the visible texture (more gradient energy than the plain average)."""
    from napari_fusion.metrics import get_metric

    ir, vis = _tno_pair(dataset)
    out = fuse([ir, vis], "csc_ivfn", device=device).fused.astype(np.float64)
    avg = fuse([ir, vis], "average", device=device).fused.astype(np.float64)
    irf = ir.astype(np.float64)
    hot = irf >= np.percentile(irf, 99)
    assert out[hot].mean() > avg[hot].mean() + 5
    q = get_metric("qabf")
    assert q(out, [ir, vis], None) > q(avg, [ir, vis], None)

    def grad_energy(img):
        gy, gx = np.gradient(img)
        return np.hypot(gx, gy).mean()

    assert grad_energy(out) > grad_energy(avg)


@needs_weights
def test_mixed_grey_ir_and_rgb_visible_keeps_visible_chroma(device):
    from napari_fusion.ops.colour import rgb_to_ycbcr

    rng = np.random.default_rng(0)
    h, w = 48, 64
    ir = (rng.random((h, w)) * 255).astype(np.uint8)
    vis = np.zeros((h, w, 3), np.uint8)
    vis[..., 0] = 150
    vis[..., 1] = np.linspace(80, 170, w).astype(np.uint8)[None]
    vis[..., 2] = 110
    out = fuse([ir, vis], "csc_ivfn", device=device)
    assert out.fused.shape == (h, w, 3) and out.fused.dtype == np.uint8
    # grey infrared first or second: the colour source is found either way
    out2 = fuse([vis, ir], "csc_ivfn", device=device)
    np.testing.assert_allclose(out2.fused.astype(float), out.fused.astype(float), atol=2)
    f = torch.from_numpy(out.fused.astype(np.float32) / 255).permute(2, 0, 1)
    v = torch.from_numpy(vis.astype(np.float32) / 255).permute(2, 0, 1)
    cf, cv = rgb_to_ycbcr(f)[1:], rgb_to_ycbcr(v)[1:]
    lo, hi = min(ir.min(), vis.min()), max(ir.max(), vis.max())
    inside = ((out.fused > lo) & (out.fused < hi)).all(-1)  # not clipped to the inputs' range
    assert inside.mean() > 0.5
    # chroma kept up to uint8 rounding
    assert float((cf - cv).abs()[:, torch.from_numpy(inside)].max()) < 0.01


def test_other_methods_still_refuse_mixed_grey_and_rgb():
    ir = np.zeros((16, 16), np.uint8)
    vis = np.zeros((16, 16, 3), np.uint8)
    with pytest.raises(FusionInputError, match="grey and RGB images are mixed"):
        fuse([ir, vis], "average")


def test_mixed_inputs_are_broadcast_without_touching_the_grey_image():
    from napari_fusion._inputs import check_items, prepare

    ir = np.arange(100, dtype=np.uint8).reshape(10, 10)
    vis = np.zeros((10, 10, 3), np.uint8)
    items, dtype, colour = check_items([ir, vis], mixed_colour=True)
    assert colour and items[0].shape == (10, 10, 3) and ir.shape == (10, 10)
    np.testing.assert_array_equal(items[0][..., 2], ir)
    p = prepare([ir, vis], mixed_colour=True)
    assert p.data.shape == (2, 3, 10, 10)


def test_mixed_inputs_on_the_lazy_path():
    da = pytest.importorskip("dask.array")
    from napari_fusion.tiling import lazy_stack

    ir = da.zeros((12, 12), dtype=np.uint8)
    vis = da.zeros((12, 12, 3), dtype=np.uint8)
    stack, _, colour = lazy_stack([ir, vis], mixed_colour=True)
    assert colour and stack.shape == (2, 12, 12, 3)
    with pytest.raises(FusionInputError, match="mixed"):
        lazy_stack([ir, vis])


@needs_weights
def test_bad_parameters_and_weights_give_clear_errors(tmp_path):
    a = np.zeros((16, 16), np.float32)
    b = np.ones((16, 16), np.float32)
    with pytest.raises(FusionInputError, match="strategy"):
        fuse([a, b], "csc_ivfn", strategy="max")
    with pytest.raises(FusionInputError, match="chroma_source"):
        fuse([a, b], "csc_ivfn", chroma_source=2)
    with pytest.raises(FusionInputError, match="gf_radius"):
        fuse([a, b], "csc_ivfn", gf_radius=-1)
    with pytest.raises(WeightsUnavailableError, match="not found"):
        fuse([a, b], "csc_ivfn", weights=str(tmp_path / "none.pt"))
    bad = tmp_path / "bad.pt"
    bad.write_bytes(SHIPPED.read_bytes())
    (tmp_path / "bad.json").write_text(SHIPPED.with_suffix(".json").read_text().replace('"sha256": "', '"sha256": "0'))
    with pytest.raises(WeightsUnavailableError, match="sha256"):
        fuse([a, b], "csc_ivfn", weights=str(bad))


@needs_weights
def test_three_sources_and_labels_name_the_detail_source(device):
    rng = np.random.default_rng(2)
    flat = np.full((40, 40), 0.5, np.float32)
    textured = (0.5 + 0.3 * rng.standard_normal((40, 40))).clip(0, 1).astype(np.float32)
    out = fuse([flat, textured, flat], "csc_ivfn", device=device)
    assert out.weights.shape == (3, 40, 40)
    assert (out.labels[5:-5, 5:-5] == 1).mean() > 0.9


def test_fused_in_network_tiles_equals_one_pass(monkeypatch):
    """Encoder and decoder in tiles (halo = their receptive radius) give the whole-image result."""
    import napari_fusion.methods.csc_ivfn as M

    rng = np.random.default_rng(1)
    a = rng.random((150, 140)).astype(np.float32)
    b = np.roll(a, 7, 0) ** 2
    monkeypatch.setattr(M, "NET_TILE", 10**6)
    whole = fuse([a, b], method="csc_ivfn").fused
    monkeypatch.setattr(M, "NET_TILE", 32)  # tiles smaller than the 21 px halo
    tiled = fuse([a, b], method="csc_ivfn").fused
    np.testing.assert_allclose(tiled, whole, rtol=0, atol=1e-5)


def _codes_that_count(base, detail, counts, *, keep):
    """SourceCodes over given codes, counting how often each kind of encoding is asked for."""
    from napari_fusion.methods.csc_ivfn import SourceCodes

    def encode(i):
        counts["both"] += 1
        return base[i].clone(), detail[i].clone()

    def encode_base(i):
        counts["base"] += 1
        return base[i].clone()

    def encode_detail(i):
        counts["detail"] += 1
        return detail[i].clone()

    return SourceCodes(base.shape[0], encode, encode_base, encode_detail, keep=keep)


@pytest.mark.parametrize("keep", [True, False])
@pytest.mark.parametrize("flat_corner", [False, True])
def test_source_streamed_saliency_rule_equals_the_rule_on_all_sources(monkeypatch, keep, flat_corner):
    """One source at a time (codes recomputed or kept), the fusion equals the paper's rule
    applied to every source's codes at once: weights (N, C, H, W) times the codes. With
    ``flat_corner`` every filtered weight is 0 in a corner: there the codes are averaged."""
    import napari_fusion.methods.csc_ivfn as M
    from napari_fusion.methods.csc_ivfn import fuse_source_codes

    if flat_corner:
        filtered = M.guided_filter

        def zero_corner(guide, src, r, eps):
            out = filtered(guide, src, r, eps)
            out[..., :4, :4] = -1.0
            return out

        monkeypatch.setattr(M, "guided_filter", zero_corner)

    gen = torch.Generator().manual_seed(4)
    base, detail = torch.randn((3, 5, 24, 31), generator=gen), torch.randn((3, 5, 24, 31), generator=gen)
    detail[:, :, :6, :6] = 0  # no activity anywhere there: fused detail 0
    counts = {"both": 0, "base": 0, "detail": 0}
    codes = _codes_that_count(base, detail, counts, keep=keep)
    fb, fd, wd, wb = fuse_source_codes(codes, strategy="saliency", gf_radius=4, gf_eps=0.01)
    w = saliency_weights(base, radius=4, eps=0.01)
    torch.testing.assert_close(fb, (w * base).sum(0))
    # each source's share of the (unnormalised) weights over the channels: near their channel mean
    torch.testing.assert_close(wb.sum(0), torch.ones(24, 31))
    assert (wb >= 0).all() and float((wb - w.mean(1)).abs().max()) < 0.01
    wl1 = l1_weights(detail)
    torch.testing.assert_close(wd, wl1)
    torch.testing.assert_close(fd, (wl1[:, None] * detail).sum(0))
    assert (fd[:, :5, :5] == 0).all()
    if flat_corner:
        torch.testing.assert_close(fb[:, :4, :4], base[:, :, :4, :4].mean(0))
    # kept: every source coded once; streamed: the details once, the base codes for the ranges, the
    # histograms, round 1 and round 2 (and once more for the flat corner)
    streamed = {"both": 0, "base": 15 if flat_corner else 12, "detail": 3}
    assert counts == ({"both": 3, "base": 0, "detail": 0} if keep else streamed)


def test_source_streamed_l1_and_average_rules_code_each_source_once_of_each_kind():
    from napari_fusion.methods.csc_ivfn import fuse_source_codes

    gen = torch.Generator().manual_seed(5)
    base, detail = torch.randn((4, 3, 16, 20), generator=gen), torch.randn((4, 3, 16, 20), generator=gen)
    for strategy in ("l1", "average"):
        counts = {"both": 0, "base": 0, "detail": 0}
        fb, fd, wd, wb = fuse_source_codes(_codes_that_count(base, detail, counts, keep=False), strategy=strategy)
        assert counts == {"both": 0, "base": 4, "detail": 4}
        if strategy == "l1":
            torch.testing.assert_close(fb, (l1_weights(base)[:, None] * base).sum(0))
            torch.testing.assert_close(wb, l1_weights(base))
        else:
            torch.testing.assert_close(fb, base.mean(0))
            torch.testing.assert_close(fd, detail.mean(0))
            assert wd is None
    torch.testing.assert_close(base, torch.randn((4, 3, 16, 20), generator=torch.Generator().manual_seed(5)))


@needs_weights
@pytest.mark.parametrize("strategy", ["saliency", "l1"])
def test_codes_recomputed_per_source_give_the_kept_result_whole_and_tiled(monkeypatch, strategy):
    """Large blocks code one source at a time (codes recomputed, never all held): the same
    fused image and labels as codes kept, untiled and in tiles with whole-image statistics."""
    import napari_fusion.methods.csc_ivfn as M

    rng = np.random.default_rng(3)
    a = rng.random((90, 110)).astype(np.float32)
    stack = [a, np.roll(a, 9, 1) ** 2, np.flipud(a) * 0.7]
    kept = fuse(stack, "csc_ivfn", strategy=strategy, gf_radius=6)
    monkeypatch.setattr(M, "KEEP_CODES_BYTES", 0)
    streamed = fuse(stack, "csc_ivfn", strategy=strategy, gf_radius=6)
    tiled = fuse(stack, "csc_ivfn", strategy=strategy, gf_radius=6, chunks=48).compute(scheduler="synchronous")
    for got in (streamed, tiled):
        np.testing.assert_allclose(got.fused, kept.fused, rtol=0, atol=1e-5)
        assert (got.labels != kept.labels).mean() <= 0.001
    np.testing.assert_allclose(streamed.weights, kept.weights, rtol=0, atol=1e-6)


def test_network_tiles_keep_feature_maps_off_fresh_pages_in_tiled_runs(monkeypatch):
    """Where large allocations are mapped (tiled runs), the encoder's tiles shrink so that its
    feature maps stay below that size; elsewhere they are NET_TILE."""
    import napari_fusion.methods.csc_ivfn as M
    import napari_fusion.ops.tiles as T
    from napari_fusion.ops.tiles import LARGE_ALLOCATION_BYTES

    monkeypatch.setattr(T, "large_allocations_mapped", lambda: False)
    assert M.net_tile(32, 21) == M.NET_TILE
    monkeypatch.setattr(T, "large_allocations_mapped", lambda: True)
    for channels, radius in ((32, 21), (64, 21), (32, 3)):
        t = M.net_tile(channels, radius)
        assert t % 8 == 0 and 32 <= t <= M.NET_TILE
        assert channels * (t + 2 * radius) ** 2 * 4 < LARGE_ALLOCATION_BYTES or t == 32
        assert t == M.NET_TILE or channels * (t + 8 + 2 * radius) ** 2 * 4 >= LARGE_ALLOCATION_BYTES
