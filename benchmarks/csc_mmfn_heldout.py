"""CSC-MMFN beside bicubic and guided-filter upsampling on held-out data (Wald protocol).

Usage: python benchmarks/csc_mmfn_heldout.py [--task cave pansharpening] [--model-dir DIR] [--update-cards]
       python benchmarks/csc_mmfn_heldout.py --task cave --split val --model-dir runs/csc_mmfn-cave-cpu

Only regions never seen in training are scored: the right 25 % of every scene
(CAVE sponges and stuffed_toys; DGIF scene-1..4) and the whole DGIF scene-5.
PSNR/SSIM are means over bands (peak 1.0 for CAVE reflectances, the ground
truth's maximum for pansharpening), SAM in degrees, ERGAS with ratio 4. For
CAVE it also prints how well the RGB simulated with the Nikon D700 response
agrees with the stored rgb.bmp. ``--update-cards`` rewrites the held-out table
in the model cards (``<name>.md``) beside the weights. ``--split val`` scores the
validation strips instead (choosing between training runs without the test strips).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import torch

from napari_fusion.training.csc_mmfn import evaluate_heldout, table_markdown, weights_name
from napari_fusion.weights import PACKAGE_WEIGHTS_DIR


def rgb_table() -> str:
    from napari_fusion.training.mmf_data import (
        CAVE_DIR,
        CAVE_SCENES,
        data_root,
        load_camera_response,
        load_cave_scene,
        rgb_agreement,
        simulate_rgb,
    )

    root = data_root(CAVE_DIR)
    resp = load_camera_response()
    lines = ["| scene | r (R) | r (G) | r (B) | PSNR 8-bit after per-channel gain + sRGB |", "|---|---|---|---|---|"]
    for sc in CAVE_SCENES:
        cube, bmp = load_cave_scene(root / sc)
        a = rgb_agreement(simulate_rgb(cube, resp), bmp)
        lines.append(f"| {sc} | {a['r_R']:.4f} | {a['r_G']:.4f} | {a['r_B']:.4f} | {a['psnr_8bit']:.2f} dB |")
    return "\n".join(lines)


def probes(task: str, weights: Path) -> str:
    """What the model uses: (a) the same held-out cases with the guide's high-resolution detail
    removed (guide degraded by 4 and bicubically upsampled back), (b) for CAVE, scale 2 (the
    model was trained at scale 4 only)."""
    import torch.nn.functional as F

    import napari_fusion as nf
    from napari_fusion.metrics.spectral import psnr_bands
    from napari_fusion.training.csc_mmfn import DATA_RANGE, HELDOUT_SPLITS
    from napari_fusion.training.mmf_data import degrade, task_cases

    rng = DATA_RANGE[task]
    lines = ["| case | bicubic | csc_mmfn | csc_mmfn, detail-free guide | note |", "|---|---|---|---|---|"]
    for split in HELDOUT_SPLITS[task]:
        for c in task_cases(task, split):
            g = torch.from_numpy(c.guide)
            flat = F.interpolate(degrade(g, c.scale)[None], size=g.shape[-2:], mode="bicubic", align_corners=False)[
                0
            ].numpy()
            vals = [
                nf.guided_upsample(c.lr, c.guide, method="bicubic", band_axis=0, guide_axis=0),
                nf.guided_upsample(c.lr, c.guide, model=weights, band_axis=0, guide_axis=0),
                nf.guided_upsample(c.lr, flat, model=weights, band_axis=0, guide_axis=0),
            ]
            p = [psnr_bands(v, c.gt, data_range=rng, band_axis=0) for v in vals]
            lines.append(f"| {c.name} | {p[0]:.2f} | {p[1]:.2f} | {p[2]:.2f} | scale {c.scale} |")
    if task == "cave":
        for c in task_cases(task, "test", scale=2):
            vals = [
                nf.guided_upsample(
                    c.lr, c.guide, method=m, model=weights if m == "csc_mmfn" else None, band_axis=0, guide_axis=0
                )
                for m in ("bicubic", "csc_mmfn", "guided_filter")
            ]
            p = [psnr_bands(v, c.gt, data_range=rng, band_axis=0) for v in vals]
            lines.append(
                f"| {c.name} | {p[0]:.2f} | {p[1]:.2f} | (guided_filter {p[2]:.2f}) | scale 2, untrained scale |"
            )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--task", nargs="+", default=["cave", "pansharpening"], choices=["cave", "pansharpening"])
    ap.add_argument("--model-dir", default=str(PACKAGE_WEIGHTS_DIR))
    ap.add_argument("--update-cards", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--probe", action="store_true", help="also: detail-free guide, and scale 2 for CAVE")
    ap.add_argument("--split", choices=("heldout", "val"), default="heldout", help="val: the validation strips")
    args = ap.parse_args()
    if args.split == "val" and (args.update_cards or args.probe):
        ap.error("--split val only prints: the cards and probes are about the held-out data")
    torch.set_num_threads(args.threads)
    for task in args.task:
        weights = Path(args.model_dir) / f"{weights_name(task)}.pt"
        methods = ("bicubic", "guided_filter") + (("csc_mmfn",) if weights.is_file() else ())
        rows = evaluate_heldout(task, weights, methods=methods, splits=("val",) if args.split == "val" else None)
        table = table_markdown(rows)
        print(f"\n## {task} (weights {weights if weights.is_file() else 'absent'})\n\n{table}")
        print("\nseconds per case: " + ", ".join(f"{r['case']} {r['method']} {r['seconds']:.2f}" for r in rows))
        if task == "cave" and args.split != "val":
            print("\nsimulated RGB vs stored rgb.bmp (Pearson r with the linearised bmp):\n\n" + rgb_table())
        if args.probe and weights.is_file():
            print("\nprobes (PSNR dB):\n\n" + probes(task, weights))
        card = weights.with_suffix(".md")
        if args.update_cards and card.is_file():
            text = card.read_text()
            new = re.sub(
                r"(## Held-out results[^\n]*\n\n).*?(\n\nPSNR/SSIM:)",
                lambda m: m.group(1) + table + m.group(2),
                text,
                count=1,
                flags=re.S,
            )
            card.write_text(new)
            print(f"updated {card}")


if __name__ == "__main__":
    main()
