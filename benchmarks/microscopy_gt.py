"""Physical ground-truth benchmark for microscopy focal stacks.

Widefield fluorescence and brightfield stacks are simulated from known 2.5-D
objects (textured nuclei at different depths, a tilted textured surface, bright
beads beside faint filaments) through a Gibson-Lanni vectorial defocus PSF
(``psfmodels``; Gaussian-Lorentzian fallback without it), with shot and read
noise, as uint16 (see :mod:`napari_fusion.microscopy_sim`). Each method is
scored against the noise-free in-focus image and the true surface height:

* PSNR / SSIM against the in-focus image (data range of the truth);
* seam: excess gradient energy of the error along label boundaries inside the
  objects and a 3-pixel rim (:func:`napari_fusion.focalstack.quality.seam_score`;
  the method's labels, or for the wavelet merge, which has none, the true height
  rounded to slices);
* hRMSE: height RMSE in um inside the objects (``-`` for methods with no height);
* bgN: fraction of background pixels whose height departs from its 15x15
  median by more than one z step (:func:`~napari_fusion.focalstack.quality.background_height_noise`);
* time: seconds of the fusion call (height included).

Methods: ``focus_pyramid`` (the focal-stack default, chosen on this
benchmark), ``focus_measure`` (the old default), ``focus_measure`` with
``blend=3 smooth=6``, ``gff``, ``laplacian_pyramid``, a
wavelet merge written here as the focus-stack-like baseline (Forster et al.
2004 style: max-abs detail coefficients, averaged approximation, with a real
``db2`` DWT instead of the complex wavelets) and, with ``--slow``,
``liu2017_cnn_nway``.

    PYTHONPATH=src python benchmarks/microscopy_gt.py            # 256x256x24, 3 photon levels, 1x and 3x Nyquist, ~3 min
    PYTHONPATH=src python benchmarks/microscopy_gt.py --size 128 --photons 20 2000 --nyquist 1 3 --slow
    PYTHONPATH=src python benchmarks/microscopy_gt.py --size 128 --photons 200 2000 --nyquist 1 --pairwise
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from scipy.ndimage import binary_dilation
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from napari_fusion.focalstack import fuse_focal_stack
from napari_fusion.focalstack.quality import background_height_noise, height_rmse, seam_score
from napari_fusion.microscopy_sim import simulate_photon_series

METHODS = {
    "focus_pyramid": ("focus_pyramid", {}),
    "focus_measure": ("focus_measure", {}),
    "fm blend3 smooth6": ("focus_measure", {"blend": 3.0, "smooth": 6.0}),
    "gff": ("gff", {}),
    "laplacian_pyramid": ("laplacian_pyramid", {}),
    "wavelet (fstack)": (None, {}),
}
SLOW = {"liu2017_cnn_nway": ("liu2017_cnn_nway", {})}
#: ``--pairwise``: the two-input methods, folded over the stack in both orders
PAIRWISE = {
    f"{m} {fold}": (m, {"fold": fold})
    for m in ("liu2017_cnn", "tiis2018_fcn", "veshki_cdl")
    for fold in ("tree", "sequential")
}


def wavelet_merge(stack: np.ndarray, wavelet: str = "db2", level: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Forster et al. (2004)-style merge: per coefficient the detail of largest magnitude, mean approximation.

    Returns the fused image (float) and, as a crude decision, the slice whose
    finest-level detail magnitude (summed over orientations, 5x5 smoothed) is largest.
    """
    import pywt
    from scipy.ndimage import uniform_filter, zoom

    decs = [pywt.wavedec2(s.astype(np.float64), wavelet, level=level, mode="symmetric") for s in stack]
    fused = [np.mean([d[0] for d in decs], axis=0)]
    for lev in range(1, level + 1):
        bands = []
        for o in range(3):
            c = np.stack([d[lev][o] for d in decs])
            pick = np.abs(c).argmax(axis=0)
            bands.append(np.take_along_axis(c, pick[None], axis=0)[0])
        fused.append(tuple(bands))
    out = pywt.waverec2(fused, wavelet, mode="symmetric")[: stack.shape[1], : stack.shape[2]]
    fine = np.stack([uniform_filter(sum(np.abs(b) for b in d[-1]), 5) for d in decs])
    lab = zoom(fine.argmax(axis=0), 2, order=0)
    lab = np.pad(lab, [(0, max(0, n - m)) for n, m in zip(stack.shape[1:], lab.shape)], mode="edge")
    return out, lab[: stack.shape[1], : stack.shape[2]]


