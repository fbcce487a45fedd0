"""Li, Wu & Kittler 2018 VGG19 fusion: network layout, non-network steps on hand-computed
cases, and the whole method run with a small random VGG-shaped network injected on purpose
(the real ImageNet weights are not available on the test machines)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import napari_fusion as nf
from napari_fusion import WeightsUnavailableError
from napari_fusion import weights as W
from napari_fusion.io import read_image
from napari_fusion.methods import li2018_vgg19 as M
from napari_fusion.nets.vgg19 import LAYER_INDEX, VGG19, layer_stride, load_torchvision_state_dict
from napari_fusion.ops.colour import rgb_to_ycbcr
from napari_fusion.ops.decomposition import tikhonov_split

#: torchvision's vgg19().features parameter names and shapes (conv layers only).
TV_CONVS = {
    0: (64, 3),
    2: (64, 64),
    5: (128, 64),
    7: (128, 128),
    10: (256, 128),
    12: (256, 256),
    14: (256, 256),
    16: (256, 256),
    19: (512, 256),
    21: (512, 512),
    23: (512, 512),
    25: (512, 512),
    28: (512, 512),
    30: (512, 512),
    32: (512, 512),
    34: (512, 512),
}


def small_net(seed: int = 0) -> VGG19:
    torch.manual_seed(seed)
    return VGG19(depth=21, widths=(6, 8, 8, 12, 12)).eval()


@pytest.fixture
def no_weights(tmp_path, monkeypatch):
    """Make sure no real VGG19 weights are visible, even on a machine that has them."""
    monkeypatch.setattr(W.catalogue, "hub_checkpoints_dir", lambda: tmp_path / "empty-hub")
    monkeypatch.delenv("NAPARI_FUSION_VGG19_WEIGHTS", raising=False)


# ----------------------------------------------------------------------------- network


def test_parameter_names_match_torchvision():
    with torch.device("meta"):  # shapes only, no 80 MB allocation
        net = VGG19()
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    want = {}
    for i, (out_c, in_c) in TV_CONVS.items():
        want[f"features.{i}.weight"] = (out_c, in_c, 3, 3)
        want[f"features.{i}.bias"] = (out_c,)
    assert shapes == want
    assert LAYER_INDEX["conv4_1"] == 19 and LAYER_INDEX["relu4_1"] == 20 and LAYER_INDEX["pool5"] == 36
    assert [layer_stride(i) for i in M.LAYER_SETS["conv"]] == [1, 2, 4, 8]
    assert M.LAYER_SETS == {"conv": (0, 5, 10, 19), "relu": (1, 6, 11, 20)}


def test_load_torchvision_state_dict(tmp_path):
    src = VGG19(widths=(6, 8, 8, 12, 12))  # full depth, like a torchvision checkpoint
    state = dict(src.state_dict())
    state["classifier.0.weight"] = torch.randn(5, 7)  # torchvision also stores the classifier
    state["classifier.0.bias"] = torch.randn(5)
    path = tmp_path / "vgg19-like.pth"
    torch.save(state, path, _use_new_zipfile_serialization=False)  # torchvision's 2017 format
    loaded = W.load_state_dict(path)
    net = load_torchvision_state_dict(VGG19(depth=21, widths=(6, 8, 8, 12, 12)), loaded)
    for k, v in net.state_dict().items():
        assert torch.equal(v, state[k])
    missing = {k: v for k, v in state.items() if k != "features.19.bias"}
    with pytest.raises(ValueError, match="features.19.bias"):
        load_torchvision_state_dict(VGG19(depth=21, widths=(6, 8, 8, 12, 12)), missing)
    with pytest.raises(ValueError, match="shapes"):
        load_torchvision_state_dict(VGG19(depth=21), state)  # narrow weights into the real widths


def test_extract_keeps_pre_relu_values_and_strides():
    net = small_net()
    x = torch.randn(1, 3, 37, 53)
    feats = net.extract(x, [0, 1, 5, 6, 10, 19, 20])
    conv, relu = feats[0], feats[1]
    assert conv.min() < 0  # not overwritten by a ReLU
    torch.testing.assert_close(relu, conv.clamp_min(0))
    torch.testing.assert_close(feats[20], feats[19].clamp_min(0))
    assert feats[5].shape[-2:] == (18, 26) and feats[10].shape[-2:] == (9, 13)
    assert feats[19].shape[-2:] == (37 // 8, 53 // 8)


@pytest.mark.parametrize("wanted", [[19], [6, 20], [3, 11], [0, 2, 4]])
def test_extract_equals_the_layers_run_one_by_one(wanted):
    """The fast path (channels-last, a convolution and its ReLU in one call where the convolution's
    own output is not asked for) gives each layer's output, as running ``features`` module by module."""
    torch.manual_seed(1)
    net = small_net()
    x = torch.randn(1, 3, 45, 38)
    with torch.no_grad():
        want, y = {}, x
        for i, module in enumerate(net.features):
            y = module(y)
            want[i] = y
        got = net.extract(x, wanted)
    assert sorted(got) == sorted(wanted)
    for i in wanted:
        torch.testing.assert_close(got[i], want[i], rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------- non-network steps


def test_block_average_hand_case():
    a = torch.ones(1, 3, 3, dtype=torch.float64)
    got = M.block_average(a)[0]
    want = torch.tensor([[4, 6, 4], [6, 9, 6], [4, 6, 4]], dtype=torch.float64) / 9
    torch.testing.assert_close(got, want)


def test_ratio_weights_hand_case():
    act = torch.tensor([[[1.0, 0.0, 2.0]], [[3.0, 0.0, 2.0]]])
    w = M.ratio_weights(act)
    torch.testing.assert_close(w, torch.tensor([[[0.25, 0.5, 0.5]], [[0.75, 0.5, 0.5]]]))


def test_upsampling_leaves_no_zero_border():
    h, w = 37, 53
    small = torch.rand(2, h // 8, w // 8) + 0.1
    up = M.upsample_weights(small, 8, (h, w))
    assert up.shape == (2, h, w) and up.min() > 0
    torch.testing.assert_close(up[:, :8, :8], small[:, :1, :1].expand(2, 8, 8))
    torch.testing.assert_close(up[:, -1, -1], small[:, -1, -1])  # last block extended
    torch.testing.assert_close(up[:, 36, 10], small[:, 3, 1])
    assert torch.equal(M.upsample_weights(small, 1, tuple(small.shape[-2:])), small)


def test_signed_max_rule():
    # per pixel candidates from four layers
    cand = torch.tensor(
        [
            [[-0.5], [0.1]],
            [[-0.1], [0.3]],
            [[-0.2], [-0.9]],
            [[-0.3], [0.2]],
        ]
    ).reshape(4, 2, 1)
    assert M.select_detail(cand, rule="max").flatten().tolist() == [1, 1]  # -0.1 beats -0.5
    assert M.select_detail(cand, rule="absmax").flatten().tolist() == [0, 2]


def test_fuse_details_hand_case_and_consistency():
    h, w = 13, 21  # not multiples of 2, 4, 8
    g = torch.Generator().manual_seed(0)
    details = torch.randn(2, h, w, generator=g, dtype=torch.float64)
    strides = [1, 2, 4, 8]
    # constant activities 1 and 3 at every layer: weights 1/4 and 3/4 everywhere
    acts = [torch.stack([torch.ones(h // s, w // s), 3 * torch.ones(h // s, w // s)]).double() for s in strides]
    fused, weights, layer = M.fuse_details(details, acts, strides)
    torch.testing.assert_close(weights[0], torch.full((h, w), 0.25, dtype=torch.float64))
    torch.testing.assert_close(fused, 0.25 * details[0] + 0.75 * details[1])
    # random activities: chosen weights sum to one and reproduce the fused detail
    acts = [torch.rand(3, h // s, w // s, generator=g, dtype=torch.float64) for s in strides]
    d3 = torch.randn(3, h, w, generator=g, dtype=torch.float64)
    fused, weights, layer = M.fuse_details(d3, acts, strides)
    torch.testing.assert_close(weights.sum(0), torch.ones(h, w, dtype=torch.float64))
    torch.testing.assert_close(fused, (weights * d3).sum(0))
    # the fused value is the max of the four candidates
    cands = torch.stack(
        [
            (M.upsample_weights(M.ratio_weights(M.block_average(a)), s, (h, w)) * d3).sum(0)
            for a, s in zip(acts, strides)
        ]
    )
    torch.testing.assert_close(fused, cands.max(0).values)
    assert set(layer.unique().tolist()) <= {0, 1, 2, 3}


def test_streamed_detail_fusion_equals_the_whole_stack_formulation():
    """fuse_details (one layer's full-size weights at a time), upsample_weights (index selection)
    and the per-source split give bit for bit what holding everything at once gives."""
    import torch.nn.functional as F

    h, w = 37, 45  # not multiples of 2, 4, 8
    g = torch.Generator().manual_seed(3)
    strides = [1, 2, 4, 8]
    details = torch.randn(5, h, w, generator=g)
    acts = [torch.rand(5, -(-h // s), -(-w // s), generator=g) for s in strides]
    acts[2][:, :2] = 0.0  # all-zero activities: uniform weights there

    def upsampled(weights, stride):  # the replicate-and-pad formulation
        up = weights.repeat_interleave(stride, dim=-2).repeat_interleave(stride, dim=-1)[..., :h, :w]
        pad = (0, w - up.shape[-1], 0, h - up.shape[-2])
        return F.pad(up[None], pad, mode="replicate")[0] if any(pad) else up

    for act, stride in zip(acts, strides):
        small = act[:, : h // stride, : w // stride]  # sides that need the last block repeated
        assert torch.equal(M.upsample_weights(small, stride, (h, w)), upsampled(small, stride))
    per_layer = torch.stack([upsampled(M.ratio_weights(M.block_average(a)), s) for a, s in zip(acts, strides)])
    cand = (per_layer * details).sum(1)
    layer = M.select_detail(cand)
    fused, weights, got_layer = M.fuse_details(details, acts, strides)
    assert torch.equal(got_layer, layer)
    assert torch.equal(fused, cand.gather(0, layer[None])[0])
    assert torch.equal(weights, per_layer.gather(0, layer[None, None].expand(1, 5, h, w))[0])
    lum = torch.rand(4, h, w, generator=g)
    base, detail = tikhonov_split(lum, lam=5.0, pad=16)
    base_sum, got_detail = M._split_sources(lum, lam=5.0, pad=16)
    assert torch.equal(got_detail, detail)
    assert torch.equal(base_sum / 4, base.mean(0))


# ---------------------------------------------------------------- weights / test hook


def test_missing_weights_refuses(no_weights, tmp_path):
    a = np.zeros((16, 16), np.uint8)
    b = np.full((16, 16), 9, np.uint8)
    with pytest.raises(WeightsUnavailableError) as err:
        nf.fuse([a, b], method="li2018_vgg19")
    msg = str(err.value)
    assert "napari-fusion weights fetch vgg19" in msg and "NAPARI_FUSION_VGG19_WEIGHTS" in msg
    with pytest.raises(WeightsUnavailableError, match="does not exist"):
        nf.fuse([a, b], method="li2018_vgg19", weights=str(tmp_path / "missing.pth"))
    bad = tmp_path / "vgg19-dcbb9e9d.pth"
    bad.write_bytes(b"definitely not VGG19")
    with pytest.raises(W.WeightsChecksumError):
        nf.fuse([a, b], method="li2018_vgg19", weights=str(bad))
    # the test hook is scoped: after it, the method refuses again
    with M.untrained_network_for_tests(small_net()):
        nf.fuse([a, b], method="li2018_vgg19")
    with pytest.raises(WeightsUnavailableError):
        nf.fuse([a, b], method="li2018_vgg19")
    with pytest.raises(TypeError), M.untrained_network_for_tests(torch.nn.Conv2d(3, 3, 3)):
        pass


def test_registry_metadata():
    spec = nf.get_method("li2018_vgg19")
    assert spec.learned and spec.mode == "nway"
    assert set(spec.tasks) == {"infrared-visible", "medical"}
    assert spec.outputs == ("fused", "labels", "weights")
    assert spec.defaults() == {
        "layers": "conv",
        "selection": "max",
        "lam": 5.0,
        "pad": 16,
        "chroma_source": -1,
        "weights": "",
    }
    with pytest.raises(nf.FusionInputError):
        spec.resolve_params({"layers": "pool"})


# ------------------------------------------------------------------ end to end (random net)


def test_tno_pair_end_to_end(dataset, no_weights):
    case = dataset("irvis/tno_li2018") / "pair-01"
    ir, vis = read_image(case / "src_00.png"), read_image(case / "src_01.png")
    ir, vis = ir[60:190, 100:300], vis[60:190, 100:300]  # 130x200 around the person: quicker
    ir0, vis0 = ir.copy(), vis.copy()
    with M.untrained_network_for_tests(small_net()):
        res = nf.fuse([ir, vis], method="li2018_vgg19")
        res_relu = nf.fuse([ir, vis], method="li2018_vgg19", layers="relu")
    assert np.array_equal(ir, ir0) and np.array_equal(vis, vis0)
    assert res.fused.dtype == np.uint8 and res.fused.shape == ir.shape
    assert res.weights.shape == (2, *ir.shape)
    np.testing.assert_allclose(res.weights.sum(0), 1.0, atol=1e-5)
    assert set(np.unique(res.labels)) == {0, 1}
    assert np.array_equal(res.labels, res.weights.argmax(0))
    # fused = mean of the Tikhonov base layers + the fused detail, recomputed independently
    lo, hi = float(min(ir.min(), vis.min())), float(max(ir.max(), vis.max()))
    stack = (torch.from_numpy(np.stack([ir, vis]).astype(np.float64)) - lo) / (hi - lo)
    base, detail = tikhonov_split(stack, lam=5.0, pad=16)
    fused_detail = (torch.from_numpy(res.weights).double() * detail).sum(0)
    np.testing.assert_allclose(res.extras["detail"], fused_detail.numpy(), atol=1e-4)
    want = np.clip(np.rint(((base.mean(0) + fused_detail) * (hi - lo) + lo).numpy()), lo, hi)
    assert np.abs(res.fused.astype(float) - want).max() <= 1
    # detail is really fused: the output keeps more high frequencies than the plain average
    avg = (ir.astype(float) + vis) / 2
    assert np.abs(np.diff(res.fused.astype(float), axis=1)).mean() > np.abs(np.diff(avg, axis=1)).mean()
    assert not np.array_equal(res.fused, res_relu.fused)


def test_colour_keeps_visible_chroma(dataset, no_weights):
    case = dataset("irvis/vifb") / "carLight"
    ir, vis = read_image(case / "src_00.jpg"), read_image(case / "src_01.jpg")
    if ir.ndim == 2:
        ir = np.repeat(ir[..., None], 3, axis=-1)
    ir, vis = ir[:96, :128], vis[:96, :128]  # keep the test quick
    with M.untrained_network_for_tests(small_net()):
        res = nf.fuse([ir, vis], method="li2018_vgg19")
        res_swapped = nf.fuse([vis, ir], method="li2018_vgg19")
    assert res.fused.shape == vis.shape
    assert M.visible_source(torch.from_numpy(np.stack([ir, vis]).astype(np.float32)).movedim(-1, 1) / 255) == 1

    def chroma(img):
        return rgb_to_ycbcr(torch.from_numpy(img.astype(np.float64) / 255).movedim(-1, 0), channel_dim=0)[1:]

    # the output's chroma is the visible image's (up to 8-bit rounding and clipping)
    inner = (slice(None), slice(2, -2), slice(2, -2))
    assert (chroma(res.fused) - chroma(vis))[inner].abs().median() < 0.01
    assert (chroma(res.fused) - chroma(vis)).abs().mean() < (chroma(ir) - chroma(vis)).abs().mean() / 3
    # automatic choice follows the content, not the order
    assert (chroma(res_swapped.fused) - chroma(vis))[inner].abs().median() < 0.01


def test_three_sources_and_bad_chroma_source(no_weights):
    g = np.random.default_rng(3)
    imgs = [(g.random((37, 53)) * 255).astype(np.uint8) for _ in range(3)]
    with M.untrained_network_for_tests(small_net()):
        res = nf.fuse(imgs, method="li2018_vgg19", selection="absmax")
        assert set(np.unique(res.labels)) <= {0, 1, 2} and len(np.unique(res.labels)) == 3
        np.testing.assert_allclose(res.weights.sum(0), 1.0, atol=1e-5)
        # no zero-weight border for a size that is not a multiple of 8
        assert res.weights.max(0)[-5:, :].min() > 0.2 and res.weights.max(0)[:, -5:].min() > 0.2
        with pytest.raises(nf.FusionInputError, match="chroma_source"):
            nf.fuse(imgs, method="li2018_vgg19", chroma_source=3)


@pytest.mark.slow
def test_real_weights_reproduce_authors(device, dataset):
    """Only where the real ImageNet weights exist: compare with the authors' own output."""
    if not W.weights_status("vgg19").found:
        pytest.skip("torchvision VGG19 weights not available (napari-fusion weights fetch vgg19)")
    from skimage.metrics import structural_similarity

    case = dataset("irvis/tno_li2018") / "pair-01"
    ir, vis = read_image(case / "src_00.png"), read_image(case / "src_01.png")
    ref = read_image(case / "reference" / "Li2018.png")
    res = nf.fuse([ir, vis], method="li2018_vgg19", device=device)
    ours = structural_similarity(res.fused, ref, data_range=255)
    average = ((ir.astype(np.float64) + vis) / 2).round().astype(np.uint8)
    # closer to the authors' output than the plain average of the inputs is (SSIM 0.9978 on this pair)
    assert ours > structural_similarity(average, ref, data_range=255)


def test_weights_file_path_end_to_end(device, tmp_path, monkeypatch, no_weights):
    """The user path (locate -> verify -> load torchvision-named file -> run), exercised with a
    full-width random VGG19 saved like torchvision's checkpoint; only the expected checksum is
    swapped for this file's."""
    torch.manual_seed(1)
    src = VGG19(depth=21).eval()
    state = {**src.state_dict(), "classifier.6.weight": torch.zeros(10, 4), "classifier.6.bias": torch.zeros(10)}
    path = tmp_path / "my-vgg19.pth"
    torch.save(state, path, _use_new_zipfile_serialization=False)
    spec = W.WeightsSpec(**{**W.VGG19_IMAGENET.__dict__, "sha256": W.sha256_of(path)})
    monkeypatch.setattr(M, "VGG19_IMAGENET", spec)
    W.clear_cache()
    g = np.random.default_rng(0)
    a = (g.random((24, 40)) * 255).astype(np.uint8)
    b = (g.random((24, 40)) * 255).astype(np.uint8)
    from_file = nf.fuse([a, b], method="li2018_vgg19", weights=str(path), device=device)
    with M.untrained_network_for_tests(src):
        direct = nf.fuse([a, b], method="li2018_vgg19", device=device)
    assert np.array_equal(from_file.fused, direct.fused)
    assert np.array_equal(from_file.labels, direct.labels)
    # the cached network is usable outside inference mode too
    net = M.load_network(str(path))
    assert not any(p.is_inference() for p in net.parameters())
    # a state dict with other key names is refused with a clear message
    other = tmp_path / "renamed.pth"
    torch.save({k.replace("features", "body"): v for k, v in state.items()}, other)
    monkeypatch.setattr(M, "VGG19_IMAGENET", W.WeightsSpec(**{**spec.__dict__, "sha256": W.sha256_of(other)}))
    with pytest.raises(WeightsUnavailableError, match="features.0.weight"):
        nf.fuse([a, b], method="li2018_vgg19", weights=str(other))


def test_receptive_radius_is_the_true_reach():
    """Changing one input pixel changes relu4_1 exactly up to receptive_radius pixels away."""
    from napari_fusion.nets.vgg19 import receptive_radius

    net = small_net()
    k = LAYER_INDEX["relu4_1"]
    r = receptive_radius(k)
    assert r == 37  # 3x3 convs and 2x2 pools up to relu4_1
    x = torch.rand(1, 3, 160, 160)
    with torch.no_grad():
        base = net.extract(x, [k])[k]
        y = x.clone()
        y[..., 80, 80] += 1.0
        diff = (net.extract(y, [k])[k] - base).abs().sum(1)[0]
    rows = torch.nonzero(diff.sum(1) > 0).flatten() * layer_stride(k)
    # the changed outputs cover input rows within r of the pixel (at the output stride)
    assert rows.min() >= 80 - r and rows.max() + layer_stride(k) - 1 <= 80 + r


def test_layer_activities_in_tiles_equal_one_pass():
    """The VGG19 pass in tiles (halo = receptive radius, aligned to stride 8) equals a whole-image
    pass, for tiles smaller than the halo and an image size that is not a multiple of 8."""
    net = small_net()
    ids = M.LAYER_SETS[next(iter(M.LAYER_SETS))]
    details = torch.rand(2, 203, 157) - 0.5
    with torch.no_grad():
        whole = M.layer_activities(net, details, ids, tile=10**6)
        for tile in (8, 24, 64):
            got = M.layer_activities(net, details, ids, tile=tile)
            for a, b in zip(got, whole):
                assert a.shape == b.shape
                torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


@pytest.mark.parametrize("lam", [0.5, 5.0, 50.0])
def test_tikhonov_reach_bounds_the_response_to_one_pixel(lam):
    """Beyond ``tikhonov_reach`` the base layer's response to a unit impulse is below 1e-8 of
    the impulse (the tiled halo relies on it); a quarter of the reach is not enough (control)."""
    from napari_fusion.methods.li2018_vgg19 import tikhonov_reach
    from napari_fusion.ops.decomposition import tikhonov_base

    reach = tikhonov_reach(lam)
    size = 2 * reach + 41
    x = torch.zeros((size, size), dtype=torch.float64)
    x[size // 2, size // 2] = 1.0
    base = tikhonov_base(x, lam=lam, pad=size).abs()
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    dist = torch.maximum((yy - size // 2).abs(), (xx - size // 2).abs())
    assert float(base[dist > reach].max()) < 1e-8
    assert float(base[dist > reach // 4].max()) > 1e-6
