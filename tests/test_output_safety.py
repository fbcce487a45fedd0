"""Inputs are never overwritten, outputs are atomic and interrupted zarr outputs resume.

One test per failure found when the writers were tried with bad inputs and faults
(see docs/reliability.md); each of these failed on the code before the fix.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import tifffile

import napari_fusion as nf
from napari_fusion.cli import main
from napari_fusion.errors import FusionCancelled, FusionInputError, FusionOutputError
from napari_fusion.io import (
    open_lazy_stack,
    read_image,
    read_stack,
    write_image,
    write_lazy,
    zarr_output_status,
)
from napari_fusion.output_safety import forget_inputs, is_partial_name


def _digest(path: Path) -> str:
    path = Path(path)
    if path.is_dir():
        h = hashlib.sha256()
        for root, dirs, files in sorted(os.walk(path)):
            dirs.sort()
            for name in sorted(files):
                f = Path(root) / name
                h.update(str(f.relative_to(path)).encode())
                h.update(f.read_bytes())
        return h.hexdigest()
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(autouse=True)
def _fresh_input_record():
    forget_inputs()
    yield
    forget_inputs()


@pytest.fixture
def files(tmp_path, monkeypatch):
    """A 4-slice uint16 stack as one multi-page TIFF, as slices, and as a zarr store."""
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(3)
    stack = rng.integers(0, 60000, (4, 80, 72), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "stack.tif", stack, photometric="minisblack")
    tifffile.imwrite(tmp_path / "a.tif", stack[0])
    tifffile.imwrite(tmp_path / "b.tif", stack[1])
    (tmp_path / "slices").mkdir()
    for i, s in enumerate(stack):
        tifffile.imwrite(tmp_path / "slices" / f"z{i}.tif", s)
    import zarr

    z = zarr.open_array(str(tmp_path / "in.zarr"), mode="w", shape=stack.shape, chunks=(1, 40, 36), dtype=stack.dtype)
    z[...] = stack
    return tmp_path


def _unchanged(paths, run):
    before = {p: _digest(p) for p in paths}
    out = run()
    assert {p: _digest(p) for p in paths} == before, "an input was modified"
    return out


# --------------------------------------------------------------------------- inputs are sacred


@pytest.mark.parametrize(
    "args",
    [
        ["fuse", "a.tif", "b.tif", "-o", "a.tif"],
        ["fuse", "stack.tif", "-o", "stack.tif"],
        ["fuse", "a.tif", "b.tif", "-o", "x.tif", "--labels", "a.tif"],
        ["fuse", "a.tif", "b.tif", "-o", "x.tif", "--depth", "b.tif"],
        ["fuse", "stack.tif", "-o", "stack.tif", "--chunks", "32"],
        ["fuse", "in.zarr", "-o", "in.zarr", "--chunks", "32"],
        ["fuse", "in.zarr", "-o", "in.zarr/out.zarr", "--chunks", "32"],
        ["fuse", "slices", "-o", "slices/fused.tif"],
        ["fuse", "a.tif", "b.tif", "-o", "a.tif", "--overwrite"],
        ["fuse", "stack.tif", "-o", "stack.tif", "--chunks", "32", "--overwrite"],
    ],
)
def test_cli_refuses_an_input_as_output(files, capsys, args):
    inputs = [files / n for n in ("stack.tif", "a.tif", "b.tif", "slices", "in.zarr")]
    rc = _unchanged(inputs, lambda: main(args))
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("napari-fusion: error: ") and "input" in err and len(err.strip().splitlines()) == 1


def test_symlink_and_hard_link_to_an_input_are_refused(files, capsys):
    os.symlink(files / "stack.tif", files / "link.tif")
    os.link(files / "stack.tif", files / "hard.tif")
    for out in ("link.tif", "hard.tif"):
        rc = _unchanged([files / "stack.tif"], lambda: main(["fuse", "stack.tif", "-o", out, "--overwrite"]))
        assert rc == 2
        assert "is the input" in capsys.readouterr().err


def test_upsample_refuses_its_low_resolution_input(tmp_path, capsys):
    low = np.random.default_rng(0).random((8, 8, 4)).astype(np.float32)
    pan = np.random.default_rng(1).random((32, 32)).astype(np.float32)
    tifffile.imwrite(tmp_path / "ms.tif", low)
    tifffile.imwrite(tmp_path / "pan.tif", pan)
    args = [
        "upsample",
        str(tmp_path / "ms.tif"),
        str(tmp_path / "pan.tif"),
        "-m",
        "bicubic",
        "-o",
        str(tmp_path / "ms.tif"),
    ]
    rc = _unchanged([tmp_path / "ms.tif", tmp_path / "pan.tif"], lambda: main(args + ["--overwrite"]))
    assert rc == 2 and "is the input" in capsys.readouterr().err


def test_write_image_refuses_a_file_read_in_this_process(files):
    img = read_image(files / "a.tif")
    with pytest.raises(FusionOutputError, match="is the input"):
        write_image(files / "a.tif", img, overwrite=True)
    read_stack(files / "slices")
    with pytest.raises(FusionOutputError, match="inside the input folder"):
        write_image(files / "slices" / "fused.tif", img, overwrite=True)
    open_lazy_stack(files / "in.zarr")
    with pytest.raises(FusionOutputError, match="inside the input zarr store"):
        write_image(files / "in.zarr" / "x.tif", img)
    with pytest.raises(FusionOutputError, match="is the input"):
        write_image(files / "b.tif", img, overwrite=True, inputs=[files / "b.tif"])


def test_existing_outputs_are_replaced_only_when_asked(files, capsys):
    assert main(["fuse", "a.tif", "b.tif", "-o", "out.tif", "-q"]) == 0
    first = _digest(files / "out.tif")
    assert main(["fuse", "a.tif", "stack.tif", "-o", "out.tif", "-q"]) == 2  # would change it: refused
    assert "already exists" in capsys.readouterr().err and _digest(files / "out.tif") == first
    assert main(["fuse", "a.tif", "b.tif", "-o", "out.tif", "-q", "-m", "average", "--overwrite"]) == 0
    assert _digest(files / "out.tif") != first
    with pytest.raises(FusionOutputError, match="already exists"):
        write_image(files / "out.tif", np.zeros((4, 4), np.uint8))


def test_zarr_output_onto_a_folder_with_other_files_deletes_nothing(files, capsys):
    project = files / "project.zarr"
    project.mkdir()
    (project / "notes.txt").write_text("my analysis")
    (project / "raw").mkdir()
    (project / "raw" / "data.bin").write_bytes(b"\x01" * 100)
    for extra in ([], ["--overwrite"]):
        rc = _unchanged(
            [project], lambda: main(["fuse", "stack.tif", "-o", str(project), "--chunks", "32", "-q", *extra])
        )
        assert rc == 2
        assert "not a napari-fusion output" in capsys.readouterr().err


# --------------------------------------------------------------------------- atomic outputs


def test_failed_write_leaves_the_previous_output_and_no_temporary(files, monkeypatch):
    good = np.full((16, 16), 7, np.uint8)
    for name in ("out.png", "out.tif"):
        write_image(files / name, good)
        before = _digest(files / name)

        def broken(target, image, suffix, metadata):
            Path(target).write_bytes(b"\x89PNG\r\n\x1a\n half a file")
            raise OSError(28, "No space left on device")

        monkeypatch.setattr("napari_fusion.io._encode_image", broken)
        with pytest.raises(OSError):
            write_image(files / name, np.zeros((16, 16), np.uint8), overwrite=True)
        monkeypatch.undo()
        assert _digest(files / name) == before
    assert not [p for p in files.iterdir() if is_partial_name(p.name)]


def test_tiled_tiff_failure_leaves_no_file_at_any_final_name(files):
    stack = tifffile.imread(files / "stack.tif")
    lazy = nf.fuse(stack, chunks=32)
    seen = []

    def cancel(done, total, message):
        seen.append(done)
        if done >= 2:
            raise FusionCancelled("stop")

    with pytest.raises(FusionCancelled):
        write_lazy(lazy, files / "f.tif", labels=files / "l.tif", depth=files / "d.tif", progress=cancel)
    left = [p.name for p in files.iterdir() if p.name in ("f.tif", "l.tif", "d.tif") or is_partial_name(p.name)]
    assert left == []


@pytest.mark.parametrize("where", ["sync", "rename"])
def test_interrupt_while_tiled_tiffs_are_committed_leaves_no_temporary(files, monkeypatch, where):
    """Ctrl-C or SIGTERM (an interrupt in the main thread) after the last tile, while the files are
    synced or renamed into place, still removes the temporaries (found by CI's SIGTERM test)."""
    import napari_fusion.output_safety as safety

    def interrupted(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(safety, "_fsync_file" if where == "sync" else "os", _Interrupting(interrupted))
    stack = tifffile.imread(files / "stack.tif")
    with pytest.raises(KeyboardInterrupt):
        write_lazy(nf.fuse(stack, chunks=32), files / "f.tif", labels=files / "l.tif")
    monkeypatch.undo()
    assert [p.name for p in files.iterdir() if is_partial_name(p.name)] == []
    assert not (files / "f.tif").exists() or where == "rename"


def test_interrupt_while_an_image_is_committed_leaves_no_temporary(files, monkeypatch):
    import napari_fusion.output_safety as safety

    def interrupted(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(safety, "_fsync_file", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_image(files / "x.tif", np.full((16, 16), 7, np.uint8))
    monkeypatch.undo()
    assert [p.name for p in files.iterdir() if is_partial_name(p.name) or p.name == "x.tif"] == []


class _Interrupting:
    """A stand-in for ``os`` (whose ``replace`` is interrupted) or a function (interrupted)."""

    def __init__(self, interrupt):
        self._interrupt = interrupt

    def __call__(self, *args, **kwargs):
        return self._interrupt()

    def __getattr__(self, name):
        import os

        return self._interrupt if name == "replace" else getattr(os, name)


# --------------------------------------------------------------------------- resumable zarr


def _cancel_after(k):
    def progress(done, total, message):
        if done >= k:
            raise FusionCancelled("stop")

    return progress


def test_interrupted_zarr_is_reported_and_resumed_to_the_uninterrupted_result(files, capsys):
    stack = tifffile.imread(files / "stack.tif")
    full = write_lazy(nf.fuse(stack, chunks=32), files / "full.zarr")[0]
    out = files / "out.zarr"
    with pytest.raises(FusionCancelled):
        write_lazy(nf.fuse(stack, chunks=32), out, progress=_cancel_after(3))
    info = zarr_output_status(out)
    assert info["complete"] is False and 0 < info["tiles_done"] < info["tiles"]
    with pytest.raises(FusionInputError, match="incomplete napari-fusion output"):
        open_lazy_stack(out, component="fused")
    # the same run again computes only the missing tiles
    computed = []
    write_lazy(nf.fuse(stack, chunks=32), out, progress=lambda d, t, m: computed.append(d) if ": " not in m else None)
    assert zarr_output_status(out)["complete"] is True
    assert len(computed) == info["tiles"] - info["tiles_done"]
    import zarr

    a, b = zarr.open_group(str(full), mode="r"), zarr.open_group(str(out), mode="r")
    for name in ("fused", "labels", "depth"):
        np.testing.assert_array_equal(a[name][...], b[name][...])
    # a different run never mixes into it
    with pytest.raises(FusionCancelled):
        write_lazy(nf.fuse(stack, chunks=32), files / "mix.zarr", progress=_cancel_after(2))
    with pytest.raises(FusionOutputError, match="different run"):
        write_lazy(nf.fuse(stack, method="average", chunks=32), files / "mix.zarr")
    # a complete output is replaced only when asked
    with pytest.raises(FusionOutputError, match="complete napari-fusion output"):
        write_lazy(nf.fuse(stack, chunks=32), out)
    write_lazy(nf.fuse(stack, method="average", chunks=32), out, overwrite=True)
    assert zarr.open_group(str(out), mode="r").attrs["method"] == "average"


def test_a_resumed_zarr_keeps_the_interrupted_runs_tiles_when_this_run_tiles_otherwise(files):
    """The command line's fingerprint names the tile the user asked for, but the tiles computed may
    shrink to fit the memory available, which can differ when the run is resumed: the tiles recorded
    as done then cover other pixels than this run's. The resumed run writes in the stored tiles, and
    the result is the uninterrupted one (RGB fused, so outputs of 2 and 3 dimensions)."""
    import zarr

    rng = np.random.default_rng(5)
    stack = rng.integers(0, 250, (3, 80, 72, 3), dtype=np.uint8)
    full = write_lazy(nf.fuse(stack, chunks=32), files / "full.zarr", fingerprint="run")[0]
    out = files / "out.zarr"
    with pytest.raises(FusionCancelled):
        write_lazy(nf.fuse(stack, chunks=32), out, progress=_cancel_after(3), fingerprint="run")
    info = zarr_output_status(out)
    assert info["complete"] is False and 0 < info["tiles_done"] < info["tiles"]
    write_lazy(nf.fuse(stack, chunks=48), out, fingerprint="run")  # resumed with larger tiles
    assert zarr_output_status(out)["complete"] is True
    a, b = zarr.open_group(str(full), mode="r"), zarr.open_group(str(out), mode="r")
    for name in ("fused", "labels", "depth"):
        assert b[name].chunks[:2] == (32, 32)
        np.testing.assert_array_equal(a[name][...], b[name][...])


@pytest.mark.parametrize("arrays_made", [0, 1, 3])
def test_zarr_killed_while_its_arrays_are_created_is_ours_and_resumes(files, monkeypatch, arrays_made):
    """A kill between the group's creation and its last array must not leave a 'foreign' folder.

    (Found by the SIGKILL test: the marker used to be written after the arrays, so a kill in
    between left a folder that napari-fusion refused to touch.)
    """
    import zarr
    from zarr.core.group import Group

    stack = tifffile.imread(files / "stack.tif")
    full = write_lazy(nf.fuse(stack, chunks=32), files / "full.zarr")[0]
    out = files / "out.zarr"
    real = Group.create_array
    made = []

    def dying(self, *args, **kwargs):
        if len(made) == arrays_made:
            raise SystemExit("killed")
        made.append(1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Group, "create_array", dying)
    with pytest.raises(SystemExit):
        write_lazy(nf.fuse(stack, chunks=32), out)
    monkeypatch.setattr(Group, "create_array", real)
    info = zarr_output_status(out)
    assert info is not None and info["complete"] is False and info["tiles_done"] == 0
    write_lazy(nf.fuse(stack, chunks=32), out)
    assert zarr_output_status(out)["complete"] is True
    a, b = zarr.open_group(str(full), mode="r"), zarr.open_group(str(out), mode="r")
    for name in ("fused", "labels", "depth"):
        np.testing.assert_array_equal(a[name][...], b[name][...])


@pytest.mark.parametrize("deleted_before_kill", [0, 1, 2])
def test_zarr_killed_while_being_replaced_is_still_ours(files, monkeypatch, deleted_before_kill):
    """``overwrite=True`` deletes the old output tile record first and the group metadata last; a
    kill part way leaves an incomplete output of ours, which the next overwrite replaces."""
    import zarr

    import napari_fusion.io as nf_io

    stack = tifffile.imread(files / "stack.tif")
    out = write_lazy(nf.fuse(stack, method="average", chunks=32), files / "out.zarr")[0]
    real = nf_io._delete_entry
    removed = []

    def dying(entry):
        if len(removed) == deleted_before_kill:
            raise SystemExit("killed")
        removed.append(entry.name)
        return real(entry)

    monkeypatch.setattr(nf_io, "_delete_entry", dying)
    with pytest.raises(SystemExit):
        write_lazy(nf.fuse(stack, chunks=32), out, overwrite=True)
    monkeypatch.setattr(nf_io, "_delete_entry", real)
    assert removed[:1] == ["tiles_done"][: len(removed)]  # the record of finished tiles goes first
    info = zarr_output_status(out)
    assert info is not None and info["complete"] is False
    write_lazy(nf.fuse(stack, chunks=32), out, overwrite=True)
    full = write_lazy(nf.fuse(stack, chunks=32), files / "full.zarr")[0]
    a, b = zarr.open_group(str(full), mode="r"), zarr.open_group(str(out), mode="r")
    assert zarr_output_status(out)["complete"] is True and b.attrs["method"] == a.attrs["method"]
    for name in ("fused", "labels", "depth"):
        np.testing.assert_array_equal(a[name][...], b[name][...])


def test_cli_resumes_an_interrupted_zarr_and_refuses_other_parameters(files, capsys, monkeypatch):
    import napari_fusion.cli.fuse as cli_fuse

    real = cli_fuse.TqdmProgress

    class Interrupting(real):
        def __call__(self, done, total, message=""):
            if done >= 2:
                raise KeyboardInterrupt

    monkeypatch.setattr(cli_fuse, "TqdmProgress", Interrupting)
    assert main(["fuse", "stack.tif", "-o", "o.zarr", "--chunks", "32", "-q"]) == 130
    assert zarr_output_status(files / "o.zarr")["complete"] is False
    monkeypatch.setattr(cli_fuse, "TqdmProgress", real)
    assert main(["fuse", "stack.tif", "-o", "o.zarr", "--chunks", "32", "-q", "-m", "average"]) == 2
    assert "different run" in capsys.readouterr().err
    assert main(["fuse", "stack.tif", "-o", "o.zarr", "--chunks", "32", "-q"]) == 0
    assert zarr_output_status(files / "o.zarr")["complete"] is True


def test_cli_resume_reads_the_whole_image_steps_back_instead_of_running_the_passes(files, capsys, monkeypatch):
    """A zarr output keeps its run's whole-image steps; the same command run again after an
    interruption reads them back (no collect pass over the tiles) and ends with the uninterrupted
    result; the file is the output's own (replaced with it)."""
    import zarr

    import napari_fusion.cli.fuse as cli_fuse
    import napari_fusion.tiling as tiling
    from napari_fusion.io import ZARR_STEPS, read_zarr_steps

    cmd = ["fuse", "stack.tif", "--chunks", "32", "-m", "laplacian_pyramid", "-p", "levels=0"]
    assert main([*cmd, "-o", "full.zarr", "-q"]) == 0
    real_progress, real_collect = cli_fuse.TqdmProgress, tiling._run_collect_task
    collected = []
    monkeypatch.setattr(tiling, "_run_collect_task", lambda *a: collected.append(1) or real_collect(*a))

    class Interrupting(real_progress):
        def __call__(self, done, total, message=""):
            if message.startswith("tile") and done >= 2:
                raise KeyboardInterrupt
            return super().__call__(done, total, message)

    monkeypatch.setattr(cli_fuse, "TqdmProgress", Interrupting)
    assert main([*cmd, "-o", "o.zarr", "-q"]) == 130
    assert zarr_output_status(files / "o.zarr")["complete"] is False and collected  # the passes ran
    assert (files / "o.zarr" / ZARR_STEPS).is_file()
    fingerprint = zarr_output_status(files / "o.zarr")["fingerprint"]
    assert read_zarr_steps(files / "o.zarr", fingerprint).complete
    assert read_zarr_steps(files / "o.zarr", "another run") is None
    monkeypatch.setattr(cli_fuse, "TqdmProgress", real_progress)
    collected.clear()
    capsys.readouterr()
    assert main([*cmd, "-o", "o.zarr"]) == 0
    assert "whole-image steps are read back" in capsys.readouterr().err
    assert collected == []
    assert read_zarr_steps(files / "o.zarr", fingerprint) is None  # complete: nothing to resume
    a, b = zarr.open_group("full.zarr", mode="r"), zarr.open_group("o.zarr", mode="r")
    for name in ("fused", "labels"):
        np.testing.assert_array_equal(a[name][...], b[name][...])
    assert main([*cmd[:4], "-m", "average", "-o", "o.zarr", "-q", "--overwrite"]) == 0  # replaced, steps and all
    assert not (files / "o.zarr" / ZARR_STEPS).exists()


# --------------------------------------------------------------------------- clear errors


def test_reader_errors_name_the_file_and_the_problem(tmp_path):
    import imageio.v3 as iio

    (tmp_path / "random.png").write_bytes(os.urandom(300))
    with pytest.raises(FusionInputError, match=r"random.png is not a PNG file") as e:
        read_image(tmp_path / "random.png")
    assert "pip install" not in str(e.value)
    (tmp_path / "random.tif").write_bytes(os.urandom(300))
    with pytest.raises(FusionInputError, match=r"random.tif is not a TIFF file"):
        read_stack(tmp_path / "random.tif")
    (tmp_path / "empty.tif").write_bytes(b"")
    with pytest.raises(FusionInputError, match="empty"):
        read_image(tmp_path / "empty.tif")
    tifffile.imwrite(tmp_path / "two.tif", np.zeros((64, 64, 2), np.uint8))
    for reader in (read_stack, open_lazy_stack):
        with pytest.raises(FusionInputError, match="64x64 pixels with 2 channels"):
            reader(tmp_path / "two.tif")
    tifffile.imwrite(tmp_path / "s.tif", np.ones((4, 64, 64), np.uint16), photometric="minisblack")
    data = (tmp_path / "s.tif").read_bytes()
    (tmp_path / "cut.tif").write_bytes(data[: len(data) // 2])
    with pytest.raises(FusionInputError, match="cut.tif is truncated"):
        open_lazy_stack(tmp_path / "cut.tif")
    with pytest.raises(FusionInputError, match="cut.tif is truncated"):
        read_image(tmp_path / "cut.tif")
    iio.imwrite(tmp_path / "ok.png", np.zeros((32, 32), np.uint8))
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(FusionInputError, match="cut.png"):
        read_image(tmp_path / "cut.png")


def test_unwritable_output_is_refused_before_any_work(files, capsys, monkeypatch):
    called = []
    monkeypatch.setattr("napari_fusion.io.read_stack", lambda *a, **k: called.append(1))
    assert main(["fuse", "a.tif", "b.tif", "-o", "a.tif/sub/out.tif"]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    if os.geteuid() != 0:  # root may write anywhere
        locked = files / "locked"
        locked.mkdir(mode=0o500)
        assert main(["fuse", "a.tif", "b.tif", "-o", str(locked / "out.tif")]) == 2
        assert "not writable" in capsys.readouterr().err
    assert called == []


def test_unexpected_errors_end_in_one_line_and_debug_shows_the_traceback(files, capsys, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("deep inside")

    monkeypatch.setattr("napari_fusion.api.fuse", boom)
    assert main(["fuse", "a.tif", "b.tif", "-o", "x.tif", "-q"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "deep inside" in err and "Traceback" not in err
    assert main(["--debug", "fuse", "a.tif", "b.tif", "-o", "x.tif", "-q"]) == 1
    assert "Traceback" in capsys.readouterr().err
    assert not (files / "x.tif").exists()


@pytest.mark.parametrize("step", ["0", "-0.5", "nan", "inf"])
def test_z_step_must_be_a_positive_finite_distance(files, capsys, step):
    with pytest.raises(SystemExit):
        main(["fuse", "stack.tif", "-o", "x.tif", f"--z-step={step}"])
    assert "z step must be a finite distance > 0" in capsys.readouterr().err


def test_z_positions_must_be_finite_and_strictly_monotonic():
    stack = np.random.default_rng(0).random((3, 16, 16)).astype(np.float32)
    for z in ([0, 0, 0], [0, 2, 1], [0, 1, np.nan]):
        with pytest.raises(FusionInputError, match="z_positions"):
            nf.fuse(stack, z_positions=z)
        with pytest.raises(FusionInputError, match="z_positions"):
            nf.fuse(stack, z_positions=z, chunks=8)
    assert nf.fuse(stack, z_positions=[2.0, 1.0, 0.0]).depth.max() <= 2.0  # decreasing is fine


def test_disk_space_is_checked_before_fusing(files, capsys, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 100, 100))
    fused = []
    monkeypatch.setattr("napari_fusion.api.fuse", lambda *a, **k: fused.append(1))
    assert main(["fuse", "a.tif", "b.tif", "-o", "x.tif"]) == 2
    assert "not enough disk space" in capsys.readouterr().err and fused == []


# --------------------------------------------------------------------------- property: inputs never change

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_FAST_METHODS = ["focus_measure", "average", "gff", "laplacian_pyramid", "mertens"]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    method=st.sampled_from(_FAST_METHODS),
    route=st.sampled_from(["memory", "tiled-tif", "zarr", "png"]),
    target=st.sampled_from(["input", "link", "new", "existing", "inside-folder"]),
    overwrite=st.booleans(),
    rgb=st.booleans(),
)
def test_no_writer_ever_changes_an_input(tmp_path_factory, method, route, target, overwrite, rgb):
    forget_inputs()
    folder = tmp_path_factory.mktemp("prop")
    rng = np.random.default_rng(0)
    shape = (3, 40, 48, 3) if rgb else (3, 40, 48)
    stack = rng.integers(0, 255, shape, dtype=np.uint8)
    (folder / "slices").mkdir()
    import imageio.v3 as iio

    for i, s in enumerate(stack):
        if route == "png":
            iio.imwrite(folder / "slices" / f"s{i}.png", s)
        else:
            tifffile.imwrite(folder / "slices" / f"s{i}.tif", s)
    tifffile.imwrite(folder / "stack.tif", stack, photometric="rgb" if rgb else "minisblack")
    lazy = route in ("tiled-tif", "zarr")
    inputs = [folder / "stack.tif"] if lazy else [folder / "slices"]
    first = folder / "stack.tif" if lazy else sorted((folder / "slices").iterdir())[0]
    (folder / "existing.tif").write_bytes(b"II*\x00 previous output")
    suffix = {"memory": ".tif", "tiled-tif": ".tif", "zarr": ".zarr", "png": ".png"}[route]
    os.symlink(first, folder / f"link{first.suffix}")
    out = {
        "input": first,
        "link": folder / f"link{first.suffix}",
        "new": folder / f"new{suffix}",
        "existing": folder / f"existing{suffix}",
        "inside-folder": folder / "slices" / f"out{suffix}",
    }[target]
    args = ["fuse", *map(str, inputs), "-o", str(out), "-m", method, "-q"]
    if lazy:
        args += ["--chunks", "16"]
    if overwrite:
        args.append("--overwrite")
    before = {p: _digest(p) for p in inputs}
    rc = main(args)
    assert {p: _digest(p) for p in inputs} == before
    assert rc in (0, 2)
    if target in ("input", "link") or (target == "inside-folder" and not lazy):
        assert rc == 2
    assert not [p for p in folder.rglob("*") if is_partial_name(p.name)]


def test_changed_input_is_not_mixed_into_an_interrupted_zarr(files, capsys, monkeypatch):
    import napari_fusion.cli.fuse as cli_fuse

    real = cli_fuse.TqdmProgress

    class Interrupting(real):
        def __call__(self, done, total, message=""):
            if done >= 2:
                raise KeyboardInterrupt

    monkeypatch.setattr(cli_fuse, "TqdmProgress", Interrupting)
    assert main(["fuse", "stack.tif", "-o", "o.zarr", "--chunks", "32", "-q"]) == 130
    monkeypatch.setattr(cli_fuse, "TqdmProgress", real)
    # the acquisition is re-exported (same name, new content): the fingerprint no longer matches
    stack = tifffile.imread(files / "stack.tif")
    tifffile.imwrite(files / "stack.tif", stack[::-1].copy(), photometric="minisblack")
    forget_inputs()
    assert main(["fuse", "stack.tif", "-o", "o.zarr", "--chunks", "32", "-q"]) == 2
    assert "different run" in capsys.readouterr().err
    assert zarr_output_status(files / "o.zarr")["complete"] is False


def test_two_outputs_of_one_run_must_differ(files, capsys):
    assert main(["fuse", "a.tif", "b.tif", "-o", "x.tif", "--labels", "x.tif"]) == 2
    assert "same file" in capsys.readouterr().err and not (files / "x.tif").exists()
