"""How long one retouch stroke takes to recompose (the Focal stack widget's live recompose).

Times :func:`napari_fusion._napari._focal.retouched` (the function the widget runs in its worker
after each stroke), best of 3, with the method's blending of ``focus_pyramid`` (the default
method: a 4-level Burt-Adelson pyramid; the recomposed box is the stroke's box grown by 64 px):

* synthetic: 20 random uint16 slices of 640^2 with 2-20 slices present in the box, as 64 px
  blocks in random order (every slice everywhere: the worst case) or as bands (the way real
  decisions are laid out); a 512^2 stroke of one slice;
* real: the PCB focus stack (7 x 2048 x 1536 RGB, ``$NAPARI_FUSION_DATA/focalstack/pcb``), fused
  with focus_pyramid, a 512^2 stroke painted at four places with the slice least present there.

    PYTHONPATH=src NAPARI_FUSION_DATA=/work/shared/data python benchmarks/retouch_speed.py

Three timings per case: pyramids recomputed at every stroke (``pyramids=None``); with the
slices' pyramids kept between strokes (:func:`retouch_pyramids_for`, what the widget does when
they fit in a quarter of the available memory), the first stroke, which computes the pyramids
of the slices it needs, and later strokes (best of 3).

The layer update in napari that follows is not included. Needs napari installed (the function
lives in the napari layer of the package) but opens no window.
"""

from __future__ import annotations

import time

import numpy as np

from napari_fusion._napari._focal import FocalJob, retouch_blend, retouch_pyramids_for, retouched
from napari_fusion.datasets import shared_data_dir
from napari_fusion.focalstack import fuse_focal_stack, labels_to_napari
from napari_fusion.focalstack.pipeline import FocalStackResult


def best_of(fn, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def stroke_time(job: FocalJob, result, y: int, x: int) -> tuple[int, float, float, float]:
    """Paint a 512^2 box at (y, x) with the slice least present around it.

    Returns (slices in the box, seconds without kept pyramids, seconds of the first stroke with
    kept pyramids (they are computed then), seconds of a later stroke with them).
    """
    box = result.labels[max(0, y - 64) : y + 576, max(0, x - 64) : x + 576]
    counts = np.bincount(box.ravel(), minlength=job.n)
    k = int(np.argmin(counts))
    edited = labels_to_napari(result.labels)  # the decision layer's data, as the widget makes it
    edited[y : y + 512, x : x + 512] = k + 1
    blend = retouch_blend(result, "method's blending")
    plain = best_of(lambda: retouched(job, result, edited, blend=blend))
    pyramids = retouch_pyramids_for(job, result)
    t = time.perf_counter()
    retouched(job, result, edited, blend=blend, pyramids=pyramids)
    first = time.perf_counter() - t
    kept = best_of(lambda: retouched(job, result, edited, blend=blend, pyramids=pyramids))
    return int((counts > 0).sum()), plain, first, kept


def row(case: str, timed: tuple[int, float, float, float]) -> None:
    present, plain, first, kept = timed
    print(f"| {case} | {present} | {plain * 1000:.0f} | {first * 1000:.0f} | {kept * 1000:.0f} |")


def synthetic_rows() -> None:
    rng = np.random.default_rng(0)
    n, size = 20, 640
    stack = rng.integers(0, 65535, (n, size, size), dtype=np.uint16)
    job = FocalJob.for_array(stack)
    yy, xx = np.mgrid[:size, :size]
    for layout in ("blocks", "bands"):
        for k in (2, 5, 10, 20):
            if layout == "blocks":
                lab = np.kron(rng.integers(0, k, (size // 64 + 1,) * 2), np.ones((64, 64), np.int64))[:size, :size]
            else:
                lab = (k * (yy + 0.5 * xx + 30 * np.sin(xx / 40.0)) / (1.5 * size)).astype(np.int64).clip(0, k - 1)
            result = FocalStackResult(
                fused=stack[0].copy(),
                labels=lab,
                height=lab.astype(np.float32),
                index=None,
                alignment=None,
                method="focus_pyramid",
                params={},
                options={},
                z_positions=np.arange(float(n)),
            )
            row(f"synthetic 20 x {size}^2 uint16, {layout}", stroke_time(job, result, 64, 64))


def pcb_rows() -> None:
    root = shared_data_dir()
    folder = None if root is None else root / "focalstack" / "pcb" / "pcb"
    if folder is None or not folder.is_dir():
        print("| PCB | skipped: $NAPARI_FUSION_DATA/focalstack/pcb not found | - | - | - |")
        return
    from skimage.io import imread

    stack = np.stack([imread(p) for p in sorted(folder.glob("src_*.jpg"))])
    result = fuse_focal_stack(stack, method="focus_pyramid")
    job = FocalJob.for_array(stack, channel_axis=3)
    for y, x in ((200, 300), (700, 900), (900, 1400), (400, 1200)):
        row(f"PCB 7 x 2048x1536 RGB, stroke at ({y}, {x})", stroke_time(job, result, y, x))


def main() -> None:
    print(
        "| case | slices in the recomposed box | retouch, pyramids recomputed (ms) "
        "| first stroke, pyramids kept (ms) | later strokes, pyramids kept (ms) |"
    )
    print("|---|---|---|---|---|")
    synthetic_rows()
    pcb_rows()


if __name__ == "__main__":
    main()
