"""No-reference fusion quality metrics (scored against the source images).

Every function takes ``(fused, sources)`` - arrays ``(H, W)`` / ``(H, W, 3)``
(8-bit, 16-bit or float) - and returns a Python float. Computation is in
float64 on a 0-255 scale (see :mod:`napari_fusion.metrics._common`).

Colour: unless a docstring says otherwise, colour images are converted to
grey with MATLAB's ``rgb2gray`` weights (``colour="grey"``, the convention
of Z. Liu's and Y. Liu's MATLAB toolboxes, which take grey images);
``colour="channels"`` scores every colour channel as VIFB does and averages.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import FusionInputError
from ._common import (
    channel_planes,
    entropy_of,
    fft_correlate,
    fspecial_gaussian,
    grey,
    hist256,
    matlab_gradient,
    memo,
    prepare_inputs,
    sep_valid,
    sobel_valid,
)
from .vifb import (
    cross_entropy_plane,
    entropy_plane,
    minmax_bins,
    qabf_plane,
    qcb_plane,
    qcv_plane,
    ssim_valid_plane,
    vifb_mi_plane,
)

_EPS = 2.220446049250313e-16  # MATLAB eps


def _planes(fused, sources, colour: str, *, n_sources: int | None = None, min_sources: int = 0, device=None):
    """Yield ``([source planes], fused plane)`` under the colour convention."""
    f, srcs = prepare_inputs(fused, sources, n_sources=n_sources, device=device)
    if len(srcs) < min_sources:
        raise FusionInputError(f"this metric needs at least {min_sources} source images, got {len(srcs)}")
    if colour == "grey":
        return [([grey(s) for s in srcs], grey(f))]
    if colour == "channels":
        return list(channel_planes(f, srcs))
    raise FusionInputError(f"colour must be 'grey' or 'channels', not {colour!r}")


def _mean(values) -> float:
    vals = [torch.as_tensor(v, dtype=torch.float64) for v in values]
    return float(torch.stack(vals).mean())


# ---------------------------------------------------------------------------
# gradient-based


def qabf(fused: Any, sources: Sequence[Any], *, variant: str = "corrected", colour: str = "grey", device=None) -> float:
    """Q^{AB/F}, Xydeas & Petrovic, Electronics Letters 36(4), 2000.

    ``variant="corrected"`` (default): strength ratio min(g_S, g_F)/max(g_S, g_F),
    1 where they are equal. ``variant="vifb"``: VIFB ``metricsQabf``, which sets
    the ratio to g_F where g_S == g_F (on data it has scaled by 255 twice, so
    this is about 1 at edges and 0 in flat regions); use :func:`napari_fusion.metrics.vifb.vifb_qabf`
    for VIFB's colour handling too. Range 0..1, higher is better.
    """
    if variant not in ("corrected", "vifb"):
        raise FusionInputError(f"variant must be 'corrected' or 'vifb', not {variant!r}")
    return _mean(
        qabf_plane(s, f, vifb_quirk=variant == "vifb")
        for s, f in _planes(fused, sources, colour, min_sources=1, device=device)
    )


_NABF = dict(Td=2.0, wt_min=0.001, Lg=1.5, Nrg=0.9999, kg=19.0, sg=0.5, Nra=0.9995, ka=22.0, sa=0.5)


def _kumar_sobel(x: torch.Tensor):
    """Kumar's ``sobel_fn``: Sobel/8 with mirror (no edge repeat) border; returns (gv, gh)."""
    p = F.pad(x.view(1, 1, *x.shape), (1, 1, 1, 1), mode="reflect")[0, 0]
    gv, gh = sobel_valid(p)
    return gv.mul_(0.125), gh.mul_(0.125)


