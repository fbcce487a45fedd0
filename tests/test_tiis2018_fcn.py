"""The two-stream conv-fusion-deconv network (KSII TIIS 2018), its training and the tiis2018_fcn method."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

import napari_fusion as nf
from napari_fusion.errors import FusionInputError, WeightsUnavailableError
from napari_fusion.methods.tiis2018_fcn import default_weights_path, load_two_stream_net, run_net_tiled
from napari_fusion.nets.tiis2018_fcn import TwoStreamFusionNet, receptive_radius
from napari_fusion.training.tiis2018_fcn import (
    build_model,
    fusion_step,
    get_config,
    gradient_mse,
    region_mask,
    run_training,
    sample_fusion_examples,
)
from napari_fusion.weights import read_manifest, sha256_file


def _psnr(a, b):
    mse = np.mean((a.astype(float) - b.astype(float)) ** 2)
    return 10 * np.log10(255.0**2 / mse)


# --- network ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"kernel": 3, "width": 8, "layout": (3, 2, 1)},
        {"kernel": 7, "width": 6, "layout": (1, 1, 3)},
        {"width": 8, "shared_streams": True},
    ],
)
@pytest.mark.parametrize("size", [(37, 53), (10, 11), (64, 21)])
def test_network_preserves_any_size(kw, size):
    torch.manual_seed(0)
    net = TwoStreamFusionNet(init="kaiming", **kw)
    if min(size) <= net.halo:
        pytest.skip("smaller than this layout's receptive radius")
    a, b = torch.rand(2, 2, 1, *size)
    out = net(a, b)
    assert out.shape == (2, 1, *size)
    assert (out >= 0).all()  # final ReLU


def test_network_structure_follows_the_paper():
    net = TwoStreamFusionNet()
    assert net.layout == (2, 1, 2) and net.width == 64 and net.kernel == 5
    assert [type(m).__name__ for m in net.decoder] == ["ConvTranspose2d"] * 2
    assert net.fusion[0].kernel_size == (1, 1) and net.fusion[0].in_channels == 128
    assert not any(isinstance(m, (torch.nn.MaxPool2d, torch.nn.AvgPool2d)) for m in net.modules())
    assert net.stream_a is not net.stream_b  # two streams with their own weights
    assert net.halo == receptive_radius() == 8


def test_average_initialisation_outputs_the_mean():
    a, b = torch.rand(2, 3, 1, 29, 40)
    for kw in ({}, {"kernel": 3, "layout": (3, 2, 1), "width": 8}):
        out = TwoStreamFusionNet(**kw)(a, b)
        torch.testing.assert_close(out, (a + b) / 2, atol=1e-6, rtol=0)


def test_receptive_field_is_the_halo():
    """Changing an input pixel changes outputs within the halo only."""
    torch.manual_seed(1)
    net = TwoStreamFusionNet(width=8, init="kaiming").eval()
    a, b = torch.rand(2, 1, 1, 41, 41)
    a2 = a.clone()
    a2[..., 20, 20] += 1
    with torch.no_grad():
        diff = (net(a2, b) - net(a, b)).abs()[0, 0]
    ys, xs = torch.nonzero(diff > 0, as_tuple=True)
    assert ys.numel() > 0
    assert int((ys - 20).abs().max()) <= net.halo and int((xs - 20).abs().max()) <= net.halo


@pytest.mark.parametrize("kw", [{}, {"kernel": 3, "layout": (1, 1, 3), "width": 8}])
def test_unpadded_network_equals_the_padded_one_away_from_the_edges(kw):
    """pad=False leaves out the reflect padding: the output is the padded network's wherever it
    has a halo of real context; narrowing layouts (more conv than deconv layers) refuse it."""
    torch.manual_seed(2)
    net = TwoStreamFusionNet(init="kaiming", **kw).eval()
    r = net.halo
    a, b = torch.rand(2, 1, 1, 37, 52)
    with torch.no_grad():
        padded, unpadded = net(a, b), net(a, b, pad=False)
    assert unpadded.shape == padded.shape
    torch.testing.assert_close(unpadded[..., r:-r, r:-r], padded[..., r:-r, r:-r], atol=1e-5, rtol=0)
    assert float((unpadded - padded).abs().max()) > 1e-3  # the edges do differ: the padding matters there
    with pytest.raises(ValueError, match="pad=True"):
        TwoStreamFusionNet(kernel=3, layout=(3, 1, 1))(a, b, pad=False)


@pytest.mark.parametrize("layout", [(2, 1, 2), (3, 1, 1)])
def test_tiled_network_equals_a_whole_image_pass(layout):
    """run_net_tiled (image padded once, tiles unpadded; or each tile padded by a narrowing
    layout) gives the whole-image network's output, at every tile size."""
    torch.manual_seed(3)
    net = TwoStreamFusionNet(kernel=5, layout=layout, width=8, init="kaiming").eval()
    a, b = torch.rand(2, 2, 61, 45)
    with torch.no_grad():
        whole = net(a[:, None], b[:, None])[:, 0].clamp(0, 1)
    for tile in (16, 40, 100):
        torch.testing.assert_close(run_net_tiled(net, a, b, tile=tile), whole, atol=1e-5, rtol=0)


