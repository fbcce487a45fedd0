"""Training data shared by the learned methods: sharp photographs, synthetic
defocus, and patch pairs with known labels.

Pipeline (Liu et al. 2017, Sec. 3.2, generalised):

1. :func:`load_photos` reads the sharp photographs (grey, [0, 1]);
2. :func:`sharpness_map` / :func:`filter_sharp_photos` drop photographs with
   real shallow depth of field (BSDS500 has some), using a no-reference
   re-blur measure: blurring a sharp region with a small Gaussian removes
   most of its Laplacian energy, blurring an already blurred region does not
   (the idea of Crete et al., "The blur effect", SPIE 6492, 2007);
3. :class:`DefocusRenderer` renders defocused copies: the paper's cumulative
   Gaussian blurs (sigma 2, 7x7, applied 1..5 times) or random blur levels;
4. :func:`sample_patch_pairs` cuts co-located (sharp, blurred) patches whose
   sharp patch has enough variance (paper: > 25 in 8-bit grey levels) and
   lies in a sharp region;
5. :class:`SwappedPairs` turns every pair into a positive and a negative
   example by swapping the order.

Everything is seeded; the same seed gives the same patches.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..io import read_image
from ..ops.colour import luminance
from ..ops.filters import box_filter, gaussian_filter, laplacian

PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")


def resolve_data_path(path: str | Path) -> Path:
    """``path`` itself when absolute, else relative to the shared data folder.

    Raises ``FileNotFoundError`` (naming ``NAPARI_FUSION_DATA``) when that folder is not found.
    """
    p = Path(path)
    if p.is_absolute():
        return p
    from ..datasets import shared_data_dir

    root = shared_data_dir()
    if root is None:
        raise FileNotFoundError("shared data folder not found; set NAPARI_FUSION_DATA")
    return root / p


def list_photos(folder: str | Path) -> list[Path]:
    """Image files under ``folder`` (recursively), in a stable sorted order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"training photo folder not found: {folder}")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in PHOTO_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no photographs under {folder}")
    return files


def to_grey01(image: np.ndarray) -> np.ndarray:
    """A photograph as grey float32 in [0, 1] (BT.601 luma for colour)."""
    a = np.asarray(image)
    scale = float(np.iinfo(a.dtype).max) if np.issubdtype(a.dtype, np.integer) else 1.0
    t = torch.from_numpy(a.astype(np.float32) / scale)
    if t.ndim == 3:
        t = luminance(t[..., :3].movedim(-1, 0))
    return t.numpy().astype(np.float32)


def load_photos(paths: Sequence[str | Path], *, progress: bool = False) -> list[np.ndarray]:
    """Read photographs as grey float32 arrays in [0, 1]."""
    from tqdm.auto import tqdm

    return [to_grey01(read_image(p)) for p in tqdm(paths, desc="loading photos", disable=not progress)]


def sharpness_map(grey: np.ndarray | torch.Tensor, *, radius: int = 8, reblur_sigma: float = 1.0) -> torch.Tensor:
    """Per-pixel re-blur ratio in [0, 1]: small where the image is sharp.

    ``E(blur(I)) / E(I)`` with ``E`` the Laplacian energy averaged over a
    ``(2r+1)^2`` window.
    """
    g = torch.as_tensor(np.asarray(grey, dtype=np.float32))
    e_orig = box_filter(laplacian(g) ** 2, radius)
    e_blur = box_filter(laplacian(gaussian_filter(g, reblur_sigma)) ** 2, radius)
    return (e_blur / (e_orig + 1e-10)).clamp(0, 1)


def texture_map(grey: np.ndarray | torch.Tensor, *, radius: int = 8) -> torch.Tensor:
    """Local grey-level variance over a ``(2r+1)^2`` window."""
    g = torch.as_tensor(np.asarray(grey, dtype=np.float32))
    m = box_filter(g, radius)
    return (box_filter(g * g, radius) - m * m).clamp_min(0)