def _nabf_plane(sources, f):
    p = _NABF
    gvF, ghF = _kumar_sobel(f)
    gF = torch.sqrt(gvF**2 + ghF**2)

    def angle(gv, gh):
        safe = torch.where(gh == 0, torch.ones_like(gh), gh)
        a = torch.where(gh == 0, torch.sign(gv) * (math.pi / 2), torch.atan(gv / safe))
        return torch.where((gv == 0) & (gh == 0), torch.zeros_like(a), a)

    aF = angle(gvF, ghF)
    art = torch.ones_like(gF, dtype=torch.bool)
    terms = []
    wsum = torch.zeros((), dtype=torch.float64)
    for s in sources:
        gv, gh = _kumar_sobel(s)
        g = torch.sqrt(gv**2 + gh**2)
        hi = torch.maximum(g, gF)
        rel = torch.where(
            (g == 0) | (gF == 0),
            torch.zeros_like(g),
            torch.minimum(g, gF) / torch.where(hi == 0, torch.ones_like(hi), hi),
        )
        a = ((angle(gv, gh) - aF).abs() - math.pi / 2).abs() * 2 / math.pi
        qg = p["Nrg"] / (1 + torch.exp(-p["kg"] * (rel - p["sg"])))
        qa = p["Nra"] / (1 + torch.exp(-p["ka"] * (a - p["sa"])))
        q = torch.sqrt(qg * qa)
        w = torch.where(g >= p["Td"], g ** p["Lg"], torch.full_like(g, p["wt_min"]))
        art &= gF > g
        terms.append((1 - q) * w)
        wsum = wsum + w.sum()
    return (art * sum(terms)).sum() / wsum


def nabf(fused: Any, sources: Sequence[Any], *, colour: str = "grey", device=None) -> float:
    """N^{AB/F}, fusion artefacts, modified by B. K. Shreyamsha Kumar (SIVP 2013; ``objective_fusion_perform_fn``).

    Reproduces the ``analysis_nabf.m`` used by H. Li's IR/VIS papers, but on
    0-255 data (that code is fed [0, 1] images, where every weight collapses
    to ``wt_min``). Lower is better; 0 when the fused image equals a source.
    """
    return _mean(_nabf_plane(s, f) for s, f in _planes(fused, sources, colour, min_sources=1, device=device))


def average_gradient(fused: Any, sources: Sequence[Any] = (), *, colour: str = "channels", device=None) -> float:
    """AG as VIFB ``metricsAvg_gradient`` (MATLAB ``gradient``, central differences), per channel by default."""
    vals = []
    for _, f in _planes(fused, sources, colour, device=device):
        gx, gy = matlab_gradient(f)
        vals.append(torch.sqrt((gx * gx + gy * gy) / 2).sum() / ((f.shape[0] - 1) * (f.shape[1] - 1)))
    return _mean(vals)


def spatial_frequency(fused: Any, sources: Sequence[Any] = (), *, colour: str = "channels", device=None) -> float:
    """SF (Eskicioglu & Fisher 1995): sqrt(RF^2 + CF^2) with RF^2 = sum of squared row differences / (M N).

    Computed per channel and averaged (``colour="channels"``), without VIFB's
    channel-seam quirk (:func:`napari_fusion.metrics.vifb.vifb_spatial_frequency` has it).
    """
    vals = []
    for _, f in _planes(fused, sources, colour, device=device):
        n = f.numel()
        rf = ((f[:, 1:] - f[:, :-1]) ** 2).sum() / n
        cf = ((f[1:, :] - f[:-1, :]) ** 2).sum() / n
        vals.append(torch.sqrt(rf + cf))
    return _mean(vals)


def standard_deviation(fused: Any, sources: Sequence[Any] = (), *, colour: str = "channels", device=None) -> float:
    """SD (VIFB ``metricsVariance``): population standard deviation, per channel by default."""
    return _mean(f.std(correction=0) for _, f in _planes(fused, sources, colour, device=device))


def entropy(fused: Any, sources: Sequence[Any] = (), *, colour: str = "channels", device=None) -> float:
    """EN (VIFB ``metricsEntropy``): Shannon entropy in bits of the 256-bin histogram, per channel by default."""
    return _mean(entropy_plane(f) for _, f in _planes(fused, sources, colour, device=device))


# ---------------------------------------------------------------------------
# information-based


def q_mi(fused: Any, sources: Sequence[Any], *, colour: str = "grey", device=None) -> float:
    """Q_MI / NMI (Hossny et al., Electronics Letters 2008), as Z. Liu's ``metricMI(.., 1)``.

    Each image min-max scaled and rounded to 0..255; 256x256 joint histogram,
    log2; Q_MI = 2 sum_S I(S, F) / (H_S + H_F) (0..2 for two sources; the ratio does not depend on
    the log's base, so the remembered entropies in nats of :func:`minmax_bins` are used).
    """
    vals = []
    for srcs, f in _planes(fused, sources, colour, min_sources=1, device=device):
        fi, hf = minmax_bins(f)
        total = torch.zeros((), dtype=torch.float64)
        for s in srcs:
            si, hs = minmax_bins(s)
            mi = hs + hf - entropy_of(torch.bincount(si * 256 + fi, minlength=65536).to(torch.float64), base=math.e)
            total = total + (mi / (hs + hf) if (hs + hf) > 0 else torch.zeros((), dtype=torch.float64))
        vals.append(2 * total)
    return _mean(vals)


