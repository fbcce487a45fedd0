"""Guided upsampling: a low-resolution multiband image + a high-resolution guide
-> the multiband image at the guide's resolution (hyperspectral + RGB fusion,
pansharpening).

This task does not fit :func:`napari_fusion.fuse` (the inputs differ in size
and band count), so it has its own entry point::

    import napari_fusion as nf
    hr = nf.guided_upsample(ms, pan)                          # CSC-MMFN, model chosen from the inputs
    hr = nf.guided_upsample(ms, pan, method="guided_filter")  # classical baseline
    hr = nf.guided_upsample(cube, rgb, band_axis=0, model="cave")

Methods (:data:`UPSAMPLE_METHODS`):

``csc_mmfn``
    The deep convolutional sparse coding network of Xu, Zhao et al.
    (:mod:`napari_fusion.nets.csc_mmfn`), with shipped weights per task
    (:data:`MODELS`) or a weights file of your own.
``bicubic``
    Bicubic interpolation of each band (the guide only gives the size).
``guided_filter``
    Guided-filter upsampling (He & Sun 2015): each band is fitted locally as an
    affine function of the guide reduced to the low resolution, and the fit is
    applied to the full-resolution guide (colour form for a 3-channel guide,
    else the channel mean), which transfers the guide's edges into each band.

Layouts: the low-resolution image is ``(h, w)``, ``(h, w, B)`` or ``(B, h, w)``,
the guide ``(H, W)``, ``(H, W, G)`` or ``(G, H, W)``. The band axes are
inferred from the shapes (the spatial sizes must differ by the same integer
factor on both axes) or given with ``band_axis`` / ``guide_axis``. The result
has the low-resolution input's layout, float32, in its units.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .errors import FusionInputError

UPSAMPLE_METHODS = ("csc_mmfn", "bicubic", "guided_filter")

#: Shipped CSC-MMFN models: name -> weights file stem in ``trained_weights/``.
MODELS = {
    "cave": "csc_mmfn_cave",
    "pansharpening": "csc_mmfn_pansharpening",
}


@dataclass(frozen=True)
class Layout:
    """How the inputs were read: band axes, sizes and the scale factor."""

    band_axis: int | None  # None: 2-D low-res input
    guide_axis: int | None  # None: 2-D guide
    bands: int
    guide_channels: int
    low_size: tuple[int, int]
    high_size: tuple[int, int]
    scale: int


def _spatial(shape: tuple[int, ...], axis: int | None) -> tuple[int, ...]:
    if axis is None:
        return tuple(shape)
    ax = axis % len(shape)
    return tuple(s for i, s in enumerate(shape) if i != ax)


def _axis_choices(ndim: int, given: int | None, name: str) -> list[int | None]:
    if ndim == 2:
        if given is not None:
            raise FusionInputError(f"{name} is 2-D (one band); do not give its band axis")
        return [None]
    if ndim != 3:
        raise FusionInputError(f"{name} must be 2-D or 3-D (bands first or last), got {ndim} dimensions")
    if given is not None:
        if given not in (0, -1, 2):
            raise FusionInputError(f"the band axis of {name} must be 0 (first) or -1 (last), got {given}")
        return [0 if given == 0 else -1]
    return [0, -1]


def infer_layout(
    low_shape: tuple[int, ...],
    guide_shape: tuple[int, ...] | None,
    *,
    scale: int | None = None,
    band_axis: int | None = None,
    guide_axis: int | None = None,
) -> Layout:
    """Read the band axes and the scale factor from the shapes; clear errors otherwise."""
    low_shape = tuple(int(s) for s in low_shape)
    if scale is not None:
        if int(scale) != scale or scale < 1:
            raise FusionInputError(f"scale must be a positive integer, got {scale!r}")
        scale = int(scale)
    if guide_shape is None:
        if scale is None:
            raise FusionInputError("without a guide image the scale factor must be given")
        cands = _axis_choices(len(low_shape), band_axis, "the low-resolution image")
        if len(cands) > 1:
            # bands are the short axis; a genuinely ambiguous shape needs band_axis
            short: list[int | None] = [a for a in cands if a is not None and low_shape[a] < min(_spatial(low_shape, a))]
            if len(short) != 1:
                raise FusionInputError(f"cannot tell the band axis of shape {low_shape}; give band_axis=0 or -1")
            cands = short
        a = cands[0]
        h, w = _spatial(low_shape, a)
        return Layout(a, None, 1 if a is None else low_shape[a], 0, (h, w), (h * scale, w * scale), scale)
    guide_shape = tuple(int(s) for s in guide_shape)
    found = []
    for a in _axis_choices(len(low_shape), band_axis, "the low-resolution image"):
        h, w = _spatial(low_shape, a)
        for g in _axis_choices(len(guide_shape), guide_axis, "the guide"):
            H, W = _spatial(guide_shape, g)
            if h < 1 or w < 1 or H % h or W % w:
                continue
            sy, sx = H // h, W // w
            if sy != sx or sy < 1 or (scale is not None and sy != scale):
                continue
            found.append(
                Layout(
                    a,
                    g,
                    1 if a is None else low_shape[a],
                    1 if g is None else guide_shape[g],
                    (h, w),
                    (H, W),
                    sy,
                )
            )
    if found and all(f.scale == 1 for f in found):
        raise FusionInputError(
            f"the guide (shape {guide_shape}) and the low-resolution image (shape {low_shape}) have the same "
            "size: nothing to upsample"
        )
    found = [f for f in found if f.scale > 1]
    if not found:
        want = f" by the given scale {scale}" if scale is not None else " by the same integer factor on both axes"
        swapped = (
            " They look swapped: the low-resolution image comes first, then the sharper guide."
            if math.prod(guide_shape) < math.prod(low_shape)
            else ""
        )
        raise FusionInputError(
            f"the guide (shape {guide_shape}) is not larger than the low-resolution image (shape {low_shape}){want}; "
            "check the images (and band_axis / guide_axis: bands first or last)." + swapped
        )
    if len(found) > 1:
        axes = sorted({(f.band_axis, f.guide_axis) for f in found}, key=str)
        raise FusionInputError(
            f"the layout of shapes {low_shape} and {guide_shape} is ambiguous ({axes}); give band_axis and guide_axis"
        )
    return found[0]


def _to_bands(x: np.ndarray, axis: int | None) -> np.ndarray:
    x = np.asarray(x)
    return x[None] if axis is None else np.moveaxis(x, axis, 0)


def _from_bands(x: np.ndarray, axis: int | None) -> np.ndarray:
    return x[0] if axis is None else np.moveaxis(x, 0, axis)


def _as_float(x: Any, name: str) -> np.ndarray:
    a = np.asarray(x)
    if a.dtype == bool or not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise FusionInputError(f"{name}: unsupported dtype {a.dtype}")
    a = a.astype(np.float32)
    if not np.isfinite(a).all():
        raise FusionInputError(f"{name}: contains NaN or infinite values")
    return a


# --------------------------------------------------------------------------- baselines (torch, (N, C, H, W))


def bicubic_upsample(low: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bicubic interpolation (a = -0.75, pixel centres aligned as MATLAB/OpenCV ``imresize`` without antialias)."""
    return F.interpolate(low, size=tuple(size), mode="bicubic", align_corners=False)


