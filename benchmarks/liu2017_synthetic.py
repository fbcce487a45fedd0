"""Label accuracy and PSNR of liu2017_cnn beside gff and focus_measure on synthetic
two-slice focal stacks rendered from Kodak24 (not used in training).

    PYTHONPATH=src NAPARI_FUSION_DATA=/work/shared/data python benchmarks/liu2017_synthetic.py [--crop 384] [--limit 24]

For each photograph, a centred crop is rendered as a 2-slice stack over a smooth random depth
map (napari_fusion.synthetic.render_focal_stack, max_sigma 5, seed = image index): slice 0
is focused at depth 0, slice 1 at depth 1. Reported: label accuracy over all pixels and
over "clear" pixels (|depth - 0.5| > 0.25, where one slice is markedly sharper), PSNR of the
fused image against the sharp photograph (all pixels, and clear pixels only: elsewhere
both slices are blurred alike and no method can do better), and seconds per pair.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import napari_fusion as nf
from napari_fusion.datasets import shared_data_dir
from napari_fusion.io import read_image
from napari_fusion.synthetic import render_focal_stack


def psnr(a, b):
    mse = np.mean((a.astype(float) - b.astype(float)) ** 2)
    return 10 * np.log10(255.0**2 / mse)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--crop", type=int, default=384)
    p.add_argument("--limit", type=int, default=24)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--methods", default="liu2017_cnn,liu2017_cnn_nway,gff,focus_measure")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    folder = shared_data_dir() / "train" / "kodak24"
    files = sorted(folder.glob("*.png"))[: args.limit]
    methods = args.methods.split(",")
    rows = {m: [] for m in methods}
    for i, f in enumerate(files):
        img = read_image(f)
        h, w = img.shape[:2]
        c = args.crop
        y0, x0 = (h - c) // 2, (w - c) // 2
        img = img[y0 : y0 + c, x0 : x0 + c]
        st = render_focal_stack(img, n_slices=2, max_sigma=5.0, seed=i)
        clear = np.abs(st.depth - 0.5) > 0.25
        for m in methods:
            t = time.perf_counter()
            r = nf.fuse(list(st.slices), m, device="cpu")
            dt = time.perf_counter() - t
            ok = r.labels == st.true_labels
            rows[m].append(
                (
                    ok.mean(),
                    ok[clear].mean(),
                    psnr(r.fused, st.ground_truth),
                    psnr(r.fused[clear], st.ground_truth[clear]),
                    dt,
                )
            )
        print(f"{f.name}: " + ", ".join(f"{m} {rows[m][-1][1]:.3f}" for m in methods), flush=True)
    print(f"\n{len(files)} Kodak24 crops {args.crop}x{args.crop}, 2-slice synthetic stacks (max_sigma 5)\n")
    print("| method | label acc (all) | label acc (clear) | PSNR dB (all) | PSNR dB (clear) | s/pair |")
    print("|---|---|---|---|---|---|")
    for m in methods:
        a = np.array(rows[m])
        print(
            f"| {m} | {a[:, 0].mean():.4f} | {a[:, 1].mean():.4f} | {a[:, 2].mean():.3f} | {a[:, 3].mean():.3f} | {a[:, 4].mean():.2f} |"
        )
    src = [max(psnr(s, st.ground_truth) for s in st.slices)]  # last image only, for scale
    print(f"\n(last image: best single source PSNR {src[0]:.2f} dB)")


if __name__ == "__main__":
    main()
