"""Benchmark: napari-fusion's CLI side by side with the C++/OpenCV tool focus-stack.

The peer is PetteriAimonen/focus-stack built from its own sources (CPU), run as
``focus-stack --no-whitebalance --no-contrast --align-keep-size`` (its ECC
alignment cannot be switched off). Point ``FOCUS_STACK_BIN`` at its binary; when
it is absent the peer rows are skipped with a message and ours still print.

For each stack the peer and ours are run alternately ``--repeats`` times, each
run a fresh process (process start included). Printed per case: median wall
time, median CPU time (user + system of the child, ``os.wait4``), median peak
RSS of the child (``ru_maxrss``, measured from a small launcher process: see
:func:`measure`), PSNR / SSIM of the fused image against the
ground truth (synthetic stacks only), and ours / peer ratios of wall time and
peak RSS from the same run.

Synthetic stacks: ``render_focal_stack`` of ``demo_photograph()`` (512^2 RGB)
tiled to SIZE^2 (tiling keeps the photograph sharp; resizing up would blur the
ground truth), written as PNG slices (and one multi-page TIFF for the tiled
case) in a temporary folder. The real stack is the PCB stack of
``../shared/data/focalstack/pcb`` (7 x 2048x1536 JPEG, no ground truth: time and
RSS only).

Cases (ours; the peer always runs its one path on the same slices):

* ``default``: ``napari-fusion fuse DIR -o out.png`` (the default method, focus_pyramid, in memory);
* ``focus_measure``: the same with ``-m focus_measure`` (the default before);
* ``tiled``: ``napari-fusion fuse stack.tif --chunks 512 -o out.tif``;
* ``align``: ``napari-fusion batch DIR -o OUT --align similarity``;
* ``laplacian_pyramid``, ``gff``: ``napari-fusion fuse DIR -m METHOD -o out.png``;
* ``pcb``: the default path on the real PCB stack.

First, our fixed cost per process is printed: ``fuse`` of a 3 x 64^2 stack
(start-up, imports, reading, writing) and a bare ``import torch``.

Examples::

    FOCUS_STACK_BIN=/tmp/fs/focus-stack python benchmarks/vs_focus_stack.py
    python benchmarks/vs_focus_stack.py --sizes 1024x10 --repeats 3 --cases default gff
    python benchmarks/vs_focus_stack.py --rev b3a71ca --cases default pcb   # before/after, same run

``--rev REV`` adds a row "ours@REV": the code of that git revision (its ``src/``
extracted with ``git archive``, run with ``PYTHONPATH`` pointing there),
alternated with the others, so a change is measured against its parent in one run.

``--load N`` keeps N CPU-bound processes (busy loops) running during every
measured run: a machine shared with other work, as lab workstations and these
benchmark machines are. Each tool then competes for the cores it does not get.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from _revisions import extract_src

ROOT = Path(__file__).resolve().parents[1]
PCB_DIR = ROOT.parent / "shared" / "data" / "focalstack" / "pcb" / "pcb"
CASES = ("default", "focus_measure", "tiled", "align", "laplacian_pyramid", "gff", "pcb")
PEER_FLAGS = ("--no-whitebalance", "--no-contrast", "--align-keep-size")


#: Runs the command given in argv and prints its wall time and rusage as JSON (stdlib only, no site).
_LAUNCHER = """
import json, os, subprocess, sys, time
t0 = time.perf_counter()
proc = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
err = proc.stderr.read()
_, status, ru = os.wait4(proc.pid, 0)
wall = time.perf_counter() - t0
print(json.dumps({"wall": wall, "cpu": ru.ru_utime + ru.ru_stime, "rss": ru.ru_maxrss / 1024,
                  "code": os.waitstatus_to_exitcode(status), "err": err.decode(errors="replace")[-2000:]}))
