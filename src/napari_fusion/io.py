"""Reading and writing images and stacks (TIFF incl. 16-bit and multi-page, PNG, JPEG)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import FusionInputError

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp")


def _natural_key(path: Path):
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", path.name)]


def read_image(path: str | Path) -> np.ndarray:
    """Read one file as an array: ``(H, W)``, ``(H, W, 3)`` or, for multi-page TIFF, ``(N, H, W[, 3])``.

    Files are never modified. Unreadable files raise :class:`FusionInputError`.
    """
    path = Path(path)
    if not path.exists():
        raise FusionInputError(f"file not found: {path}")
    if path.is_dir():
        raise FusionInputError(f"{path} is a folder; use read_stack for a folder of slices")
    suffix = path.suffix.lower()
    try:
        if suffix in (".tif", ".tiff"):
            import tifffile

            arr = tifffile.imread(path)
        else:
            import imageio.v3 as iio

            arr = iio.imread(path)
    except Exception as exc:  # the readers raise many kinds of errors
        raise FusionInputError(f"cannot read {path}: {exc}") from None
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[-1] == 4 and suffix not in (".tif", ".tiff"):
        arr = arr[..., :3]  # PNG alpha carries no image content for fusion
    if arr.ndim == 3 and arr.shape[-1] == 2 and suffix not in (".tif", ".tiff"):
        arr = arr[..., 0]  # grey + alpha PNG
    return arr


def list_image_files(folder: str | Path) -> list[Path]:
    """Image files of a folder in natural order (slice_2 before slice_10)."""
    folder = Path(folder)
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    return sorted(files, key=_natural_key)


def read_stack(paths: str | Path | Sequence[str | Path]) -> list[np.ndarray]:
    """Read the images to fuse.

    ``paths`` is one multi-page TIFF (a stack), a folder of slices (natural
    order), or several files. Returns a list of 2-D grey or ``(H, W, 3)``
    arrays.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    paths = [Path(p) for p in paths]
    if len(paths) == 1 and paths[0].is_dir():
        files = list_image_files(paths[0])
        if not files:
            raise FusionInputError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in folder {paths[0]}")
        paths = files
    images: list[np.ndarray] = []
    for p in paths:
        arr = read_image(p)
        if arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] in (3, 4)):
            images.append(arr)  # one grey or colour image
        elif arr.ndim == 3 or (arr.ndim == 4 and arr.shape[-1] in (3, 4)):
            images.extend(arr[i] for i in range(arr.shape[0]))  # multi-page stack
        else:
            raise FusionInputError(f"{p}: unsupported image shape {arr.shape}")
    return images


def write_image(path: str | Path, image: np.ndarray, *, metadata: dict | None = None) -> Path:
    """Write an array; TIFF keeps any dtype (16-bit, float), PNG/JPEG need uint8 (or uint16 PNG).

    Parent folders are created. ``metadata`` is stored in the TIFF description.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    image = np.asarray(image)
    if suffix in (".tif", ".tiff"):
        import json

        import tifffile

        photometric = "rgb" if image.ndim == 3 and image.shape[-1] == 3 else "minisblack"
        desc = json.dumps(metadata) if metadata else None
        tifffile.imwrite(path, image, photometric=photometric, description=desc)
        return path
    if suffix in (".png", ".jpg", ".jpeg", ".bmp"):
        import imageio.v3 as iio

        if image.dtype not in (np.uint8, np.uint16) or (image.dtype == np.uint16 and suffix != ".png"):
            raise FusionInputError(
                f"cannot write {image.dtype} data as {suffix}; use .tif to keep the data unchanged"
            )
        iio.imwrite(path, image)
        return path
    raise FusionInputError(f"unsupported output format {suffix!r}; use .tif, .png or .jpg")