def guided_filter_upsample(
    low: torch.Tensor, guide: torch.Tensor, *, radius: int | None = None, eps: float = 1e-4
) -> torch.Tensor:
    """Guided-filter upsampling (He & Sun 2015; Wu et al. 2018) with a guide (N, G, H, W).

    The guide is reduced to the low resolution by block averaging (area
    interpolation); in ``(2r+1)^2`` low-resolution windows each band is fitted
    as ``a * guide + b``; the box-averaged ``a, b`` are bilinearly upsampled and
    applied to the full-resolution guide, which carries its edges into every
    band. A 3-channel guide is used in colour form (3 coefficients per band),
    any other is averaged to one channel. ``radius`` (low-resolution pixels)
    defaults to 1 and ``eps`` (for inputs normalised to [0, 1]) to 1e-4, the
    values of the CSC-MMFN paper's code-level filter; among r in {1, 2, 4} and
    eps in {1e-4, 1e-3, 1e-2} they are also the best on the training strips of
    both tasks (CAVE: r = 2-4 slightly better).
    """
    from .ops.filters import box_filter
    from .ops.guided import fast_guided_filter

    H, W = guide.shape[-2:]
    h, w = low.shape[-2:]
    r = 1 if radius is None else int(radius)
    if guide.shape[1] != 3:
        g = guide.mean(1, keepdim=True)
        g_low = F.interpolate(g, size=(h, w), mode="area")
        return fast_guided_filter(g_low, low, g, r, eps)
    # colour guide: solve the 3x3 local systems at low resolution (guided_filter's colour form
    # returns the filtered image, so fit a/b here by filtering the 4 basis responses)
    g_low = F.interpolate(guide, size=(h, w), mode="area")
    n, b = low.shape[:2]
    mean = lambda t: box_filter(t, r)  # noqa: E731
    gl = g_low.unsqueeze(1).expand(n, b, 3, h, w)
    p = low.unsqueeze(2)
    mean_i = mean(gl)
    mean_p = mean(p)
    cov_ip = mean(gl * p) - mean_i * mean_p
    sig = torch.empty(n, b, h, w, 3, 3, dtype=low.dtype, device=low.device)
    for i in range(3):
        for j in range(i, 3):
            v = mean(gl[:, :, i] * gl[:, :, j]) - mean_i[:, :, i] * mean_i[:, :, j]
            sig[..., i, j] = v
            sig[..., j, i] = v
    sig = sig + eps * torch.eye(3, dtype=low.dtype, device=low.device)
    a = torch.linalg.solve(sig, cov_ip.movedim(2, -1).unsqueeze(-1)).squeeze(-1).movedim(-1, 2)  # (n, b, 3, h, w)
    bb = mean_p.squeeze(2) - (a * mean_i).sum(2)
    a = mean(a)
    bb = mean(bb)
    a_up = F.interpolate(a.reshape(n, b * 3, h, w), size=(H, W), mode="bilinear", align_corners=False)
    b_up = F.interpolate(bb, size=(H, W), mode="bilinear", align_corners=False)
    return (a_up.reshape(n, b, 3, H, W) * guide.unsqueeze(1)).sum(2) + b_up


