"""Inference time of the two-stream fusion network (tiis2018_fcn) for a 520x520 pair.

    PYTHONPATH=src python benchmarks/two_stream_speed.py [--size 520] [--threads 1] [--device cpu] [--repeats 2]

Prints the FLOP count of one grey pass (two streams, fusion, decoder, on the reflect-padded
input), the machine's float32 matmul rate as a bound, the time of the network alone (default
2-1-2, 64 filters, 5x5; random weights: cost does not depend on them) and of the whole method
(``nf.fuse``, shipped weights) on a colour pair with ``colour='luma'`` (one pass) and
``colour='channels'`` (three passes).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from napari_fusion.nets.tiis2018_fcn import TwoStreamFusionNet


def net_flops(net: TwoStreamFusionNet, h: int, w: int) -> float:
    n_conv, n_fuse, n_deconv = net.layout
    k, c, d = net.kernel, net.channels, net.width
    hp, wp = h + 2 * net.halo, w + 2 * net.halo
    total = 0.0
    for i in range(n_conv):
        hp, wp = hp - (k - 1), wp - (k - 1)
        total += 2 * 2 * (c if i == 0 else d) * d * k * k * hp * wp  # two streams
    for i in range(n_fuse):
        total += 2 * (2 * d if i == 0 else d) * d * hp * wp
    for i in range(n_deconv):
        cout = c if i == n_deconv - 1 else d
        total += 2 * d * cout * k * k * hp * wp  # each input pixel scatters a k x k x cout block
        hp, wp = hp + (k - 1), wp + (k - 1)
    return total


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
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    n = 1024
    a, b = torch.rand(n, n, device=dev), torch.rand(n, n, device=dev)
    rate = 2 * n**3 / best_time(lambda: a @ b, args.repeats)
    print(f"device {dev}, threads {args.threads}: float32 {n}x{n} matmul {rate / 1e9:.1f} GFLOP/s")
    net = TwoStreamFusionNet().eval().to(dev)
    s = args.size
    x1, x2 = torch.rand(1, 1, s, s, device=dev), torch.rand(1, 1, s, s, device=dev)
    fl = net_flops(net, s, s)
    with torch.no_grad():
        t_net = best_time(lambda: net(x1, x2), args.repeats)
    print("\n| what | GFLOP | matmul bound s | measured s |")
    print("|---|---|---|---|")
    print(f"| network, one grey {s}x{s} pair | {fl / 1e9:.1f} | {fl / rate:.2f} | {t_net:.2f} |")
    try:
        import napari_fusion as nf
        from napari_fusion.methods.tiis2018_fcn import default_weights_path

        if not default_weights_path().is_file():
            raise FileNotFoundError
        rng = np.random.default_rng(0)
        img = [(rng.random((s, s, 3)) * 255).astype(np.uint8) for _ in range(2)]
        for colour, passes in (("luma", 1), ("channels", 3)):
            t = best_time(lambda: nf.fuse(img, "tiis2018_fcn", device=args.device, colour=colour), args.repeats)
            print(
                f"| method, colour {s}x{s} pair, colour='{colour}' | {passes * fl / 1e9:.1f} | {passes * fl / rate:.2f} | {t:.2f} |"
            )
    except FileNotFoundError:
        print("(shipped weights not found: method timings skipped)")


if __name__ == "__main__":
    main()
