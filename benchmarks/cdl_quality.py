"""Quality of veshki_cdl variants beside baselines, with the project's metric code.

Usage: python benchmarks/cdl_quality.py [--threads 2] [--limit N] [--datasets lytro mf_voc]
       [--variants KEY ...] [--no-baselines] [--out results.json]

Lytro (20 real pairs, no ground truth): Q_AB/F and NMI (paper, Table I: 0.7561, 1.1913).
mf_voc (synthetic pairs with ground truth): MSE and PSNR against the all-in-focus image.
Each variant is a separate ``evaluate_dataset`` call (method parameters are per method);
the default-parameter row equals ``napari-fusion evaluate DATASET -m veshki_cdl``.
"""

from __future__ import annotations

import argparse
import json

import torch

from napari_fusion.datasets import shared_data_dir
from napari_fusion.evaluation import evaluate_dataset

VARIANTS = {
    "veshki_cdl 8x8 released-boundary (default)": {"patch": 8, "boundary": "released"},
    "veshki_cdl 8x8 paper-boundary": {"patch": 8, "boundary": "paper"},
    "veshki_cdl 16x16 paper-boundary": {"patch": 16, "boundary": "paper"},
    "veshki_cdl 16x16 released-boundary": {"patch": 16, "boundary": "released"},
}
DATASETS = {
    "lytro": ("multifocus/lytro", ["qabf", "nmi"], ["gff"]),
    "mf_voc": (
        "multifocus/mf_voc",
        ["mse_gt", "psnr_gt", "qabf"],
        ["gff", "focus_measure", "laplacian_pyramid", "liu2017_cnn"],
    ),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--datasets", nargs="+", default=list(DATASETS))
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), help="keys of VARIANTS")
    ap.add_argument("--no-baselines", action="store_true", help="only the veshki_cdl variants")
    ap.add_argument("--out", default=None, help="write all rows as JSON")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    root = shared_data_dir()
    if root is None:
        raise SystemExit("shared data not found (set NAPARI_FUSION_DATA)")
    allrows = {}
    for ds in args.datasets:
        rel, metrics, baselines = DATASETS[ds]
        rows = []
        for label in args.variants:
            res = evaluate_dataset(
                root / rel,
                methods=["veshki_cdl"],
                metrics=metrics,
                limit=args.limit,
                device="cpu",
                method_params={"veshki_cdl": VARIANTS[label]},
            )
            s = res.summary()[0]
            s["method"] = label
            rows.append(s)
        if not args.no_baselines:
            res = evaluate_dataset(root / rel, methods=baselines, metrics=metrics, limit=args.limit, device="cpu")
            rows += res.summary()
        allrows[ds] = rows
        print(f"\n## {ds} ({rows[0]['cases']} cases)\n")
        print("| method | " + " | ".join(metrics) + " | s / case |")
        print("|---|" + "---|" * (len(metrics) + 1))
        for r in rows:
            print(f"| {r['method']} | " + " | ".join(f"{r[m]:.4f}" for m in metrics) + f" | {r['s_per_case']:.2f} |")
        if ds == "lytro":
            print("| paper (Veshki et al., Table I, MATLAB) | 0.7561 | 1.1913 | 2.56 |")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(allrows, fh, indent=2)


if __name__ == "__main__":
    main()
