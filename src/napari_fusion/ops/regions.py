"""Removal of small connected regions from decision maps.

Connected-component labelling has no torch primitive, so this runs on the
CPU with SciPy; the decision maps it cleans are small compared with images.
SciPy is imported on first use: ``scipy.ndimage`` takes about 0.5 s to import,
and most runs (every tile-free classical method) never need it.
"""

from __future__ import annotations

import numpy as np
import torch


def remove_small_regions(labels: torch.Tensor, min_area: int) -> torch.Tensor:
    """Reassign connected regions smaller than ``min_area`` pixels.

    ``labels`` is an ``(H, W)`` integer or boolean map. Each 4-connected region
    of one value with fewer than ``min_area`` pixels takes the value of the
    nearest pixel that lies in a large enough region. For a binary map this is
    the usual "remove small objects, then fill small holes" of Liu et al.
    2017, done symmetrically in one pass. Returns a new tensor of the same
    dtype and device.
    """
    if min_area <= 1:
        return labels.clone()
    from scipy import ndimage

    lab = labels.detach().cpu().numpy()
    keep = np.zeros(lab.shape, dtype=bool)
    for value in np.unique(lab):
        keep |= _in_large_regions(lab == value, min_area, ndimage)
    if keep.all() or not keep.any():
        return labels.clone()
    return torch.from_numpy(_nearest_kept(lab, keep, ndimage)).to(labels.device)


def _in_large_regions(mask: np.ndarray, min_area: int, ndimage) -> np.ndarray:
    """Pixels of ``mask`` in 4-connected regions of at least ``min_area`` pixels (the int32 region
    labels, 4 bytes per pixel, are freed on return)."""
    comp, n = ndimage.label(mask)
    if n == 0:
        return np.zeros(mask.shape, dtype=bool)
    sizes = np.zeros(n + 1, dtype=np.int64)
    flat = comp.ravel()
    for start in range(0, flat.size, _COUNT_CHUNK):  # bincount copies int32 labels to int64
        sizes += np.bincount(flat[start : start + _COUNT_CHUNK], minlength=n + 1)
    big = sizes >= min_area
    big[0] = False
    return big[comp]


#: Labels counted at once by :func:`_in_large_regions` (np.bincount's int64 copy of them: 32 MiB).
_COUNT_CHUNK = 1 << 22


def _nearest_kept(lab: np.ndarray, keep: np.ndarray, ndimage) -> np.ndarray:
    """``lab`` with every pixel outside ``keep`` given the value of the nearest kept pixel."""
    iy, ix = ndimage.distance_transform_edt(~keep, return_distances=False, return_indices=True)
    return np.ascontiguousarray(lab[iy, ix])


def mode_filter(labels: torch.Tensor, radius: int) -> torch.Tensor:
    """Majority vote of ``labels`` over a ``(2r+1)^2`` window (ties: lowest label).

    Streams over the label values present, so memory stays at a few ``(H, W)``
    maps whatever the number of sources.
    """
    from .filters import box_filter

    if radius <= 0:
        return labels.clone()
    best = torch.full(labels.shape, -1.0, device=labels.device)
    out = labels.clone()
    for value in torch.unique(labels).tolist():
        votes = box_filter((labels == value).float(), radius, border="replicate")
        better = votes > best + 1e-6
        out = torch.where(better, torch.full_like(labels, value), out)
        best = torch.where(better, votes, best)
    return out
