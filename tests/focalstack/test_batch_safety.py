"""Data safety of ``napari-fusion batch``: unique output names, stacks in folders, OUTDIR
outside the inputs, resume by fingerprint, refusal to overwrite, summary, inputs untouched,
and no partial file at a final name when a run is killed."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_fusion.cli import main


def _slices(seed: int, n: int = 4, dtype=np.uint8) -> np.ndarray:
    rng = np.random.default_rng(seed)
    hi = 255 if dtype == np.uint8 else 60000
    return rng.integers(0, hi, (n, 48, 48)).astype(dtype)


def _write_folder(folder: Path, seed: int, n: int = 4) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, s in enumerate(_slices(seed, n)):
        tifffile.imwrite(folder / f"slice_{i}.tif", s)
    return folder


def _write_multipage(path: Path, seed: int, n: int = 4, dtype=np.uint8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, _slices(seed, n, dtype), photometric="minisblack")
    return path


def _records(out: Path) -> dict[str, dict]:
    return {p.name[: -len("_record.json")]: json.loads(p.read_text()) for p in out.glob("*_record.json")}


def _summary(out: Path) -> dict:
    return json.loads((out / "batch_summary.json").read_text())


def _final_files(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if not p.name.startswith("."))


def _sha256_tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# --------------------------------------------------------------------------- unique output names


@pytest.mark.parametrize("as_subfolders", [False, True])
def test_same_stack_name_in_two_folders_gets_two_outputs(tmp_path, as_subfolders):
    a = _write_folder(tmp_path / "in" / "day1" / "stackA", seed=1)
    b = _write_folder(tmp_path / "in" / "day2" / "stackA", seed=2)
    inputs = [a.parent, b.parent] if as_subfolders else [a, b]
    out = tmp_path / "out"
    assert main(["batch", *map(str, inputs), "-o", str(out), "-q"]) == 0
    recs = _records(out)
    assert set(recs) == {"day1_stackA", "day2_stackA"}
    for stem, folder in (("day1_stackA", a), ("day2_stackA", b)):
        assert recs[stem]["output_name"] == stem
        assert recs[stem]["source"] == os.path.realpath(folder)
        assert all(Path(p).parent == folder for p in recs[stem]["inputs"])
    fa = tifffile.imread(out / "day1_stackA_fused.tif")
    fb = tifffile.imread(out / "day2_stackA_fused.tif")
    assert not np.array_equal(fa, fb)
    assert sorted(e["output_name"] for e in _summary(out)["done"]) == ["day1_stackA", "day2_stackA"]


def test_names_equal_after_cleanup_get_a_hash(tmp_path):
    a = _write_folder(tmp_path / "in" / "odd name", seed=1)
    b = _write_folder(tmp_path / "in" / "odd_name", seed=2)
    out = tmp_path / "out"
    assert main(["batch", str(a), str(b), "-o", str(out), "-q"]) == 0
    recs = _records(out)
    assert len(recs) == 2
    assert all(stem.startswith("odd_name-") for stem in recs)
    assert {r["source"] for r in recs.values()} == {os.path.realpath(a), os.path.realpath(b)}
    for stem, rec in recs.items():
        assert rec["output_name"] == stem and (out / f"{stem}_fused.tif").exists()
    # stable: the same inputs give the same names on a second run (all skipped)
    assert main(["batch", str(a), str(b), "-o", str(out), "-q"]) == 0
    assert sorted(e["output_name"] for e in _summary(out)["skipped"]) == sorted(recs)


# --------------------------------------------------------------------------- stacks inside folders


def test_folder_of_multipage_tiffs_is_one_stack_per_file(tmp_path):
    folder = tmp_path / "in"
    for k, seed in (("s1", 1), ("s2", 2), ("s3", 3)):
        _write_multipage(folder / f"{k}.tif", seed, n=3, dtype=np.uint16)
    out = tmp_path / "out"
    assert main(["batch", str(folder), "-o", str(out), "-q"]) == 0
    recs = _records(out)
    assert set(recs) == {"s1", "s2", "s3"}
    for stem, rec in recs.items():
        assert rec["inputs"] == [str(folder / f"{stem}.tif")]
        assert len(rec["z_positions"]) == 3
        labels = tifffile.imread(out / f"{stem}_labels.tif")
        assert labels.max() <= 2
        assert tifffile.imread(out / f"{stem}_fused.tif").dtype == np.uint16


def test_folder_mixing_slices_and_a_multipage_tiff(tmp_path):
    folder = _write_folder(tmp_path / "in", seed=1, n=3)  # three single-page slices: one stack "in"
    _write_multipage(folder / "deep.tif", seed=2, n=5)
    out = tmp_path / "out"
    assert main(["batch", str(folder), "-o", str(out), "-q"]) == 0
    recs = _records(out)
    assert set(recs) == {"in", "deep"}
    assert len(recs["in"]["z_positions"]) == 3 and len(recs["deep"]["z_positions"]) == 5


# --------------------------------------------------------------------------- OUTDIR vs inputs


@pytest.mark.parametrize("where", ["inside", "equal", "contains"])
def test_outdir_inside_or_around_an_input_is_refused_before_any_work(tmp_path, capsys, where):
    folder = _write_folder(tmp_path / "data" / "in", seed=1)
    other = _write_multipage(tmp_path / "elsewhere" / "s.tif", seed=2)
    out = {"inside": folder / "out", "equal": folder, "contains": tmp_path / "data"}[where]
    before = _sha256_tree(tmp_path)
    rc = main(["batch", str(other), str(folder), "-o", str(out), "-q"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("error:") == 1 and "input" in err
    assert _sha256_tree(tmp_path) == before  # nothing written anywhere, not even for the other input
    assert not (folder / "out").exists()


# --------------------------------------------------------------------------- resume and overwrite


def test_rerun_skips_done_stacks_and_redoes_one_without_record(tmp_path, capsys):
    folder = tmp_path / "in"
    _write_multipage(folder / "a.tif", 1)
    _write_multipage(folder / "b.tif", 2)
    out = tmp_path / "out"
    assert main(["batch", str(folder), "-o", str(out), "-q"]) == 0
    st_a = (out / "a_fused.tif").stat()
    st_b = (out / "b_fused.tif").stat()
    (out / "b_record.json").unlink()  # as if the run was killed after b's images, before its record
    time.sleep(0.01)
    capsys.readouterr()
    assert main(["batch", str(folder), "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "skipped" in text and "already done" in text
    now_a = (out / "a_fused.tif").stat()
    assert (now_a.st_ino, now_a.st_mtime_ns) == (st_a.st_ino, st_a.st_mtime_ns)
    assert (out / "b_record.json").exists()
    assert (out / "b_fused.tif").stat().st_ino != st_b.st_ino  # rewritten
    summary = _summary(out)
    assert [e["output_name"] for e in summary["skipped"]] == ["a"]
    assert "same parameters" in summary["skipped"][0]["reason"]
    assert [e["output_name"] for e in summary["done"]] == ["b"] and summary["failed"] == []
    # --no-resume redoes everything
    assert main(["batch", str(folder), "-o", str(out), "-q", "--no-resume"]) == 0
    assert (out / "a_fused.tif").stat().st_ino != st_a.st_ino
    assert sorted(e["output_name"] for e in _summary(out)["done"]) == ["a", "b"]


def test_other_parameters_refused_without_overwrite(tmp_path, capsys):
    stack = _write_multipage(tmp_path / "in" / "s.tif", 1)
    out = tmp_path / "out"
    assert main(["batch", str(stack), "-o", str(out), "-q", "-m", "focus_measure", "-p", "window=3"]) == 0
    before = _sha256_tree(out)
    capsys.readouterr()
    assert main(["batch", str(stack), "-o", str(out), "-q", "-m", "focus_measure", "-p", "window=5"]) == 1
    err = capsys.readouterr().err
    assert "outputs exist from other parameters; use --overwrite (changed: params)" in err
    after = _sha256_tree(out)
    after.pop("batch_summary.json"), before.pop("batch_summary.json")
    assert after == before  # nothing overwritten
    failed = _summary(out)["failed"]
    assert len(failed) == 1 and "use --overwrite" in failed[0]["reason"]
    assert (
        main(["batch", str(stack), "-o", str(out), "-q", "-m", "focus_measure", "-p", "window=5", "--overwrite"]) == 0
    )
    rec = _records(out)["s"]
    assert rec["params"]["window"] == 5 and rec["fingerprint"]["params"]["window"] == 5


def test_foreign_file_at_an_output_name_is_not_overwritten(tmp_path):
    stack = _write_multipage(tmp_path / "in" / "s.tif", 1)
    out = tmp_path / "out"
    out.mkdir()
    mine = np.full((8, 8), 7, np.uint8)
    tifffile.imwrite(out / "s_fused.tif", mine)
    assert main(["batch", str(stack), "-o", str(out), "-q"]) == 1
    assert np.array_equal(tifffile.imread(out / "s_fused.tif"), mine)
    assert not (out / "s_record.json").exists() and not (out / "s_labels.tif").exists()
    assert "use --overwrite" in _summary(out)["failed"][0]["reason"]


def test_fingerprint_in_record_and_tiff_metadata(tmp_path):
    stack = _write_multipage(tmp_path / "in" / "s.tif", 1)
    out = tmp_path / "out"
    assert (
        main(
            [
                "batch",
                str(stack),
                "-o",
                str(out),
                "-q",
                "-m",
                "focus_measure",
                "--z-step",
                "0.5",
                "--align",
                "translation",
            ]
        )
        == 0
    )
    fp = _records(out)["s"]["fingerprint"]
    for key in ("method", "params", "align", "crop", "z_step", "refine", "reference_channel", "slab", "inputs"):
        assert key in fp
    assert fp["align"] == "translation" and fp["z_step"] == 0.5 and fp["params"]["window"]
    st = stack.stat()
    assert fp["inputs"] == [{"path": os.path.realpath(stack), "size": st.st_size, "mtime_ns": st.st_mtime_ns}]
    for role in ("fused", "labels", "height"):
        with tifffile.TiffFile(out / f"s_{role}.tif") as tf:
            assert json.loads(tf.pages[0].description)["fingerprint"] == fp["digest"]


# --------------------------------------------------------------------------- summary and inputs


def test_summary_lists_done_skipped_and_failed(tmp_path, capsys):
    folder = tmp_path / "in"
    a = _write_multipage(folder / "a.tif", 1)
    out = tmp_path / "out"
    assert main(["batch", str(a), "-o", str(out), "-q"]) == 0
    b = _write_multipage(folder / "b.tif", 2)
    broken = folder / "broken.tif"
    broken.write_bytes(b"not a tiff")
    capsys.readouterr()
    assert main(["batch", str(a), str(b), str(broken), "-o", str(out), "-q"]) == 1
    cap = capsys.readouterr()
    text = cap.out + cap.err
    assert "skipped" in text and "failed" in text and "broken" in cap.err and "2 of 3" in text
    summary = _summary(out)
    assert [e["output_name"] for e in summary["done"]] == ["b"]
    assert [e["output_name"] for e in summary["skipped"]] == ["a"]
    assert [e["output_name"] for e in summary["failed"]] == ["broken"]
    assert summary["failed"][0]["reason"] and summary["skipped"][0]["reason"]


def test_inputs_are_byte_identical_after_a_batch(tmp_path):
    root = tmp_path / "in"
    _write_folder(root / "day1" / "stackA", 1)
    _write_multipage(root / "multi" / "m.tif", 2)
    tifffile.imwrite(root / "plate.tif", np.stack([_slices(3), _slices(4)]), photometric="minisblack")
    before = _sha256_tree(root)
    out = tmp_path / "out"
    assert (
        main(
            [
                "batch",
                str(root / "day1"),
                str(root / "multi"),
                str(root / "plate.tif"),
                "-o",
                str(out),
                "-q",
                "--align",
                "translation",
            ]
        )
        == 0
    )
    assert set(_records(out)) == {"stackA", "m", "plate_p000", "plate_p001"}
    assert (
        main(
            [
                "batch",
                str(root / "day1"),
                str(root / "multi"),
                str(root / "plate.tif"),
                "-o",
                str(out),
                "-q",
                "--align",
                "translation",
                "--no-resume",
            ]
        )
        == 0
    )
    assert _sha256_tree(root) == before


# --------------------------------------------------------------------------- killed run


def _check_no_partial_at_final_names(out: Path) -> None:
    for p in out.iterdir():
        if p.name.startswith("."):
            continue  # hidden temporaries of the killed run
        if p.suffix == ".tif":
            arr = tifffile.imread(p)  # reads fully: a cut-short file raises
            assert arr.size > 0
        elif p.suffix == ".json":
            rec = json.loads(p.read_text())
            for name in (rec.get("files") or {}).values():
                assert (out / name).exists(), f"{p.name} lists missing {name}"


def test_killed_run_leaves_no_partial_file_and_resumes_to_the_same_outputs(tmp_path):
    folder = tmp_path / "in"
    for k in range(12):
        _write_multipage(folder / f"s{k}.tif", k, n=4)
    ref = tmp_path / "ref"
    assert main(["batch", str(folder), "-o", str(ref), "-q"]) == 0

    out = tmp_path / "out"
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "napari_fusion.cli", "batch", str(folder), "-o", str(out), "-q"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while not out.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(random.Random(7).uniform(0.0, 0.4))  # ~0.13 s: mid-run
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode in (-signal.SIGKILL, 0)  # killed mid-run (or, on a very fast machine, done)
    if out.exists():
        _check_no_partial_at_final_names(out)

    assert main(["batch", str(folder), "-o", str(out), "-q"]) == 0
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # temporaries cleaned up
    assert _final_files(out) == _final_files(ref)
    for name in _final_files(ref):
        if name.endswith(".tif"):
            np.testing.assert_array_equal(tifffile.imread(out / name), tifffile.imread(ref / name), err_msg=name)
    summary = _summary(out)
    assert len(summary["done"]) + len(summary["skipped"]) == 12 and not summary["failed"]
