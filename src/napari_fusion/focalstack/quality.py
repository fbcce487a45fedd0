"""Ground-truth quality measures for focal-stack fusion: seams and background height noise.

Both compare a method's output with a known truth (e.g. from
:mod:`napari_fusion.microscopy_sim`):

* :func:`seam_score` - how much *extra* gradient energy the fused image carries
  along the boundaries between chosen slices, compared with the ground truth
  (the visible "seams" and "bites" of a patchwork result). 0 for the truth itself.
* :func:`boundary_gradient_excess` - the same question without a truth (real
  stacks): is the fused image sharper on the label boundaries than elsewhere?
* :func:`background_height_noise` - the fraction of background pixels (where
  there is no object, so no true height) to which the height map assigns a
  confident height that disagrees with its neighbourhood (the "blotchy"
  background of a height map).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def label_boundaries(labels: np.ndarray, width: int = 1) -> np.ndarray:
    """Pixels within ``width`` pixels of a change of label (4-neighbourhood), as a boolean mask."""
    lab = np.asarray(labels)
    edge = np.zeros(lab.shape, dtype=bool)
    dy = lab[1:, :] != lab[:-1, :]
    dx = lab[:, 1:] != lab[:, :-1]
    edge[1:, :] |= dy
    edge[:-1, :] |= dy
    edge[:, 1:] |= dx
    edge[:, :-1] |= dx
    if width > 1:
        edge = ndimage.binary_dilation(edge, iterations=width - 1)
    return edge


def _grad_energy(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image, dtype=np.float64)
    gy, gx = np.gradient(img)
    return gy * gy + gx * gx


def seam_score(
    fused: np.ndarray, truth: np.ndarray, labels: np.ndarray, *, width: int = 2, mask: np.ndarray | None = None
) -> float:
    """Excess gradient energy of the error along label boundaries, relative to the truth's gradient energy.

    With ``e = fused - truth`` (2-D, same units), the band ``B`` of pixels within
    ``width`` of a label boundary and its complement ``O``::

        seam = max(0, mean_B |grad e|^2 - mean_O |grad e|^2) / mean |grad truth|^2

    A seam is an error whose gradient is concentrated *on* the boundaries
    between slices (steps in haze or brightness, cut-off structures); errors
    spread evenly over the image (noise, global blur) cancel in the difference.
    0 for the truth itself and for a labels map without boundaries; a patchwork
    of two differently focused slices scores above 0. Dimensionless.
    ``mask`` restricts both ``B`` and ``O`` (e.g. to the objects and their rim).
    """
    fused = np.asarray(fused, dtype=np.float64)
    truth = np.asarray(truth, dtype=np.float64)
    if fused.shape != truth.shape or np.shape(labels) != truth.shape:
        raise ValueError("fused, truth and labels must have the same 2-D shape")
    inside = np.ones(truth.shape, bool) if mask is None else np.asarray(mask, dtype=bool)
    band = label_boundaries(labels, width) & inside
    off = ~band & inside
    if not band.any() or not off.any():
        return 0.0
    err = _grad_energy(fused - truth)
    excess = err[band].mean() - err[off].mean()
    return float(max(0.0, excess) / max(_grad_energy(truth).mean(), 1e-12))


def boundary_gradient_excess(fused: np.ndarray, labels: np.ndarray, *, width: int = 2) -> float:
    """Seams without a ground truth: excess gradient energy of ``fused`` on label boundaries.

    ``max(0, mean_B |grad f|^2 - mean_O |grad f|^2) / mean |grad f|^2`` with
    ``B`` the pixels within ``width`` of a change of label and ``O`` the rest.
    For a real stack (no truth) this is the no-reference form of
    :func:`seam_score`: a patchwork of slices of different brightness or focus
    puts steps on the boundaries between them; a seamless merge does not make
    boundaries any sharper than the rest of the image. 0 when there are no
    boundaries. Dimensionless; a 2-D ``fused`` (the grey or reference channel).
    """
    f = np.asarray(fused, dtype=np.float64)
    if f.shape != np.shape(labels):
        raise ValueError("fused and labels must have the same 2-D shape")
    band = label_boundaries(labels, width)
    if not band.any() or band.all():
        return 0.0
    energy = _grad_energy(f)
    excess = energy[band].mean() - energy[~band].mean()
    return float(max(0.0, excess) / max(energy.mean(), 1e-12))


def background_height_noise(
    height: np.ndarray,
    background: np.ndarray,
    *,
    tolerance: float,
    window: int = 15,
    confidence: np.ndarray | None = None,
    min_confidence: float = 0.0,
) -> float:
    """Fraction of background pixels given a confident height that departs from its neighbourhood.

    Background has no surface, so every height a method reports there is a claim
    that can only be wrong; the harmless case is a height that is smooth (it
    continues a neighbouring surface or sits at one plane), the harmful one the
    blotchy patchwork a biologist rejects. A background pixel counts when its
    height differs by more than ``tolerance`` (same units as ``height``, e.g. one
    z step in um) from the median height of a ``window`` x ``window``
    neighbourhood, and, when a ``confidence`` map is given (e.g. the focus
    measure at the chosen slice), its confidence is at least ``min_confidence``.
    Returns a fraction in [0, 1] (0 when there is no background).
    """
    h = np.asarray(height, dtype=np.float64)
    bg = np.asarray(background, dtype=bool)
    if h.shape != bg.shape:
        raise ValueError("height and background must have the same shape")
    if not bg.any():
        return 0.0
    ref = ndimage.median_filter(h, size=window, mode="nearest")
    wrong = np.abs(h - ref) > tolerance
    if confidence is not None:
        wrong &= np.asarray(confidence) >= min_confidence
    return float(wrong[bg].mean())


def height_rmse(height: np.ndarray, truth: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Root-mean-square height error inside ``mask`` (default: where ``truth`` is finite)."""
    h = np.asarray(height, dtype=np.float64)
    t = np.asarray(truth, dtype=np.float64)
    m = np.isfinite(t) if mask is None else np.asarray(mask, dtype=bool) & np.isfinite(t)
    if not m.any():
        return float("nan")
    return float(np.sqrt(np.mean((h[m] - t[m]) ** 2)))
