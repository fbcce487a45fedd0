"""Probes of issue 20: fusion-rule and resolution variants of the CSC networks, scored as
``napari-fusion evaluate`` scores (first N cases of a dataset). None of them is a shipped method;
the rows document what was tried (docs/training.md).

Usage::

    python benchmarks/csc_rule_probes.py ivfn DATA/irvis/tno_li2018 --limit 6 [--weights W.pt]
    python benchmarks/csc_rule_probes.py mefn DATA/mef/ma_mef --limit 8

``ivfn`` variants (the shipped saliency rule, then one change each): ``dmax`` the detail codes of
the source with the largest l1 activity per pixel (a hard choice instead of the paper's ratio);
``dabsmax`` per code element the detail code largest in magnitude; ``dsum`` the detail codes
summed; ``dmax_bl1`` / ``dmax_bavg`` / ``dmax_bmax`` dmax with the base codes by l1 ratio, by
their mean, or by a hard l1 choice. ``mefn`` variants: the luma weights computed at 1/2 and 1/4
of the image size (area-downscaled) and bilinearly upscaled.
"""

from __future__ import annotations

import argparse
import math

import torch
import torch.nn.functional as F

from napari_fusion.evaluation import evaluate_dataset

IVFN = ("paper", "dmax", "dabsmax", "dsum", "dmax_bl1", "dmax_bavg", "dmax_bmax")


def _hard(w: torch.Tensor) -> torch.Tensor:
    return F.one_hot(w.argmax(0), w.shape[0]).permute(2, 0, 1).to(w.dtype)


def ivfn_rule(variant: str):
    """A replacement for ``methods.csc_ivfn.fuse_codes`` applying ``variant`` after the paper's rule."""
    import napari_fusion.methods.csc_ivfn as m

    paper = m.fuse_codes

    def fuse_codes(base, detail, *, strategy, **kw):
        fb, fd, wd, wb = paper(base, detail, strategy=strategy, **kw)
        if variant.startswith("dmax"):
            wd = _hard(wd)
            fd = m._weighted_sum(wd, detail)
        if variant == "dabsmax":
            fd = detail.gather(0, detail.abs().argmax(0, keepdim=True))[0]
        elif variant == "dsum":
            fd = detail.sum(0)
        elif variant in ("dmax_bl1", "dmax_bmax"):
            wb = m.l1_weights(base)
            wb = _hard(wb) if variant == "dmax_bmax" else wb
            fb = m._weighted_sum(wb, base)
        elif variant == "dmax_bavg":
            fb = base.mean(0)
        return fb, fd, wd, wb

    return m, "fuse_codes", paper if variant == "paper" else fuse_codes


def mefn_scale(scale: float):
    """A replacement for ``methods.csc_mefn.luma_logits`` computing the logits at ``scale``."""
    import napari_fusion.methods.csc_mefn as m

    full = m.luma_logits

    def luma_logits(net, luma, **kw):
        small = F.interpolate(luma[None, None], scale_factor=scale, mode="area")[0, 0]
        logits = full(net, small, **kw)
        return F.interpolate(logits[None, None], size=luma.shape, mode="bilinear", align_corners=False)[0, 0]

    return m, "luma_logits", full if scale == 1 else luma_logits


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("network", choices=("ivfn", "mefn"))
    ap.add_argument("dataset")
    ap.add_argument("--limit", type=int, default=6)
    ap.add_argument("--weights", default="", help="other weights for the network (.pt with its manifest)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.network == "ivfn":
        method, metrics, variants = "csc_ivfn", ["qabf", "en", "sd"], [(v, ivfn_rule(v)) for v in IVFN]
    else:
        method, metrics = "csc_mefn", ["mef_ssim"]
        variants = [(f"scale {s}", mefn_scale(s)) for s in (1.0, 0.5, 0.25)]
    params = {method: {"weights": args.weights}} if args.weights else {}
    print(f"| variant ({method}, first {args.limit} cases) | " + " | ".join(metrics) + " |")
    print("|---|" + "---|" * len(metrics), flush=True)
    for name, (module, attr, replacement) in variants:
        saved = getattr(module, attr)
        setattr(module, attr, replacement)
        try:
            res = evaluate_dataset(
                args.dataset, methods=[method], metrics=metrics, limit=args.limit, device="cpu", method_params=params
            )
        finally:
            setattr(module, attr, saved)
        s = res.summary()[0]
        print(f"| {name} | " + " | ".join(f"{s.get(k, math.nan):.4f}" for k in metrics) + " |", flush=True)


if __name__ == "__main__":
    main()
