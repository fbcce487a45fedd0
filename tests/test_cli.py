"""The napari-fusion command line."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import tifffile

from napari_fusion.cli import main


@pytest.fixture
def stack_files(tmp_path, small_focal_stack):
    paths = []
    for i, s in enumerate(small_focal_stack.slices):
        p = tmp_path / f"slice_{i}.png"
        import imageio.v3 as iio

        iio.imwrite(p, s)
        paths.append(p)
    return paths


def test_fuse_files_writes_outputs(tmp_path, stack_files, capsys):
    out = tmp_path / "out" / "fused.tif"
    rc = main(
        [
            "fuse",
            *map(str, stack_files),
            "-o",
            str(out),
            "--labels",
            str(tmp_path / "l.tif"),
            "--depth",
            str(tmp_path / "d.tif"),
            "--z-step",
            "0.5",
            "-m",
            "focus_measure",
            "-p",
            "measure=tenengrad",
        ]
    )
    assert rc == 0
    fused = tifffile.imread(out)
    assert fused.dtype == np.uint8 and fused.shape == (96, 128, 3)
    labels = tifffile.imread(tmp_path / "l.tif")
    depth = tifffile.imread(tmp_path / "d.tif")
    np.testing.assert_allclose(depth, labels * 0.5)
    desc = json.loads(tifffile.TiffFile(out).pages[0].description)
    assert desc["method"] == "focus_measure" and desc["params"]["measure"] == "tenengrad"
    assert "fused 4 images" in capsys.readouterr().out


def test_fuse_notes_an_input_given_twice(tmp_path, stack_files, capsys):
    first = stack_files[0]
    same = first.parent / "." / first.name  # another spelling of the same file
    assert main(["fuse", str(first), *map(str, stack_files[1:]), str(same), "-o", str(tmp_path / "f.tif")]) == 0
    captured = capsys.readouterr()
    assert f"{first.resolve()} is given 2 times" in captured.err and "fused 5 images" in captured.out
    assert main(["fuse", *map(str, stack_files), "-o", str(tmp_path / "g.tif")]) == 0
    assert "given" not in capsys.readouterr().err


def test_fuse_folder_and_multipage_uint16(tmp_path):
    rng = np.random.default_rng(0)
    stack = rng.integers(0, 65535, (3, 24, 30), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "stack.tif", stack)
    rc = main(["fuse", str(tmp_path / "stack.tif"), "-m", "average", "-o", str(tmp_path / "f.tif"), "-q"])
    assert rc == 0
    f = tifffile.imread(tmp_path / "f.tif")
    assert f.dtype == np.uint16
    np.testing.assert_array_equal(f, np.rint(stack.astype(np.float64).mean(0)).astype(np.uint16))
    folder = tmp_path / "slices"
    folder.mkdir()
    for i in (10, 2, 1):  # natural order: 1, 2, 10
        tifffile.imwrite(folder / f"z{i}.tif", stack[[1, 2, 10].index(i)])
    rc = main(
        [
            "fuse",
            str(folder),
            "-m",
            "focus_measure",
            "-o",
            str(tmp_path / "g.tif"),
            "--labels",
            str(tmp_path / "gl.tif"),
            "-q",
        ]
    )
    assert rc == 0
    assert tifffile.imread(tmp_path / "gl.tif").max() <= 2


def test_methods_listing(capsys):
    assert main(["methods", "-v"]) == 0
    out = capsys.readouterr().out
    assert "gff" in out and "Li, Kang" in out and "window=4" in out
    assert main(["methods", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {d["name"] for d in data} >= {"average", "gff", "mertens", "focus_measure", "laplacian_pyramid"}


@pytest.mark.parametrize(
    "args, message",
    [
        (["fuse", "missing.tif", "other.tif", "-o", "x.tif"], "file not found"),
        (["fuse", "{one}", "-o", "x.tif"], "at least two images"),
        (["fuse", "{one}", "{one}", "-o", "x.tif", "-m", "nope"], "unknown method"),
        (["fuse", "{one}", "{one}", "-o", "x.tif", "-p", "smooth=abc"], "must be a number"),
        (["fuse", "{bad}", "{one}", "-o", "x.tif"], "damaged"),
        # a refused parameter is reported before any image is read
        (["fuse", "{bad}", "{one}", "-o", "x.tif", "-p", "nope=1"], "unknown parameter"),
        (["fuse", "{one}", "{one}", "-o", "x.xyz"], "unsupported output format"),
    ],
)
def test_clear_errors(tmp_path, capsys, args, message):
    one = tmp_path / "one.tif"
    tifffile.imwrite(one, np.zeros((16, 16), np.uint8))
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    args = [a.format(one=one, bad=bad) for a in args]
    args = [str(tmp_path / a) if a in ("x.tif", "x.xyz") else a for a in args]
    rc = main(args)
    assert rc == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_demo_refuses_a_file_as_its_output_folder_before_any_work(tmp_path, capsys, monkeypatch):
    import napari_fusion.demo as demo

    def never(**_kwargs):
        raise AssertionError("the demo ran although its output folder is a file")

    monkeypatch.setattr(demo, "run_demo", never)
    target = tmp_path / "a.png"
    target.write_bytes(b"precious")
    assert main(["demo", "-o", str(target), "-q"]) != 0
    assert "exists and is a file, not a folder" in capsys.readouterr().err
    assert target.read_bytes() == b"precious"


def test_demo_runs_and_scores(tmp_path, capsys, monkeypatch):
    from skimage.transform import resize

    import napari_fusion.synthetic as synthetic

    small = lambda: (resize(synthetic.data_astronaut(), (128, 128), anti_aliasing=True) * 255).astype(np.uint8)  # noqa: E731
    monkeypatch.setattr(synthetic, "demo_photograph", small)
    import napari_fusion.demo as demo

    monkeypatch.setattr(demo, "demo_photograph", small)
    rc = main(["demo", "-o", str(tmp_path), "--slices", "4", "-q"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "PSNR fused vs ground truth" in out and "wall time" in out
    for name in ("fused.tif", "labels.tif", "depth.tif", "ground_truth.tif"):
        assert (tmp_path / name).exists()
    psnr = float(out.split("PSNR fused vs ground truth: ")[1].split(" dB")[0])
    best = float(out.split("best single slice ")[1].split(" dB")[0])
    assert psnr > best + 3


def test_console_script_installed(device, tmp_path):
    """The ``napari-fusion`` script installed beside the interpreter runs: its entry point,
    interpreter line and imports work, ``--version`` answers and a tiny fuse is right."""
    import shutil
    from importlib import metadata
    from pathlib import Path

    import napari_fusion

    try:
        metadata.distribution("napari-fusion")
    except metadata.PackageNotFoundError:
        pytest.skip("napari-fusion is not installed (pip install -e .)")
    bindir = Path(sys.executable).parent
    script = shutil.which("napari-fusion", path=str(bindir))
    assert script is not None, f"napari-fusion is installed but there is no napari-fusion script in {bindir}"

    r = subprocess.run([script, "--version"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"napari-fusion {napari_fusion.__version__}"

    rng = np.random.default_rng(0)
    a, b = (rng.integers(0, 256, (24, 32), dtype=np.uint8) for _ in range(2))
    tifffile.imwrite(tmp_path / "a.tif", a)
    tifffile.imwrite(tmp_path / "b.tif", b)
    out = tmp_path / "fused.tif"
    r = subprocess.run(
        [script, "fuse", str(tmp_path / "a.tif"), str(tmp_path / "b.tif"), "-o", str(out), "--device", "cpu", "-q"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    np.testing.assert_array_equal(tifffile.imread(out), napari_fusion.fuse([a, b], device=device).fused)


def test_progress_bar_keeps_drawing_after_a_new_phase(capsys):
    """A tiled run's passes each start again from 0 %: the bar must redraw in the second pass
    (it used to stay frozen at its reset value until the new phase passed the old maximum)."""
    import time

    from napari_fusion.cli._progress import TqdmProgress

    bar = TqdmProgress("fusing", enabled=True)
    for done in (0, 40, 100):
        bar(done, 100, "pass 1")
        time.sleep(0.2)  # past tqdm's minimum redraw interval
    capsys.readouterr()
    bar(10, 100, "pass 2")
    time.sleep(0.15)
    bar(30, 100, "pass 2")
    # its rate and time left are the new phase's: timed from its start, not the run's
    assert bar.bar.format_dict["elapsed"] < 0.4
    bar.close()
    err = capsys.readouterr().err
    assert " 30/100" in err, err


def test_tiles_shrunk_for_memory_are_reported_in_one_line(tmp_path, capsys, monkeypatch):
    """Warnings print as one ``napari-fusion: warning:`` line, not Python's file:line and source."""
    from napari_fusion import memory

    src = tmp_path / "stack.tif"
    tifffile.imwrite(
        src, np.random.default_rng(0).integers(0, 4000, (3, 300, 300), dtype=np.uint16), photometric="minisblack"
    )
    monkeypatch.setenv(memory.ENV_VAR, str(memory.LIMIT_HEADROOM_BYTES + 1))  # no tile fits
    out = tmp_path / "fused.tif"
    rc = main(["fuse", str(src), "-o", str(out), "-m", "focus_measure", "--chunks", "512"])
    assert rc == 0 and out.exists()
    err = capsys.readouterr().err
    line = next(x for x in err.splitlines() if "is available" in x)
    assert line.startswith("napari-fusion: warning: ") and "may run out of memory" in line
    assert "RuntimeWarning" not in err and ".py:" not in err


