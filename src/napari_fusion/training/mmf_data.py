"""Data for multiband + guide fusion (CSC-MMFN): CAVE hyperspectral + simulated
RGB, and the DGIF pansharpening pairs, both under the Wald protocol.

Wald protocol: the available high-resolution multiband image is the ground
truth; it is degraded (Gaussian blur, sigma = scale / 2, then s x s block
averaging) to make the low-resolution input, the guide is made at the ground
truth's resolution (CAVE: RGB simulated from the cube with the Nikon D700
response; pansharpening: the panchromatic image degraded by the same factor),
the network fuses the two and the result is compared with the ground truth.

Held-out regions: every scene is split by columns into a training part (left
62.5 %), a validation strip (62.5-75 %) and a test strip (right 25 %), each
cut from the full-resolution images *before* degradation, so no pixel of a
test strip ever influences training. For pansharpening, scene-5 is also held
out whole.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..io import read_image
from ..ops.filters import gaussian_filter

CAVE_DIR = "multispectral/cave"
DGIF_DIR = "pansharpening/dgif"
CAVE_SCENES = ("sponges", "stuffed_toys")
DGIF_SCENES = ("scene-1", "scene-2", "scene-3", "scene-4", "scene-5")
DGIF_HELDOUT_SCENES = ("scene-5",)
RESPONSE_FILE = "camera_response/Nikon_D700_camspec_RIT_400-720nm.csv"
#: column fractions where the validation and test strips start
SPLIT = (0.625, 0.75)


def data_root(sub: str) -> Path | None:
    from ..datasets import shared_data_dir

    root = shared_data_dir()
    if root is None or not (root / sub).is_dir():
        return None
    return root / sub


# --------------------------------------------------------------------------- degradation


def degrade(x: torch.Tensor, scale: int) -> torch.Tensor:
    """Wald degradation of ``(..., H, W)``: Gaussian blur (sigma = scale / 2, reflect) then
    ``scale x scale`` block averaging (H and W must be multiples of ``scale``)."""
    H, W = x.shape[-2:]
    if H % scale or W % scale:
        raise ValueError(f"size {H}x{W} is not a multiple of the scale {scale}")
    y = gaussian_filter(x, scale / 2.0)
    lead = y.shape[:-2]
    y = F.avg_pool2d(y.reshape(-1, 1, H, W), scale)
    return y.reshape(*lead, H // scale, W // scale)


# --------------------------------------------------------------------------- CAVE


def load_camera_response(path: str | Path | None = None) -> np.ndarray:
    """Nikon D700 RGB sensitivities at 400, 410, ..., 700 nm: ``(31, 3)`` (R, G, B columns)."""
    if path is None:
        root = data_root(CAVE_DIR)
        if root is None:
            raise FileNotFoundError("CAVE data not found in the shared data folder")
        path = root / RESPONSE_FILE
    table = np.loadtxt(path, delimiter=",", comments="#")
    rows = {int(round(w)): i for i, w in enumerate(table[:, 0])}
    idx = [rows[w] for w in range(400, 701, 10)]
    return table[idx, 1:4].astype(np.float64)


def simulate_rgb(cube: np.ndarray, response: np.ndarray) -> np.ndarray:
    """Linear camera RGB ``(3, H, W)`` of a ``(31, H, W)`` cube: each channel is the cube weighted
    by the channel's sensitivity normalised to sum 1 (so a flat spectrum of value v gives v)."""
    w = response / response.sum(0, keepdims=True)
    return np.einsum("bhw,bc->chw", cube, w).astype(np.float32)


