"""How far the published Li 2018 TNO outputs are from the plain average of their two inputs.

For every pair of ``irvis/tno_li2018`` (shared data), compares the released
fused image ``reference/Li2018.png`` with ``(IR + visible) / 2``, both as BT.601
grey in float: mean absolute difference (grey levels), largest difference and
PSNR (data range 255). Needs no weights.

    PYTHONPATH=src python benchmarks/li2018_published_vs_average.py [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

from napari_fusion.datasets import iter_cases
from napari_fusion.io import read_image

LUMA = np.array([0.299, 0.587, 0.114])


def _grey(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    return a if a.ndim == 2 else a[..., :3] @ LUMA


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--data",
        default=os.environ.get("NAPARI_FUSION_DATA", str(Path(__file__).resolve().parents[2] / "shared" / "data")),
    )
    args = ap.parse_args(argv)
    cases = iter_cases(Path(args.data) / "irvis" / "tno_li2018")
    mad, worst, psnr = [], [], []
    for case in cases:
        a, b = (_grey(s) for s in case.load_sources())
        diff = _grey(read_image(case.path / "reference" / "Li2018.png")) - (a + b) / 2
        mad.append(float(np.abs(diff).mean()))
        worst.append(float(np.abs(diff).max()))
        psnr.append(float(10 * np.log10(255.0**2 / np.mean(diff**2))))
        print(
            f"{case.name:10s} mean |published - average| {mad[-1]:6.3f}  max {worst[-1]:5.1f}  PSNR {psnr[-1]:6.2f} dB"
        )
    print(f"{len(cases)} pairs: mean {np.mean(mad):.3f} grey levels ({min(mad):.3f}-{max(mad):.3f}), "
          f"max {max(worst):.1f}; PSNR mean {np.mean(psnr):.2f} dB ({min(psnr):.2f}-{max(psnr):.2f})")  # fmt: skip


if __name__ == "__main__":
    main()
