"""VIFB's stored per-image metric values, reproduced from its images (subset; the full
table is ``benchmarks/vifb_metrics.py``)."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from napari_fusion.metrics.vifb import VIFB_METRICS

# SwinFusion and YDTR were added to VIFB later and their stored JPEGs are not
# exactly the images VIFB scored (several of their values differ by 0.1-5 %;
# see docs/metrics.md). Every other method reproduces within rounding.
NOT_REPRODUCIBLE = {"SwinFusion", "YDTR"}
CHEAP = [
    "Avg_gradient",
    "Cross_entropy",
    "Edge_intensity",
    "Entropy",
    "Mutinf",
    "Psnr",
    "Rmse",
    "Spatial_frequency",
    "Variance",
]
EXPENSIVE = ["Qabf", "Qcb", "Qcv", "Ssim"]


@pytest.fixture(scope="module")
def vifb(data_dir):
    from PIL import Image

    root = data_dir / "irvis" / "vifb"
    if not (root / "vifb_metrics.csv").exists():
        pytest.skip("irvis/vifb not found")
    table = {}
    with open(root / "vifb_metrics.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            table[(row["image"], row["method"], row["metric"])] = float(row["value_as_stored"])

    def read(p):
        with Image.open(p) as im:
            return np.asarray(im)

    def case(name):
        d = root / name
        return (
            read(d / "src_01.jpg"),
            read(d / "src_00.jpg"),
            {p.stem: p for p in (d / "reference").glob("*.jpg")},
            read,
        )

    return table, case


def _check(table, case_name, method, metric, vi, ir, fused):
    stored = table[(case_name, method, metric)]
    value = VIFB_METRICS[metric](fused, [vi, ir])
    rel = abs(value - stored) / abs(stored)
    assert rel <= 1e-3, f"{case_name}/{method}/{metric}: {value:.6g} vs stored {stored:.6g} (rel {rel:.2e})"
    return rel


def test_vifb_cheap_metrics_all_methods_grey_ir(vifb):
    """'running' has a 1-channel infrared image (VIFB's b1 == 1 branch)."""
    torch.set_num_threads(1)
    table, case = vifb
    vi, ir, refs, read = case("running")
    assert ir.ndim == 2 and vi.ndim == 3
    worst = 0.0
    for method, path in sorted(refs.items()):
        if method in NOT_REPRODUCIBLE:
            continue
        fused = read(path)
        for metric in CHEAP:
            worst = max(worst, _check(table, "running", method, metric, vi, ir, fused))
    assert worst < 1e-3


@pytest.mark.parametrize(
    "case_name, methods", [("running", ["ADF", "CNN", "LatLRR"]), ("walking", ["CBF", "U2Fusion"])]
)
def test_vifb_expensive_metrics(vifb, case_name, methods):
    """Q_AB/F (with VIFB's quirk), Q_CB, Q_CV and SSIM; 'walking' has a 3-channel infrared JPEG."""
    torch.set_num_threads(1)
    table, case = vifb
    vi, ir, refs, read = case(case_name)
    for method in methods:
        fused = read(refs[method])
        for metric in EXPENSIVE:
            _check(table, case_name, method, metric, vi, ir, fused)


def test_vifb_rgb_ir_cheap(vifb):
    table, case = vifb
    vi, ir, refs, read = case("walking")
    assert ir.ndim == 3
    for method in ["ADF", "GTF", "MSVD", "TIF"]:
        fused = read(refs[method])
        for metric in CHEAP:
            _check(table, "walking", method, metric, vi, ir, fused)


def test_vifb_known_mismatch_is_documented(vifb):
    """The two methods excluded above really do differ (if VIFB's files are ever fixed, drop the exclusion)."""
    table, case = vifb
    vi, ir, refs, read = case("walking")
    fused = read(refs["YDTR"])
    stored = table[("walking", "YDTR", "Spatial_frequency")]
    value = VIFB_METRICS["Spatial_frequency"](fused, [vi, ir])
    assert abs(value - stored) / stored > 1e-3