def test_memory_limit_option_sizes_the_tiles_of_this_run_only(tmp_path, capsys, monkeypatch):
    """``--memory-limit`` is the memory the run may use: the tiles shrink to fit it (same image), the
    limit is reported, and nothing of it is left behind for the next command."""
    import os

    from napari_fusion import memory

    monkeypatch.delenv(memory.ENV_VAR, raising=False)
    src = tmp_path / "stack.tif"
    tifffile.imwrite(
        src, np.random.default_rng(0).integers(0, 4000, (3, 300, 300), dtype=np.uint16), photometric="minisblack"
    )
    plain, limited = tmp_path / "plain.tif", tmp_path / "limited.tif"
    assert main(["fuse", str(src), "-o", str(plain), "-m", "focus_measure", "--chunks", "256"]) == 0
    assert "is available" not in capsys.readouterr().err
    limit = memory.LIMIT_HEADROOM_BYTES + 2**20
    rc = main(["fuse", str(src), "-o", str(limited), "-m", "focus_measure", "--chunks", "256", "--memory-limit",
               str(limit)])  # fmt: skip
    assert rc == 0
    line = next(x for x in capsys.readouterr().err.splitlines() if "is available" in x)
    assert "but 1.0 MiB is available: fusing in 128x128 tiles" in line and "--memory-limit" in line
    assert memory.ENV_VAR not in os.environ
    np.testing.assert_array_equal(tifffile.imread(limited), tifffile.imread(plain))