# --------------------------------------------------------------------------- CSC-MMFN models


def model_path(model: str | Path) -> Path:
    """The weights file of a shipped model name or a path."""
    from .weights import shipped_path

    if isinstance(model, str) and model in MODELS:
        return shipped_path(MODELS[model])
    return Path(model)


def _build_csc_mmfn(w) -> tuple[torch.nn.Module, dict]:
    from .nets.csc_mmfn import build_from_config

    net = build_from_config(w.manifest["net"])
    net.load_state_dict(w.state)
    net.eval().to(w.device)
    return net, w.manifest


def load_csc_mmfn(model: str | Path, device: torch.device | str = "cpu"):
    """``(network, manifest)`` of a shipped model name or a weights file (sha256-verified, cached)."""
    from .weights import load_weights

    how = "Train one with `napari-fusion train csc_mmfn --task cave|pansharpening --install`."
    return load_weights(
        model_path(model),
        build=_build_csc_mmfn,
        device=device,
        expect={"method": "csc_mmfn"},
        how_to_get=how,
        name="csc_mmfn",
    )


def _choose_model(bands: int, guide_channels: int) -> str:
    for name in MODELS:
        try:
            _, man = load_csc_mmfn(name)
        except Exception:  # noqa: BLE001 - a missing model is simply not a candidate
            continue
        if man["net"]["bands"] == bands and man["net"]["guide_channels"] == guide_channels:
            return name
    raise FusionInputError(
        f"no shipped CSC-MMFN model takes {bands} bands with a {guide_channels}-channel guide "
        f"(shipped: cave = 31 bands + RGB, pansharpening = 4 bands + panchromatic). Use method='bicubic' "
        "or 'guided_filter', or train one with `napari-fusion train csc_mmfn` and pass model=<weights.pt>"
    )


