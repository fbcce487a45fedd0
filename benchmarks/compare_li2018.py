"""Compare our ``li2018_vgg19`` with the authors' own fused images.

Needs torchvision's ImageNet VGG19 weights (``napari-fusion weights fetch vgg19``,
or ``--weights FILE``, or ``$NAPARI_FUSION_VGG19_WEIGHTS``); without them it prints
why and exits with status 0 (a clean skip).

For every case of

- ``irvis/tno_li2018/pair-XX`` (reference ``reference/Li2018.png``: the outputs
  released with the paper, made with MatConvNet's VGG19), and
- ``irvis/vifb/<image>`` (reference ``reference/DLF.jpg``: VIFB's run of the
  authors' code),

it prints SSIM (skimage, grey BT.601 luma, data range 255) and PSNR between our
output and the reference, and a few reference-free metrics of both with their
difference (ours - theirs). Those metrics are defined in this script (see
``_metrics``); they are simple textbook definitions for a like-for-like
comparison, not the VIFB-validated variants.

Usage::

    python benchmarks/compare_li2018.py [--layers conv relu] [--limit N] [--weights FILE]

``--smoke-untrained`` runs the whole script with a small random network to
check its mechanics on machines without the weights: its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from napari_fusion import fuse
from napari_fusion.datasets import shared_data_dir
from napari_fusion.io import read_image
from napari_fusion.weights import weights_status


def _grey(img: np.ndarray) -> np.ndarray:
    img = img.astype(np.float64)
    if img.ndim == 3:
        return img @ np.array([0.299, 0.587, 0.114])
    return img


def _entropy(g: np.ndarray) -> float:
    hist = np.bincount(np.clip(np.rint(g), 0, 255).astype(np.intp).ravel(), minlength=256)
    p = hist[hist > 0] / hist.sum()
    return float(-(p * np.log2(p)).sum())


def _metrics(fused: np.ndarray, ir: np.ndarray, vis: np.ndarray) -> dict[str, float]:
    """EN (8-bit histogram entropy, bits), SD, SF (spatial frequency), AG (average gradient),
    SSIMsum = SSIM(IR, F) + SSIM(VIS, F); all on grey levels 0-255."""
    from skimage.metrics import structural_similarity as ssim

    f = _grey(fused)
    dx = np.diff(f, axis=1)
    dy = np.diff(f, axis=0)
    gx, gy = dx[:-1, :], dy[:, :-1]
    return {
        "EN": _entropy(f),
        "SD": float(f.std()),
        "SF": float(np.sqrt((dx**2).mean() + (dy**2).mean())),
        "AG": float(np.sqrt((gx**2 + gy**2) / 2).mean()),
        "SSIMsum": float(ssim(_grey(ir), f, data_range=255) + ssim(_grey(vis), f, data_range=255)),
    }


def _cases(data: Path, which: list[str]):
    if "tno" in which:
        for d in sorted((data / "irvis" / "tno_li2018").glob("pair-*")):
            yield "tno", d.name, d / "src_00.png", d / "src_01.png", d / "reference" / "Li2018.png"
    if "vifb" in which:
        for d in sorted(p for p in (data / "irvis" / "vifb").iterdir() if p.is_dir()):
            yield "vifb", d.name, d / "src_00.jpg", d / "src_01.jpg", d / "reference" / "DLF.jpg"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=None, help="shared data folder (default: $NAPARI_FUSION_DATA)")
    ap.add_argument("--weights", default="", help="VGG19 weights file (default: auto-locate)")
    ap.add_argument("--layers", nargs="+", default=["conv"], choices=["conv", "relu"])
    ap.add_argument("--datasets", nargs="+", default=["tno", "vifb"], choices=["tno", "vifb"])
    ap.add_argument("--limit", type=int, default=None, help="at most this many cases per dataset")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--smoke-untrained", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    data = args.data or shared_data_dir()
    if data is None or not (data / "irvis").is_dir():
        print("SKIP: shared data not found (set NAPARI_FUSION_DATA or --data)")
        return 0

    hook = None
    if args.smoke_untrained:
        from napari_fusion.methods.li2018_vgg19 import untrained_network_for_tests
        from napari_fusion.nets.vgg19 import VGG19

        torch.manual_seed(0)
        hook = untrained_network_for_tests(VGG19(depth=21, widths=(8, 8, 16, 16, 16)))
        hook.__enter__()
        print("SMOKE RUN with a random untrained network: the numbers below are meaningless.")
    else:
        st = weights_status("vgg19", args.weights or None)
        if not st.found:
            print(f"SKIP: {st.message}")
            print("Get the weights with `napari-fusion weights fetch vgg19` (needs internet).")
            return 0
        print(f"weights: {st.path} ({st.source})")

    from skimage.metrics import peak_signal_noise_ratio as psnr
    from skimage.metrics import structural_similarity as ssim

    names = ["EN", "SD", "SF", "AG", "SSIMsum"]
    try:
        for layers in args.layers:
            print(f"\n== layers={layers}")
            header = f"{'dataset':7s} {'case':14s} {'SSIM':>6s} {'PSNR':>6s} {'sec':>6s} " + " ".join(
                f"{'d' + n:>9s}" for n in names
            )
            print(header)
            rows: dict[str, list] = {}
            counts: dict[str, int] = {}
            for ds, name, p_ir, p_vis, p_ref in _cases(data, args.datasets):
                if args.limit is not None and counts.get(ds, 0) >= args.limit:
                    continue
                if not p_ref.exists():
                    continue
                counts[ds] = counts.get(ds, 0) + 1
                ir, vis, ref = read_image(p_ir), read_image(p_vis), read_image(p_ref)
                if vis.ndim == 3 and ir.ndim == 2:
                    ir = np.repeat(ir[..., None], 3, axis=-1)
                t0 = time.perf_counter()
                ours = fuse(
                    [ir, vis], method="li2018_vgg19", device=args.device, layers=layers, weights=args.weights
                ).fused
                sec = time.perf_counter() - t0
                s = ssim(_grey(ours), _grey(ref), data_range=255)
                p = psnr(_grey(ref), _grey(ours), data_range=255)
                mo, mr = _metrics(ours, ir, vis), _metrics(ref, ir, vis)
                deltas = [mo[n] - mr[n] for n in names]
                rows.setdefault(ds, []).append([s, p, sec, *deltas, *[mo[n] for n in names], *[mr[n] for n in names]])
                print(f"{ds:7s} {name:14s} {s:6.4f} {p:6.2f} {sec:6.1f} " + " ".join(f"{d:+9.4f}" for d in deltas))
                sys.stdout.flush()
            for ds, r in rows.items():
                a = np.asarray(r).mean(0)
                k = len(names)
                print(
                    f"{ds:7s} {'MEAN (' + str(len(r)) + ')':14s} {a[0]:6.4f} {a[1]:6.2f} {a[2]:6.1f} "
                    + " ".join(f"{d:+9.4f}" for d in a[3 : 3 + k])
                )
                print(f"{'':7s} {'ours':14s} " + " ".join(f"{n}={v:.4f}" for n, v in zip(names, a[3 + k : 3 + 2 * k])))
                print(f"{'':7s} {'authors':14s} " + " ".join(f"{n}={v:.4f}" for n, v in zip(names, a[3 + 2 * k :])))
    finally:
        if hook is not None:
            hook.__exit__(None, None, None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
