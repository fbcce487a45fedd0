"""CSC-MMFN (guided upsampling): network, baselines, spectral metrics, input validation,
training and the shipped models on held-out data."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import napari_fusion as nf
from napari_fusion.errors import FusionInputError
from napari_fusion.metrics.spectral import ergas, psnr_bands, sam, ssim_bands
from napari_fusion.nets.csc_mmfn import CSCMMFN
from napari_fusion.ops.guided import fast_guided_filter
from napari_fusion.upsample import bicubic_upsample, guided_filter_upsample, infer_layout

# --------------------------------------------------------------------------- network


@pytest.mark.parametrize("scale", [2, 4])
@pytest.mark.parametrize("bands,guide", [(31, 3), (4, 1)])
def test_network_shapes_non_square(scale, bands, guide):
    torch.manual_seed(0)
    net = CSCMMFN(bands, guide, features=8, n_dcu=2).eval()
    lr = torch.rand(2, bands, 5, 9)
    g = torch.rand(2, guide, 5 * scale, 9 * scale)
    with torch.no_grad():
        out = net(lr, g)
    assert out.shape == (2, bands, 5 * scale, 9 * scale)
    assert torch.isfinite(out).all()


def test_untrained_network_is_bilinear_upsampling():
    net = CSCMMFN(4, 1, features=8, n_dcu=1).eval()  # the decoder starts at zero
    lr = torch.rand(1, 4, 6, 10)
    g = torch.rand(1, 1, 18, 30)
    with torch.no_grad():
        out = net(lr, g)
    up = torch.nn.functional.interpolate(lr, size=(18, 30), mode="bilinear", align_corners=False)
    assert torch.allclose(out, up)


def test_fast_guided_filter_recovers_affine_relation():
    torch.manual_seed(1)
    g_low = torch.rand(1, 3, 12, 16)
    src_low = 2.0 * g_low + 0.5
    g_high = torch.rand(1, 3, 36, 48)
    out = fast_guided_filter(g_low, src_low, g_high, 1, 1e-10)
    assert torch.allclose(out, 2.0 * g_high + 0.5, atol=1e-4)
    const = fast_guided_filter(g_low, torch.full_like(g_low, 0.3), g_high, 1, 1e-4)
    assert torch.allclose(const, torch.full_like(const, 0.3), atol=1e-6)


# --------------------------------------------------------------------------- baselines


def test_bicubic_interpolates_and_keeps_constants():
    rng = np.random.default_rng(2)
    low = torch.from_numpy(rng.random((1, 2, 6, 9)))
    up = bicubic_upsample(low, (18, 27))
    # with scale 3, HR pixel 3i+1 has the same centre as LR pixel i: cubic convolution interpolates
    assert torch.allclose(up[..., 1::3, 1::3], low, atol=1e-12)
    # between samples it is the Keys (a = -0.75) cubic: at 1/3 of the way from 0 to 1 on a 0/1 step
    step = torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0, 1.0], dtype=torch.float64).repeat(4, 1)[None, None]
    v = bicubic_upsample(step, (12, 18))[0, 0, 0, 8]  # LR coordinate 2 + 1/3
    t, a = 1 / 3, -0.75
    w_far = a * (1 + t) ** 3 - 5 * a * (1 + t) ** 2 + 8 * a * (1 + t) - 4 * a  # weights of samples 1 and 4
    w_near = lambda d: (a + 2) * d**3 - (a + 3) * d**2 + 1  # noqa: E731
    expected = w_near(1 - t) + a * (2 - t) ** 3 - 5 * a * (2 - t) ** 2 + 8 * a * (2 - t) - 4 * a
    assert float(v) == pytest.approx(expected, abs=1e-12) and w_far < 0
    c = bicubic_upsample(torch.full((1, 3, 5, 7), 0.25), (10, 14))
    assert torch.allclose(c, torch.full_like(c, 0.25))


def test_guided_filter_baseline_transfers_guide_detail():
    from napari_fusion.training.mmf_data import degrade

    rng = np.random.default_rng(0)
    guide = torch.from_numpy(rng.random((1, 1, 64, 48))).float()
    guide = torch.nn.functional.avg_pool2d(guide, 3, 1, 1)  # some texture, some smoothness
    gt = torch.cat([3 * guide + 0.1, 0.5 * guide + 0.2], 1)  # each band an affine function of the guide
    # block-averaged bands: the low-res fit is exact (a = 3, b = 0.1 / a = 0.5, b = 0.2), so is the result
    low_area = torch.nn.functional.avg_pool2d(gt, 4)
    exact = guided_filter_upsample(low_area, guide, eps=1e-9)
    assert torch.allclose(exact, gt, atol=2e-3)
    # Wald-degraded bands (blur the guide's block average lacks): still far better than bicubic
    low = degrade(gt, 4)
    err_bic = float(((bicubic_upsample(low, (64, 48)) - gt) ** 2).mean())
    err_gf = float(((guided_filter_upsample(low, guide, eps=1e-6) - gt) ** 2).mean())
    assert err_gf < 0.5 * err_bic
    # colour guide: each band an affine function of the three channels
    g3 = torch.cat([guide, guide.flip(-1), guide.flip(-2)], 1)
    gt3 = (torch.tensor([1.0, -0.5, 2.0]).view(1, 3, 1, 1) * g3).sum(1, keepdim=True) + 0.3
    exact3 = guided_filter_upsample(torch.nn.functional.avg_pool2d(gt3, 4), g3, eps=1e-9)
    assert torch.allclose(exact3, gt3, atol=5e-3)
    const = guided_filter_upsample(torch.full((1, 2, 16, 12), 0.4), guide)
    assert torch.allclose(const, torch.full_like(const, 0.4), atol=1e-5)


# --------------------------------------------------------------------------- spectral metrics


def test_sam_by_hand():
    gt = np.zeros((1, 2, 2))
    gt[0] = [[1, 0], [0, 1]]  # (H=1, W=2, B=2): spectra (1, 0) and (0, 1)
    assert sam(gt * 3.0, gt) == pytest.approx(0.0, abs=1e-6)  # scaling keeps the angle
    fused = np.array([[[0.0, 1.0], [1.0, 0.0]]])
    assert sam(fused, gt) == pytest.approx(90.0)
    fused = np.array([[[1.0, 1.0], [0.0, 2.0]]])  # 45 deg and 0 deg
    assert sam(fused, gt) == pytest.approx(22.5)
    assert sam(np.moveaxis(fused, -1, 0), np.moveaxis(gt, -1, 0), band_axis=0) == pytest.approx(22.5)


def test_psnr_ergas_ssim_by_hand():
    gt = np.full((16, 16, 2), 0.5)
    fused = gt + np.array([0.1, 0.0])[None, None]
    # band 0: MSE 0.01 -> 20 dB at peak 1; band 1 exact (inf) -> mean inf; so use a nonzero band-1 error
    fused[..., 1] += 0.01  # MSE 1e-4 -> 40 dB
    assert psnr_bands(fused, gt, data_range=1.0) == pytest.approx(30.0)
    assert ergas(fused, gt, scale=4) == pytest.approx(25 * math.sqrt((0.01 / 0.25 + 1e-4 / 0.25) / 2))
    assert ssim_bands(gt, gt) == pytest.approx(1.0)
    with pytest.raises(FusionInputError):
        sam(gt, gt[..., :1])


# --------------------------------------------------------------------------- layouts and the public API


def test_layout_inference():
    lay = infer_layout((64, 64, 4), (256, 256))
    assert (lay.band_axis, lay.guide_axis, lay.bands, lay.guide_channels, lay.scale) == (-1, None, 4, 1, 4)
    lay = infer_layout((31, 16, 12), (32, 24, 3))
    assert (lay.band_axis, lay.guide_axis, lay.scale, lay.high_size) == (0, -1, 2, (32, 24))
    with pytest.raises(FusionInputError, match="same integer factor") as bad:
        infer_layout((64, 64, 4), (256, 250))
    assert "swapped" not in str(bad.value)
    with pytest.raises(FusionInputError, match="look swapped: the low-resolution image comes first"):
        infer_layout((256, 256), (64, 64, 4))
    with pytest.raises(FusionInputError, match="given scale 2"):
        infer_layout((64, 64, 4), (256, 256), scale=2)
    with pytest.raises(FusionInputError, match="same integer factor"):  # wrong band axis given
        infer_layout((64, 64, 4), (256, 256), band_axis=0)
    with pytest.raises(FusionInputError, match="nothing to upsample"):
        infer_layout((64, 64, 4), (64, 64, 4))
    with pytest.raises(FusionInputError, match="ambiguous"):
        infer_layout((8, 8, 8), (16, 16))
    with pytest.raises(FusionInputError, match="2-D or 3-D"):
        infer_layout((2, 8, 8, 4), (16, 16))


@pytest.mark.parametrize("method", ["bicubic", "guided_filter"])
def test_guided_upsample_keeps_layout_and_inputs(method):
    rng = np.random.default_rng(3)
    low = (rng.random((12, 10, 4)) * 1000).astype(np.uint16)
    guide = rng.random((48, 40)).astype(np.float32)
    low0, guide0 = low.copy(), guide.copy()
    out = nf.guided_upsample(low, guide, method=method)
    assert out.shape == (48, 40, 4) and out.dtype == np.float32
    np.testing.assert_array_equal(low, low0)
    np.testing.assert_array_equal(guide, guide0)
    out0 = nf.guided_upsample(np.moveaxis(low, -1, 0), guide, method=method, band_axis=0)
    np.testing.assert_allclose(np.moveaxis(out0, 0, -1), out, rtol=1e-5, atol=1e-3)
    assert 0.5 * low.mean() < out.mean() < 2 * low.mean()  # stays in the input's units


def test_guided_upsample_bad_input():
    low = np.random.rand(16, 16, 4)
    with pytest.raises(FusionInputError, match="unknown upsampling method"):
        nf.guided_upsample(low, np.random.rand(64, 64), method="nearest")
    with pytest.raises(FusionInputError, match="needs a guide"):
        nf.guided_upsample(low, None, method="guided_filter")
    with pytest.raises(FusionInputError, match="NaN"):
        nf.guided_upsample(np.full((16, 16, 4), np.nan), np.random.rand(64, 64), method="bicubic")
    with pytest.raises(FusionInputError, match="no shipped CSC-MMFN model takes 5 bands"):
        nf.guided_upsample(np.random.rand(16, 16, 5), np.random.rand(64, 64))
    assert nf.guided_upsample(low, None, method="bicubic", scale=2).shape == (32, 32, 4)


# --------------------------------------------------------------------------- training


def _synthetic_cases(n: int, scale: int = 2):
    from napari_fusion.training.mmf_data import Case, degrade

    rng = np.random.default_rng(0)
    cases = []
    for i in range(n):
        base = torch.from_numpy(rng.random((1, 1, 48, 40))).float()
        base = torch.nn.functional.avg_pool2d(base, 5, 1, 2)
        gt = torch.cat([base * (0.5 + 0.2 * b) + 0.1 * b for b in range(3)], 1)[0]
        cases.append(Case(f"syn{i}", degrade(gt, scale).numpy(), base[0].numpy(), gt.numpy(), scale))
    return cases


def test_smoke_training_lowers_loss(tmp_path):
    from napari_fusion.training.csc_mmfn import build_datasets, get_config, mmf_step
    from napari_fusion.training.loop import evaluate, train

    cfg = get_config("smoke", "pansharpening")
    cfg.data.scale = 2
    cfg.data.patch = 16
    cfg.data.n_train = 8 * 60
    cfg.train.lr = 3e-3
    cases = {"train": _synthetic_cases(3), "val": _synthetic_cases(1)}
    train_set, val_set = build_datasets(cfg, cases)
    torch.manual_seed(0)
    net = CSCMMFN(3, 1, features=8, n_dcu=1)
    before, _ = evaluate(net, val_set, mmf_step, batch_size=8, device=torch.device("cpu"))
    result = train(net, train_set, val_set, mmf_step, cfg.train, run_dir=tmp_path, progress=False, log=lambda s: None)
    assert result.steps == 60
    # the untrained network is bilinear upsampling; training must improve on it clearly
    assert result.val_loss < 0.6 * before


# --------------------------------------------------------------------------- real data (skipped without it)


def _cases_or_skip(task, split):
    from napari_fusion.training.mmf_data import task_cases

    try:
        return task_cases(task, split)
    except FileNotFoundError:
        pytest.skip(f"{task} data not in the shared data folder")


def test_simulated_rgb_agrees_with_stored_rgb():
    from napari_fusion.training.mmf_data import (
        data_root,
        load_camera_response,
        load_cave_scene,
        rgb_agreement,
        simulate_rgb,
    )

    root = data_root("multispectral/cave")
    if root is None:
        pytest.skip("CAVE data not in the shared data folder")
    cube, bmp = load_cave_scene(root / "sponges")
    agree = rgb_agreement(simulate_rgb(cube, load_camera_response()), bmp)
    assert min(agree["r_R"], agree["r_G"], agree["r_B"]) > 0.95
    # a wrong response (channels swapped R<->B) agrees much worse
    bad = rgb_agreement(simulate_rgb(cube, load_camera_response()[:, ::-1]), bmp)
    assert bad["r_R"] < agree["r_R"] - 0.05


@pytest.mark.parametrize("task", ["cave", "pansharpening"])
def test_shipped_model_beats_bicubic_on_heldout_crop(task):
    from napari_fusion.upsample import model_path

    if not model_path(task).is_file():
        pytest.skip(f"no shipped {task} model")
    case = _cases_or_skip(task, "test")[0]
    s = case.scale
    lr, guide, gt = case.lr[:, : 96 // s], case.guide[:, :96], case.gt[:, :96]  # a crop of the held-out strip
    rng = 1.0 if task == "cave" else None
    scores = {}
    for m in ("bicubic", "csc_mmfn"):
        out = nf.guided_upsample(
            lr, guide, method=m, model=task if m == "csc_mmfn" else None, band_axis=0, guide_axis=0
        )
        assert out.shape == gt.shape
        scores[m] = psnr_bands(out, gt, data_range=rng, band_axis=0)
    assert scores["csc_mmfn"] > scores["bicubic"] + 0.5, scores


def test_heldout_regions_are_disjoint_from_training():
    from napari_fusion.training.mmf_data import SPLIT, _strips

    s = _strips(256, 4)
    assert s["train"].stop <= s["val"].start < s["val"].stop <= s["test"].start and s["test"].stop == 256
    assert s["test"].start == int(256 * SPLIT[1])


# --------------------------------------------------------------------------- command line


def test_cli_upsample_and_train_registration(tmp_path, capsys):
    import tifffile

    from napari_fusion.cli import build_parser, main

    rng = np.random.default_rng(5)
    ms = (rng.random((10, 14, 4)) * 255).astype(np.uint8)
    pan = (rng.random((40, 56)) * 255).astype(np.uint8)
    tifffile.imwrite(tmp_path / "ms.tif", ms)
    tifffile.imwrite(tmp_path / "pan.tif", pan)
    out = tmp_path / "out.tif"
    assert (
        main(["upsample", str(tmp_path / "ms.tif"), str(tmp_path / "pan.tif"), "-o", str(out), "-m", "guided_filter"])
        == 0
    )
    got = tifffile.imread(out)
    np.testing.assert_allclose(got, nf.guided_upsample(ms, pan, method="guided_filter"), rtol=1e-6)
    assert main(["upsample", str(tmp_path / "ms.tif"), str(tmp_path / "ms.tif"), "-o", str(out), "--overwrite"]) == 2
    assert "nothing to upsample" in capsys.readouterr().err
    args = build_parser().parse_args(["train", "csc_mmfn", "--task", "cave", "--config", "smoke"])
    assert args.task == "cave" and callable(args.func)


# --------------------------------------------------------------------------- spectral-angle loss term


def test_spectral_angle_is_the_sam_metric_in_radians_and_differentiable_at_zero():
    from napari_fusion.metrics.spectral import sam
    from napari_fusion.training.csc_mmfn import spectral_angle

    g = torch.Generator().manual_seed(3)
    gt = torch.rand(2, 31, 9, 7, generator=g, dtype=torch.float64) + 0.05
    out = gt + 0.05 * torch.randn(gt.shape, generator=g, dtype=torch.float64)
    want = np.mean([sam(out[i].numpy(), gt[i].numpy(), band_axis=0) for i in range(2)])
    assert float(spectral_angle(out, gt)) == pytest.approx(np.deg2rad(want), rel=1e-6)
    # a spectrum scaled by any positive factor has angle 0, and the gradient there is finite
    same = (gt * 1.7).clone().requires_grad_(True)
    angle = spectral_angle(same, gt)
    angle.backward()
    assert float(angle.detach()) < 1e-5 and torch.isfinite(same.grad).all()


def test_sam_weight_adds_the_angle_to_the_mse_and_reaches_the_manifest(tmp_path, monkeypatch):
    from napari_fusion.cli import build_parser
    from napari_fusion.training import csc_mmfn as tm

    cases = {"train": _synthetic_cases(2), "val": _synthetic_cases(1)}
    cfg = tm.get_config("smoke", "pansharpening")
    cfg.data.scale, cfg.data.patch = 2, 16
    train_set, _ = tm.build_datasets(cfg, cases)
    torch.manual_seed(0)
    net = CSCMMFN(3, 1, features=8, n_dcu=1)
    batch = train_set.batch([0, 1, 2])
    with torch.no_grad():
        mse, _, n = tm.mmf_step(net, batch)
        both, _, _ = tm.mmf_step(net, batch, sam_weight=0.5)
        angle = tm.spectral_angle(net(batch[0], batch[1]), batch[2])
    assert n == 3 and float(both) == pytest.approx(float(mse) + 0.5 * float(angle), rel=1e-6)
    assert float(angle) > 0

    # the command line carries the weight into the run's configuration (recorded in the manifest)
    seen = {}

    def fake_run(args, recipe, default_out):
        seen["cfg"] = recipe.cfg
        return 0

    monkeypatch.setattr(tm, "run_from_args", fake_run)
    parser = build_parser()
    args = parser.parse_args(["train", "csc_mmfn", "--task", "cave", "--config", "smoke", "--sam-weight", "0.02"])
    tm.main_from_args(args)
    assert seen["cfg"].sam_weight == 0.02 and seen["cfg"].as_dict()["sam_weight"] == 0.02
    step = tm.MMFNRecipe(seen["cfg"], evaluate=False).step()
    with torch.no_grad():
        assert float(step(net, batch)[0]) == pytest.approx(float(mse) + 0.02 * float(angle), rel=1e-6)
    for bad in ("-1", "nan", "inf", "x"):
        with pytest.raises(SystemExit):
            parser.parse_args(["train", "csc_mmfn", "--task", "cave", "--sam-weight", bad])


def _learned_vs_classical():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "learned_vs_classical.py"
    spec = importlib.util.spec_from_file_location("learned_vs_classical", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_benchmark_win_rate_counts_lower_as_better_for_sam_and_ergas():
    bench = _learned_vs_classical()
    ours, theirs = np.array([1.0, 3.0, 2.0, np.nan]), np.array([2.0, 2.0, 2.0, 1.0])
    assert bench.win_rate(ours, theirs) == pytest.approx(0.5)  # one higher, one tie of three
    assert bench.win_rate(ours, theirs, lower_is_better=True) == pytest.approx(0.5)
    assert bench.win_rate(np.array([1.0]), np.array([2.0]), lower_is_better=True) == 1.0
    assert {"sam", "ergas"} == bench.LOWER_IS_BETTER


@pytest.mark.data
def test_benchmark_scores_csc_mmfn_against_the_classical_upsamplers_on_cave(data_dir, capsys):
    if not (data_dir / "multispectral" / "cave").is_dir():
        pytest.skip("CAVE data not in the shared data folder")
    _learned_vs_classical().run_upsampling_set("cave", data_dir)
    out = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| ")}
    assert {"csc_mmfn", "bicubic", "guided_filter"} <= set(rows)
    assert "2 cases" in out and out.count("win rate on") == 3