def mutual_information(fused: Any, sources: Sequence[Any], *, colour: str = "channels", device=None) -> float:
    """MI as VIFB ``metricsMutinf``: sum over sources of MI(S, F) in nats, min-max binned to 256 levels."""
    return _mean(
        torch.stack([vifb_mi_plane(s, f) for s in srcs]).sum()
        for srcs, f in _planes(fused, sources, colour, min_sources=1, device=device)
    )


def cross_entropy(fused: Any, sources: Sequence[Any], *, colour: str = "channels", device=None) -> float:
    """CE as VIFB ``metricsCross_entropy``: mean over sources of sum P_S log2(P_S/P_F). Lower is better."""
    return _mean(
        torch.stack([cross_entropy_plane(s, f) for s in srcs]).mean()
        for srcs, f in _planes(fused, sources, colour, min_sources=1, device=device)
    )


# ---------------------------------------------------------------------------
# FMI (Haghighat, Aghagolzadeh & Seyedarabi 2011; fast-FMI, Haghighat & Razian 2014)


def _dct2(x: torch.Tensor) -> torch.Tensor:
    """Orthonormal 2-D DCT-II (MATLAB ``dct2``)."""

    def mat(n):
        k = torch.arange(n, dtype=torch.float64).view(-1, 1)
        i = torch.arange(n, dtype=torch.float64).view(1, -1)
        m = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
        m[0] /= math.sqrt(2.0)
        return m.to(x.device)

    return mat(x.shape[0]) @ x @ mat(x.shape[1]).T


def _dwt_dmey_mosaic(x: torch.Tensor) -> torch.Tensor:
    try:
        import pywt
    except ImportError:  # pragma: no cover - depends on the environment
        raise FusionInputError("FMI with feature='wavelet' needs PyWavelets (pip install PyWavelets)") from None
    ca, (ch, cv, cd) = pywt.dwt2(x.cpu().numpy(), "dmey", mode="symmetric")
    top = torch.cat([torch.from_numpy(ca), torch.from_numpy(ch)], dim=1)
    bottom = torch.cat([torch.from_numpy(cv), torch.from_numpy(cd)], dim=1)
    m = torch.cat([top, bottom], dim=0).to(x.device)
    lo, hi = m.min(), m.max()
    return torch.ones_like(m) if hi == lo else (m - lo) / (hi - lo)


def _fmi_feature(x: torch.Tensor, feature: str) -> torch.Tensor:
    if feature in ("pixel", "none"):
        return x
    if feature == "dct":
        return _dct2(x)
    if feature == "wavelet":
        return _dwt_dmey_mosaic(x)
    if feature == "gradient":
        return matlab_gradient(x)[0]
    raise FusionInputError(f"FMI feature must be 'pixel', 'dct', 'wavelet' or 'gradient', not {feature!r}")


def _windows(x: torch.Tensor, w: int) -> torch.Tensor:
    """All ``w x w`` windows as rows, in MATLAB's column-major order: (P, w*w)."""
    u = x.unfold(0, w, 1).unfold(1, w, 1)  # (H', W', w(rows), w(cols))
    return u.transpose(-1, -2).reshape(-1, w * w)