def test_network_rejects_bad_configurations():
    with pytest.raises(ValueError):
        TwoStreamFusionNet(kernel=4)
    with pytest.raises(ValueError):
        TwoStreamFusionNet(layout=(0, 1, 2))
    with pytest.raises(ValueError, match="larger than"):
        TwoStreamFusionNet()(torch.rand(1, 1, 8, 30), torch.rand(1, 1, 8, 30))


# --- training data and smoke training -----------------------------------------------------------


@pytest.fixture(scope="module")
def photos():
    from skimage import data

    return [data.camera()[::2, ::2] / 255.0, data.astronaut()[::2, ::2, 1] / 255.0, data.coffee()[::2, ::2, 0] / 255.0]


def test_examples_are_complementary(photos):
    a, b, s = sample_fusion_examples(photos, n=24, seed=3, patch=32)
    assert a.shape == b.shape == s.shape == (24, 32, 32)
    ai, bi, si = (x.astype(int) for x in (a, b, s))
    # every pixel is sharp in at least one source (up to the blur of flat areas, which equals S)
    assert (np.minimum(np.abs(ai - si), np.abs(bi - si)) == 0).mean() > 0.99
    # and the blurred part really differs from S somewhere
    assert (np.abs(ai - si) > 2).any() and (np.abs(bi - si) > 2).any()
    for kind in ("edge", "ellipse", "blob", "whole"):
        m = region_mask(20, np.random.default_rng(0), kind)
        assert m.shape == (20, 20) and m.dtype == bool


def test_both_sharp_examples_leave_one_source_sharp(photos):
    """``both_sharp`` keeps one source sharp everywhere in that share of examples; 0 is the paper's recipe."""
    base = sample_fusion_examples(photos, n=60, seed=5, patch=32)
    again = sample_fusion_examples(photos, n=60, seed=5, patch=32, both_sharp=0.0)
    for x, y in zip(base, again):
        np.testing.assert_array_equal(x, y)  # the paper's examples, draw for draw
    a, b, s = sample_fusion_examples(photos, n=400, seed=5, patch=32, both_sharp=0.5)
    sharp_a = (a == s).reshape(len(s), -1).all(1)
    sharp_b = (b == s).reshape(len(s), -1).all(1)
    # both-sharp examples (about half) plus the 'whole' masks (about a tenth per source) of the rest
    assert 0.45 < (sharp_a | sharp_b).mean() < 0.75
    assert 0.35 < sharp_a.mean() / (sharp_a.mean() + sharp_b.mean()) < 0.65  # neither position favoured
    a0, b0, s0 = base
    assert (a0 == s0).reshape(len(s0), -1).all(1).mean() < 0.25
    # a complementary region is still blurred in the other source
    assert ((np.abs(a.astype(int) - s) > 2) | (np.abs(b.astype(int) - s) > 2)).reshape(len(s), -1).any(1).mean() > 0.8


