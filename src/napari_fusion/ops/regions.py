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

    Memory stays near four bytes per pixel whatever the size (an 8192^2 map
    needs about 260 MiB beyond its own copy): regions are labelled in bands of
    rows whose labels are joined along the band edges, and the nearest kept
    pixel is found in windows (:func:`_nearest_kept`), never with whole-map
    label or index arrays.
    """
    if min_area <= 1:
        return labels.clone()
    from scipy import ndimage

    lab = labels.detach().cpu().numpy()
    keep = np.zeros(lab.shape, dtype=bool)
    for value in np.unique(lab):
        keep |= _in_large_regions(lab, value, min_area, ndimage)
    if keep.all() or not keep.any():
        return labels.clone()
    return torch.from_numpy(_nearest_kept(lab, keep, ndimage)).to(labels.device)


#: Pixels labelled at once by :func:`_in_large_regions` (its int32 labels and their int64 count
#: copy: 48 MiB).
_BAND_PIXELS = 1 << 22


def _band_rows(width: int) -> int:
    return max(1, _BAND_PIXELS // max(1, width))


def _in_large_regions(lab: np.ndarray, value, min_area: int, ndimage) -> np.ndarray:
    """Pixels of value ``value`` in 4-connected regions of at least ``min_area`` pixels.

    The map is labelled in bands of rows; a region crossing band edges is joined
    from its parts (the pairs of labels facing each other across an edge, as
    dask-image joins chunk labels), then the bands are labelled again to mark the
    large regions. Only one band's labels exist at a time.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    h, w = lab.shape
    rows = _band_rows(w)
    sizes, edges, offset, above = [np.zeros(1, dtype=np.int64)], [], 0, None
    for r0 in range(0, h, rows):
        comp, n = ndimage.label(lab[r0 : r0 + rows] == value)
        sizes.append(np.bincount(comp.ravel(), minlength=n + 1)[1:])
        comp[comp > 0] += offset
        if above is not None:
            both = (above > 0) & (comp[0] > 0)
            edges.append(np.stack([above[both], comp[0][both]]))
        above, offset = comp[-1].copy(), offset + n
        del comp
    if offset == 0:
        return np.zeros(lab.shape, dtype=bool)
    size = np.concatenate(sizes)
    pairs = np.unique(np.concatenate(edges, axis=1), axis=1) if edges else np.zeros((2, 0), dtype=np.int64)
    graph = coo_matrix((np.ones(pairs.shape[1], dtype=np.int8), (pairs[0], pairs[1])), shape=(offset + 1,) * 2)
    _, region = connected_components(graph, directed=False)
    big = (np.bincount(region, weights=size) >= min_area)[region]
    big[0] = False
    keep = np.empty(lab.shape, dtype=bool)
    offset = 0
    for r0 in range(0, h, rows):
        comp, n = ndimage.label(lab[r0 : r0 + rows] == value)
        comp[comp > 0] += offset
        keep[r0 : r0 + rows] = big[comp]
        offset += n
    return keep


#: Side of the cells in which :func:`_nearest_kept` looks for the nearest kept pixel, and how far
#: beyond a cell it looks before the slower search over a whole group of cells.
_CELL, _MARGIN = 256, 32


def _nearest_kept(lab: np.ndarray, keep: np.ndarray, ndimage) -> np.ndarray:
    """``lab`` with every pixel outside ``keep`` given the value of the nearest kept pixel.

    Per cell, the Euclidean feature transform of the cell grown by ``_MARGIN``
    pixels: where the nearest kept pixel found lies within ``_MARGIN`` it is the
    nearest of the whole map (any pixel outside the window is farther). The
    pixels left (deep inside large removed areas) are grouped by 4-connected
    cells; the nearest kept pixel of each lies within ``_MARGIN + 2`` pixels of
    its group's bounding box (the disc of radius ``d - _MARGIN`` around such a
    pixel holds only pixels left over), so one transform over that box grown by
    ``_MARGIN + 2`` settles the group. Ties between equally near pixels may be
    broken differently from a transform of the whole map.
    """
    h, w = lab.shape
    out = lab.copy()
    cells = (-(-h // _CELL), -(-w // _CELL))
    left = np.zeros(cells, dtype=bool)
    left_pixels: dict[tuple[int, int], np.ndarray] = {}
    for i in range(cells[0]):
        for j in range(cells[1]):
            y0, x0 = i * _CELL, j * _CELL
            lost = ~keep[y0 : y0 + _CELL, x0 : x0 + _CELL]
            if not lost.any():
                continue
            far = _fill_window(out, lab, keep, (y0, x0), lost, _MARGIN, ndimage)
            if far.any():
                left[i, j] = True
                left_pixels[(i, j)] = far
    if left.any():
        groups, n = ndimage.label(left)
        for g, (gy, gx) in enumerate(ndimage.find_objects(groups), start=1):
            _fill_group(out, lab, keep, groups, g, (gy, gx), left_pixels, ndimage)
    return out


def _fill_window(out, lab, keep, corner, lost, margin, ndimage, only=None) -> np.ndarray:
    """Give the ``lost`` pixels of the cell at ``corner`` (or those of ``only``) the value of the
    nearest kept pixel within ``margin`` of the cell; returns the pixels whose nearest kept pixel
    may lie farther (all of them where the window holds none)."""
    y0, x0 = corner
    ch, cw = lost.shape
    wy0, wx0 = max(0, y0 - margin), max(0, x0 - margin)
    wy1, wx1 = min(keep.shape[0], y0 + ch + margin), min(keep.shape[1], x0 + cw + margin)
    window = keep[wy0:wy1, wx0:wx1]
    todo = lost if only is None else only
    if not window.any():
        return todo
    core = (slice(y0 - wy0, y0 - wy0 + ch), slice(x0 - wx0, x0 - wx0 + cw))
    if only is None:
        dist, (iy, ix) = ndimage.distance_transform_edt(~window, return_indices=True)
        near = todo & (dist[core] <= margin)
        del dist
    else:  # a group's box: no float64 distances (8 bytes a pixel), every pixel of ``only`` is settled
        iy, ix = ndimage.distance_transform_edt(~window, return_distances=False, return_indices=True)
        near = todo
    cell = out[y0 : y0 + ch, x0 : x0 + cw]
    cell[near] = lab[wy0:wy1, wx0:wx1][iy[core][near], ix[core][near]]
    return todo & ~near


def _fill_group(out, lab, keep, groups, g, box, left_pixels, ndimage) -> None:
    """Fill the pixels left in the cells of group ``g`` (bounding box ``box``, in cells) from one
    transform over the group's box grown by ``_MARGIN + 2`` pixels."""
    gy, gx = box
    y0, x0 = gy.start * _CELL, gx.start * _CELL
    y1, x1 = min(out.shape[0], gy.stop * _CELL), min(out.shape[1], gx.stop * _CELL)
    only = np.zeros((y1 - y0, x1 - x0), dtype=bool)
    for (i, j), far in left_pixels.items():
        if gy.start <= i < gy.stop and gx.start <= j < gx.stop and groups[i, j] == g:
            ry, rx = i * _CELL - y0, j * _CELL - x0
            only[ry : ry + far.shape[0], rx : rx + far.shape[1]] = far
    _fill_window(out, lab, keep, (y0, x0), only, _MARGIN + 2, ndimage, only=only)


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