def sharp_fraction(grey: np.ndarray, *, var_threshold: float, sharp_threshold: float, radius: int = 8) -> float:
    """Fraction of the textured pixels (local variance > threshold) that are sharp."""
    tex = texture_map(grey, radius=radius) > var_threshold
    if not bool(tex.any()):
        return 0.0
    sharp = sharpness_map(grey, radius=radius) < sharp_threshold
    return float((sharp & tex).sum() / tex.sum())


def filter_sharp_photos(
    photos: Sequence[np.ndarray],
    *,
    var_threshold: float,
    sharp_threshold: float,
    min_fraction: float,
) -> list[int]:
    """Indices of the photographs whose textured area is mostly sharp."""
    keep = []
    for i, g in enumerate(photos):
        if sharp_fraction(g, var_threshold=var_threshold, sharp_threshold=sharp_threshold) >= min_fraction:
            keep.append(i)
    return keep


@dataclass(frozen=True)
class DefocusRenderer:
    """Synthetic defocus of a sharp grey image.

    ``mode='paper'``: level ``k`` (1..``levels``) is the image filtered ``k``
    times with a Gaussian of ``sigma`` and size ``2*radius+1`` (paper: sigma
    2, 7x7, five levels). ``mode='random'``: one Gaussian blur with sigma
    drawn uniformly from ``[sigma_low, sigma_high]``.
    """

    mode: str = "paper"
    sigma: float = 2.0
    radius: int = 3
    levels: int = 5
    sigma_low: float = 0.5
    sigma_high: float = 5.0

    def __post_init__(self):
        if self.mode not in ("paper", "random"):
            raise ValueError("mode must be 'paper' or 'random'")

    def paper_levels(self, grey: torch.Tensor) -> list[torch.Tensor]:
        """All cumulative blur levels 1..levels of ``grey``."""
        out = []
        x = grey
        for _ in range(self.levels):
            x = gaussian_filter(x, self.sigma, radius=self.radius)
            out.append(x)
        return out

    def render(self, grey: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """One defocused copy of ``grey`` at a random level."""
        if self.mode == "paper":
            k = int(rng.integers(1, self.levels + 1))
            x = grey
            for _ in range(k):
                x = gaussian_filter(x, self.sigma, radius=self.radius)
            return x
        s = float(rng.uniform(self.sigma_low, self.sigma_high))
        return gaussian_filter(grey, s, radius=max(1, int(math.ceil(3 * s))))


def patch_variance(grey: np.ndarray, patch: int) -> np.ndarray:
    """Variance of every ``patch x patch`` window, indexed by its top-left corner.

    Returns ``(H - patch + 1, W - patch + 1)``; computed with integral images.
    """
    g = np.asarray(grey, dtype=np.float64)

    def window_sum(x):
        c = np.zeros((x.shape[0] + 1, x.shape[1] + 1))
        c[1:, 1:] = x.cumsum(0).cumsum(1)
        return c[patch:, patch:] - c[:-patch, patch:] - c[patch:, :-patch] + c[:-patch, :-patch]

    n = float(patch * patch)
    mean = window_sum(g) / n
    return np.maximum(window_sum(g * g) / n - mean * mean, 0.0)


def sample_patch_pairs(
    photos: Sequence[np.ndarray],
    *,
    n_pairs: int,
    renderer: DefocusRenderer,
    seed: int,
    patch: int = 16,
    var_threshold: float = 25.0 / 255.0**2,
    sharp_threshold: float | None = None,
    max_tries: int = 50,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Co-located (sharp, blurred) patch pairs, as two uint8 arrays ``(n, patch, patch)``.

    Patches are spread evenly over the photographs. A location is kept when
    the sharp patch's grey-level variance exceeds ``var_threshold`` (grey
    levels in [0, 1]; paper: 25 on the 0-255 scale) and, if ``sharp_threshold`` is
    given, when the re-blur ratio (:func:`sharpness_map`, window 17x17 around
    the patch centre) is below it. For
    ``renderer.mode == 'paper'`` every blur level is used equally often.
    Stored as uint8, as 8-bit training images would be.
    """
    from tqdm.auto import tqdm

    if not photos:
        raise ValueError("no photographs to sample from")
    rng = np.random.default_rng(seed)
    per = np.full(len(photos), n_pairs // len(photos))
    per[: n_pairs - per.sum()] += 1
    sharp = np.zeros((n_pairs, patch, patch), np.uint8)
    blurred = np.zeros((n_pairs, patch, patch), np.uint8)
    j = 0
    for i in tqdm(range(len(photos)), desc="sampling patches", disable=not progress):
        if per[i] == 0:
            continue
        g = torch.from_numpy(np.asarray(photos[i], dtype=np.float32))
        h, w = g.shape
        if h < patch or w < patch:
            continue
        ok = patch_variance(g.numpy(), patch) > var_threshold  # indexed by top-left corner
        if sharp_threshold is not None:
            ratio = sharpness_map(g, radius=patch // 2).numpy()
            c = patch // 2
            ok &= ratio[c : c + ok.shape[0], c : c + ok.shape[1]] < sharp_threshold
        ys, xs = np.nonzero(ok)
        if ys.size == 0:
            continue
        if renderer.mode == "paper":
            levels = renderer.paper_levels(g)
            choice = rng.integers(0, len(levels), size=per[i])
        else:
            levels = [renderer.render(g, rng) for _ in range(max(1, min(per[i], 8)))]
            choice = rng.integers(0, len(levels), size=per[i])
        pick = rng.choice(ys.size, size=per[i], replace=ys.size < per[i])
        gn = g.numpy()
        for k in range(per[i]):
            y0, x0 = ys[pick[k]], xs[pick[k]]
            sl = (slice(y0, y0 + patch), slice(x0, x0 + patch))
            sharp[j] = np.clip(np.rint(gn[sl] * 255), 0, 255)
            blurred[j] = np.clip(np.rint(levels[choice[k]].numpy()[sl] * 255), 0, 255)
            j += 1
    return sharp[:j], blurred[:j]


class SwappedPairs(torch.utils.data.Dataset):
    """Each (sharp, blurred) pair as two examples: ``(a, b, label)``.

    Example ``2i`` is (sharp, blurred) with label 0 ("first input focused");
    example ``2i+1`` is (blurred, sharp) with label 1. Tensors are float32
    ``(1, P, P)`` in [0, 1].
    """

    def __init__(self, sharp: np.ndarray, blurred: np.ndarray):
        if sharp.shape != blurred.shape:
            raise ValueError("sharp and blurred patch arrays differ in shape")
        self.sharp = torch.from_numpy(np.ascontiguousarray(sharp))
        self.blurred = torch.from_numpy(np.ascontiguousarray(blurred))

    def __len__(self) -> int:
        return 2 * self.sharp.shape[0]

    def batch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Fetch many examples at once (faster than a DataLoader on small patches)."""
        index = torch.as_tensor(index, dtype=torch.long)
        pair = index // 2
        swap = (index % 2).bool()
        s = self.sharp[pair].float().div_(255).unsqueeze(1)
        b = self.blurred[pair].float().div_(255).unsqueeze(1)
        sw = swap.view(-1, 1, 1, 1)
        a = torch.where(sw, b, s)
        bb = torch.where(sw, s, b)
        return a, bb, swap.long()

    def __getitem__(self, i: int):
        a, b, y = self.batch(torch.tensor([i]))
        return a[0], b[0], y[0]


def split_indices(n: int, *, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of ``range(n)`` into (train, validation) index arrays."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    n_val = max(1, int(round(n * fraction))) if n > 1 else 0
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])