def test_smoke_training_beats_its_starting_point(device, photos, tmp_path):
    """The smoke config, trained on a few photos, lowers the held-out MSE below the plain average."""
    folder = tmp_path / "photos"
    folder.mkdir()
    from napari_fusion.io import write_image

    for i, p in enumerate(photos * 3):
        write_image(folder / f"p{i}.png", (np.asarray(p) * 255).astype(np.uint8))
    cfg = get_config("smoke")
    cfg.data.photos = str(folder)
    cfg.data.min_sharp_fraction = 0.0
    manifest = run_training(cfg, tmp_path / "run", progress=False, command="test", log=lambda *_: None)
    t = manifest["training"]
    assert t["val_psnr"] > t["val_psnr_average"] + 0.3
    hist = json.loads((tmp_path / "run" / "tiis2018_fcn.json").read_text())
    assert hist["sha256"] == sha256_file(tmp_path / "run" / "tiis2018_fcn.pt")
    assert (tmp_path / "run" / "tiis2018_fcn.md").is_file()
    # the trained file works through the method's weights= parameter
    img = (np.asarray(photos[0])[:40, :50] * 255).astype(np.uint8)
    r = nf.fuse([img, img], "tiis2018_fcn", weights=str(tmp_path / "run" / "tiis2018_fcn.pt"), device=device)
    assert r.fused.shape == img.shape


def test_step_counts_patches_beating_the_average():
    torch.manual_seed(0)
    net = build_model(get_config("smoke"))
    a, b, s = torch.rand(3, 4, 1, 20, 20)
    loss, better, n = fusion_step(net, (a, b, s))
    assert n == 4 and better == 0  # the untrained network is the average: never strictly better
    torch.testing.assert_close(loss, torch.mean(((a + b) / 2 - s) ** 2))


def test_gradient_term_weighs_edges_not_offsets():
    """--grad-loss: the gradient term ignores a constant offset (which the MSE counts) and grows with
    blur (which the MSE counts little of); weight 0 is the paper's MSE alone."""
    torch.manual_seed(0)
    s = torch.rand(2, 1, 24, 24)
    assert float(gradient_mse(s + 0.1, s)) == pytest.approx(0.0, abs=1e-12)
    blurred = torch.nn.functional.avg_pool2d(s, 3, stride=1, padding=1, count_include_pad=False)
    assert float(gradient_mse(blurred, s)) > 4 * float(torch.mean((blurred - s) ** 2))
    net = build_model(get_config("smoke"))
    a, b = torch.rand(2, 2, 1, 24, 24)
    plain, _, _ = fusion_step(net, (a, b, s))
    both, _, _ = fusion_step(net, (a, b, s), grad_weight=2.0)
    torch.testing.assert_close(both, plain + 2.0 * gradient_mse(net(a, b), s))


# --- the method with the shipped weights -----------------------------------------------------


def test_shipped_weights_match_their_manifest():
    path = default_weights_path()
    m = read_manifest(path)
    assert m["sha256"] == sha256_file(path)
    assert m["architecture"] == "TwoStreamFusionNet"
    assert m["net"] == {"channels": 1, "width": 64, "kernel": 5, "layout": [2, 1, 2], "shared_streams": False}
    assert path.with_suffix(".md").is_file() and path.stat().st_size < 5_000_000


def test_registry_entry():
    spec = nf.get_method("tiis2018_fcn")
    assert spec.mode == "pairwise" and spec.learned and spec.tasks == ("multi-focus",)
    assert spec.defaults() == {
        "colour": "luma",
        "output": "network",
        "smooth_radius": 4,
        "tile": 256,
        "weights": "",
        "precision": "float32",
        "fold": "tree",
    }
    assert spec.halo_for(spec.defaults()) == 8 + 4


