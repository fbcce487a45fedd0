"""The ``evaluate`` command on a tiny generated dataset (and one real lytro case)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from napari_fusion.cli import main
from napari_fusion.errors import FusionInputError
from napari_fusion.evaluation import evaluate_dataset

torch.set_num_threads(1)


def _make_dataset(root, n_cases=2, size=(48, 56), bad_reference=False, gt=False):
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(0)
    h, w = size
    for i in range(n_cases):
        scene = gaussian_filter(rng.uniform(0, 255, (h, w)), 1.0)
        scene = ((scene - scene.min()) / np.ptp(scene) * 220 + 15).round().astype(np.uint8)
        blur = gaussian_filter(scene.astype(float), 2.0).round().astype(np.uint8)
        a, b = scene.copy(), scene.copy()
        a[:, w // 2 :] = blur[:, w // 2 :]
        b[:, : w // 2] = blur[:, : w // 2]
        d = root / f"case{i + 1}"
        (d / "reference").mkdir(parents=True)
        Image.fromarray(a).save(d / "src_00.png")
        Image.fromarray(b).save(d / "src_01.png")
        Image.fromarray(scene).save(d / "reference" / "GOOD.png")
        Image.fromarray(blur).save(d / "reference" / "BAD.png")
        if gt:
            Image.fromarray(scene).save(d / "gt.png")
        if bad_reference and i == 1:
            Image.fromarray(scene[:-4]).save(d / "reference" / "CROPPED.png")
    return root


def test_evaluate_dataset_scores_methods_and_references(tmp_path):
    root = _make_dataset(tmp_path / "ds", gt=True)
    res = evaluate_dataset(root, methods=["average"], metrics=["qabf", "ssim", "en", "psnr_gt"], reference=True)
    assert len(res.rows) == 2 * 3
    summ = {(e["kind"], e["method"]): e for e in res.summary()}
    assert set(summ) == {("ours", "average"), ("reference", "GOOD"), ("reference", "BAD")}
    assert summ[("ours", "average")]["s_per_case"] > 0
    assert np.isnan(summ[("reference", "GOOD")]["s_per_case"])
    # the sharp scene beats the blurred one and the average
    assert summ[("reference", "GOOD")]["qabf"] > summ[("ours", "average")]["qabf"] > summ[("reference", "BAD")]["qabf"]
    assert summ[("reference", "GOOD")]["psnr_gt"] == np.inf
    table = res.format_table()
    assert "GOOD" in table and "qabf" in table and "s_per_case" in table


def test_cli_evaluate_writes_csv_and_json(tmp_path, capsys):
    root = _make_dataset(tmp_path / "ds")
    out_csv = tmp_path / "t.csv"
    rc = main(["evaluate", str(root), "-m", "average", "--metrics", "qabf,en", "--reference", "-o", str(out_csv), "-q"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "average" in printed and "GOOD" in printed
    rows = list(csv.DictReader(out_csv.read_text().splitlines()))
    assert [r["method"] for r in rows] == ["average", "BAD", "GOOD"]
    assert float(rows[2]["qabf"]) > float(rows[1]["qabf"])
    out_json = tmp_path / "t.json"
    assert (
        main(
            [
                "evaluate",
                str(root),
                "--reference-only",
                "--reference-names",
                "GOOD",
                "--metrics",
                "en",
                "-o",
                str(out_json),
                "-q",
            ]
        )
        == 0
    )
    doc = json.loads(out_json.read_text())
    assert doc["metrics"] == ["en"] and len(doc["cases"]) == 2 and doc["summary"][0]["method"] == "GOOD"


def test_evaluate_clear_errors(tmp_path, capsys):
    root = _make_dataset(tmp_path / "ds", bad_reference=True)
    with pytest.raises(FusionInputError, match=r"case2, reference CROPPED.*size"):
        evaluate_dataset(root, metrics=["qabf"], reference=True)
    assert main(["evaluate", str(root), "--reference-only", "--metrics", "qabf", "-q"]) == 2
    assert "CROPPED" in capsys.readouterr().err
    with pytest.raises(FusionInputError, match="unknown metric"):
        evaluate_dataset(root, methods=["average"], metrics=["nope"])
    with pytest.raises(FusionInputError, match="unknown method"):
        evaluate_dataset(root, methods=["nope"])
    with pytest.raises(FusionInputError, match="no ground truth"):
        evaluate_dataset(root, methods=["average"], metrics=["psnr_gt"])
    # sources of different sizes
    bad = tmp_path / "bad" / "c1"
    bad.mkdir(parents=True)
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(bad / "src_00.png")
    Image.fromarray(np.zeros((20, 24), np.uint8)).save(bad / "src_01.png")
    with pytest.raises(FusionInputError, match="different sizes"):
        evaluate_dataset(tmp_path / "bad", methods=["average"], metrics=["en"])
    with pytest.raises(FusionInputError, match="no cases"):
        evaluate_dataset(tmp_path / "ds" / "case1" / "reference", methods=["average"])


def test_list_metrics(capsys):
    assert main(["evaluate", "--list-metrics"]) == 0
    out = capsys.readouterr().out
    assert "qabf" in out and "vifb_qabf" in out and "mef_ssim" in out


def test_evaluate_real_lytro_case(dataset):
    root = dataset("multifocus/lytro")
    res = evaluate_dataset(
        root, methods=["average"], metrics=["en", "sd", "nmi"], reference=["CNN"], cases=["lytro-01"]
    )
    summ = {e["method"]: e for e in res.summary()}
    assert set(summ) == {"average", "CNN"}
    # a published decision-map method keeps more of each source's information than averaging
    assert summ["CNN"]["nmi"] > summ["average"]["nmi"]


def test_cli_evaluate_passes_method_parameters(tmp_path, capsys):
    root = _make_dataset(tmp_path / "ds", n_cases=1)
    out = tmp_path / "t.json"
    args = ["evaluate", str(root), "-m", "focus_measure,gff", "--metrics", "qabf", "-q", "-o", str(out)]
    assert main(args + ["-p", "gff.r1=3", "-p", "focus_measure.measure=variance"]) == 0
    with_params = {c["method"]: c["qabf"] for c in json.loads(out.read_text())["cases"]}
    assert main(args) == 2  # the table exists: replaced only when asked
    assert "already exists" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 0
    defaults = {c["method"]: c["qabf"] for c in json.loads(out.read_text())["cases"]}
    assert with_params["gff"] != defaults["gff"]  # the parameter reached the method
    capsys.readouterr()
    args.append("--overwrite")
    # ambiguous, unknown method, unknown parameter: one clear error each, exit status 2
    assert main(args + ["-p", "r1=3"]) == 2
    assert "METHOD.r1=3" in capsys.readouterr().err
    assert main(args + ["-p", "average.x=1"]) == 2
    assert "not run" in capsys.readouterr().err
    assert main(args + ["-p", "gff.nope=1"]) == 2
    assert "nope" in capsys.readouterr().err


def test_evaluate_prints_an_estimate_before_starting(tmp_path, capsys):
    from napari_fusion.evaluation import _estimate_message, estimate_metric_seconds

    root = _make_dataset(tmp_path / "ds")
    rc = main(["evaluate", str(root), "-m", "average", "--metrics", "qabf,ssim", "--reference"])
    assert rc == 0
    err = capsys.readouterr().err
    assert "evaluating 2 cases x 3 methods (6 runs), about " in err
    assert "of metrics plus the fusion time of 1 method(s)" in err
    assert err.index("evaluating 2 cases") < err.index("evaluating ds")  # the estimate, then the bar
    from napari_fusion.datasets import iter_cases
    from napari_fusion.evaluation import _jobs
    from napari_fusion.metrics import get_metric

    cases = iter_cases(root)
    jobs = _jobs(cases, [], True)
    est = estimate_metric_seconds(cases, jobs, [get_metric("qabf")])
    assert est is not None and est > 0
    assert _estimate_message(2, 4, [], 200.0) == "evaluating 2 cases x 2 methods (4 runs), about 3 min"
    assert _estimate_message(2, 4, [], None) == "evaluating 2 cases x 2 methods (4 runs)"


def test_a_metric_that_cannot_run_on_small_cases_is_left_out_and_noted(tmp_path, capsys):
    root = _make_dataset(tmp_path / "ds", size=(32, 32))  # VIF's coarsest scale is under its window
    res = evaluate_dataset(root, methods=["average"], metrics=["en", "viff"])
    assert all(np.isnan(r["viff"]) and np.isfinite(r["en"]) for r in res.rows)
    assert [(c, k) for c, _, k, _ in res.skipped] == [("case1", "viff"), ("case2", "viff")]
    assert "metric 'viff' could not be computed on 2 run(s)" in res.skipped_note()
    assert np.isnan(res.summary()[0]["viff"]) and np.isfinite(res.summary()[0]["en"])
    assert main(["evaluate", str(root), "-m", "average", "--metrics", "en,viff", "-q"]) == 0
    err = capsys.readouterr().err
    assert "metric 'viff' could not be computed" in err and "smaller than" in err
    with pytest.raises(FusionInputError, match="metric viff"):  # nothing at all could be scored
        evaluate_dataset(root, methods=["average"], metrics=["viff"])