def _fmi_pairs(a: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """Per-window normalised FMI between window sets ``a`` and ``f`` of shape (P, l)."""
    l = a.shape[1]
    same = (a == f).all(dim=1)

    def pdf(x):
        lo = x.min(dim=1, keepdim=True).values
        hi = x.max(dim=1, keepdim=True).values
        const = hi == lo
        y = torch.where(const, torch.ones_like(x), (x - lo) / torch.where(const, torch.ones_like(hi), hi - lo))
        return y / y.sum(dim=1, keepdim=True)

    pa, pf = pdf(a), pdf(f)
    ca, cf = pa.cumsum(1), pf.cumsum(1)
    ta = pa - pa.mean(1, keepdim=True)
    tf = pf - pf.mean(1, keepdim=True)
    num = (ta * tf).sum(1)
    den = torch.sqrt((ta * ta).sum(1) * (tf * tf).sum(1))
    c = torch.where(num == 0, torch.zeros_like(num), num / torch.where(den == 0, torch.ones_like(den), den))
    idx = torch.arange(1, l + 1, dtype=torch.float64, device=a.device)

    def sd(p):
        e = (idx * p).sum(1)
        e2 = (idx * idx * p).sum(1)
        return torch.sqrt((e2 - e * e).clamp_min(0))

    sa, sf = sd(pa), sd(pf)
    Fi = cf.unsqueeze(2)  # (P, l, 1): fused cdf along i
    Aj = ca.unsqueeze(1)  # (P, 1, l): source cdf along j
    up = torch.minimum(Fi, Aj)
    lo = (Fi + Aj - 1).clamp_min(0)
    prod = Fi * Aj
    pos = c >= 0
    bound = torch.where(pos.view(-1, 1, 1), up, lo)
    cov = (bound - prod).sum((1, 2))
    sdprod = sf * sa
    corr_b = cov / torch.where(sdprod == 0, torch.ones_like(sdprod), sdprod)
    zero_w = (sa == 0) | (sf == 0) | (pos & (c == 0))
    wgt = torch.where(zero_w, torch.zeros_like(c), c / torch.where(corr_b == 0, torch.ones_like(corr_b), corr_b))
    # joint pdf: second differences of the copula bound, mixed with the independent pdf
    bp = F.pad(bound, (1, 0, 1, 0))
    dbound = bp[:, 1:, 1:] - bp[:, :-1, 1:] - bp[:, 1:, :-1] + bp[:, :-1, :-1]
    jpdf = wgt.view(-1, 1, 1) * dbound + (1 - wgt.view(-1, 1, 1)) * pf.unsqueeze(2) * pa.unsqueeze(1)
    absj = jpdf.abs()
    hj = torch.where(
        jpdf != 0, -jpdf * torch.log2(torch.where(absj == 0, torch.ones_like(absj), absj)), torch.zeros_like(jpdf)
    ).sum((1, 2))

    def ent(p):
        return torch.where(p > 0, -p * torch.log2(torch.where(p > 0, p, torch.ones_like(p))), torch.zeros_like(p)).sum(
            1
        )

    ha, hf = ent(pa), ent(pf)
    mi = ha + hf - hj
    fmi = torch.where(mi == 0, torch.zeros_like(mi), 2 * mi / torch.where((ha + hf) == 0, torch.ones_like(mi), ha + hf))
    return torch.where(same, torch.ones_like(fmi), fmi)


def fmi(
    fused: Any,
    sources: Sequence[Any],
    *,
    feature: str = "pixel",
    window: int = 3,
    colour: str = "grey",
    chunk: int = 20000,
    device=None,
) -> float:
    """FMI, feature mutual information (Haghighat et al. 2011), fast version of Haghighat & Razian 2014 (``fmi.m``).

    ``feature``: ``'pixel'`` (raw grey levels, ``fmi.m``'s ``'none'``), ``'dct'``
    (``dct2`` of the whole image), ``'wavelet'`` (discrete Meyer ``dwt2``
    mosaic rescaled to [0, 1]; needs PyWavelets) or ``'gradient'``. Sliding
    ``window x window`` windows, each normalised as a pdf; the joint pdf comes
    from the Frechet-Hoeffding copula bounds weighted by the correlation;
    per window 2 MI / (H_S + H_F), averaged over the sources, then over windows.
    Range 0..1 (1 for identical images), higher is better.
    """
    vals = []
    for srcs, f in _planes(fused, sources, colour, min_sources=1, device=device):
        ff = _fmi_feature(f, feature)
        fw = _windows(ff, window)
        acc = torch.zeros(fw.shape[0], dtype=torch.float64, device=fw.device)
        for s in srcs:
            sw = _windows(_fmi_feature(s, feature), window)
            parts = [_fmi_pairs(sw[i : i + chunk], fw[i : i + chunk]) for i in range(0, fw.shape[0], chunk)]
            acc = acc + torch.cat(parts)
        vals.append((acc / len(srcs)).mean())
    return _mean(vals)


# ---------------------------------------------------------------------------
# structural / perceptual


def _local_stats(planes: torch.Tensor, g: torch.Tensor, w: int):
    """Gaussian-window 'valid' means of a stack of planes (direct summation: a 7x7 window is cheaper than an FFT)."""
    return sep_valid(planes, g)


def _box_count(mask: torch.Tensor, bh: int, bw: int) -> torch.Tensor:
    """Exact 'valid' ``bh x bw`` window sums of a boolean mask (integral image in int32)."""
    c = F.pad(mask.to(torch.int32).cumsum(0, dtype=torch.int32).cumsum(1, dtype=torch.int32), (1, 0, 1, 0))
    return c[bh:, bw:] - c[:-bh, bw:] - c[bh:, :-bw] + c[:-bh, :-bw]


def _flat(x: torch.Tensor, w: int) -> torch.Tensor:
    """True for 'valid' ``w x w`` windows in which ``x`` is constant (no step between neighbours inside)."""
    if w < 2:
        return torch.ones_like(x, dtype=torch.bool)
    steps_h = _box_count(x[:, 1:] != x[:, :-1], w, w - 1)
    steps_v = _box_count(x[1:, :] != x[:-1, :], w - 1, w)
    return (steps_h == 0) & (steps_v == 0)


def _yang_moments(x: torch.Tensor, g: torch.Tensor, w: int):
    """Local mean and variance (exactly 0 in constant windows) and the constant-window mask, remembered."""

    def one(x):
        m = _local_stats(torch.stack([x, x * x]), g, w)
        flat = _flat(x, w)
        var = torch.where(flat, torch.zeros_like(m[1]), m[1] - m[0] * m[0])
        return m[0], var, flat

    return memo(("yang", w), x, one)


def _yang_ssim(ma, va, fa, mb, vb, fb, eab, c=2e-16):
    cab = torch.where(fa | fb, torch.zeros_like(eab), eab - ma * mb)
    return ((2 * ma * mb + c) * (2 * cab + c)) / ((ma * ma + mb * mb + c) * (va + vb + c))


def q_y(fused: Any, sources: Sequence[Any], *, colour: str = "grey", device=None) -> float:
    """Q_Y (Yang et al., Information Fusion 9, 2008), as Y. Liu's ``metricYang``.

    SSIM maps with a 7x7 Gaussian (sigma 1.5), C1 = C2 = 2e-16, 'valid';
    where SSIM(A, B) >= 0.75: lam SSIM(A,F) + (1-lam) SSIM(B,F) with
    lam = var_A / (var_A + var_B) (0.5 added to both variances where their
    sum is 0), else max(SSIM(A,F), SSIM(B,F)). Local variances of windows
    that are exactly constant are set to exactly 0 (the filtered estimate is
    rounding noise there). Two sources. Range about 0..1, higher is better.
    """
    g = fspecial_gaussian(7, 1.5)
    vals = []
    for (a, b), f in _planes(fused, sources, colour, n_sources=2, device=device):
        g = g.to(f.device)
        (ma, va, fa), (mb, vb, fb), (mf, vf, ff) = (_yang_moments(x, g, 7) for x in (a, b, f))
        e_ab = memo(("yang_ab", 7), torch.stack([a, b]), lambda ab: _local_stats(ab[0] * ab[1], g, 7))
        e_af, e_bf = _local_stats(torch.stack([a * f, b * f]), g, 7)
        s_ab = _yang_ssim(ma, va, fa, mb, vb, fb, e_ab)
        s_af = _yang_ssim(ma, va, fa, mf, vf, ff, e_af)
        s_bf = _yang_ssim(mb, vb, fb, mf, vf, ff, e_bf)
        zero = (va + vb) == 0
        va = torch.where(zero, va + 0.5, va)
        vb = torch.where(zero, vb + 0.5, vb)
        lam = va / (va + vb)
        q = torch.where(s_ab >= 0.75, lam * s_af + (1 - lam) * s_bf, torch.maximum(s_af, s_bf))
        vals.append(q.mean())
    return _mean(vals)


def q_cb(fused: Any, sources: Sequence[Any], *, colour: str = "grey", device=None) -> float:
    """Q_CB (Chen & Blum, Image and Vision Computing 27, 2009), as Z. Liu's ``metricChenBlum`` (= VIFB ``metricsQcb``).

    Grey by default (``colour="channels"`` gives VIFB's per-channel value). Higher is better.
    """
    return _mean(qcb_plane(s, f) for s, f in _planes(fused, sources, colour, min_sources=1, device=device))


def q_cv(fused: Any, sources: Sequence[Any], *, colour: str = "grey", device=None) -> float:
    """Q_CV (Chen & Varshney, Information Fusion 8, 2007), as Z. Liu's ``metricChen`` (= VIFB ``metricsQcv``). Lower is better."""
    return _mean(qcv_plane(s, f) for s, f in _planes(fused, sources, colour, min_sources=1, device=device))


def _corr2(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    xc = x - x.mean()
    yc = y - y.mean()
    den = torch.sqrt((xc * xc).sum() * (yc * yc).sum())
    if den == 0:
        return torch.tensor(float("nan"), dtype=torch.float64)
    return (xc * yc).sum() / den


def scd(fused: Any, sources: Sequence[Any], *, colour: str = "grey", device=None) -> float:
    """SCD, sum of the correlations of differences (Aslantas & Bendes, AEU 69, 2015), as ``analysis_SCD.m``.

    SCD = corr2(F - B, A) + corr2(F - A, B). Two sources; range -2..2, higher
    is better; NaN when a difference image is constant (e.g. F equal to a source).
    """
    vals = []
    for (a, b), f in _planes(fused, sources, colour, n_sources=2, device=device):
        vals.append(_corr2(f - b, a) + _corr2(f - a, b))
    return _mean(vals)


_VIF_WEIGHTS = (1.0, 0.0, 0.15, 1.0)


def _vif_window(scale: int, device) -> torch.Tensor:
    """1-D factor of VIF's Gaussian window at ``scale`` (N = 2^(5-scale)+1, sigma N/5)."""
    n = 2 ** (5 - scale) + 1
    return fspecial_gaussian(n, n / 5.0, device=device)


def _vif_filter(x: torch.Tensor, scale: int) -> torch.Tensor:
    """'valid' Gaussian filtering at ``scale``: by FFT for the 17x17 window, directly for the small ones."""
    g = _vif_window(scale, x.device)
    if len(g) > 9:
        return fft_correlate(x, [torch.outer(g, g)], "valid")[0]
    return sep_valid(x, g)


def _vif_image(x: torch.Tensor):
    """Per scale: the image at that scale, its local mean and variance ('valid'; None at weight-0 scales). Remembered."""

    def one(x):
        out = []
        for scale in range(1, 5):
            if scale > 1:  # filter and keep every second row and column
                x = sep_valid(x, _vif_window(scale, x.device), step=2)
            if _VIF_WEIGHTS[scale - 1] == 0:
                out.append((x, None, None))
                continue
            m = _vif_filter(torch.stack([x, x * x]), scale)
            out.append((x, m[0], (m[1] - m[0] * m[0]).clamp_min(0)))
        return out

    return memo("vif", x, one)


def _vif_scales(ref: torch.Tensor, dist: torch.Tensor, sigma_nsq: float):
    """Per scale with a non-zero weight: (VID, VIND, gain) maps of ``dist`` against ``ref`` (None elsewhere)."""
    out = []
    for scale, rs, ds in zip(range(1, 5), _vif_image(ref), _vif_image(dist)):
        if _VIF_WEIGHTS[scale - 1] == 0:
            out.append(None)
            continue
        mu1, s1 = rs[1], rs[2]
        mu2, s2 = ds[1], ds[2]
        s12 = _vif_filter(rs[0] * ds[0], scale) - mu1 * mu2
        gain = s12 / (s1 + 1e-10)
        sv = s2 - gain * s12
        low1 = s1 < 1e-10
        gain = torch.where(low1, torch.zeros_like(gain), gain)
        sv = torch.where(low1, s2, sv)
        s1 = torch.where(low1, torch.zeros_like(s1), s1)
        low2 = s2 < 1e-10
        gain = torch.where(low2, torch.zeros_like(gain), gain)
        sv = torch.where(low2, torch.zeros_like(sv), sv)
        neg = gain < 0
        sv = torch.where(neg, s2, sv)
        gain = gain.clamp_min(0)
        sv = sv.clamp_min(1e-10)
        vid = torch.log10(1 + gain * gain * s1 / (sv + sigma_nsq))
        vind = torch.log10(1 + s1 / sigma_nsq)
        out.append((vid, vind, gain))
    return out


def viff(fused: Any, sources: Sequence[Any], *, colour: str = "grey", device=None) -> float:
    """VIF(F) (Han, Cai, Cao & Xu, Information Fusion 14, 2013), as Y. Liu's ``VIFF_Public.m``.

    Per scale (4 scales, Gaussian N = 2^(5-s)+1, sigma N/5, 'valid', decimation
    by 2) each pixel takes the source with the smaller gain; score
    sum(VID + C) / sum(VIND + C), C = 1e-7, noise variance 0.005 * 255^2; scales
    weighted [1, 0, 0.15, 1] / 2.15 (the weight-0 scale is not computed). Grey
    input (the reference converts colour to CIELAB L; here MATLAB grey). Higher
    is better. Any number of sources.
    """
    sq = 0.005 * 255 * 255
    vals = []
    for srcs, f in _planes(fused, sources, colour, min_sources=1, device=device):
        per = [_vif_scales(s, f, sq) for s in srcs]
        total = 0.0
        for i, weight in enumerate(_VIF_WEIGHTS):
            if weight == 0:
                continue
            vid, vind, gain = per[0][i]
            for other in per[1:]:
                v2, n2, g2 = other[i]
                take = g2 < gain
                vid = torch.where(take, v2, vid)
                vind = torch.where(take, n2, vind)
                gain = torch.where(take, g2, gain)
            total += weight * float((vid + 1e-7).sum() / (vind + 1e-7).sum())
        vals.append(total / sum(_VIF_WEIGHTS))
    return _mean(vals)


def ssim_fusion(
    fused: Any, sources: Sequence[Any], *, reduce: str = "mean", colour: str = "channels", device=None
) -> float:
    """Fusion SSIM: SSIM(S, F) (Wang et al. 2004; Gaussian 11, sigma 1.5, 'valid') combined over sources.

    ``reduce="mean"`` (default, 0..1) or ``"sum"`` (VIFB ``metricsSsim``, 0..2
    for two sources). Per channel by default, as VIFB.
    """
    if reduce not in ("mean", "sum"):
        raise FusionInputError(f"reduce must be 'mean' or 'sum', not {reduce!r}")
    vals = []
    for srcs, f in _planes(fused, sources, colour, min_sources=1, device=device):
        v = torch.stack([ssim_valid_plane(s, f) for s in srcs])
        vals.append(v.sum() if reduce == "sum" else v.mean())
    return _mean(vals)


def psnr_fusion(fused: Any, sources: Sequence[Any], *, colour: str = "channels", device=None) -> float:
    """Fusion PSNR, corrected: 10 log10(255^2 / mean_S MSE(S, F)) (VIFB's stored PSNR uses a faulty MSE)."""
    vals = []
    for srcs, f in _planes(fused, sources, colour, min_sources=1, device=device):
        mse = torch.stack([((s - f) ** 2).mean() for s in srcs]).mean()
        vals.append(torch.tensor(float("inf"), dtype=torch.float64) if mse == 0 else 10 * torch.log10(255.0**2 / mse))
    return _mean(vals)


def rmse_fusion(fused: Any, sources: Sequence[Any], *, colour: str = "channels", device=None) -> float:
    """Fusion RMSE, corrected: mean over sources of sqrt(MSE(S, F)) on 0-255 (VIFB's stored RMSE is faulty)."""
    return _mean(
        torch.stack([torch.sqrt(((s - f) ** 2).mean()) for s in srcs]).mean()
        for srcs, f in _planes(fused, sources, colour, min_sources=1, device=device)
    )


def edge_intensity(fused: Any, sources: Sequence[Any] = (), *, device=None) -> float:
    """EI as VIFB ``metricsEdge_intensity``: mean Sobel magnitude (replicate borders) over all channels."""
    from .vifb import vifb_edge_intensity

    return vifb_edge_intensity(fused, sources, device=device)


# ---------------------------------------------------------------------------
# MEF-SSIM (Ma, Zeng & Wang, IEEE TIP 24(11), 2015)


def _box_valid(x: torch.Tensor, w: int) -> torch.Tensor:
    return fft_correlate(x, [torch.full((w, w), 1.0 / (w * w), dtype=torch.float64, device=x.device)], "valid")[0]


def _mef_ssim_scale(seq: torch.Tensor, f: torch.Tensor, g2: torch.Tensor, w: int = 11, k: float = 0.03) -> torch.Tensor:
    n = seq.shape[0]
    nw = w * w
    mu = _box_valid(seq, w)  # (K, h, w)
    var = _box_valid(seq * seq, w) - mu * mu
    ed = torch.sqrt((nw * var).clamp_min(0)) + 0.001
    s = seq.sum(0)
    ms = _box_valid(s, w)
    num = torch.sqrt((nw * (_box_valid(s * s, w) - ms * ms)).clamp_min(0))
    den = torch.sqrt((nw * var).clamp_min(0)).sum(0)
    r = (num + _EPS) / (den + _EPS)
    r = torch.where(r > 1, torch.full_like(r, 1 - _EPS), r)
    r = torch.where(r < 0, torch.full_like(r, _EPS), r)
    p = torch.tan(math.pi / 2 * r).clamp(max=10)
    wmap = (ed / w) ** p + _EPS
    wmap = wmap / wmap.sum(0, keepdim=True)
    c = wmap / ed  # coefficient of (x_k - mu_k) in the reference block
    # pairwise products over the window: box (for the norm) and Gaussian (for the SSIM statistics)
    pairs = torch.stack([seq[i] * seq[j] for i in range(n) for j in range(n)])
    box_pairs = _box_valid(pairs, w).view(n, n, *mu.shape[1:])
    gstack = torch.cat([seq, pairs, seq * f, (f * f).unsqueeze(0), f.unsqueeze(0)])
    gm = fft_correlate(gstack, [g2], "valid")[0]
    gx = gm[:n]
    gxx = gm[n : n + n * n].view(n, n, *mu.shape[1:])
    gxf = gm[n + n * n : 2 * n + n * n]
    gff, gf = gm[-2], gm[-1]
    norm2 = torch.zeros_like(ms)
    mu1 = torch.zeros_like(ms)
    e11 = torch.zeros_like(ms)
    e1f = torch.zeros_like(ms)
    for i in range(n):
        mu1 = mu1 + c[i] * (gx[i] - mu[i])
        e1f = e1f + c[i] * (gxf[i] - mu[i] * gf)
        for j in range(n):
            cc = c[i] * c[j]
            norm2 = norm2 + cc * nw * (box_pairs[i, j] - mu[i] * mu[j])
            e11 = e11 + cc * (gxx[i, j] - mu[i] * gx[j] - mu[j] * gx[i] + mu[i] * mu[j])
    nrm = torch.sqrt(norm2.clamp_min(0))
    scale = torch.where(
        nrm > 0, ed.max(0).values / torch.where(nrm > 0, nrm, torch.ones_like(nrm)), torch.ones_like(nrm)
    )
    mu1 = mu1 * scale
    s1 = e11 * scale * scale - mu1 * mu1
    s2 = gff - gf * gf
    s12 = e1f * scale - mu1 * gf
    cst = (k * 255) ** 2
    return ((2 * s12 + cst) / (s1 + s2 + cst)).mean()


def _down2(x: torch.Tensor) -> torch.Tensor:
    """MATLAB ``imfilter(x, ones(2)/4, 'symmetric', 'same')`` then ``x(1:2:end, 1:2:end)``."""
    p = F.pad(x.unsqueeze(0), (0, 1, 0, 1), mode="replicate")[0]
    y = (p[..., :-1, :-1] + p[..., 1:, :-1] + p[..., :-1, 1:] + p[..., 1:, 1:]) / 4
    return y[..., ::2, ::2]


def mef_ssim(fused: Any, sources: Sequence[Any], *, colour: str = "grey", device=None) -> float:
    """MEF-SSIM (Ma, Zeng & Wang, IEEE TIP 2015), as the authors' ``mef_ms_ssim.m`` / ``mef_ssim.m``.

    Grey 0-255; K = 0.03; 11x11 box window for the patch decomposition and a
    Gaussian (11, sigma 1.5) window for the SSIM statistics; 3 scales (2x2
    mean then decimation) weighted [0.0448, 0.2856, 0.3001] / sum; Q = prod Q_l^w_l.
    Computed in closed form from filtered moments instead of patch loops.
    Any number of sources (>= 2 in its intended use). Range 0..1, higher is better.
    """
    weights = torch.tensor([0.0448, 0.2856, 0.3001], dtype=torch.float64)
    weights = weights / weights.sum()
    vals = []
    for srcs, f in _planes(fused, sources, colour, min_sources=1, device=device):
        if min(f.shape) / 4 < 11:
            raise FusionInputError(f"MEF-SSIM needs images of at least 44x44 pixels, got {tuple(f.shape)}")
        g = fspecial_gaussian(11, 1.5, device=f.device)
        g2 = torch.outer(g, g)
        seq = torch.stack(srcs)
        qs = []
        for level in range(3):
            qs.append(_mef_ssim_scale(seq, f, g2))
            if level < 2:
                seq, f = _down2(seq), _down2(f)
        q = torch.stack(qs)
        vals.append(torch.prod(q.clamp_min(0) ** weights))
    return _mean(vals)


_ = hist256  # re-exported for callers that build histograms
