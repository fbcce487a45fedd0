"""Synthetic test data rendered at run time: focal stacks with known ground
truth and exposure series. Used by the demo, the sample data and the tests.

A focal stack is rendered from a sharp photograph and a smooth depth map:
slice ``k`` is focused at depth ``z_k``, and each pixel is blurred by a
Gaussian whose sigma grows with ``|depth - z_k|`` (a thin-lens defocus model
with the circle of confusion proportional to the distance from the focal
plane). The spatially varying blur is rendered by interpolating between a
ladder of uniformly blurred copies.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass
class SyntheticFocalStack:
    """A rendered focal stack and what is known about it."""

    slices: np.ndarray  # (N, H, W[, 3]) same dtype as the photograph
    ground_truth: np.ndarray  # the sharp photograph
    depth: np.ndarray  # (H, W) float32 in [0, 1]
    focus_depths: np.ndarray  # (N,) depth each slice is focused at
    true_labels: np.ndarray  # (H, W) index of the slice focused nearest each pixel


def smooth_depth_map(shape: tuple[int, int], *, seed: int = 0, bumps: int = 4) -> np.ndarray:
    """A smooth surface in [0, 1]: a tilted plane plus a few Gaussian hills."""
    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    yy /= max(h - 1, 1)
    xx /= max(w - 1, 1)
    angle = rng.uniform(0, 2 * np.pi)
    depth = 0.6 * (np.cos(angle) * xx + np.sin(angle) * yy)
    for _ in range(bumps):
        cy, cx = rng.uniform(0.15, 0.85, size=2)
        s = rng.uniform(0.08, 0.2)
        depth += rng.uniform(-0.6, 0.6) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s))
    depth -= depth.min()
    depth /= max(depth.max(), 1e-12)
    return depth.astype(np.float32)


def _blur(image: np.ndarray, sigma: float) -> np.ndarray:
    if sigma <= 0:
        return image.astype(np.float64)
    sig = (sigma, sigma, 0) if image.ndim == 3 else (sigma, sigma)
    return ndimage.gaussian_filter(image.astype(np.float64), sig, mode="reflect")


def render_focal_stack(
    image: np.ndarray,
    *,
    n_slices: int = 8,
    max_sigma: float = 6.0,
    depth: np.ndarray | None = None,
    seed: int = 0,
    noise: float = 0.0,
) -> SyntheticFocalStack:
    """Render ``n_slices`` defocused views of ``image`` over a smooth depth map.

    ``max_sigma`` is the blur (pixels) of a point one full depth range away
    from the focal plane. ``noise`` adds Gaussian noise (in grey levels of the
    image's dtype). Returns slices of the photograph's dtype.
    """
    if n_slices < 2:
        raise ValueError("a focal stack needs at least 2 slices")
    image = np.asarray(image)
    h, w = image.shape[:2]
    if depth is None:
        depth = smooth_depth_map((h, w), seed=seed)
    focus = np.linspace(0.0, 1.0, n_slices).astype(np.float32)
    ladder_sigmas = np.linspace(0.0, max_sigma, 25)
    ladder = np.stack([_blur(image, s) for s in ladder_sigmas])
    step = ladder_sigmas[1] - ladder_sigmas[0]
    rng = np.random.default_rng(seed + 1)
    slices = []
    for z in focus:
        sigma = max_sigma * np.abs(depth - z)
        pos = np.clip(sigma / step, 0, len(ladder_sigmas) - 1)
        lo = np.floor(pos).astype(int)
        hi = np.minimum(lo + 1, len(ladder_sigmas) - 1)
        frac = (pos - lo).astype(np.float64)
        yy, xx = np.indices((h, w))
        a = ladder[lo, yy, xx]
        b = ladder[hi, yy, xx]
        if image.ndim == 3:
            frac = frac[..., None]
        out = a * (1 - frac) + b * frac
        if noise > 0:
            out = out + rng.normal(0, noise, out.shape)
        slices.append(out)
    slices = np.stack(slices)
    if np.issubdtype(image.dtype, np.integer):
        info = np.iinfo(image.dtype)
        slices = np.clip(np.rint(slices), info.min, info.max)
    slices = slices.astype(image.dtype)
    true_labels = np.abs(depth[None] - focus[:, None, None]).argmin(0)
    return SyntheticFocalStack(slices, image.copy(), depth, focus, true_labels)


def render_exposure_series(
    image: np.ndarray, *, n_exposures: int = 3, stops: float = 2.0, gamma: float = 2.2
) -> np.ndarray:
    """Exposure bracket of a uint8 photograph: ``(N, H, W[, 3])`` uint8.

    The photograph is linearised with ``gamma``, scaled by ``2 ** (stops * k)``
    for exposures centred on the original, clipped at the sensor's white level
    and re-encoded.
    """
    img = np.asarray(image).astype(np.float64) / 255.0
    radiance = img**gamma
    offsets = (np.arange(n_exposures) - (n_exposures - 1) / 2.0) * stops
    out = []
    for ev in offsets:
        v = np.clip(radiance * 2.0**ev, 0, 1) ** (1 / gamma)
        out.append(np.rint(v * 255).astype(np.uint8))
    return np.stack(out)


def data_astronaut() -> np.ndarray:
    """scikit-image's bundled astronaut photograph (512x512 RGB uint8, no download)."""
    from skimage import data

    return data.astronaut()


def demo_photograph() -> np.ndarray:
    """The photograph the demo renders from."""
    return data_astronaut()
