"""The 13 metrics of the VIFB benchmark, reproduced as VIFB computes them.

Reference: X. Zhang, P. Ye, G. Xiao, "VIFB: A Visible and Infrared Image
Fusion Benchmark", CVPRW 2020 (code: github.com/xingchenzhang/VIFB,
``metrics/metrics*.m``; read for the definitions, not copied).

VIFB's conventions, reproduced here (see ``docs/metrics.md``):

* inputs are the 8-bit images as read from the JPEG files, on 0-255;
* a colour fused image is scored per colour channel and the channel scores
  are averaged; a grey source (VIFB's 1-channel infrared images) is reused for
  every channel, a colour one contributes its matching channel;
* two-source scores combine the two sources as VIFB does (MI and SSIM are
  sums, cross-entropy, PSNR and RMSE are means). With more than two sources
  the same sums/means run over all of them.

Every function takes ``(fused, sources)`` with ``sources`` a sequence of
source images (VIFB's order is visible, infrared; all VIFB metrics are
symmetric in the two sources) and returns a Python float.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from ._common import (
    channel_planes,
    conv2,
    entropy_of,
    fft_correlate,
    freq_filter,
    freqspace_radius,
    fspecial_gaussian,
    hist256,
    matlab_gradient,
    matlab_round,
    memo,
    minmax_255,
    prepare_inputs,
    rgb2gray,
    sep_valid,
    sobel_valid,
)

# ---------------------------------------------------------------------------
# single-plane kernels (2-D float64 tensors on 0-255)


def entropy_plane(f: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (bits) of the 256-bin histogram of ``floor(f)``."""
    return entropy_of(hist256(f), base=2.0)


def cross_entropy_plane(a: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """VIFB ``cross_entropy``: sum over grey levels of P_a log2(P_a / P_f), where both are non-zero."""
    pa = hist256(a)
    pf = hist256(f)
    pa = pa / pa.sum()
    pf = pf / pf.sum()
    m = (pa > 0) & (pf > 0)
    return (pa[m] * torch.log2(pa[m] / pf[m])).sum()


def minmax_bins(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A plane min-max scaled to 0..255 and rounded, as flat int64 bin indices, and its entropy in nats (remembered)."""

    def one(x):
        idx = minmax_255(x).long().reshape(-1)
        return idx, entropy_of(torch.bincount(idx, minlength=256).to(torch.float64), base=math.e)

    return memo("minmax_bins", x, one)


def vifb_mi_plane(a: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """VIFB ``mutinf``: min-max scale both to 0..255 (rounded), 256x256 joint histogram, natural log."""
    ia, ha = minmax_bins(a)
    ib, hb = minmax_bins(f)
    joint = torch.bincount(ia * 256 + ib, minlength=256 * 256).to(torch.float64)
    return ha + hb - entropy_of(joint, base=math.e)


def vifb_mse_plane(a: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """VIFB's faulty ``mse``: sqrt(sum of squared differences) / (M N)."""
    return torch.sqrt(((a - f) ** 2).sum()) / a.numel()


_QABF = dict(Tg=0.9994, kg=-15.0, Dg=0.5, Ta=0.9879, ka=-22.0, Da=0.8)
_SOBEL_Y = torch.tensor([[1.0, 2.0, 1.0], [0.0, 0.0, 0.0], [-1.0, -2.0, -1.0]], dtype=torch.float64)
_SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], dtype=torch.float64)


