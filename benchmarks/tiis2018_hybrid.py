"""Does Liu et al.'s consistency step help tiis2018_fcn? Q_AB/F on the shared multi-focus pairs.

Compares, per case and on average (the project's Q_AB/F, BT.601 grey):

* ``tiis_network``: tiis2018_fcn as in the paper (the regressed image, ``output="network"``);
* ``tiis_decision``: its ``output="decision"`` (each pixel copied from the source the network's
  output is locally closer to);
* ``tiis_refined``: that decision refined as Liu et al. 2017 refine theirs (not in either paper:
  regions under 1 % of the image removed, then a guided filter, r = 8, eps = 0.1, on the
  decision-selected grey image);
* ``focus_measure`` (the best classical method on these sets) and ``liu2017_cnn``.

    PYTHONPATH=src NAPARI_FUSION_DATA=/work/shared/data python benchmarks/tiis2018_hybrid.py lytro mf_voc
"""

from __future__ import annotations

import math
import sys
import time

import numpy as np
import torch
from skimage.io import imread

import napari_fusion as nf
from napari_fusion.datasets import shared_data_dir
from napari_fusion.metrics import compute_metrics
from napari_fusion.ops.guided import guided_filter
from napari_fusion.ops.regions import remove_small_regions


def refined(sources: list[np.ndarray], labels: np.ndarray, *, area: float = 0.01, radius: int = 8, eps: float = 0.1):
    """The two-source decision ``labels`` (0: first source) with Liu 2017's consistency verification."""
    a, b = (np.asarray(s, dtype=np.float32) / 255.0 for s in sources)
    h, w = labels.shape
    d = remove_small_regions(torch.from_numpy(labels == 0).to(torch.uint8), int(math.ceil(area * h * w))).float()
    grey_a = torch.from_numpy(a.mean(-1) if a.ndim == 3 else a)
    grey_b = torch.from_numpy(b.mean(-1) if b.ndim == 3 else b)
    wa = guided_filter(grey_a * d + grey_b * (1 - d), d, radius, eps).clamp(0, 1).numpy()
    if a.ndim == 3:
        wa = wa[..., None]
    return np.clip(np.rint((wa * a + (1 - wa) * b) * 255), 0, 255).astype(np.uint8)


def main() -> None:
    root = shared_data_dir()
    if root is None:
        print("shared data not found (set NAPARI_FUSION_DATA)")
        return
    for name in sys.argv[1:] or ["lytro"]:
        folder = root / "multifocus" / name
        cases = sorted(p for p in folder.iterdir() if p.is_dir())
        scores: dict[str, list[float]] = {
            k: [] for k in ("tiis_network", "tiis_decision", "tiis_refined", "focus_measure", "liu2017_cnn")
        }
        start = time.perf_counter()
        for case in cases:
            sources = [imread(p) for p in sorted(case.glob("src_*"))]
            if len(sources) != 2:
                continue
            decision = nf.fuse(sources, method="tiis2018_fcn", output="decision")
            outputs = {
                "tiis_network": nf.fuse(sources, method="tiis2018_fcn").fused,
                "tiis_decision": decision.fused,
                "tiis_refined": refined(sources, np.asarray(decision.labels)),
                "focus_measure": nf.fuse(sources, method="focus_measure").fused,
                "liu2017_cnn": nf.fuse(sources, method="liu2017_cnn").fused,
            }
            for key, fused in outputs.items():
                scores[key].append(compute_metrics(fused, sources, names=["qabf"])["qabf"])
        base = np.array(scores["focus_measure"])
        print(f"\n{name}: {len(base)} pairs, {time.perf_counter() - start:.0f} s")
        print("| variant | mean Q_AB/F | minus focus_measure | win rate vs focus_measure |")
        print("|---|---|---|---|")
        for key, values in scores.items():
            v = np.array(values)
            rate = float(((v > base) + 0.5 * (v == base)).mean())
            print(f"| {key} | {v.mean():.4f} | {v.mean() - base.mean():+.4f} | {rate:.2f} |")


if __name__ == "__main__":
    main()
