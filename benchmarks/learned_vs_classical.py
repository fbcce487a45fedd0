"""Do the learned methods earn their place? Each against every classical method of its task,
on the shared real data sets, with the project's metrics.

    PYTHONPATH=src NAPARI_FUSION_DATA=../shared/data python benchmarks/learned_vs_classical.py \\
        [--limit 5] [--sets lytro tno_li2018] [--device cpu]

For every fusion data set of a task (multi-focus: Lytro, MF-VOC; infrared-visible:
TNO (Li 2018's 21 pairs), VIFB; multi-exposure: MA MEF; medical: Harvard), every
registered method of that task is run on the same cases (``--limit`` first cases
per set, natural order) through :func:`napari_fusion.evaluation.evaluate_dataset`.
Printed per set: each method's mean of the task's primary metrics and, for each
learned method, its win rate against each classical method on the first primary
metric (the fraction of cases where it scores higher; ties count half).

Primary metrics: multi-focus Q_AB/F (Xydeas & Petrovic); infrared-visible Q_AB/F,
EN and SD; multi-exposure MEF-SSIM (Ma et al. 2015); medical Q_AB/F. Methods
without their weights on this machine (li2018_vgg19 needs the ImageNet VGG19
file) are listed as skipped.

Guided upsampling (CSC-MMFN, ``guided_upsample``) is scored on its two sets with
Wald's protocol (the reference degraded by 4, upsampled back with the guide):
CAVE (31 bands + simulated RGB) and pansharpening (DGIF, 4 bands + PAN), held-out
regions only (as ``benchmarks/csc_mmfn_heldout.py``), against the classical
upsamplers ``bicubic`` and ``guided_filter``; primary metrics PSNR (higher is
better), SAM and ERGAS (lower is better; a win is a lower value). Cases are the
held-out strips and scenes, so ``--limit`` does not apply there.

Our methods and the classical ones are scored on the same decoded sources, so
no JPEG round trip is applied (that matters only against published outputs).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

#: data set folder (under the shared data) -> (task, primary metrics)
SETS = {
    "lytro": ("multifocus/lytro", "multi-focus", ("qabf",)),
    "mf_voc": ("multifocus/mf_voc", "multi-focus", ("qabf",)),
    "tno_li2018": ("irvis/tno_li2018", "infrared-visible", ("qabf", "en", "sd")),
    "vifb": ("irvis/vifb", "infrared-visible", ("qabf", "en", "sd")),
    "ma_mef": ("mef/ma_mef", "multi-exposure", ("mef_ssim",)),
    "harvard": ("medical/harvard", "medical", ("qabf",)),
}

#: guided-upsampling sets (scored with Wald's protocol on held-out regions) -> data folder
UPSAMPLING_SETS = {"cave": "multispectral/cave", "pansharpening": "pansharpening/dgif"}
UPSAMPLING_METRICS = ("psnr", "sam", "ergas")
LOWER_IS_BETTER = {"sam", "ergas"}


def win_rate(ours: np.ndarray, theirs: np.ndarray, *, lower_is_better: bool = False) -> float:
    """Fraction of cases where ``ours`` is better: higher, or lower with ``lower_is_better``
    (ties count half; NaN cases are left out)."""
    ok = ~(np.isnan(ours) | np.isnan(theirs))
    if not ok.any():
        return math.nan
    a, b = (-ours[ok], -theirs[ok]) if lower_is_better else (ours[ok], theirs[ok])
    return float(((a > b) + 0.5 * (a == b)).mean())


def methods_for(task: str) -> tuple[list[str], list[str], list[str]]:
    """(learned, classical, skipped: name and why) methods of ``task`` that can run here."""
    from napari_fusion import list_methods
    from napari_fusion.errors import WeightsUnavailableError
    from napari_fusion.weights import locate_weights, weights_for_method

    learned, classical, skipped = [], [], []
    for spec in list_methods(task):
        if not spec.learned:
            classical.append(spec.name)
            continue
        try:
            for ws in weights_for_method(spec.name):
                locate_weights(ws, verify=False)
        except WeightsUnavailableError:
            skipped.append(f"{spec.name} (weights not on this machine)")
            continue
        learned.append(spec.name)
    return learned, classical, skipped


def run_set(name: str, root: Path, limit: int | None, device: str) -> None:
    from napari_fusion.evaluation import evaluate_dataset

    folder, task, primary = SETS[name]
    path = root / folder
    if not path.is_dir():
        print(f"\n## {name}: {path} not found, skipped")
        return
    learned, classical, skipped = methods_for(task)
    if not learned:
        print(f"\n## {name} ({task}): no learned method can run here ({'; '.join(skipped)})")
        return
    start = time.perf_counter()
    res = evaluate_dataset(path, methods=learned + classical, metrics=list(primary), limit=limit, device=device)
    seconds = time.perf_counter() - start
    cases = sorted({r["case"] for r in res.rows})
    table = {m: {k: np.array([_value(res, c, m, k) for c in cases]) for k in primary} for m in learned + classical}
    print(f"\n## {name} ({task}): {len(cases)} cases, metrics {', '.join(primary)}; {seconds:.0f} s")
    if skipped:
        print(f"skipped: {'; '.join(skipped)}")
    print("| method | kind | " + " | ".join(f"mean {k}" for k in primary) + " | s per case |")
    print("|---|---|" + "---|" * len(primary) + "---|")
    secs = {m: np.nanmean([r["seconds"] for r in res.rows if r["method"] == m]) for m in learned + classical}
    best = max(classical, key=lambda m: np.nanmean(table[m][primary[0]]))
    for m in learned + classical:
        kind = "learned" if m in learned else ("classical, best" if m == best else "classical")
        means = " | ".join(f"{np.nanmean(table[m][k]):.4f}" for k in primary)
        print(f"| {m} | {kind} | {means} | {secs[m]:.2f} |")
    print(f"\nwin rate on {primary[0]} (learned row beats classical column):")
    print("| learned | " + " | ".join(classical) + " | mean minus best classical |")
    print("|---|" + "---|" * len(classical) + "---|")
    for m in learned:
        rates = " | ".join(f"{win_rate(table[m][primary[0]], table[c][primary[0]]):.2f}" for c in classical)
        gap = np.nanmean(table[m][primary[0]]) - np.nanmean(table[best][primary[0]])
        print(f"| {m} | {rates} | {gap:+.4f} |")


def run_upsampling_set(name: str, root: Path) -> None:
    """CSC-MMFN against the classical upsamplers on the held-out cases of ``name``."""
    from napari_fusion.training.csc_mmfn import evaluate_heldout
    from napari_fusion.upsample import UPSAMPLE_METHODS

    if not (root / UPSAMPLING_SETS[name]).is_dir():
        print(f"\n## {name}: {root / UPSAMPLING_SETS[name]} not found, skipped")
        return
    methods = list(UPSAMPLE_METHODS)
    learned = [m for m in methods if m == "csc_mmfn"]
    classical = [m for m in methods if m not in learned]
    start = time.perf_counter()
    rows = evaluate_heldout(name, None, methods=tuple(learned + classical))
    seconds = time.perf_counter() - start
    cases = list(dict.fromkeys(r["case"] for r in rows))
    by = {(r["case"], r["method"]): r for r in rows}
    table = {m: {k: np.array([by[c, m][k] for c in cases]) for k in UPSAMPLING_METRICS} for m in methods}
    print(f"\n## {name} (guided upsampling x4, Wald's protocol, held-out regions): {len(cases)} cases; {seconds:.0f} s")
    print("| method | kind | mean PSNR dB | mean SAM deg | mean ERGAS | s per case |")
    print("|---|---|---|---|---|---|")
    best = max(classical, key=lambda m: table[m]["psnr"].mean())
    for m in methods:
        kind = "learned" if m in learned else ("classical, best" if m == best else "classical")
        secs = np.mean([by[c, m]["seconds"] for c in cases])
        means = " | ".join(f"{table[m][k].mean():.4f}" for k in UPSAMPLING_METRICS)
        print(f"| {m} | {kind} | {means} | {secs:.2f} |")
    for k in UPSAMPLING_METRICS:
        low = k in LOWER_IS_BETTER
        best_k = (min if low else max)(classical, key=lambda m: table[m][k].mean())
        print(f"\nwin rate on {k} ({'lower' if low else 'higher'} is better; learned row beats classical column):")
        print("| learned | " + " | ".join(classical) + f" | mean minus best classical ({best_k}) |")
        print("|---|" + "---|" * len(classical) + "---|")
        for m in learned:
            rates = " | ".join(f"{win_rate(table[m][k], table[c][k], lower_is_better=low):.2f}" for c in classical)
            print(f"| {m} | {rates} | {table[m][k].mean() - table[best_k][k].mean():+.4f} |")


def _value(res, case: str, method: str, metric: str) -> float:
    for r in res.rows:
        if r["case"] == case and r["method"] == method:
            v = r.get(metric, math.nan)
            return float(v) if v is not None else math.nan
    return math.nan


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--limit", type=int, default=5, help="first N cases per set (0: all)")
    every = list(SETS) + list(UPSAMPLING_SETS)
    ap.add_argument("--sets", nargs="+", default=every, choices=every)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--data", default=None, help="shared data folder (default: NAPARI_FUSION_DATA)")
    args = ap.parse_args()
    from napari_fusion.datasets import shared_data_dir

    if args.data:  # the upsampling sets' loaders find the data through the environment
        os.environ["NAPARI_FUSION_DATA"] = str(Path(args.data).resolve())
    root = Path(args.data) if args.data else shared_data_dir()
    if root is None or not root.is_dir():
        print("shared data not found: set NAPARI_FUSION_DATA or --data")
        return
    print(f"learned vs classical, first {args.limit or 'all'} cases per set, device {args.device}")
    for name in args.sets:
        if name in UPSAMPLING_SETS:
            run_upsampling_set(name, root)
        else:
            run_set(name, root, args.limit or None, args.device)


if __name__ == "__main__":
    main()