def _run(name: str, spec, sim) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, float]:
    method, params = spec
    t0 = time.perf_counter()
    if method is None:
        return wavelet_merge(sim.stack)[0], None, None, time.perf_counter() - t0
    res = fuse_focal_stack(sim.stack, method=method, params=params, z_step=sim.z_step)
    dt = time.perf_counter() - t0
    return np.asarray(res.fused, dtype=np.float64), res.labels, res.height, dt


def score(sim, fused, labels, height) -> dict[str, float]:
    """PSNR, SSIM, seam, height RMSE (um) and background height noise of one result."""
    truth = sim.in_focus.astype(np.float64)
    rng = float(truth.max() - truth.min())
    if labels is None:
        labels = np.rint(np.nan_to_num(sim.height, nan=-sim.z_step) / sim.z_step).astype(np.int64)
    out = {
        "psnr": peak_signal_noise_ratio(truth, fused, data_range=rng),
        "ssim": structural_similarity(truth, fused, data_range=rng),
        "seam": seam_score(fused, truth, labels, mask=binary_dilation(sim.mask, iterations=3)),
        "hrmse": float("nan"),
        "bgn": float("nan"),
    }
    if height is not None:
        out["hrmse"] = height_rmse(height, sim.height)
        out["bgn"] = background_height_noise(height, ~sim.mask, tolerance=sim.z_step)
    return out


def _fmt(v: float, spec: str) -> str:
    return f"{'-':>7s}" if not np.isfinite(v) else format(v, spec)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--planes", type=int, default=24)
    ap.add_argument("--photons", type=float, nargs="+", default=[20.0, 200.0, 2000.0])
    ap.add_argument("--nyquist", type=float, nargs="+", default=[1.0, 3.0], help="z step in units of axial Nyquist")
    ap.add_argument("--modalities", nargs="+", default=["widefield", "brightfield"])
    ap.add_argument("--psf", default="auto", choices=["auto", "vectorial", "gaussian"])
    ap.add_argument("--slow", action="store_true", help="also liu2017_cnn_nway")
    ap.add_argument("--pairwise", action="store_true", help="also the two-input methods, both fold orders")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    methods = dict(METHODS, **(SLOW if args.slow else {}), **(PAIRWISE if args.pairwise else {}))
    head = f"{'stack':11s} {'dz/Nyq':>6s} {'photons':>7s} {'method':24s}"
    print(head + f" {'PSNR':>7s} {'SSIM':>7s} {'seam':>7s} {'hRMSE':>7s} {'bgN':>7s} {'time':>7s}")
    for modality in args.modalities:
        for nyq in args.nyquist:
            t0 = time.perf_counter()
            sims = simulate_photon_series(
                modality,
                photons=tuple(args.photons),
                shape=(args.size, args.size),
                n_planes=args.planes,
                nyquist_factor=nyq,
                psf=args.psf,
                seed=args.seed,
            )
            print(f"# {modality}: dz {sims[0].z_step:.3f} um, psf {sims[0].psf_model}, "
                  f"simulated in {time.perf_counter() - t0:.1f} s")  # fmt: skip
            for sim in sims:
                for name, spec in methods.items():
                    fused, labels, height, dt = _run(name, spec, sim)
                    s = score(sim, fused, labels, height)
                    print(
                        f"{modality:11s} {nyq:6.1f} {sim.photons:7.0f} {name:24s} {s['psnr']:7.2f} {s['ssim']:7.3f} "
                        f"{s['seam']:7.3f} {_fmt(s['hrmse'], '7.3f')} {_fmt(s['bgn'], '7.3f')} {dt:7.2f}",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
