"""Metrics on cases that can be checked by hand: identical images, swapped sources,
constant images, a source returned as the fused image, 8- vs 16-bit, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from napari_fusion.errors import FusionInputError
from napari_fusion.metrics import (
    METRICS,
    compute_metrics,
    fmi,
    mef_ssim,
    mutual_information,
    nabf,
    psnr_fusion,
    q_cb,
    q_mi,
    q_y,
    qabf,
    scd,
    ssim_fusion,
    viff,
)
from napari_fusion.metrics import reference as ref
from napari_fusion.metrics.fusion import average_gradient, entropy, spatial_frequency, standard_deviation

torch.set_num_threads(1)


def _pair(h=64, w=80, seed=0):
    """Two 'sources': a textured scene blurred on the left / right half."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    scene = gaussian_filter(rng.uniform(0, 255, (h, w)), 1.2)
    scene = (scene - scene.min()) / (scene.max() - scene.min()) * 230 + 10
    blur = gaussian_filter(scene, 2.5)
    a = scene.copy()
    b = scene.copy()
    a[:, w // 2 :] = blur[:, w // 2 :]
    b[:, : w // 2] = blur[:, : w // 2]
    return np.round(a).astype(np.uint8), np.round(b).astype(np.uint8), np.round(scene).astype(np.uint8)


QG1 = 0.9994 / (1 + math.exp(-15 * 0.5))  # Q_g at strength ratio 1
QA1 = 0.9879 / (1 + math.exp(-22 * 0.2))  # Q_a at perfect orientation


def test_identical_images():
    a, _, _ = _pair()
    srcs = [a, a]
    assert qabf(a, srcs) == pytest.approx(QG1 * QA1, abs=1e-12)
    assert q_mi(a, srcs) == pytest.approx(2.0, abs=1e-12)
    assert ssim_fusion(a, srcs) == pytest.approx(1.0, abs=1e-12)
    assert q_cb(a, srcs) == pytest.approx(1.0, abs=1e-12)
    assert viff(a, srcs) == pytest.approx(1.0, abs=1e-9)
    assert q_y(a, srcs) == pytest.approx(1.0, abs=1e-9)
    assert fmi(a[:24, :24], [a[:24, :24], a[:24, :24]]) == 1.0
    assert fmi(a[:24, :24], [a[:24, :24], a[:24, :24]], feature="dct") == 1.0
    assert nabf(a, srcs) == 0.0
    assert psnr_fusion(a, srcs) == math.inf
    assert ref.mse(a, a) == 0.0 and ref.psnr(a, a) == math.inf
    assert ref.ssim(a, a) == pytest.approx(1.0, abs=1e-12)
    assert mef_ssim(a, srcs) == pytest.approx(1.0, abs=2e-3)
    # MI of an image with itself is its entropy (nats, after VIFB's min-max binning), per source
    lo, hi = float(a.min()), float(a.max())
    binned = np.floor((a - lo) / (hi - lo) * 255 + 0.5).astype(int)
    p = np.bincount(binned.ravel(), minlength=256) / a.size
    h = -(p[p > 0] * np.log(p[p > 0])).sum()
    assert mutual_information(a, srcs) == pytest.approx(2 * h, rel=1e-12)


@pytest.mark.parametrize(
    "fn", [qabf, q_mi, mutual_information, q_cb, viff, q_y, scd, ssim_fusion, nabf, psnr_fusion, mef_ssim]
)
def test_swapping_sources_changes_nothing(fn):
    a, b, _ = _pair()
    f = ((a.astype(float) + b) / 2).round().astype(np.uint8)
    assert fn(f, [a, b]) == pytest.approx(fn(f, [b, a]), rel=1e-10, abs=1e-12)


def test_fmi_swap_and_range():
    a, b, _ = _pair(32, 32)
    f = np.maximum(a, b)
    import importlib.util

    features = ["pixel", "dct"] + (["wavelet"] if importlib.util.find_spec("pywt") else [])
    for feature in features:
        v = fmi(f, [a, b], feature=feature)
        assert 0.0 < v < 1.0
        assert v == pytest.approx(fmi(f, [b, a], feature=feature), rel=1e-12)


def test_constant_images():
    c = np.full((48, 48), 77, np.uint8)
    assert entropy(c) == 0.0
    assert standard_deviation(c) == 0.0
    assert spatial_frequency(c) == 0.0
    assert average_gradient(c) == 0.0
    a, b, scene = _pair(48, 48)
    # a flat fused image keeps none of the sources' edges; only the image frame scores,
    # because the reference's zero-padded Sobel sees a step there
    assert qabf(c, [a, b]) < 0.25 * qabf(scene, [a, b])
    interior = np.pad(np.full((46, 46), 77, np.uint8), 1, mode="edge")
    assert qabf(interior, [a, b]) < qabf(scene, [a, b])
    assert nabf(c, [a, b]) == 0.0


def test_source_returned_as_fused():
    a, b, scene = _pair()
    af, bf = a.astype(float), b.astype(float)
    mse = ((af - bf) ** 2).mean()
    assert psnr_fusion(a, [a, b]) == pytest.approx(10 * math.log10(255**2 / (mse / 2)), rel=1e-12)
    assert ssim_fusion(a, [a, b]) == pytest.approx((1 + ref.ssim(b, a)) / 2, rel=1e-12)
    assert nabf(a, [a, b]) == 0.0
    # Q_MI: the A term is 1 exactly, the B term is 2 I(A,B) / (H_A + H_B)
    assert q_mi(a, [a, b]) == pytest.approx(1.0 + q_mi(a, [b]), rel=1e-12)
    # the all-in-focus scene beats each single source on the gradient and structure metrics
    for fn in (qabf, q_cb, viff):
        assert fn(scene, [a, b]) > fn(a, [a, b])
        assert fn(scene, [a, b]) > fn(b, [a, b])


def test_qabf_variants():
    a, b, _ = _pair()
    # where no strength of F equals a source's exactly, the two variants agree
    rng = np.random.default_rng(1)
    f = (a.astype(float) + b) / 2 + rng.uniform(-0.3, 0.3, a.shape)
    assert qabf(f, [a, b], variant="vifb") == pytest.approx(qabf(f, [a, b]), rel=1e-12)
    # where F equals a source, VIFB's quirk (G = g_F, on 255x-scaled data) differs from the corrected ratio 1
    assert qabf(a, [a, b], variant="vifb") != pytest.approx(qabf(a, [a, b]), rel=1e-6)
    with pytest.raises(FusionInputError):
        qabf(a, [a, b], variant="other")


def test_16_bit_and_float_inputs_match_8_bit():
    a, b, scene = _pair()
    a16, b16, s16 = (x.astype(np.uint16) * 257 for x in (a, b, scene))
    af, bf, sf = (x.astype(np.float32) / 255 for x in (a, b, scene))
    for name in ("qabf", "nmi", "ssim", "en", "sd", "q_cb", "viff"):
        v8 = METRICS[name](scene, [a, b])
        assert METRICS[name](s16, [a16, b16]) == pytest.approx(v8, rel=1e-9), name
        # float input goes through x / 255 * 255; metrics that re-quantise (min-max + round) may move a bin
        tol = 1e-3 if name in ("nmi", "q_cb", "en") else 1e-5
        assert METRICS[name](sf, [af, bf]) == pytest.approx(v8, rel=tol), name


def test_colour_handling():
    a, b, scene = _pair()
    rgb = lambda x: np.stack([x, x, x], -1)  # noqa: E731
    # a grey image stored as RGB scores like the grey image
    for name in ("qabf", "ssim", "en", "nmi", "q_y"):
        assert METRICS[name](rgb(scene), [rgb(a), rgb(b)]) == pytest.approx(METRICS[name](scene, [a, b]), rel=1e-9), (
            name
        )
    # grey infrared + colour visible (VIFB's layout) is accepted
    assert 0 < qabf(rgb(scene), [a, rgb(b)]) < 1


def test_bad_inputs_raise_clear_errors():
    a, b, _ = _pair()
    with pytest.raises(FusionInputError, match="size"):
        qabf(a, [a, b[:40]])
    with pytest.raises(FusionInputError, match="channels"):
        ssim_fusion(np.stack([a] * 3, -1), [np.stack([a] * 2, -1), b])
    with pytest.raises(FusionInputError, match="exactly 2"):
        q_y(a, [a, b, a])
    with pytest.raises(FusionInputError, match="ground truth"):
        ref.psnr(a, np.stack([a] * 3, -1))
    with pytest.raises(FusionInputError, match="NaN"):
        qabf(np.full(a.shape, np.nan), [a, b])
    with pytest.raises(FusionInputError, match="unknown metric"):
        compute_metrics(a, [a, b], names=["nope"])
    with pytest.raises(FusionInputError, match="source images"):
        METRICS["qabf"](a, None)


def test_registry_and_compute_metrics():
    a, b, scene = _pair()
    out = compute_metrics(scene, [a, b], gt=scene)
    assert out["psnr_gt"] == math.inf and out["ssim_gt"] == pytest.approx(1.0)
    assert set(out) >= {"qabf", "nmi", "mi", "q_y", "q_cb", "scd", "viff", "nabf", "ssim", "en", "sd", "sf", "ag"}
    assert all(np.isfinite(v) for k, v in out.items() if k != "psnr_gt")
    # every registered metric runs on a small pair
    small = [x[:48, :48] for x in (a, b, scene)]
    for name, spec in METRICS.items():
        if name.startswith("fmi"):
            continue  # covered above on smaller images
        v = spec(small[2], small[:2], small[2])
        assert isinstance(v, float), name
    # the fused-only metrics ignore the sources
    assert compute_metrics(scene, names=["en", "sd"]) == compute_metrics(scene, [a, b], names=["en", "sd"])


def test_remembered_results_follow_the_content():
    """Conversions and maps are remembered by content: an array changed in place is scored afresh,
    and a caller's tensor is never aliased by the remembered copy."""
    from napari_fusion.metrics._common import as_tensor255, clear_memo

    a, b, scene = _pair()
    f = scene.copy()
    before = [METRICS[n](f, [a, b]) for n in ("qabf", "ssim", "q_y", "viff", "nmi")]
    f[10:30, 10:30] = 0
    after = [METRICS[n](f, [a, b]) for n in ("qabf", "ssim", "q_y", "viff", "nmi")]
    clear_memo()
    fresh = [METRICS[n](f, [a, b]) for n in ("qabf", "ssim", "q_y", "viff", "nmi")]
    assert after == fresh and all(x != y for x, y in zip(before, after))
    t = torch.from_numpy(scene.astype(np.float64))
    conv = as_tensor255(t)
    t += 1
    assert torch.equal(conv[0], torch.from_numpy(scene.astype(np.float64)))


def test_sobel_is_exact_where_the_response_is_zero():
    """The separable Sobel gives exactly 0 where the two rows (columns) it compares are equal,
    even on non-integer grey levels (a tap-by-tap sum leaves rounding noise there)."""
    from napari_fusion.metrics._common import sobel_valid

    rng = np.random.default_rng(3)
    row = torch.from_numpy(rng.uniform(0, 255, 40) * 0.2989)
    x = torch.stack([row, row * 0.587, row])  # rows 0 and 2 equal: the vertical response is 0
    _, gy = sobel_valid(x)
    assert torch.all(gy == 0)
