"""Speed of veshki_cdl (Veshki et al. CDL/JSR): seconds per Lytro pair and sparse-coding throughput.

Usage: python benchmarks/cdl_speed.py [--pairs 3] [--threads 2] [--device cpu]

For each setting (patch size, boundary mode) fuses the first ``--pairs`` Lytro pairs
(520x520 RGB) through ``napari_fusion.fuse`` and reports the median seconds per pair, and
times ``batch_omp`` alone on the coupled patch signals of one pair (2 codings per
grid position), in patches (signals) per second. The paper reports 2.56 s per Lytro
pair (MATLAB + SPAMS, 3.4 GHz Xeon). The machine may be shared: compare rows of one run;
the CPU-seconds column (all threads of this process) shows how much work a pair really takes.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

import napari_fusion as nf
from napari_fusion.datasets import iter_cases, shared_data_dir
from napari_fusion.methods.veshki_cdl import coupled_dictionary, load_dictionaries
from napari_fusion.ops.sparse import batch_omp

PAPER_SECONDS = 2.56


def coupled_signals(a: np.ndarray, b: np.ndarray, patch: int, stride: int, device) -> torch.Tensor:
    g = torch.from_numpy(np.stack([a, b]).astype(np.float32) / 255).mean(-1).to(device)
    x = F.unfold(g[:, None], patch, stride=stride).transpose(1, 2)
    x = x - x.mean(2, keepdim=True)
    return torch.cat([torch.cat([x[0], x[1]], 1), torch.cat([x[1], x[0]], 1)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    root = shared_data_dir()
    if root is None:
        raise SystemExit("shared data not found (set NAPARI_FUSION_DATA)")
    cases = iter_cases(root / "multifocus" / "lytro")[: args.pairs]
    pairs = [c.load_sources() for c in cases]
    dev = torch.device(args.device)
    print(
        f"# torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{platform.processor() or platform.machine()}, device {dev}; {len(pairs)} Lytro pairs 520x520"
    )
    print(
        "| patch | stride | atoms | boundary | s / pair (median wall) | CPU s / pair | paper 2.56 s / ours | OMP patches/s | OMP s / pair |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for patch, boundary in ((8, "released"), (8, "paper"), (16, "released"), (16, "paper")):
        stride, atoms, eps = 2, 3, 1e-4 * patch * patch
        nf.fuse(list(pairs[0]), "veshki_cdl", device=args.device, patch=patch, boundary=boundary)  # warm-up
        times, cpu = [], []
        for _ in range(args.repeat):
            for a, b in pairs:
                t, c = time.perf_counter(), time.process_time()
                nf.fuse([a, b], "veshki_cdl", device=args.device, patch=patch, boundary=boundary)
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - t)
                cpu.append(time.process_time() - c)
        sec = statistics.median(times)
        df, db = load_dictionaries(patch, None, dev)
        d = coupled_dictionary(df, db)
        s = coupled_signals(*pairs[0], patch, stride, dev)
        otimes = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            batch_omp(s, d, max_atoms=atoms, eps=eps)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            otimes.append(time.perf_counter() - t)
        osec = min(otimes)
        print(
            f"| {patch}x{patch} | {stride} | {atoms} | {boundary} | {sec:.2f} | {statistics.median(cpu):.2f} | {PAPER_SECONDS / sec:.2f} | "
            f"{s.shape[0] / osec:,.0f} | {osec:.2f} ({s.shape[0]:,} signals) |"
        )


if __name__ == "__main__":
    main()
