"""Probes of issue 20: fusion-rule and resolution variants of the CSC networks, scored as
``napari-fusion evaluate`` scores (first N cases of a dataset). None of them is a shipped method;
the rows document what was tried (docs/training.md).

Usage::

    python benchmarks/csc_rule_probes.py ivfn DATA/irvis/tno_li2018 --limit 6 [--weights W.pt]
    python benchmarks/csc_rule_probes.py mefn DATA/mef/ma_mef --limit 8
    python benchmarks/csc_rule_probes.py ivfn DATA/irvis/tno_li2018 --limit 0 --split 6 \
        --variants paper dmax_resid dmax_gf8_resid

``ivfn`` variants (the shipped saliency rule, then one change each): ``dmax`` the detail codes of
the source with the largest l1 activity per pixel (a hard choice instead of the paper's ratio);
``dabsmax`` per code element the detail code largest in magnitude; ``dsum`` the detail codes
summed; ``dmax_bl1`` / ``dmax_bavg`` / ``dmax_bmax`` dmax with the base codes by l1 ratio, by
their mean, or by a hard l1 choice; ``dmax_resid`` dmax plus the sources' reconstruction
residuals (source minus the decoded source codes) mixed by the detail weights, so that what the
autoencoder loses is put back; ``dmax_gf<r>_resid`` the same with the hard detail weights smoothed by a
guided filter of radius r (eps 0.01, guide the source) first. ``mefn`` variants: the luma weights computed at 1/2 and 1/4
of the image size (area-downscaled) and bilinearly upscaled.
"""

from __future__ import annotations

import argparse
import math

import torch
import torch.nn.functional as F

from napari_fusion.evaluation import evaluate_dataset
from napari_fusion.ops.blend import weighted_sum

IVFN = ("paper", "dmax", "dabsmax", "dsum", "dmax_bl1", "dmax_bavg", "dmax_bmax", "dmax_resid", "dmax_gf8_resid")


def _hard(w: torch.Tensor) -> torch.Tensor:
    return F.one_hot(w.argmax(0), w.shape[0]).permute(2, 0, 1).to(w.dtype)


def ivfn_rule(variant: str):
    """A replacement for ``methods.csc_ivfn.fuse_source_codes`` applying ``variant`` after the paper's rule."""
    import napari_fusion.methods.csc_ivfn as m

    paper = m.fuse_source_codes

    def fuse_source_codes(codes, *, strategy, **kw):
        fb, fd, wd, wb = paper(codes, strategy=strategy, **kw)
        base, detail = codes.stacked()
        if variant.startswith("dmax"):
            wd = _hard(wd)
            fd = weighted_sum(detail, wd)
        if variant == "dabsmax":
            fd = detail.gather(0, detail.abs().argmax(0, keepdim=True))[0]
        elif variant == "dsum":
            fd = detail.sum(0)
        elif variant in ("dmax_bl1", "dmax_bmax"):
            wb = m.l1_weights(base)
            wb = _hard(wb) if variant == "dmax_bmax" else wb
            fb = weighted_sum(base, wb)
        elif variant == "dmax_bavg":
            fb = base.mean(0)
        return fb, fd, wd, wb

    return m, "fuse_source_codes", paper if variant == "paper" else fuse_source_codes


def ivfn_residual(variant: str):
    """A replacement for ``csc_ivfn``'s whole run (grey sources): hard detail choice (optionally
    smoothed by a guided filter), decoded, plus the sources' reconstruction residuals."""
    import napari_fusion.methods.csc_ivfn as m
    from napari_fusion.ops.guided import guided_filter
    from napari_fusion.ops.tiles import map_tiles
    from napari_fusion.registry import MethodOutput, get_method

    radius = int(variant.split("gf")[1].split("_")[0]) if "_gf" in variant else 0

    def decode(net, zb, zd, scale=1.0):
        tiles = map_tiles(
            lambda b, d: net.decode(scale * b, scale * d), (zb, zd), halo=net.decode_radius, tile=m.NET_TILE
        )
        return tiles[0]

    def run(stack, *, ctx, strategy, gf_radius, gf_eps, code_scale, chroma_source, weights):
        n, _, h, w = stack.shape
        net = m.load_network(weights, stack.device)
        lum = stack[:, :1].float().clamp(0, 1)
        base = torch.empty((n, net.config["channels"], h, w))
        detail = torch.empty_like(base)
        for i in range(n):
            map_tiles(
                net.encode, lum[i : i + 1], halo=net.encode_radius, tile=m.NET_TILE, strides=(1, 1),
                out=(base[i : i + 1], detail[i : i + 1]),
            )  # fmt: skip
        resid = lum - torch.cat([decode(net, base[i : i + 1], detail[i : i + 1]) for i in range(n)])
        fb, _, wd, _ = m.fuse_codes(base, detail, strategy=strategy, gf_radius=gf_radius, gf_eps=gf_eps, ctx=ctx)
        wd = _hard(wd)
        if radius:
            wd = torch.stack([guided_filter(lum[k, 0], wd[k], radius, 0.01) for k in range(n)]).clamp_min(0)
            wd = wd / wd.sum(0).clamp_min(1e-12)
        fused = decode(net, fb[None], weighted_sum(detail, wd)[None], code_scale)[0]
        fused = (fused + (wd[:, None] * resid).sum(0)).clamp(0, 1)
        return MethodOutput(fused=fused, labels=wd.argmax(0), weights=wd)

    return get_method("csc_ivfn"), "run", run


def ivfn_variant(variant: str):
    return ivfn_residual(variant) if variant.endswith("_resid") else ivfn_rule(variant)


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
    ap.add_argument("--variants", nargs="+", default=None, help=f"ivfn: some of {', '.join(IVFN)}")
    ap.add_argument(
        "--split", type=int, default=0, help="also print the means of the first SPLIT cases and of the rest"
    )
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.network == "ivfn":
        method, metrics = "csc_ivfn", ["qabf", "en", "sd"]
        variants = [(v, ivfn_variant(v)) for v in (args.variants or IVFN)]
    else:
        method, metrics = "csc_mefn", ["mef_ssim"]
        variants = [(f"scale {s}", mefn_scale(s)) for s in (1.0, 0.5, 0.25)]
    params = {method: {"weights": args.weights}} if args.weights else {}
    parts = [("all", slice(None))] + (
        [(f"first {args.split}", slice(args.split)), ("rest", slice(args.split, None))] if args.split else []
    )
    cols = [f"{k} ({p})" if args.split else k for p, _ in parts for k in metrics]
    print(f"| variant ({method}, {f'first {args.limit}' if args.limit else 'all'} cases) | " + " | ".join(cols) + " |")
    print("|---|" + "---|" * len(cols), flush=True)
    for name, (owner, attr, replacement) in variants:
        saved = getattr(owner, attr)
        object.__setattr__(owner, attr, replacement)  # the method's spec is a frozen dataclass
        try:
            res = evaluate_dataset(
                args.dataset, methods=[method], metrics=metrics, limit=args.limit or None, device="cpu",
                method_params=params,
            )  # fmt: skip
        finally:
            object.__setattr__(owner, attr, saved)
        rows = [r for r in res.rows if r["method"] == method]
        means = [sum(r.get(k, math.nan) for r in rows[sl]) / max(1, len(rows[sl])) for _, sl in parts for k in metrics]
        print(f"| {name} | " + " | ".join(f"{v:.4f}" for v in means) + " |", flush=True)


if __name__ == "__main__":
    main()