def _normalise(x: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Divide by the image maximum (the scaling the models were trained with)."""
    s = float(x.max())
    if s <= 0:
        s = 1.0
    return x / s, s


def run_csc_mmfn(net: torch.nn.Module, low: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
    """Network on max-normalised inputs ``(1, B, h, w)``, ``(1, G, H, W)``; output in the low-res units."""
    lo, s = _normalise(low)
    gu, _ = _normalise(guide)
    with torch.no_grad():
        return net(lo, gu) * s


# --------------------------------------------------------------------------- public entry point


def guided_upsample(
    lowres: Any,
    guide: Any = None,
    *,
    method: str = "csc_mmfn",
    model: str | Path | None = None,
    scale: int | None = None,
    band_axis: int | None = None,
    guide_axis: int | None = None,
    radius: int | None = None,
    eps: float = 1e-4,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Upsample a low-resolution multiband image to the resolution of a guide image.

    Parameters
    ----------
    lowres:
        ``(h, w)``, ``(h, w, B)`` or ``(B, h, w)`` array (any numeric dtype).
    guide:
        ``(H, W)``, ``(H, W, G)`` or ``(G, H, W)`` high-resolution image of the same
        scene (RGB, panchromatic...). ``H = s * h`` and ``W = s * w`` for one integer
        ``s``. Only ``method='bicubic'`` works without a guide (then give ``scale``).
    method:
        ``'csc_mmfn'`` (default), ``'bicubic'`` or ``'guided_filter'``.
    model:
        For ``csc_mmfn``: ``'cave'``, ``'pansharpening'`` or a weights file; default:
        the shipped model whose band and guide counts match the inputs.
    scale:
        Optional check of the scale factor (required without a guide).
    band_axis, guide_axis:
        ``0`` (bands first) or ``-1`` (bands last); inferred from the shapes when omitted.
    radius, eps:
        Guided-filter window radius in low-resolution pixels (default 1) and regularisation, for ``guided_filter``.
    device:
        Torch device.

    Returns
    -------
    numpy.ndarray
        float32, the low-resolution input's layout at the guide's size, in the input's units.

    Examples
    --------
    Four bands at 16x16 sharpened by a 64x64 panchromatic guide:

    >>> import numpy as np
    >>> import napari_fusion as nf
    >>> low = np.random.default_rng(0).random((16, 16, 4)).astype(np.float32)
    >>> pan = np.random.default_rng(1).random((64, 64)).astype(np.float32)
    >>> out = nf.guided_upsample(low, pan, method="guided_filter")
    >>> out.shape, out.dtype
    ((64, 64, 4), dtype('float32'))
    """
    if method not in UPSAMPLE_METHODS:
        raise FusionInputError(f"unknown upsampling method {method!r}; use one of {', '.join(UPSAMPLE_METHODS)}")
    low = _as_float(lowres, "low-resolution image")
    g = None if guide is None else _as_float(guide, "guide")
    if g is None and method != "bicubic":
        raise FusionInputError(f"method {method!r} needs a guide image")
    lay = infer_layout(
        low.shape, None if g is None else g.shape, scale=scale, band_axis=band_axis, guide_axis=guide_axis
    )
    if min(lay.low_size) < 2:
        raise FusionInputError(f"the low-resolution image is too small ({lay.low_size}); need at least 2x2 pixels")
    dev = torch.device(device)
    lo_t = torch.from_numpy(np.ascontiguousarray(_to_bands(low, lay.band_axis))).unsqueeze(0).to(dev)
    if method == "bicubic" or g is None:
        out = bicubic_upsample(lo_t, lay.high_size)
    else:
        gu_t = torch.from_numpy(np.ascontiguousarray(_to_bands(g, lay.guide_axis))).unsqueeze(0).to(dev)
        if method == "guided_filter":
            lo_n, s = _normalise(lo_t)
            gu_n, _ = _normalise(gu_t)
            out = guided_filter_upsample(lo_n, gu_n, radius=radius, eps=eps) * s
        else:
            name = model if model is not None else _choose_model(lay.bands, lay.guide_channels)
            net, man = load_csc_mmfn(name, dev)
            nb, ng = man["net"]["bands"], man["net"]["guide_channels"]
            if (nb, ng) != (lay.bands, lay.guide_channels):
                raise FusionInputError(
                    f"model {name!s} takes {nb} bands and a {ng}-channel guide, but the inputs have "
                    f"{lay.bands} bands and a {lay.guide_channels}-channel guide"
                )
            out = run_csc_mmfn(net, lo_t, gu_t)
    res = out[0].detach().cpu().numpy().astype(np.float32)
    return _from_bands(res, lay.band_axis)


__all__ = [
    "UPSAMPLE_METHODS",
    "MODELS",
    "Layout",
    "infer_layout",
    "guided_upsample",
    "bicubic_upsample",
    "guided_filter_upsample",
    "load_csc_mmfn",
    "run_csc_mmfn",
]
