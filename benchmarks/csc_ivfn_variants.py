"""CSC-IVFN fusion variants on an infrared/visible dataset: mean metrics per variant.

Usage: python benchmarks/csc_ivfn_variants.py DATASET_DIR [--limit N] [--threads 1]
                                               [--variants saliency:1 l1:1 average:1 saliency:2]

Each variant is ``strategy:code_scale``. Uses the evaluation code of
``napari-fusion evaluate`` (same metrics, same channel handling), one run
per variant, and prints one table (the plain ``average`` method as a baseline).
"""

from __future__ import annotations

import argparse
import math

import torch

from napari_fusion.evaluation import evaluate_dataset

METRICS = ["en", "mi", "sd", "sf", "viff", "ag", "scd", "qabf"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("dataset")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--variants", nargs="+", default=["saliency:1", "l1:1", "average:1", "saliency:2"])
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print("| variant | " + " | ".join(METRICS) + " | s/case |")
    print("|---|" + "---|" * (len(METRICS) + 1), flush=True)

    def show(name, s):
        vals = [s.get(m, math.nan) for m in METRICS]
        print(
            f"| {name} | " + " | ".join(f"{v:.3f}" for v in vals) + f" | {s.get('s_per_case', math.nan):.1f} |",
            flush=True,
        )

    base = evaluate_dataset(args.dataset, methods=["average"], metrics=METRICS, limit=args.limit, device=args.device)
    show("average (plain mean of the sources)", base.summary()[0])
    for v in args.variants:
        strategy, scale = v.split(":")
        params = {"csc_ivfn": {"strategy": strategy, "code_scale": float(scale)}}
        res = evaluate_dataset(
            args.dataset,
            methods=["csc_ivfn"],
            metrics=METRICS,
            limit=args.limit,
            device=args.device,
            method_params=params,
        )
        show(f"csc_ivfn strategy={strategy} code_scale={scale}", res.summary()[0])


if __name__ == "__main__":
    main()