def load_cave_scene(folder: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``(cube (31, H, W) float32 in [0, 1] (uint16 / 65535), rgb.bmp (H, W, 3) uint8)``."""
    folder = Path(folder)
    bands = [read_image(folder / "bands" / f"band_{i:02d}.png") for i in range(1, 32)]
    cube = np.stack(bands).astype(np.float32) / 65535.0
    return cube, read_image(folder / "rgb.bmp")


def rgb_agreement(sim: np.ndarray, bmp: np.ndarray) -> dict[str, float]:
    """Agreement of simulated linear RGB ``(3, H, W)`` with the stored sRGB ``rgb.bmp`` ``(H, W, 3)``:
    per-channel Pearson correlation with the linearised bmp, and the PSNR (8-bit) of the simulated RGB
    after one least-squares gain per channel and sRGB encoding."""
    b = bmp.astype(np.float64) / 255.0
    lin = np.where(b <= 0.04045, b / 12.92, ((b + 0.055) / 1.055) ** 2.4).transpose(2, 0, 1)
    out: dict[str, float] = {}
    fitted = np.empty_like(lin)
    for c, name in enumerate("RGB"):
        s, t = sim[c].astype(np.float64).ravel(), lin[c].ravel()
        out[f"r_{name}"] = float(np.corrcoef(s, t)[0, 1])
        fitted[c] = sim[c] * float(s @ t / (s @ s))
    f = np.clip(fitted, 0, 1)
    enc = np.where(f <= 0.0031308, 12.92 * f, 1.055 * f ** (1 / 2.4) - 0.055)
    mse = float(((np.round(enc * 255) - bmp.transpose(2, 0, 1)) ** 2).mean())
    out["psnr_8bit"] = 10 * np.log10(255.0**2 / mse)
    return out


# --------------------------------------------------------------------------- cases


@dataclass
class Case:
    """One Wald-protocol example in raw units: ``lr`` (B, h, w), ``guide`` (G, H, W), ``gt`` (B, H, W)."""

    name: str
    lr: np.ndarray
    guide: np.ndarray
    gt: np.ndarray
    scale: int


def _strips(width: int, step: int) -> dict[str, slice]:
    a = int(round(width * SPLIT[0] / step)) * step
    b = int(round(width * SPLIT[1] / step)) * step
    return {"train": slice(0, a), "val": slice(a, b), "test": slice(b, width)}


def _cave_case(name: str, cube: np.ndarray, response: np.ndarray, scale: int) -> Case:
    H, W = cube.shape[-2:]
    H, W = H - H % scale, W - W % scale
    gt = np.ascontiguousarray(cube[:, :H, :W])
    guide = simulate_rgb(gt, response)
    lr = degrade(torch.from_numpy(gt), scale).numpy()
    return Case(name, lr, guide, gt, scale)


def cave_cases(split: str, scale: int = 4, *, scenes=CAVE_SCENES) -> list[Case]:
    """Wald cases of the CAVE scenes' ``split`` strip ('train', 'val', 'test' or 'full')."""
    root = data_root(CAVE_DIR)
    if root is None:
        raise FileNotFoundError("CAVE data not found in the shared data folder")
    response = load_camera_response()
    cases = []
    for sc in scenes:
        cube, _ = load_cave_scene(root / sc)
        cols = slice(None) if split == "full" else _strips(cube.shape[-1], scale)[split]
        cases.append(_cave_case(f"{sc}/{split}", cube[:, :, cols], response, scale))
    return cases


def load_dgif_scene(folder: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``(ms (4, h, w) float32, pan (1, H, W) float32)`` in the files' raw units."""
    folder = Path(folder)
    ms = read_image(folder / "ms.tif").astype(np.float32)
    pan = read_image(folder / "pan.tif").astype(np.float32)
    return np.ascontiguousarray(ms.transpose(2, 0, 1)), pan[None]


def _pan_case(name: str, ms: np.ndarray, pan: np.ndarray, scale: int) -> Case:
    gt = np.ascontiguousarray(ms)
    guide = degrade(torch.from_numpy(np.ascontiguousarray(pan)), scale).numpy()
    lr = degrade(torch.from_numpy(gt), scale).numpy()
    return Case(name, lr, guide, gt, scale)


def pansharpening_cases(split: str, scale: int = 4, *, scenes=None) -> list[Case]:
    """Reduced-resolution (Wald) cases. ``split``: 'train', 'val', 'test' (strips of the
    scenes other than scene-5) or 'heldout_scene' (scene-5 whole)."""
    root = data_root(DGIF_DIR)
    if root is None:
        raise FileNotFoundError("pansharpening data not found in the shared data folder")
    if scenes is None:
        scenes = (
            DGIF_HELDOUT_SCENES
            if split == "heldout_scene"
            else tuple(s for s in DGIF_SCENES if s not in DGIF_HELDOUT_SCENES)
        )
    cases = []
    for sc in scenes:
        ms, pan = load_dgif_scene(root / sc)
        ratio = pan.shape[-1] // ms.shape[-1]
        if split == "heldout_scene":
            cols = slice(None)
        else:
            cols = _strips(ms.shape[-1], scale)[split]
        pcols = slice(None) if cols == slice(None) else slice(cols.start * ratio, cols.stop * ratio)
        cases.append(_pan_case(f"{sc}/{split}", ms[:, :, cols], pan[:, :, pcols], ratio if ratio == scale else scale))
    return cases


def task_cases(task: str, split: str, scale: int = 4) -> list[Case]:
    if task == "cave":
        return cave_cases(split, scale)
    if task == "pansharpening":
        return pansharpening_cases(split, scale)
    raise ValueError(f"unknown task {task!r}; use cave or pansharpening")


# --------------------------------------------------------------------------- patches for training


def _norm(case: Case) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Max-normalised tensors as :func:`napari_fusion.upsample.run_csc_mmfn` feeds the network."""
    s = float(case.lr.max()) or 1.0
    g = float(case.guide.max()) or 1.0
    return (
        torch.from_numpy(case.lr / s).float(),
        torch.from_numpy(case.guide / g).float(),
        torch.from_numpy(case.gt / s).float(),
    )


class PatchSet:
    """Random aligned patches ``(lr, guide, gt)`` of ``patch x patch`` ground-truth pixels.

    ``n`` patch positions (case, y, x, rotation, flip) are drawn once from
    ``seed``; ``batch(indices)`` cuts and stacks them (what :func:`training.loop.train` needs).
    """

    def __init__(self, cases: list[Case], *, patch: int, n: int, seed: int, augment: bool = True):
        self.data = [_norm(c) for c in cases]
        self.scale = cases[0].scale
        if patch % self.scale:
            raise ValueError(f"patch {patch} must be a multiple of the scale {self.scale}")
        self.patch = patch
        rng = np.random.default_rng(seed)
        specs = []
        for _ in range(n):
            k = int(rng.integers(len(cases)))
            H, W = self.data[k][2].shape[-2:]
            ny, nx = (H - patch) // self.scale + 1, (W - patch) // self.scale + 1
            if ny < 1 or nx < 1:
                raise ValueError(f"case {cases[k].name} ({H}x{W}) is smaller than a {patch}-pixel patch")
            y = int(rng.integers(ny)) * self.scale
            x = int(rng.integers(nx)) * self.scale
            rot = int(rng.integers(4)) if augment else 0
            flip = bool(rng.integers(2)) if augment else False
            specs.append((k, y, x, rot, flip))
        self.specs = specs

    def __len__(self) -> int:
        return len(self.specs)

    def _one(self, i: int):
        k, y, x, rot, flip = self.specs[i]
        lr, g, gt = self.data[k]
        p, s = self.patch, self.scale
        out = [
            lr[:, y // s : (y + p) // s, x // s : (x + p) // s],
            g[:, y : y + p, x : x + p],
            gt[:, y : y + p, x : x + p],
        ]
        if flip:
            out = [t.flip(-1) for t in out]
        if rot:
            out = [torch.rot90(t, rot, (-2, -1)) for t in out]
        return out

    def batch(self, indices) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        items = [self._one(int(i)) for i in indices]
        return tuple(torch.stack([it[j] for it in items]).contiguous() for j in range(3))