def test_tiles_do_not_change_the_result():
    net = load_two_stream_net("", torch.device("cpu"))
    a, b = torch.rand(2, 1, 45, 70)
    whole = run_net_tiled(net, a, b, tile=512)
    tiled = run_net_tiled(net, a, b, tile=32)
    torch.testing.assert_close(whole, tiled, atol=1e-5, rtol=0)


def test_tiled_runs_keep_the_network_maps_off_fresh_pages(monkeypatch):
    """Where large allocations get their own mappings (tiled runs), the network's tiles shrink so
    that its largest feature map stays below that size (page faults cost more than the
    convolutions); elsewhere the requested tile is used. The result does not change."""
    import napari_fusion.ops.tiles as T

    net = load_two_stream_net("", torch.device("cpu"))
    a, b = torch.rand(2, 1, 300, 260)
    largest: list[int] = []
    hooks = [m.register_forward_hook(lambda m, i, o: largest.append(o.numel())) for m in net.modules()
             if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)) and m.out_channels == net.width]  # fmt: skip
    try:
        monkeypatch.setattr(T, "large_allocations_mapped", lambda: False)
        whole = run_net_tiled(net, a, b, tile=256)
        assert max(largest) * 4 >= T.LARGE_ALLOCATION_BYTES  # 256 px tiles: maps of 4 MiB or more
        largest.clear()
        monkeypatch.setattr(T, "large_allocations_mapped", lambda: True)
        tiled = run_net_tiled(net, a, b, tile=256)
        assert max(largest) * 4 < T.LARGE_ALLOCATION_BYTES
        assert max(largest) * 4 > T.LARGE_ALLOCATION_BYTES * 0.7  # not needlessly small
    finally:
        for h in hooks:
            h.remove()
    torch.testing.assert_close(whole, tiled, atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def half_blurred_pair():
    """Astronaut crop: A sharp on the left half, B sharp on the right half (sigma 4 blur elsewhere)."""
    from scipy import ndimage
    from skimage import data

    img = data.astronaut()[20:140, 150:310].astype(np.float64)
    blur = ndimage.gaussian_filter(img, (4, 4, 0), mode="reflect")
    left = np.zeros(img.shape[:2], bool)
    left[:, : img.shape[1] // 2] = True
    a = np.where(left[..., None], img, blur)
    b = np.where(left[..., None], blur, img)
    to8 = lambda x: np.clip(np.rint(x), 0, 255).astype(np.uint8)  # noqa: E731
    return to8(a), to8(b), img.astype(np.uint8), left


def test_labels_point_to_the_sharp_source(device, half_blurred_pair):
    a, b, gt, left = half_blurred_pair
    a0, b0 = a.copy(), b.copy()
    r = nf.fuse([a, b], "tiis2018_fcn", device=device)
    np.testing.assert_array_equal(a, a0)  # inputs not modified
    np.testing.assert_array_equal(b, b0)
    # textured pixels away from the boundary: the output is closer to the sharp source
    from napari_fusion.training.data import texture_map

    grey = gt.mean(-1) / 255.0
    textured = texture_map(grey, radius=4).numpy() > 1e-3
    cols = np.arange(gt.shape[1])
    away = np.abs(cols - gt.shape[1] // 2) > 12
    m = textured & away[None, :]
    truth = (~left).astype(int)
    assert (r.labels[m] == truth[m]).mean() > 0.9
    np.testing.assert_allclose(r.weights.sum(0), 1, atol=1e-5)
    assert _psnr(r.fused, gt) > _psnr(((a.astype(float) + b) / 2), gt) + 1


def test_colour_modes_and_stacks(device, half_blurred_pair):
    a, b, gt, _ = half_blurred_pair
    luma = nf.fuse([a, b], "tiis2018_fcn", device=device)
    chan = nf.fuse([a, b], "tiis2018_fcn", device=device, colour="channels")
    assert luma.fused.shape == chan.fused.shape == a.shape and luma.fused.dtype == np.uint8
    assert abs(_psnr(luma.fused, gt) - _psnr(chan.fused, gt)) < 3
    grey = nf.fuse([a[..., 1], b[..., 1], a[..., 1]], "tiis2018_fcn", device=device)  # folded pairwise
    assert grey.fused.shape == a.shape[:2] and set(np.unique(grey.labels)) <= {0, 1, 2}


@pytest.mark.data
def test_shipped_weights_beat_the_average_on_kodak_renders(device, data_dir):
    """Paper protocol on photographs not used in training: complementary regions, sigma 2-10."""
    folder = data_dir / "train" / "kodak24"
    if not folder.is_dir():
        pytest.skip("kodak24 not found")
    from napari_fusion.io import read_image

    sys_path_bench = __import__("pathlib").Path(__file__).resolve().parents[1] / "benchmarks"
    import importlib.util

    spec = importlib.util.spec_from_file_location("two_stream_synthetic", sys_path_bench / "two_stream_synthetic.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    gains = []
    for i, name in enumerate(["kodim03.png", "kodim08.png"]):
        img = read_image(folder / name)[100:260, 200:360]
        (a, b), _ = bench.region_render(img, i)
        r = nf.fuse([a, b], "tiis2018_fcn", device=device)
        gains.append(_psnr(r.fused, img) - _psnr((a.astype(float) + b) / 2, img))
    assert min(gains) > 1.0, gains


@pytest.mark.data
def test_decision_output_beats_the_average_on_mf_voc(device, dataset):
    from napari_fusion.datasets import iter_cases

    cases = iter_cases(dataset("multifocus/mf_voc"))[:4]
    gains = []
    for case in cases:
        a, b = case.load_sources()
        gt = case.load_gt()
        r = nf.fuse([a, b], "tiis2018_fcn", device=device, output="decision")
        assert set(np.unique(r.weights)) <= {0.0, 1.0}
        gains.append(_psnr(r.fused, gt) - _psnr((a.astype(float) + b) / 2, gt))
    assert np.mean(gains) > 3.0, gains


@pytest.mark.data
def test_bfloat16_network_on_real_pairs_stays_close_to_float32(device, dataset):
    """``precision="bfloat16"`` runs a bfloat16 copy of the network (made once): on real MF-VOC
    pairs the fused image stays within a small distance of float32's and as good against the
    ground truth (measured over 40 cases: 52.5 dB apart, 38.67 against 38.78 dB)."""
    import warnings

    import torch

    from napari_fusion.datasets import iter_cases
    from napari_fusion.methods.tiis2018_fcn import in_precision, load_two_stream_net

    for case in iter_cases(dataset("multifocus/mf_voc"))[:3]:
        a, b = case.load_sources()
        gt = case.load_gt()
        r32 = nf.fuse([a, b], "tiis2018_fcn", device=device)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # slower on CPUs without bfloat16 units, still correct
            r16 = nf.fuse([a, b], "tiis2018_fcn", device=device, precision="bfloat16")
        assert not np.array_equal(r32.fused, r16.fused)  # it did run in bfloat16
        assert _psnr(r16.fused, r32.fused) > 45
        assert abs(_psnr(r16.fused, gt) - _psnr(r32.fused, gt)) < 0.5
        assert (r16.labels == r32.labels).mean() > 0.8
    net = load_two_stream_net(None, torch.device(device))
    half = in_precision(net, torch.bfloat16)
    assert half is in_precision(net, torch.bfloat16) and in_precision(net, torch.float32) is net
    assert next(half.parameters()).dtype == torch.bfloat16 and next(net.parameters()).dtype == torch.float32


@pytest.mark.data
def test_network_returns_a_real_photograph_fused_with_itself(device, dataset):
    """A real Lytro source fused with itself comes back nearly unchanged: no invented detail.

    The weights trained on the paper's pairs alone (every pixel sharp in exactly one source)
    sharpened such pairs: RMS 8.8 and 7.5 grey levels on these two crops, mean gradient
    1.50x and 1.32x the source's. The shipped weights, trained with 30 % both-sharp examples:
    RMS 1.2 and 1.3, gradient 1.04x and 1.03x.
    """
    from napari_fusion.datasets import iter_cases

    def grad(x):
        g = x.astype(np.float64).mean(-1)
        return np.hypot(np.diff(g, axis=1)[:-1], np.diff(g, axis=0)[:, :-1]).mean()

    cases = {c.name: c for c in iter_cases(dataset("multifocus/lytro"))}
    for name in ("lytro-01", "lytro-05"):
        src = cases[name].load_sources()[0][100:356, 100:356]
        out = nf.fuse([src, src], "tiis2018_fcn", device=device).fused
        rms = float(np.sqrt(np.mean((out.astype(np.float64) - src) ** 2)))
        assert rms < 3.0, (name, rms)
        assert 0.9 < grad(out) / grad(src) < 1.1, name


def test_bad_inputs_and_weights(device, tmp_path, half_blurred_pair):
    a, b, _, _ = half_blurred_pair
    with pytest.raises(FusionInputError, match="larger than"):
        nf.fuse([a[:8, :30], b[:8, :30]], "tiis2018_fcn", device=device)
    with pytest.raises(FusionInputError, match="colour"):
        nf.fuse([a, b], "tiis2018_fcn", device=device, colour="rgb")
    with pytest.raises(WeightsUnavailableError, match="napari-fusion train tiis2018_fcn"):
        nf.fuse([a, b], "tiis2018_fcn", weights=str(tmp_path / "none.pt"), device=device)
    src = default_weights_path()
    bad = tmp_path / "w.pt"
    shutil.copy(src, bad)
    shutil.copy(src.with_suffix(".json"), bad.with_suffix(".json"))
    with open(bad, "r+b") as f:
        f.seek(2000)
        byte = f.read(1)
        f.seek(2000)
        f.write(bytes([byte[0] ^ 0x01]))
    with pytest.raises(WeightsUnavailableError, match="sha256"):
        nf.fuse([a, b], "tiis2018_fcn", weights=str(bad), device=device)
    # a manifest that declares another architecture is refused
    shutil.copy(src, bad)
    m = json.loads(src.with_suffix(".json").read_text())
    m["net"]["width"] = 32
    bad.with_suffix(".json").write_text(json.dumps(m))
    with pytest.raises(WeightsUnavailableError, match="do not fit"):
        nf.fuse([a, b], "tiis2018_fcn", weights=str(bad), device=device)


def test_training_cli_registered():
    from napari_fusion.cli import build_parser

    args = build_parser().parse_args(["train", "two_stream", "--config", "smoke", "--layout", "3-1-2", "--out", "x"])
    from napari_fusion.training.tiis2018_fcn import config_from_args

    cfg = config_from_args(args)
    assert cfg.net.layout == (3, 1, 2) and cfg.name == "smoke"
    assert (cfg.data.sigma_low, cfg.data.sigma_high, cfg.data.both_sharp) == (2.0, 10.0, 0.0)
    extra = ["--sigma-low", "1", "--both-sharp", "0.3"]
    cfg = config_from_args(build_parser().parse_args(["train", "two_stream", "--config", "smoke", *extra]))
    assert (cfg.data.sigma_low, cfg.data.sigma_high, cfg.data.both_sharp) == (1.0, 10.0, 0.3)
    assert cfg.grad_weight == 0.0
    cfg = config_from_args(build_parser().parse_args(["train", "two_stream", "--config", "smoke", "--grad-loss", "1"]))
    assert cfg.grad_weight == 1.0 and cfg.as_dict()["grad_weight"] == 1.0
    for bad in (["--both-sharp", "1.5"], ["--sigma-low", "0"], ["--sigma-low", "12"], ["--grad-loss", "-1"]):
        with pytest.raises(SystemExit, match="sigma|both-sharp|grad-loss"):
            config_from_args(build_parser().parse_args(["train", "two_stream", "--config", "smoke", *bad]))
