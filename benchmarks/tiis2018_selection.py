"""Choose between weight files for ``tiis2018_fcn`` on a validation set of real pairs.

    PYTHONPATH=src NAPARI_FUSION_DATA=../shared/data python benchmarks/tiis2018_selection.py \\
        [--set multifocus/classic_gray] shipped runs/two_stream-x/tiis2018_fcn.pt ...

The validation set is MFIFB's ``classic_gray`` group (12 real multi-focus pairs without ground
truth). It is not one of the sets that ``benchmarks/learned_vs_classical.py`` scores, so a choice
made here does not look at those test sets. Printed per weights file ("shipped" is the packaged
file):

* mean Q_AB/F of the network output (the paper's method, ``output='network'``) over the pairs;
* the identical-pair error: each source fused with itself should come back unchanged. RMS
  difference (grey levels) and the ratio of mean gradient magnitudes (output / source; above 1
  the network sharpens, inventing detail no source has);
* the share of pixels outside the two sources' range by more than 2 grey levels.

The Two-stream network was published in KSII Transactions on Internet and Information Systems
12(5), 2018 (end-to-end two-stream fully convolutional multi-focus fusion).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def _grey(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x.mean(-1) if x.ndim == 3 else x


def _gradient(x: np.ndarray) -> np.ndarray:
    g = _grey(x)
    return np.hypot(np.diff(g, axis=1)[:-1], np.diff(g, axis=0)[:, :-1])


def score_weights(weights: str, cases, *, device: str) -> dict[str, float]:
    """The figures above for one weights file ('' = shipped) over ``cases``."""
    import napari_fusion as nf
    from napari_fusion.metrics import compute_metrics

    q, rms, gratio, outside = [], [], [], []
    for case in cases:
        a, b = case.load_sources()
        fused = nf.fuse([a, b], "tiis2018_fcn", weights=weights, device=device).fused
        q.append(compute_metrics(fused, [a, b], names=["qabf"])["qabf"])
        lo, hi = np.minimum(a, b).astype(np.float64), np.maximum(a, b).astype(np.float64)
        f = fused.astype(np.float64)
        outside.append(float(((f < lo - 2) | (f > hi + 2)).mean()))
        for s in (a, b):
            same = nf.fuse([s, s], "tiis2018_fcn", weights=weights, device=device).fused.astype(np.float64)
            rms.append(float(np.sqrt(np.mean((same - s) ** 2))))
            gratio.append(float(_gradient(same).mean() / max(_gradient(s).mean(), 1e-9)))
    return {
        "qabf": float(np.mean(q)),
        "identical_rms": float(np.mean(rms)),
        "identical_gradient_ratio": float(np.mean(gratio)),
        "outside_range": float(np.mean(outside)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("weights", nargs="+", help="weights files; 'shipped' for the packaged one")
    ap.add_argument("--set", default="multifocus/classic_gray", help="validation set under the shared data")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    from napari_fusion.datasets import shared_data_dir
    from napari_fusion.evaluation import _select_cases

    root = shared_data_dir()
    if root is None or not (root / args.set).is_dir():
        print(f"validation set {args.set} not found under the shared data (NAPARI_FUSION_DATA); nothing to do")
        return
    cases = _select_cases(root / args.set, None, None)
    print(f"validation set {args.set}: {len(cases)} pairs")
    print("| weights | Q_AB/F | identical pair RMS | identical pair gradient ratio | outside sources' range |")
    print("|---|---|---|---|---|")
    for w in args.weights:
        r = score_weights("" if w == "shipped" else w, cases, device=args.device)
        print(
            f"| {w} | {r['qabf']:.4f} | {r['identical_rms']:.2f} | {r['identical_gradient_ratio']:.3f} "
            f"| {r['outside_range']:.2%} |"
        )


if __name__ == "__main__":
    main()