@pytest.mark.parametrize("value", ["abc", "0", "5Q"])
def test_memory_limit_must_be_a_size(tmp_path, capsys, value):
    with pytest.raises(SystemExit) as exc:
        main(["fuse", str(tmp_path / "a.tif"), str(tmp_path / "b.tif"), "-o", str(tmp_path / "o.tif"),
              "--memory-limit", value])  # fmt: skip
    assert exc.value.code == 2
    assert f"--memory-limit: must be a size such as 1.5G or 800M, got '{value}'" in capsys.readouterr().err


def test_memory_limit_applies_to_a_stack_fused_in_memory(tmp_path, capsys, monkeypatch):
    """Without ``--chunks``, a stack that does not fit in the limit is fused tile by tile, with a note."""
    from napari_fusion import memory

    monkeypatch.delenv(memory.ENV_VAR, raising=False)
    src = tmp_path / "stack.tif"
    tifffile.imwrite(
        src, np.random.default_rng(1).integers(0, 4000, (3, 300, 300), dtype=np.uint16), photometric="minisblack"
    )
    out = tmp_path / "fused.tif"
    assert main(["fuse", str(src), "-o", str(out), "-m", "focus_measure", "--memory-limit", "1K"]) == 0
    assert "fusing it tile by tile instead" in capsys.readouterr().err
    assert out.exists()


def test_batch_takes_the_memory_limit_too():
    from napari_fusion.cli import build_parser

    args = build_parser(["batch"]).parse_args(["batch", "stacks", "-o", "out", "--memory-limit", "1.5G"])
    assert args.memory_limit == int(1.5 * 2**30)


def test_an_interrupted_zarr_output_is_reported_as_resumable(tmp_path, capsys, monkeypatch):
    """A tiled zarr output interrupted while its tiles are written stays, marked incomplete, so that
    the same command finishes it: the message says so instead of 'no partial output'."""
    import napari_fusion.cli.fuse as F
    from napari_fusion.io import zarr_output_status

    src = tmp_path / "stack.tif"
    tifffile.imwrite(
        src, np.random.default_rng(2).integers(0, 4000, (3, 300, 300), dtype=np.uint16), photometric="minisblack"
    )

    class Interrupting(F.TqdmProgress):
        def __call__(self, done, total, message=""):
            if "tile 4/" in message:
                raise KeyboardInterrupt

    out = tmp_path / "out.zarr"
    args = ["fuse", str(src), "-o", str(out), "-m", "focus_measure", "--chunks", "128", "-q"]
    with monkeypatch.context() as m:
        m.setattr(F, "TqdmProgress", Interrupting)
        assert main(args) == 130
    err = capsys.readouterr().err
    info = zarr_output_status(out)
    assert info is not None and not info["complete"] and 0 < info["tiles_done"] < info["tiles"]
    assert f"interrupted; {out} keeps the " in err and "run the same command again" in err
    assert "no partial output" not in err
    assert main(args) == 0 and zarr_output_status(out)["complete"] is True