"""


def measure(cmd: list[str], env: dict | None = None) -> dict:
    """Run ``cmd``; wall seconds, CPU seconds (user + sys) and peak RSS (MiB) of that child.

    The command is started by a small launcher interpreter (``python -S``), not
    by this process: on Linux a child's ``ru_maxrss`` is never below the RSS of
    the process that forked it (the forked copy's high-water mark survives
    ``exec``), so children forked from this benchmark, which holds the rendered
    stacks, read at least this process's RSS (about 500 MiB). Through the
    launcher, the floor is the launcher's ~10 MiB.
    """
    done = subprocess.run([sys.executable, "-S", "-c", _LAUNCHER, *cmd], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"launcher failed for {' '.join(cmd)}: {done.stderr[-2000:]}")
    res = json.loads(done.stdout.strip().splitlines()[-1])
    if res["code"] != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({res['code']}): {res['err']}")
    return {"wall": res["wall"], "cpu": res["cpu"], "rss": res["rss"]}


def ours_exe() -> list[str]:
    script = Path(sys.executable).with_name("napari-fusion")
    return [str(script)] if script.exists() else [sys.executable, "-m", "napari_fusion.cli"]


def peer_binary() -> str | None:
    path = os.environ.get("FOCUS_STACK_BIN")
    if not path:
        print("FOCUS_STACK_BIN is not set: focus-stack rows skipped (ours only)")
        return None
    if not (Path(path).is_file() and os.access(path, os.X_OK)):
        print(f"FOCUS_STACK_BIN={path} is not an executable file: focus-stack rows skipped (ours only)")
        return None
    return path


def render(size: int, n: int, folder: Path) -> np.ndarray:
    """Write a SIZE^2 x N synthetic stack as PNG slices + one TIFF into ``folder``; return the ground truth."""
    import imageio.v3 as iio
    import tifffile

    from napari_fusion.synthetic import demo_photograph, render_focal_stack

    photo = demo_photograph()
    reps = -(-size // photo.shape[0])
    st = render_focal_stack(photo, n_slices=n, max_sigma=6.0, seed=0)
    tile = (reps, reps, 1)
    folder.mkdir(parents=True, exist_ok=True)
    slices = []
    for k in range(n):
        s = np.tile(st.slices[k], tile)[:size, :size]
        iio.imwrite(folder / f"slice_{k:03d}.png", s)
        slices.append(s)
    tifffile.imwrite(folder.parent / f"{folder.name}.tif", np.stack(slices), photometric="rgb")
    return np.tile(st.ground_truth, tile)[:size, :size]


def case_command(case: str, src: Path, out: Path, exe: list[str] | None = None) -> tuple[list[str], Path]:
    """Our command line for ``case`` on the stack folder ``src``, and the fused image it writes."""
    exe = exe or ours_exe()
    if case == "tiled":
        fused = out / "ours.tif"
        return exe + [
            "fuse",
            str(src.parent / f"{src.name}.tif"),
            "--chunks",
            "512",
            "-o",
            str(fused),
            "-q",
            "--overwrite",
        ], fused
    if case == "align":
        return exe + ["batch", str(src), "-o", str(out / "batch"), "--align", "similarity", "--no-resume"], out
    fused = out / "ours.png"
    method = [] if case in ("default", "pcb") else ["-m", case]
    return exe + ["fuse", str(src), *method, "-o", str(fused), "-q", "--overwrite"], fused


def quality(path: Path | None, truth: np.ndarray | None) -> tuple[float, float]:
    if path is None or truth is None:
        return float("nan"), float("nan")
    import imageio.v3 as iio
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    if path.is_dir():
        path = next(path.rglob("*_fused.tif"))
    img = np.asarray(iio.imread(path))[..., :3]
    if img.shape != truth.shape:
        return float("nan"), float("nan")
    img = img.astype(np.uint8) if img.dtype != np.uint8 and img.max() <= 255 else img
    psnr = peak_signal_noise_ratio(truth, img, data_range=255)
    ssim = structural_similarity(truth, img, channel_axis=-1, data_range=255)
    return float(psnr), float(ssim)


def run_pair(
    case: str, src: Path, truth, peer: str | None, repeats: int, work: Path, rev: tuple[str, Path] | None = None
) -> dict:
    """Alternate peer, ours (and ours at ``rev``) ``repeats`` times on one stack; medians + quality per tool."""
    out = work / f"out_{case}_{src.name}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    commands = {"ours": case_command(case, src, out) + (None,)}
    if rev is not None:
        (out / "rev").mkdir()
        env = dict(os.environ, PYTHONPATH=str(rev[1]))
        old_cmd, old_out = case_command(case, src, out / "rev", [sys.executable, "-m", "napari_fusion.cli"])
        commands[f"ours@{rev[0]}"] = (old_cmd, old_out, env)
    files = sorted(p for p in src.iterdir() if p.is_file())
    peer_out = out / "peer.png"
    if peer:
        commands["focus-stack"] = ([peer, f"--output={peer_out}", *PEER_FLAGS, *map(str, files)], peer_out, None)
    runs: dict[str, list[dict]] = {tool: [] for tool in commands}
    for _ in range(repeats):
        for tool, (cmd, fused, env) in commands.items():
            if case == "align" and tool != "focus-stack":
                shutil.rmtree(fused / "batch", ignore_errors=True)
            runs[tool].append(measure(cmd, env))
    rows = {}
    for tool, rs in runs.items():
        row = {k: statistics.median(r[k] for r in rs) for k in ("wall", "cpu", "rss")}
        row["psnr"], row["ssim"] = quality(commands[tool][1], truth)
        rows[tool] = row
    return rows


def print_rows(label: str, case: str, rows: dict) -> None:
    peer = rows.get("focus-stack")
    for tool, r in rows.items():
        ratio = ""
        if tool.startswith("ours") and peer:
            ratio = f"{r['wall'] / peer['wall']:6.2f}x {r['rss'] / peer['rss']:6.2f}x"
        print(
            f"{label:<14} {case:<18} {tool:<12} {r['wall']:8.2f} {r['cpu']:8.2f} {r['rss']:9.0f} "
            f"{r['psnr']:7.2f} {r['ssim']:6.4f}  {ratio}",
            flush=True,
        )


def fixed_overhead(work: Path, repeats: int) -> None:
    """Print our fixed cost per run: ``fuse`` of a 3 x 64^2 stack, and a bare ``import torch``."""
    import tifffile

    tiny = work / "tiny.tif"
    tifffile.imwrite(tiny, np.random.default_rng(0).integers(0, 255, (3, 64, 64), dtype=np.uint8))
    fuse_cmd = ours_exe() + ["fuse", str(tiny), "-o", str(work / "tiny_out.png"), "-q", "--overwrite"]
    torch_cmd = [sys.executable, "-c", "import torch"]
    for name, cmd in (("fuse 3x64^2", fuse_cmd), ("import torch", torch_cmd)):
        runs = [measure(cmd) for _ in range(repeats)]
        wall = statistics.median(r["wall"] for r in runs)
        cpu = statistics.median(r["cpu"] for r in runs)
        rss = statistics.median(r["rss"] for r in runs)
        print(f"{'fixed cost':<14} {name:<18} {'ours':<12} {wall:8.2f} {cpu:8.2f} {rss:9.0f}", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", default=["1024x10", "2048x20"], help="SIZExSLICES synthetic stacks")
    ap.add_argument("--repeats", type=int, default=3, help="alternating runs per tool and case (median)")
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    ap.add_argument("--workdir", type=Path, help="keep inputs/outputs here (default: a temporary folder)")
    ap.add_argument("--rev", help="also run our code at this git revision (its src/ via git archive), alternated")
    ap.add_argument("--load", type=int, default=0, metavar="N", help="N busy-loop processes running meanwhile")
    args = ap.parse_args(argv)
    if args.load < 0:
        ap.error("--load must be >= 0")
    hogs = [subprocess.Popen([sys.executable, "-S", "-c", "while True: pass"]) for _ in range(args.load)]
    try:
        return _run(args)
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


def _run(args) -> int:
    peer = peer_binary()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="vs_focus_stack_"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"{os.cpu_count()} CPUs; repeats {args.repeats}; {args.load} busy-loop processes meanwhile; work {work}")
    print(
        f"{'stack':<14} {'case':<18} {'tool':<12} {'wall s':>8} {'cpu s':>8} {'RSS MiB':>9} "
        f"{'PSNR':>7} {'SSIM':>6}  ours/peer time, RSS"
    )
    fixed_overhead(work, args.repeats)
    rev = (args.rev, extract_src(args.rev, work / f"rev_{args.rev}")) if args.rev else None
    synthetic = [c for c in args.cases if c != "pcb"]
    for spec in args.sizes if synthetic else []:
        size, n = (int(v) for v in spec.lower().split("x"))
        src = work / f"stack_{size}x{n}"
        truth = render(size, n, src)
        for case in synthetic:
            try:
                print_rows(f"{size}^2x{n}", case, run_pair(case, src, truth, peer, args.repeats, work, rev))
            except RuntimeError as exc:  # one failing case does not hide the others
                print(f"{size}^2x{n} {case}: FAILED: {exc}", flush=True)
    if "pcb" in args.cases:
        if PCB_DIR.is_dir():
            src = work / "pcb"
            if not src.exists():
                shutil.copytree(PCB_DIR, src, ignore=shutil.ignore_patterns("reference"))
            print_rows("pcb 7x2048", "pcb", run_pair("pcb", src, None, peer, args.repeats, work, rev))
        else:
            print(f"PCB stack not found at {PCB_DIR}: pcb case skipped")
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
