"""A synthetic test of halos around bright objects, with a known answer.

Focus stacking of fluorescence (bright, small objects on a dark background,
objects at different depths) leaves a bright halo around objects: near an
object, the flat in-focus background has almost no contrast, while a slice
in which the object is defocused shows its blur skirt, whose gradients win
the focus decision; the fused image then shows the skirt. The
``focus_measure`` method's ``halo_control`` option decides on log-intensity
instead (see :func:`napari_fusion.methods.focus_measure.focus_map`).

:func:`render_bright_objects` renders such a stack by linear superposition
(incoherent fluorescence, no occlusion): slice ``k`` is the background plus
every object blurred by a Gaussian of sigma ``max_sigma * |depth - z_k|``.
The all-in-focus truth is the background plus the sharp objects.
:func:`halo_excess` measures the halo: the mean of ``fused - truth`` over a
ring of background around the objects (signed, so noise averages out).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass
class BrightObjectsStack:
    slices: np.ndarray  # (N, H, W) float32
    ground_truth: np.ndarray  # (H, W) float32
    objects: np.ndarray  # (H, W) bool, object pixels
    depths: np.ndarray  # (n_objects,) depth of each object in [0, 1]
    focus_depths: np.ndarray  # (N,)


def render_bright_objects(
    shape: tuple[int, int] = (160, 160),
    *,
    n_slices: int = 10,
    n_objects: int = 12,
    max_sigma: float = 16.0,
    radius: tuple[float, float] = (2.0, 4.0),
    background: float = 0.02,
    noise: float = 0.003,
    seed: int = 0,
) -> BrightObjectsStack:
    """Small bright discs (0.5-1.0) at random depths over a dark background, defocused per slice."""
    rng = np.random.default_rng(seed)
    h, w = shape
    focus = np.linspace(0.0, 1.0, n_slices)
    yy, xx = np.mgrid[0:h, 0:w]
    truth = np.full((h, w), background, dtype=np.float64)
    stack = np.full((n_slices, h, w), background, dtype=np.float64)
    depths = []
    margin = min(20, h // 5, w // 5)
    for _ in range(n_objects):
        cy, cx = rng.uniform(margin, h - margin), rng.uniform(margin, w - margin)
        r = rng.uniform(*radius)
        d = rng.uniform(0, 1)
        a = rng.uniform(0.5, 1.0)
        disc = a * (((yy - cy) ** 2 + (xx - cx) ** 2) <= r * r)
        truth += disc
        depths.append(d)
        for k, z in enumerate(focus):
            s = max_sigma * abs(d - z)
            stack[k] += ndimage.gaussian_filter(disc, s) if s > 0 else disc
    if noise > 0:
        stack += rng.normal(0, noise, stack.shape)
    objects = truth > background + 1e-9
    return BrightObjectsStack(stack.astype(np.float32), truth.astype(np.float32), objects, np.asarray(depths), focus)


def halo_excess(fused: np.ndarray, truth: np.ndarray, objects: np.ndarray, *, inner: int = 2, outer: int = 40) -> float:
    """Mean ``fused - truth`` over background pixels ``inner``..``outer`` px from any object."""
    ring = ndimage.binary_dilation(objects, iterations=outer) & ~ndimage.binary_dilation(objects, iterations=inner)
    return float(np.mean((np.asarray(fused, np.float64) - truth)[ring]))


__all__ = ["BrightObjectsStack", "halo_excess", "render_bright_objects"]
