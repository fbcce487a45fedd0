"""PSNR/SSIM against ground truth of tiis2018_fcn beside average, gff and liu2017_cnn on
two-source multi-focus renders of Kodak24 (not used in training), with the error near focus
boundaries reported separately (the halo question).

    PYTHONPATH=src NAPARI_FUSION_DATA=/work/shared/data python benchmarks/two_stream_synthetic.py \
        [--crop 384] [--limit 24] [--threads 1] [--kinds focal,regions] [--methods ...]

Two kinds of render of a centred ``crop x crop`` colour crop (seed = image index):

* ``focal``: the project's focal-stack renderer (``napari_fusion.synthetic.render_focal_stack``,
  2 slices focused at depth 0 and 1 of a smooth random depth map, ``max_sigma`` 8): blur grows
  smoothly with the distance from the focal plane, both slices are blurred alike near depth 0.5.
* ``regions``: the paper's protocol at image scale: the same depth map thresholded at 0.5 gives
  two complementary regions; source A is sharp in one and Gaussian-blurred (sigma uniform in
  [2, 10]) in the other, B the reverse (a hard focus boundary).

Reported per method: PSNR and SSIM (``napari_fusion.metrics.reference``) over the whole image,
PSNR in the band within 6 px of the focus boundary (the true label boundary) and PSNR farther
than 20 px from it (both from the MSE pooled over the images, as exact copies give an infinite
per-image PSNR), and seconds per pair.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from scipy import ndimage

import napari_fusion as nf
from napari_fusion.datasets import shared_data_dir
from napari_fusion.io import read_image
from napari_fusion.metrics.reference import psnr as ref_psnr
from napari_fusion.metrics.reference import ssim as ref_ssim
from napari_fusion.synthetic import render_focal_stack, smooth_depth_map


def mse_mask(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    d = (a.astype(np.float64) - b.astype(np.float64)) ** 2
    if d.ndim == 3:
        d = d.mean(-1)
    return float(d[mask].mean())


def pooled_psnr(mses: np.ndarray) -> float:
    m = np.nanmean(mses)
    return float("inf") if m == 0 else float(10 * np.log10(255.0**2 / m))


def region_render(img: np.ndarray, seed: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Complementary-region pair (sharp in one region, blurred in the other) and the region map."""
    rng = np.random.default_rng(seed + 1000)
    depth = smooth_depth_map(img.shape[:2], seed=seed)
    m = depth < 0.5
    out = []
    for mask in (m, ~m):
        s = rng.uniform(2.0, 10.0)
        blur = ndimage.gaussian_filter(img.astype(np.float64), (s, s, 0), mode="reflect")
        x = np.where(mask[..., None], img.astype(np.float64), blur)
        out.append(np.clip(np.rint(x), 0, 255).astype(np.uint8))
    return out, (~m).astype(np.int64)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--crop", type=int, default=384)
    p.add_argument("--limit", type=int, default=24)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--max-sigma", type=float, default=8.0)
    p.add_argument("--kinds", default="focal,regions")
    p.add_argument(
        "--methods",
        default="tiis2018_fcn,tiis2018_fcn:output=decision,average,gff,liu2017_cnn",
        help="comma-separated; NAME:key=value[:key=value] passes parameters",
    )
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    folder = shared_data_dir() / "train" / "kodak24"
    files = sorted(folder.glob("*.png"))[: args.limit]
    methods = args.methods.split(",")
    kinds = args.kinds.split(",")
    rows = {(k, m): [] for k in kinds for m in methods}
    best_src = {k: [] for k in kinds}
    for i, f in enumerate(files):
        img = read_image(f)
        h, w = img.shape[:2]
        c = args.crop
        y0, x0 = (h - c) // 2, (w - c) // 2
        img = img[y0 : y0 + c, x0 : x0 + c]
        for kind in kinds:
            if kind == "focal":
                st = render_focal_stack(img, n_slices=2, max_sigma=args.max_sigma, seed=i)
                sources, truth = list(st.slices), st.true_labels
            else:
                sources, truth = region_render(img, i)
            edge = truth != ndimage.grey_erosion(truth, size=3) if truth.any() else np.zeros_like(truth, bool)
            edge |= truth != ndimage.grey_dilation(truth, size=3)
            dist = ndimage.distance_transform_edt(~edge) if edge.any() else np.full(truth.shape, np.inf)
            near, far = dist <= 6, dist > 20
            best_src[kind].append(max(ref_psnr(s, img) for s in sources))
            for m in methods:
                t = time.perf_counter()
                name, *kv = m.split(":")
                r = nf.fuse(sources, name, device="cpu", **dict(x.split("=", 1) for x in kv))
                dt = time.perf_counter() - t
                rows[(kind, m)].append(
                    (
                        ref_psnr(r.fused, img),
                        ref_ssim(r.fused, img),
                        mse_mask(r.fused, img, near) if near.any() else np.nan,
                        mse_mask(r.fused, img, far) if far.any() else np.nan,
                        dt,
                    )
                )
        print(
            f"{f.name}: " + ", ".join(f"{k}/{m} {rows[(k, m)][-1][0]:.2f}" for k in kinds for m in methods), flush=True
        )
    print(
        f"\n{len(files)} Kodak24 crops {args.crop}x{args.crop}; focal: max_sigma {args.max_sigma}; regions: sigma 2-10\n"
    )
    print("| render | method | PSNR dB | SSIM | PSNR dB, <= 6 px from boundary | PSNR dB, > 20 px | s/pair |")
    print("|---|---|---|---|---|---|---|")
    for k in kinds:
        for m in methods:
            a = np.array(rows[(k, m)], dtype=np.float64)
            print(
                f"| {k} | {m} | {a[:, 0].mean():.2f} | {a[:, 1].mean():.4f} | {pooled_psnr(a[:, 2]):.2f} | "
                f"{pooled_psnr(a[:, 3]):.2f} | {a[:, 4].mean():.2f} |"
            )
        print(f"| {k} | best single source | {np.mean(best_src[k]):.2f} | | | | |")


if __name__ == "__main__":
    main()