def _sobel_conv2(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """MATLAB ``conv2(x, h, 'same')`` (true convolution, zero padding) with the two Sobel kernels."""
    gx, gy = sobel_valid(torch.nn.functional.pad(x, (1, 1, 1, 1)))
    return gx.neg_(), gy


def _strength_angle(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    sx, sy = _sobel_conv2(x)
    g = torch.sqrt(sx * sx + sy * sy)
    safe = torch.where(sx == 0, torch.ones_like(sx), sx)
    a = torch.where(sx == 0, torch.full_like(sx, math.pi / 2), torch.atan(sy / safe))
    return g, a


def qabf_plane(sources: Sequence[torch.Tensor], f: torch.Tensor, *, vifb_quirk: bool) -> torch.Tensor:
    """Xydeas-Petrovic Q^{AB/F} of one plane (any number of sources).

    ``vifb_quirk=True`` reproduces VIFB ``metricsQabf``: the images are scaled
    by 255 once more (``255*im2double`` of data already on 0-255) and where
    ``g_A == g_F`` the strength ratio is set to ``g_F`` instead of 1.
    ``vifb_quirk=False`` uses the ratio min/max (1 where both are equal).
    """
    scale = 255.0 if vifb_quirk else 1.0
    tag = ("qabf", scale)
    gf, af = memo(tag, f, lambda x: _strength_angle(x * scale))
    num = torch.zeros((), dtype=torch.float64, device=f.device)
    den = torch.zeros((), dtype=torch.float64, device=f.device)
    p = _QABF
    for s in sources:
        gs, as_ = memo(tag, s, lambda x: _strength_angle(x * scale))
        lo = torch.minimum(gs, gf)
        hi = torch.maximum(gs, gf)
        ratio = lo / torch.where(hi == 0, torch.ones_like(hi), hi)
        eq = gs == gf
        ratio = torch.where(eq, gf if vifb_quirk else torch.ones_like(gf), ratio)
        align = 1.0 - (as_ - af).abs() / (math.pi / 2)
        qg = p["Tg"] / (1.0 + torch.exp(p["kg"] * (ratio - p["Dg"])))
        qa = p["Ta"] / (1.0 + torch.exp(p["ka"] * (align - p["Da"])))
        num = num + (qg * qa * gs).sum()
        den = den + gs.sum()
    if den == 0:
        return torch.tensor(float("nan"), dtype=torch.float64)
    return num / den


def _normalize1(x: torch.Tensor) -> torch.Tensor:
    """Z. Liu's ``normalize1``: min-max to 0-255 and round (an all-zero image is kept)."""
    if x.max() == 0 and x.min() == 0:
        return x.clone()
    return minmax_255(x)


def qcb_plane(sources: Sequence[torch.Tensor], f: torch.Tensor) -> torch.Tensor:
    """Chen-Blum Q_CB of one plane, as Z. Liu's ``metricChenBlum`` (used by VIFB ``metricsQcb``)."""
    h, w = f.shape
    r = freqspace_radius(h, w, w / 30.0, h / 30.0, device=f.device)
    f0, f1, a = 15.3870, 1.3456, 0.7622
    sd = torch.exp(-((r / f0) ** 2)) - a * torch.exp(-((r / f1) ** 2))
    t = torch.arange(-15, 16, dtype=torch.float64, device=f.device)
    g1 = torch.outer(torch.exp(-t * t / 8.0), torch.exp(-t * t / 8.0)) / (2 * math.pi * 4.0)
    g2 = torch.outer(torch.exp(-t * t / 32.0), torch.exp(-t * t / 32.0)) / (2 * math.pi * 16.0)

    def contrast_p(img):
        x = freq_filter(_normalize1(img), sd)
        b1, b2 = fft_correlate(x, [g1, g2], "same")
        c = (b1 / b2 - 1.0).abs()
        return c**3 / (c**2 + 1e-4)

    cf = memo("qcb", f, contrast_p)
    cs = [memo("qcb", s, contrast_p) for s in sources]
    sal = [c * c for c in cs]
    tot = sum(sal)
    q = torch.zeros_like(cf)
    for c, lam in zip(cs, sal):
        ratio = torch.where(c < cf, c / cf, cf / c)
        q = q + lam / tot * ratio
    return q.mean()


def _blocks(x: torch.Tensor, size: int) -> torch.Tensor:
    """Split into ``size x size`` blocks (zero-padded at right/bottom, as ``blkproc``): (nby, nbx, size*size)."""
    h, w = x.shape
    ph, pw = (-h) % size, (-w) % size
    x = torch.nn.functional.pad(x, (0, pw, 0, ph))
    nby, nbx = x.shape[0] // size, x.shape[1] // size
    return x.reshape(nby, size, nbx, size).permute(0, 2, 1, 3).reshape(nby, nbx, size * size)


def qcv_plane(
    sources: Sequence[torch.Tensor], f: torch.Tensor, *, window: int = 16, alpha: float = 5.0
) -> torch.Tensor:
    """Chen-Varshney Q_CV of one plane, as Z. Liu's ``metricChen`` (used by VIFB ``metricsQcv``); lower is better."""
    h, w = f.shape
    r = freqspace_radius(h, w, w / 8.0, h / 8.0, device=f.device)
    theta_m = 2.6 * (0.0192 + 0.144 * r) * torch.exp(-((0.144 * r) ** 1.1))
    num = torch.zeros((), dtype=torch.float64, device=f.device)
    den = torch.zeros((), dtype=torch.float64, device=f.device)
    # the CSF filtering is linear: filter(S - F) = filter(S) - filter(F), each remembered
    ff = memo("qcv_f", f, lambda x: freq_filter(_normalize1(x), theta_m))

    def source_side(x):
        sn = _normalize1(x)
        gx = conv2(sn, _SOBEL_X, "same")
        gy = conv2(sn, -_SOBEL_Y, "same")
        g = torch.sqrt(gx * gx + gy * gy)
        return (_blocks(g, window) ** alpha).sum(-1), freq_filter(sn, theta_m)

    for s in sources:
        lam, fs = memo(("qcv_s", window, alpha), s, source_side)
        d = fs - ff
        dist = (_blocks(d, window) ** 2).mean(-1)
        num = num + (lam * dist).sum()
        den = den + lam.sum()
    return num / den


def _ssim_moments(x: torch.Tensor):
    """SSIM's local statistics of one plane, remembered: centre, centred plane, local mean and variance.

    The filtering is in float32 on the plane minus its mean (so squares stay
    small and the variance does not cancel), by direct summation over each
    11x11 window: a few 1e-7 relative, far below VIFB's 5 stored digits.
    """

    def one(x):
        c = x.mean()
        xc = (x - c).to(torch.float32)
        g = fspecial_gaussian(11, 1.5, device=x.device)
        mu = sep_valid(xc, g)
        return c, xc, mu, sep_valid(xc * xc, g) - mu * mu

    return memo("ssim11", x, one)


def ssim_valid_plane(a: torch.Tensor, b: torch.Tensor, *, data_range: float = 255.0) -> torch.Tensor:
    """Wang et al. 2004 mean SSIM: Gaussian window 11, sigma 1.5, K = (0.01, 0.03), 'valid' region.

    Symmetric in ``a`` and ``b`` to the last bit, and exactly 1 for identical planes.
    """
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    ca, xa, ma, saa = _ssim_moments(a)
    cb, xb, mb, sbb = _ssim_moments(b)
    sab = (sep_valid(xa * xb, fspecial_gaussian(11, 1.5, device=a.device)) - ma * mb).double()
    ua = ma.double() + ca
    ub = mb.double() + cb
    smap = ((2 * ua * ub + c1) * (2 * sab + c2)) / ((ua * ua + ub * ub + c1) * ((saa + sbb).double() + c2))
    return smap.mean()


# ---------------------------------------------------------------------------
# VIFB metrics


def _mean_over_channels(fused, sources, fn, *, round_grey: bool = True, device=None) -> float:
    f, srcs = prepare_inputs(fused, sources, device=device)
    vals = [fn(planes, fp) for planes, fp in channel_planes(f, srcs, round_grey=round_grey)]
    return float(torch.stack([torch.as_tensor(v, dtype=torch.float64) for v in vals]).mean())


def vifb_entropy(fused: Any, sources: Sequence[Any] = (), *, device=None) -> float:
    """EN, VIFB ``metricsEntropy``: entropy (bits) of each channel's 256-bin histogram, averaged."""
    return _mean_over_channels(fused, sources, lambda s, f: entropy_plane(f), device=device)


def vifb_cross_entropy(fused: Any, sources: Sequence[Any], *, device=None) -> float:
    """CE, VIFB ``metricsCross_entropy``: mean over sources of KL(hist source || hist fused), per channel; lower is better."""
    return _mean_over_channels(
        fused, sources, lambda s, f: torch.stack([cross_entropy_plane(a, f) for a in s]).mean(), device=device
    )


def vifb_mutinf(fused: Any, sources: Sequence[Any], *, device=None) -> float:
    """MI, VIFB ``metricsMutinf``: sum over sources of MI(source, fused) (nats, min-max binned), per channel."""
    return _mean_over_channels(
        fused, sources, lambda s, f: torch.stack([vifb_mi_plane(a, f) for a in s]).sum(), device=device
    )


def vifb_rmse(fused: Any, sources: Sequence[Any], *, device=None) -> float:
    """RMSE as VIFB ``metricsRmse`` stores it: mean over sources of sqrt(SSE)/(M N) (a faulty RMSE; kept for comparison)."""
    return _mean_over_channels(
        fused, sources, lambda s, f: torch.stack([vifb_mse_plane(a, f) for a in s]).mean(), device=device
    )


def vifb_psnr(fused: Any, sources: Sequence[Any], *, device=None) -> float:
    """PSNR as VIFB ``metricsPsnr`` stores it: 20 log10(255 / sqrt(mean of VIFB's faulty MSE)) (about 60 dB)."""

    def one(s, f):
        mes = torch.stack([vifb_mse_plane(a, f) for a in s]).mean()
        return 20.0 * torch.log10(255.0 / torch.sqrt(mes))

    return _mean_over_channels(fused, sources, one, round_grey=False, device=device)


def vifb_qabf(fused: Any, sources: Sequence[Any], *, device=None) -> float:
    """Q^{AB/F}, VIFB ``metricsQabf`` with its g_A == g_F quirk (see :func:`qabf_plane`)."""
    return _mean_over_channels(
        fused, sources, lambda s, f: qabf_plane(s, f, vifb_quirk=True), round_grey=False, device=device
    )


def vifb_qcb(fused: Any, sources: Sequence[Any], *, device=None) -> float:
    """Q_CB (Chen & Blum 2009), VIFB ``metricsQcb`` = Z. Liu's ``metricChenBlum``, per channel."""
    return _mean_over_channels(fused, sources, qcb_plane, round_grey=False, device=device)


def vifb_qcv(fused: Any, sources: Sequence[Any], *, device=None) -> float:
    """Q_CV (Chen & Varshney 2007), VIFB ``metricsQcv`` = Z. Liu's ``metricChen``, per channel; lower is better."""
    return _mean_over_channels(fused, sources, qcv_plane, round_grey=False, device=device)


def vifb_ssim(fused: Any, sources: Sequence[Any], *, device=None) -> float:
    """SSIM, VIFB ``metricsSsim``: SUM over sources of SSIM(source, fused), per channel (two sources: 0..2)."""
    return _mean_over_channels(
        fused, sources, lambda s, f: torch.stack([ssim_valid_plane(a, f) for a in s]).sum(), device=device
    )


def vifb_variance(fused: Any, sources: Sequence[Any] = (), *, device=None) -> float:
    """SD, VIFB ``metricsVariance`` (despite the name a population standard deviation), per channel."""
    return _mean_over_channels(fused, sources, lambda s, f: f.std(correction=0), device=device)


def vifb_avg_gradient(fused: Any, sources: Sequence[Any] = (), *, device=None) -> float:
    """AG, VIFB ``metricsAvg_gradient``: MATLAB ``gradient``, sum sqrt((gx^2+gy^2)/2) / ((M-1)(N-1)), per channel."""

    def one(s, f):
        gx, gy = matlab_gradient(f)
        return torch.sqrt((gx * gx + gy * gy) / 2.0).sum() / ((f.shape[0] - 1) * (f.shape[1] - 1))

    return _mean_over_channels(fused, sources, one, device=device)


def vifb_edge_intensity(fused: Any, sources: Sequence[Any] = (), *, device=None) -> float:
    """EI, VIFB ``metricsEdge_intensity``: mean Sobel magnitude (``imfilter``, replicate borders) over all channels."""
    f, _ = prepare_inputs(fused, None, device=device)
    p = torch.nn.functional.pad(f.unsqueeze(0), (1, 1, 1, 1), mode="replicate")[0]
    gx = conv2(p, _SOBEL_Y, "valid")
    gy = conv2(p, _SOBEL_Y.T.contiguous(), "valid")
    return float(torch.sqrt(gx * gx + gy * gy).mean())


def vifb_spatial_frequency(fused: Any, sources: Sequence[Any] = (), *, device=None) -> float:
    """SF, VIFB ``metricsSpatial_frequency`` including its colour quirk.

    For a colour image VIFB's ``[m, n] = size(fused)`` makes ``n`` = width x 3,
    so the channels are laid side by side as one ``H x 3W`` image (one extra
    row difference at each channel seam) and normalised by ``H x 3W``.
    """
    f, _ = prepare_inputs(fused, None, device=device)
    wide = torch.cat(list(f), dim=1)  # (H, C*W), channel-major columns as MATLAB's column-major layout
    m, n = wide.shape
    rf = ((wide[:, 1:] - wide[:, :-1]) ** 2).sum() / (m * n)
    cf = ((wide[1:, :] - wide[:-1, :]) ** 2).sum() / (m * n)
    return float(torch.sqrt(rf + cf))


#: VIFB metric names (as in its CSV) -> function.
VIFB_METRICS = {
    "Avg_gradient": vifb_avg_gradient,
    "Cross_entropy": vifb_cross_entropy,
    "Edge_intensity": vifb_edge_intensity,
    "Entropy": vifb_entropy,
    "Mutinf": vifb_mutinf,
    "Psnr": vifb_psnr,
    "Qabf": vifb_qabf,
    "Qcb": vifb_qcb,
    "Qcv": vifb_qcv,
    "Rmse": vifb_rmse,
    "Spatial_frequency": vifb_spatial_frequency,
    "Ssim": vifb_ssim,
    "Variance": vifb_variance,
}

__all__ = [*(f.__name__ for f in VIFB_METRICS.values()), "VIFB_METRICS"]

_ = (matlab_round, rgb2gray)  # re-exported helpers used by sibling modules
