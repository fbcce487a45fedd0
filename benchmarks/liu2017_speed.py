"""Dense inference speed of the Liu et al. 2017 CNN against the machine's matmul rate.

    PYTHONPATH=src python benchmarks/liu2017_speed.py [--size 520] [--threads 2] [--device cpu]

Prints the measured dense-GEMM rate, the FLOP count of one pair's dense scoring (two branch
passes + head) for the layered head (fc1 as an 8x8 conv, as written in the paper) and for
the folded head used by the method (fc2 o fc1 is linear, so it collapses into two 256->2
8x8 filters per image), and the time of the method's scoring path on random weights.
"""

from __future__ import annotations

import argparse
import time

import torch

from napari_fusion.nets.liu2017_cnn import DenseScorer, LiuFocusNet, pair_scores, score_map_size, stack_terms


def conv_flops(cin, cout, k, h, w):
    return 2 * cin * cout * k * k * h * w


def pair_flops(size: int, variant: str, folded: bool) -> float:
    h = w = size
    h2, w2 = (h + 1) // 2, (w + 1) // 2
    sh, sw = score_map_size(h, w)
    branch = conv_flops(1, 64, 3, h, w) + conv_flops(64, 128, 3, h, w) + conv_flops(128, 256, 3, h2, w2)
    if folded:
        head = 2 * conv_flops(256, 2, 8, sh, sw)
    elif variant == "original":
        head = conv_flops(512, 256, 8, sh, sw) + conv_flops(256, 2, 1, sh, sw)
    else:
        head = conv_flops(512, 2, 8, sh, sw)
    return 2 * branch + head


def best_time(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--size", type=int, default=520)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    n = 2048
    a, b = torch.rand(n, n, device=dev), torch.rand(n, n, device=dev)
    t_mm = best_time(lambda: a @ b, args.repeats)
    rate = 2 * n**3 / t_mm
    print(f"device {dev}, threads {args.threads}: float32 {n}x{n} matmul {rate / 1e9:.1f} GFLOP/s")
    x1, x2 = torch.rand(args.size, args.size, device=dev), torch.rand(args.size, args.size, device=dev)
    print("\n| model | head | GFLOP/pair | bound s | measured s | fraction of bound |")
    print("|---|---|---|---|---|---|")
    for variant in ("slight", "original"):
        net = LiuFocusNet(variant).eval().to(dev)
        scorer = DenseScorer(net)
        grey = torch.stack([x1, x2])

        def score(scorer=scorer, grey=grey):
            ta, tb = stack_terms(scorer, grey)
            return pair_scores(ta, tb, scorer.db)

        t = best_time(score, args.repeats)
        for folded in (False, True):
            fl = pair_flops(args.size, variant, folded)
            bound = fl / rate
            meas = f"{t:.3f}" if folded else "-"
            frac = f"{bound / t:.2f}" if folded else "-"
            print(
                f"| {variant} | {'folded (used)' if folded else 'layered'} | {fl / 1e9:.1f} | {bound:.3f} | {meas} | {frac} |"
            )


if __name__ == "__main__":
    main()
