"""Fusion quality metrics (torch, CPU or GPU, float64 on a 0-255 scale; no napari import).

Every metric is a function ``f(fused, sources, ...) -> float`` (full-reference
ones take ``(fused, gt)``); :data:`METRICS` maps a short name to a
:class:`MetricSpec` so tools select metrics by name::

    from napari_fusion.metrics import compute_metrics
    compute_metrics(fused, [ir, vis], names=["qabf", "nmi", "ssim"])

Each function's docstring names the reference implementation it reproduces;
``docs/metrics.md`` lists them with their validation. The ``vifb_*`` metrics
reproduce the VIFB benchmark's stored values (with its quirks); the plain names
are the corrected/standard forms and are the defaults.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from .._registry_base import Registry
from ..errors import FusionInputError
from . import fusion, reference, spectral, vifb
from .fusion import (
    average_gradient,
    cross_entropy,
    edge_intensity,
    entropy,
    fmi,
    mef_ssim,
    mutual_information,
    nabf,
    psnr_fusion,
    q_cb,
    q_cv,
    q_mi,
    q_y,
    qabf,
    rmse_fusion,
    scd,
    spatial_frequency,
    ssim_fusion,
    standard_deviation,
    viff,
)
from .spectral import ergas, psnr_bands, sam, ssim_bands
from .vifb import VIFB_METRICS


@dataclass(frozen=True)
class MetricSpec:
    """A registered metric.

    ``needs``: ``'fused'`` (fused image only), ``'sources'`` (fused and the
    sources) or ``'gt'`` (fused and a ground truth). ``higher_is_better`` is
    None where neither direction means better quality (e.g. VIFB's PSNR).
    """

    name: str
    func: Callable[..., float]
    needs: str
    higher_is_better: bool | None
    variant: str
    n_sources: int | None = None
    kwargs: tuple = ()

    def __call__(self, fused: Any, sources: Sequence[Any] | None = None, gt: Any = None, **kw) -> float:
        opts = dict(self.kwargs)
        opts.update(kw)
        if self.needs == "gt":
            if gt is None:
                raise FusionInputError(f"metric {self.name!r} needs a ground-truth image")
            return self.func(fused, gt, **opts)
        if self.needs == "sources":
            if not sources:
                raise FusionInputError(f"metric {self.name!r} needs the source images")
            if self.n_sources is not None and len(sources) != self.n_sources:
                raise FusionInputError(
                    f"metric {self.name!r} needs exactly {self.n_sources} sources, got {len(sources)}"
                )
        return self.func(fused, list(sources or ()), **opts)


#: The metric catalogue; :data:`METRICS` is its live ``name -> MetricSpec`` dict.
METRIC_REGISTRY: Registry[MetricSpec] = Registry(
    "metric", sort_names=False, unknown_message="unknown {kind} {name}; known: {names}"
)
METRICS: dict[str, MetricSpec] = METRIC_REGISTRY.entries


def _reg(name, func, needs, higher, variant, n_sources=None, **kwargs):
    METRIC_REGISTRY.register(name, MetricSpec(name, func, needs, higher, variant, n_sources, tuple(kwargs.items())))


_reg("qabf", qabf, "sources", True, "Xydeas-Petrovic, corrected equal-strength case, grey")
_reg("nmi", q_mi, "sources", True, "Q_MI, Hossny 2008 / Z. Liu metricMI, grey")
_reg("mi", mutual_information, "sources", True, "VIFB Mutinf (nats, sum over sources, per channel)")
_reg("q_y", q_y, "sources", True, "Yang 2008 / Y. Liu metricYang, grey", n_sources=2)
_reg("q_cb", q_cb, "sources", True, "Chen-Blum / Z. Liu metricChenBlum, grey")
_reg("q_cv", q_cv, "sources", False, "Chen-Varshney / Z. Liu metricChen, grey")
_reg("scd", scd, "sources", True, "Aslantas 2015 / analysis_SCD, grey", n_sources=2)
_reg("viff", viff, "sources", True, "Han 2013 / Y. Liu VIFF_Public, grey")
_reg("nabf", nabf, "sources", False, "Kumar's modified Nabf on 0-255, grey")
_reg("fmi_pixel", fmi, "sources", True, "Haghighat fast-FMI, raw pixels, 3x3", feature="pixel")
_reg("fmi_dct", fmi, "sources", True, "Haghighat fast-FMI, dct2 features, 3x3", feature="dct")
_reg("fmi_wavelet", fmi, "sources", True, "Haghighat fast-FMI, dmey dwt2 features, 3x3", feature="wavelet")
_reg("ssim", ssim_fusion, "sources", True, "mean over sources of SSIM(S, F), per channel")
_reg("mef_ssim", mef_ssim, "sources", True, "Ma 2015 mef_ms_ssim, grey")
_reg("psnr", psnr_fusion, "sources", True, "10 log10(255^2 / mean MSE(S, F)), corrected")
_reg("rmse", rmse_fusion, "sources", False, "mean sqrt(MSE(S, F)), corrected")
_reg("ce", cross_entropy, "sources", False, "VIFB Cross_entropy")
_reg("en", entropy, "fused", True, "VIFB Entropy, per channel")
_reg("sd", standard_deviation, "fused", True, "VIFB Variance (std), per channel")
_reg("sf", spatial_frequency, "fused", True, "Eskicioglu-Fisher, per channel, no seam quirk")
_reg("ag", average_gradient, "fused", True, "VIFB Avg_gradient, per channel")
_reg("ei", edge_intensity, "fused", True, "VIFB Edge_intensity")
_reg("mse_gt", reference.mse, "gt", False, "MSE against ground truth")
_reg("psnr_gt", reference.psnr, "gt", True, "PSNR against ground truth")
_reg("ssim_gt", reference.ssim, "gt", True, "SSIM (Wang 2004) against ground truth")

_VIFB_DIRECTION = {"Cross_entropy": False, "Qcv": False, "Rmse": False, "Psnr": None}
for _name, _fn in VIFB_METRICS.items():
    _needs = (
        "fused"
        if _name in ("Avg_gradient", "Edge_intensity", "Entropy", "Spatial_frequency", "Variance")
        else "sources"
    )
    _reg(f"vifb_{_name.lower()}", _fn, _needs, _VIFB_DIRECTION.get(_name, True), f"VIFB metrics{_name}.m (faithful)")

#: Metrics computed by default (``napari-fusion evaluate`` without ``--metrics``).
DEFAULT_METRICS = ("qabf", "nmi", "mi", "q_y", "q_cb", "scd", "viff", "nabf", "ssim", "en", "sd", "sf", "ag")
#: Full-reference metrics added by default when a case has a ground truth.
DEFAULT_GT_METRICS = ("psnr_gt", "ssim_gt")
#: The 13 VIFB metrics under their registry names.
VIFB_METRIC_NAMES = tuple(f"vifb_{n.lower()}" for n in VIFB_METRICS)


def list_metrics() -> list[str]:
    """Registered metric names."""
    return METRIC_REGISTRY.names()


def get_metric(name: str) -> MetricSpec:
    """The :class:`MetricSpec` registered under ``name``."""
    return METRIC_REGISTRY.get(name)


def default_metric_names(sources: Sequence[Any] | None = None, gt: Any = None) -> list[str]:
    """The default metrics whose inputs are there: the fused-only ones, those of the sources
    (their count permitting), and the ground-truth ones when ``gt`` is given."""
    names = [n for n in DEFAULT_METRICS if sources or METRICS[n].needs == "fused"]
    if gt is not None:
        names += list(DEFAULT_GT_METRICS)
    if sources is not None and len(sources) != 2:
        names = [n for n in names if METRICS[n].n_sources in (None, len(sources))]
    return names


def compute_metrics(
    fused: Any,
    sources: Sequence[Any] | None = None,
    gt: Any = None,
    *,
    names: Iterable[str] | None = None,
    device=None,
    progress: Callable[[float, float, str], Any] | None = None,
) -> dict[str, float]:
    """Compute several metrics by name; metrics whose inputs are missing are skipped when ``names`` is None.

    ``progress(done, total, message)`` is called after each metric (it may raise to stop).
    """
    names = default_metric_names(sources, gt) if names is None else list(names)
    out = {}
    for k, n in enumerate(names):
        spec = get_metric(n)
        try:
            out[n] = spec(fused, sources, gt, device=device)
        except FusionInputError as exc:  # say which metric could not be computed
            raise FusionInputError(str(exc) if str(exc).startswith("metric ") else f"metric {n!r}: {exc}") from None
        if progress is not None:
            progress(k + 1, len(names), n)
    return out


__all__ = [
    "METRICS",
    "METRIC_REGISTRY",
    "DEFAULT_METRICS",
    "DEFAULT_GT_METRICS",
    "VIFB_METRICS",
    "VIFB_METRIC_NAMES",
    "MetricSpec",
    "compute_metrics",
    "default_metric_names",
    "get_metric",
    "list_metrics",
    "average_gradient",
    "cross_entropy",
    "edge_intensity",
    "entropy",
    "fmi",
    "mef_ssim",
    "mutual_information",
    "nabf",
    "psnr_fusion",
    "q_cb",
    "q_cv",
    "q_mi",
    "q_y",
    "qabf",
    "rmse_fusion",
    "scd",
    "spatial_frequency",
    "ssim_fusion",
    "standard_deviation",
    "viff",
    "sam",
    "ergas",
    "psnr_bands",
    "ssim_bands",
    "spectral",
    "fusion",
    "reference",
    "vifb",
]
