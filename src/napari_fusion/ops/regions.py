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
        comp, n = ndimage.label(lab == value)
        if n == 0:
            continue
        sizes = np.bincount(comp.ravel())
        big = sizes >= min_area
        big[0] = False
        keep |= big[comp]
    if keep.all() or not keep.any():
        return labels.clone()
    iy, ix = ndimage.distance_transform_edt(~keep, return_distances=False, return_indices=True)
    out = lab[iy, ix]
    return torch.from_numpy(np.ascontiguousarray(out)).to(labels.device)


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
