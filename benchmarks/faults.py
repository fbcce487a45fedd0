"""Fault benchmark: every data-safety failure found by trying the tools as a new user would.

Runs each fault case in fresh ``napari-fusion`` subprocesses on generated data in a
temporary folder and prints a table:

* tried: runs of the case (SIGKILL cases are run at several seeded random points);
* inputs changed: runs after which any input file differs by sha256 from before;
* partial left: runs after which a file at an output's final name is partial
  (does not read back completely), or, for zarr, is neither marked complete nor
  reported incomplete;
* resumed identical: for interrupted outputs, reruns whose result equals an
  uninterrupted run (array for array) out of those rerun;
* outcome: exit status and the first words of the error line of the last run.

Then it prints the memory estimate of :mod:`napari_fusion.memory` against the
measured peak RSS (fresh process each) on five shapes.

Usage::

    python benchmarks/faults.py            # about 3-4 minutes on a 2-core machine
    python benchmarks/faults.py --kills 5  # more random kill points per case
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tifffile


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    if path.is_dir():
        for root, dirs, files in sorted(os.walk(path)):
            dirs.sort()
            for name in sorted(files):
                f = Path(root) / name
                h.update(str(f.relative_to(path)).encode())
                h.update(f.read_bytes())
    elif path.exists():
        h.update(path.read_bytes())
    return h.hexdigest()


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "napari_fusion.cli", *args]


@dataclass
class Row:
    case: str
    tried: int = 0
    inputs_changed: int = 0
    partial_left: int = 0
    resumed: int = 0
    resumed_identical: int = 0
    outcome: str = ""
    notes: list[str] = field(default_factory=list)


def _reads_back(path: Path) -> bool:
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            tifffile.imread(path)
        elif path.suffix.lower() == ".png":
            import imageio.v3 as iio

            iio.imread(path)
        return True
    except Exception:
        return False


def _zarr_state_ok(path: Path) -> bool:
    from napari_fusion.io import zarr_output_status

    if not path.exists():
        return True
    return zarr_output_status(path) is not None  # marked complete or incomplete; never unmarked


class Workspace:
    def __init__(self, root: Path):
        self.root = root
        rng = np.random.default_rng(0)
        self.stack = rng.integers(0, 4000, (6, 1024, 896), dtype=np.uint16)
        tifffile.imwrite(root / "stack.tif", self.stack, photometric="minisblack")
        tifffile.imwrite(root / "a.tif", self.stack[0])
        tifffile.imwrite(root / "b.tif", self.stack[1])
        (root / "slices").mkdir()
        for i, s in enumerate(self.stack[:3]):
            tifffile.imwrite(root / "slices" / f"z{i}.tif", s[:256, :256])
        tifffile.imwrite(root / "ms.tif", rng.random((64, 64, 4)).astype(np.float32))
        tifffile.imwrite(root / "pan.tif", rng.random((256, 256)).astype(np.float32))
        import zarr

        z = zarr.open_array(str(root / "in.zarr"), mode="w", shape=(3, 256, 256), chunks=(1, 128, 128), dtype="uint16")
        z[...] = self.stack[:3, :256, :256]
        os.symlink(root / "stack.tif", root / "link.tif")
        os.link(root / "stack.tif", root / "hard.tif")
        self.inputs = [root / n for n in ("stack.tif", "a.tif", "b.tif", "slices", "ms.tif", "pan.tif", "in.zarr")]

    def digests(self) -> dict:
        return {p: _digest(p) for p in self.inputs}


def run_refusal(ws: Workspace, name: str, args: list[str], row_table: list[Row], finals=()) -> None:
    row = Row(name)
    before = ws.digests()
    proc = subprocess.run(_cli(*args), cwd=ws.root, capture_output=True, text=True)
    row.tried = 1
    row.inputs_changed = int(ws.digests() != before)
    row.partial_left = sum(1 for f in finals if (ws.root / f).exists() and not _reads_back(ws.root / f))
    err = proc.stderr.strip().splitlines()
    tail = (err[-1] if err else "").replace("napari-fusion: error: ", "").replace(str(ws.root) + "/", "")
    row.outcome = f"exit {proc.returncode}: {tail[:90]}"
    if len(err) > 1 and "Traceback" in proc.stderr:
        row.notes.append("traceback")
    row_table.append(row)


def run_kills(
    ws: Workspace,
    name: str,
    args: list[str],
    out: Path,
    kills: int,
    seed: int,
    window: tuple[float, float],
    reference: dict | None,
    rows: list[Row],
    zarr_out: bool = False,
    rerun_args: list[str] | None = None,
) -> None:
    from napari_fusion.io import zarr_output_status

    row = Row(name)
    rng = random.Random(seed)
    for _ in range(kills):
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        before = ws.digests()
        proc = subprocess.Popen(_cli(*args), cwd=ws.root, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(rng.uniform(*window))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait()
        row.tried += 1
        row.inputs_changed += int(ws.digests() != before)
        if zarr_out:
            row.partial_left += int(not _zarr_state_ok(out))
        else:
            row.partial_left += int(out.exists() and not _reads_back(out))
        if reference is not None:
            info = zarr_output_status(out) if zarr_out else None
            rerun = rerun_args or args
            if zarr_out and info is not None and info.get("complete"):
                pass  # finished before the kill: nothing to resume
            else:
                done = subprocess.run(_cli(*rerun), cwd=ws.root, capture_output=True, text=True)
                row.resumed += 1
                row.resumed_identical += int(done.returncode == 0 and _equal(out, reference, zarr_out))
    row.outcome = f"SIGKILL at {window[0]:.1f}-{window[1]:.1f} s"
    rows.append(row)


def _load(out: Path, zarr_out: bool) -> dict:
    if zarr_out:
        import zarr

        g = zarr.open_group(str(out), mode="r")
        return {k: g[k][...] for k in ("fused", "labels", "depth")}
    return {"fused": tifffile.imread(out)}


def _equal(out: Path, reference: dict, zarr_out: bool) -> bool:
    try:
        got = _load(out, zarr_out)
    except Exception:
        return False
    return all(np.array_equal(got[k], v) for k, v in reference.items())


def fault_table(kills: int) -> list[Row]:
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="nf-faults-") as tmp:
        ws = Workspace(Path(tmp))
        refusals = [
            ("fuse a b -o a", ["fuse", "a.tif", "b.tif", "-o", "a.tif"]),
            ("fuse stack -o stack", ["fuse", "stack.tif", "-o", "stack.tif"]),
            ("--labels names an input", ["fuse", "a.tif", "b.tif", "-o", "x.tif", "--labels", "b.tif"]),
            ("-o symlink to input", ["fuse", "stack.tif", "-o", "link.tif", "--overwrite"]),
            ("-o hard link to input", ["fuse", "stack.tif", "-o", "hard.tif", "--overwrite"]),
            (
                "upsample -o low-res input",
                ["upsample", "ms.tif", "pan.tif", "-m", "bicubic", "-o", "ms.tif", "--overwrite"],
            ),
            (
                "--chunks -o input (was SIGBUS)",
                ["fuse", "stack.tif", "-o", "stack.tif", "--chunks", "256", "--overwrite"],
            ),
            ("zarr in -o same zarr", ["fuse", "in.zarr", "-o", "in.zarr", "--chunks", "32", "--overwrite"]),
            ("-o inside input zarr", ["fuse", "in.zarr", "-o", "in.zarr/out.zarr", "--chunks", "32"]),
            ("-o inside input folder", ["fuse", "slices", "-o", "slices/fused.tif"]),
            ("output under a regular file", ["fuse", "a.tif", "b.tif", "-o", "a.tif/out/x.tif"]),
            ("--z-step 0", ["fuse", "stack.tif", "-o", "x.tif", "--z-step", "0"]),
            ("--z-step -1", ["fuse", "stack.tif", "-o", "x.tif", "--z-step=-1"]),
        ]
        for name, args in refusals:
            run_refusal(ws, name, args, rows)
        # a folder holding other files as zarr output: nothing deleted
        proj = ws.root / "project.zarr"
        proj.mkdir()
        (proj / "notes.txt").write_text("keep me")
        ws.inputs.append(proj)
        run_refusal(
            ws,
            "-o project.zarr (other files)",
            ["fuse", "a.tif", "b.tif", "-o", "project.zarr", "--chunks", "64", "--overwrite"],
            rows,
        )
        # damaged inputs
        data = (ws.root / "stack.tif").read_bytes()
        (ws.root / "cut.tif").write_bytes(data[: len(data) // 3])
        (ws.root / "junk.png").write_bytes(os.urandom(400))
        (ws.root / "junk.tif").write_bytes(os.urandom(400))
        tifffile.imwrite(ws.root / "two.tif", np.zeros((64, 64, 2), np.uint8))
        for name, args in [
            ("cut-short TIFF, lazy", ["fuse", "cut.tif", "-o", "y.zarr", "--chunks", "64"]),
            ("corrupt PNG", ["fuse", "junk.png", "a.tif", "-o", "y.tif"]),
            ("corrupt TIFF", ["fuse", "junk.tif", "a.tif", "-o", "y.tif"]),
            ("2-channel TIFF", ["fuse", "two.tif", "-o", "y.tif"]),
        ]:
            run_refusal(ws, name, args, rows)
        # SIGKILL during writes
        ref_tif = ws.root / "ref.tif"
        subprocess.run(_cli("fuse", "stack.tif", "-o", str(ref_tif), "-q"), cwd=ws.root, check=True)
        run_kills(
            ws,
            "SIGKILL during TIFF write + rerun",
            ["fuse", "stack.tif", "-o", "k.tif", "-q"],
            ws.root / "k.tif",
            kills,
            1,
            (3.5, 7.0),
            {"fused": tifffile.imread(ref_tif)},
            rows,
            rerun_args=["fuse", "stack.tif", "-o", "k.tif", "-q", "--overwrite"],
        )
        run_kills(
            ws,
            "SIGKILL during PNG write",
            ["fuse", "a.tif", "b.tif", "-o", "k.png", "-m", "average", "-q"],
            ws.root / "k.png",
            kills,
            2,
            (3.5, 6.0),
            None,
            rows,
        )
        ref_tiled = ws.root / "ref_tiled.tif"
        subprocess.run(
            _cli("fuse", "stack.tif", "-o", str(ref_tiled), "--chunks", "256", "-q"), cwd=ws.root, check=True
        )
        run_kills(
            ws,
            "SIGKILL during tiled TIFF write + rerun",
            ["fuse", "stack.tif", "-o", "kt.tif", "--chunks", "256", "-q"],
            ws.root / "kt.tif",
            kills,
            3,
            (3.5, 8.0),
            {"fused": tifffile.imread(ref_tiled)},
            rows,
            rerun_args=["fuse", "stack.tif", "-o", "kt.tif", "--chunks", "256", "-q", "--overwrite"],
        )
        ref_zarr = ws.root / "ref.zarr"
        subprocess.run(_cli("fuse", "stack.tif", "-o", str(ref_zarr), "--chunks", "128", "-q"), cwd=ws.root, check=True)
        run_kills(
            ws,
            "SIGKILL during zarr write + rerun",
            ["fuse", "stack.tif", "-o", "kz.zarr", "--chunks", "128", "-q"],
            ws.root / "kz.zarr",
            kills,
            4,
            (3.5, 8.0),
            _load(ref_zarr, True),
            rows,
            zarr_out=True,
        )
        rows.extend(batch_faults(ws, kills))
    return rows


def batch_faults(ws: Workspace, kills: int) -> list[Row]:
    rows = []
    root = ws.root / "batch_in"
    for d in ("day1/stackA", "day2/stackA", "odd name", "odd_name"):
        (root / d).mkdir(parents=True)
        for i in range(3):
            tifffile.imwrite(root / d / f"z{i}.tif", ws.stack[i, :128, :128])
    multi = ws.root / "multi"
    multi.mkdir()
    for k in range(3):
        tifffile.imwrite(multi / f"s{k}.tif", ws.stack[k : k + 3, :96, :96], photometric="minisblack")
    ws.inputs += [root, multi]
    out = ws.root / "batch_out"
    before = ws.digests()
    args = [
        "batch",
        str(root / "day1" / "stackA"),
        str(root / "day2" / "stackA"),
        str(root / "odd name"),
        str(root / "odd_name"),
        str(multi),
        "-o",
        str(out),
        "-q",
    ]
    proc = subprocess.run(_cli(*args), cwd=ws.root, capture_output=True, text=True)
    fused = sorted(p.name for p in out.glob("*_fused.tif"))
    rows.append(
        Row(
            "batch: 4 colliding names + 3 multi-page",
            1,
            int(ws.digests() != before),
            0,
            0,
            0,
            f"exit {proc.returncode}: {len(fused)} fused files for 7 stacks",
        )
    )
    proc = subprocess.run(_cli(*args), cwd=ws.root, capture_output=True, text=True)
    skipped = proc.stdout.count("skipped") + proc.stderr.count("skipped")
    rows.append(
        Row(
            "batch: rerun skips done stacks",
            1,
            int(ws.digests() != before),
            0,
            0,
            0,
            f"exit {proc.returncode}: 'skipped' x{skipped}",
        )
    )
    inside = subprocess.run(
        _cli("batch", str(root), "-o", str(root / "out"), "-q"), cwd=ws.root, capture_output=True, text=True
    )
    rows.append(
        Row(
            "batch: -o inside the input",
            1,
            int(ws.digests() != before),
            0,
            0,
            0,
            f"exit {inside.returncode}: {inside.stderr.strip().replace(str(ws.root) + '/', '')[:90]}",
        )
    )
    # SIGKILL during batch, then rerun: same outputs as the uninterrupted run
    row = Row("SIGKILL during batch + rerun")
    rng = random.Random(9)
    ref = {p.name: tifffile.imread(p) for p in out.glob("*.tif")}
    for _ in range(kills):
        tgt = ws.root / "batch_kill"
        shutil.rmtree(tgt, ignore_errors=True)
        b = ws.digests()
        proc = subprocess.Popen(
            _cli(*args[:-3], "-o", str(tgt), "-q"), cwd=ws.root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        time.sleep(rng.uniform(3.8, 6.0))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait()
        row.tried += 1
        row.inputs_changed += int(ws.digests() != b)
        row.partial_left += sum(1 for p in tgt.glob("*.tif") if not _reads_back(p)) if tgt.exists() else 0
        done = subprocess.run(_cli(*args[:-3], "-o", str(tgt), "-q"), cwd=ws.root, capture_output=True, text=True)
        row.resumed += 1
        got = {p.name: tifffile.imread(p) for p in tgt.glob("*.tif")}
        row.resumed_identical += int(
            done.returncode == 0 and got.keys() == ref.keys() and all(np.array_equal(got[k], ref[k]) for k in ref)
        )
    row.outcome = "SIGKILL at 3.8-6.0 s"
    rows.append(row)
    return rows


def memory_table() -> list[tuple]:
    from napari_fusion.memory import estimate_peak_bytes, measure_peak_rss

    shapes = [
        (4, 1024, 1024, 1, "uint16", "focus_pyramid"),
        (8, 768, 768, 3, "uint8", "focus_pyramid"),
        (4, 1024, 1024, 1, "uint16", "focus_measure"),
        (8, 768, 768, 3, "uint8", "focus_measure"),
        (6, 1536, 1536, 1, "uint16", "gff"),
        (5, 1024, 1024, 3, "uint8", "laplacian_pyramid"),
        (10, 1024, 1024, 1, "float32", "average"),
    ]
    out = []
    for n, h, w, c, dt, method in shapes:
        est = estimate_peak_bytes(n, h, w, c, dt, method)
        got = measure_peak_rss(n, h, w, c, dt, method)
        out.append((f"{n}x{h}x{w}x{c} {dt}", method, est / 2**20, got / 2**20, 100 * (est - got) / got))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kills", type=int, default=3, help="random SIGKILL points per kill case")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory-estimate table")
    args = parser.parse_args()
    t0 = time.perf_counter()
    rows = fault_table(args.kills)
    header = f"| {'case':40s} | tried | inputs changed | partial left | resumed identical | outcome |"
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    for r in rows:
        resumed = f"{r.resumed_identical}/{r.resumed}" if r.resumed else "-"
        print(
            f"| {r.case:40s} | {r.tried:5d} | {r.inputs_changed:14d} | {r.partial_left:12d} | {resumed:17s} | "
            f"{r.outcome}{' (' + ', '.join(r.notes) + ')' if r.notes else ''} |"
        )
    tried = sum(r.tried for r in rows)
    print(
        f"\ntotal: {len(rows)} cases, {tried} runs, inputs changed {sum(r.inputs_changed for r in rows)}, "
        f"partial outputs left {sum(r.partial_left for r in rows)}, resumed identical "
        f"{sum(r.resumed_identical for r in rows)}/{sum(r.resumed for r in rows)} ({time.perf_counter() - t0:.0f} s)"
    )
    if not args.no_memory:
        print("\n| shape | method | estimated MiB | measured MiB | error |")
        print("|---|---|---|---|---|")
        for shape, method, est, got, err in memory_table():
            print(f"| {shape} | {method} | {est:.0f} | {got:.0f} | {err:+.0f}% |")


if __name__ == "__main__":
    main()
