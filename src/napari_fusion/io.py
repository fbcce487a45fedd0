"""Reading and writing images and stacks (TIFF incl. 16-bit and multi-page, PNG, JPEG).

In memory: :func:`read_image`, :func:`read_stack`, :func:`write_image`. Out of
core (dask, tile by tile; see ``docs/lazy.md``): :func:`open_lazy_stack`
(TIFF, zarr, OME-Zarr, folders of TIFF slices) and :func:`write_lazy` (tiled
TIFF or zarr).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import FusionError, FusionInputError, FusionOutputError
from .microscopy import Calibration

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp")


def natural_key(path: Path) -> list:
    """Sort key for file names in natural order (slice_2 before slice_10)."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", path.name)]


_SIGNATURES = {
    ".png": ((b"\x89PNG\r\n\x1a\n",), "PNG"),
    ".jpg": ((b"\xff\xd8",), "JPEG"),
    ".jpeg": ((b"\xff\xd8",), "JPEG"),
    ".bmp": ((b"BM",), "BMP"),
    ".tif": ((b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"), "TIFF"),
    ".tiff": ((b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"), "TIFF"),
}


def check_image_file(path: str | Path) -> Path:
    """Refuse, naming the file and the problem, a path that is missing, a folder, empty or not its format.

    Reads only the first bytes (the format signature). Returns the path.
    """
    path = Path(path)
    if not path.exists():
        raise FusionInputError(f"file not found: {path}")
    if path.is_dir():
        raise FusionInputError(f"{path} is a folder; use read_stack for a folder of slices")
    suffix = path.suffix.lower()
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
    except OSError as exc:
        raise FusionInputError(f"cannot read {path}: {exc.strerror or exc}") from None
    if size == 0:
        raise FusionInputError(f"{path} is empty (0 bytes)")
    if suffix in _SIGNATURES:
        magic, name = _SIGNATURES[suffix]
        if not any(head.startswith(m) for m in magic):
            raise FusionInputError(
                f"{path} is not a {name} file (its first bytes are not a {name} signature): "
                "the file is damaged or has the wrong extension"
            )
    return path


def _read_error(path: Path, exc: BaseException) -> FusionInputError:
    """One clear message for a reader's exception."""
    text = str(exc)
    low = text.lower()
    if (
        "truncated" in low
        or "failed to read" in low
        or "mmap length" in low
        or "unexpected end" in low
        or "eof" in low
        or "not enough data" in low
    ):
        return FusionInputError(f"{path} is truncated (the file ends before its image data does): {text}")
    return FusionInputError(f"{path} is damaged or not a supported image: {text}")


def _check_layout(path: Path, arr: np.ndarray) -> None:
    if arr.size == 0 or arr.ndim < 2:
        raise FusionInputError(f"{path} holds no image (array of shape {arr.shape}); the file may be damaged")
    if arr.ndim == 3 and arr.shape[-1] not in (3, 4) and arr.shape[-1] <= 8 and min(arr.shape[:2]) > 8:
        raise FusionInputError(
            f"{path}: unsupported layout {arr.shape[0]}x{arr.shape[1]} pixels with {arr.shape[-1]} channels; "
            "napari-fusion fuses grey or RGB images: save each channel as its own image or stack"
        )


def read_image(path: str | Path) -> np.ndarray:
    """Read one file as an array: ``(H, W)``, ``(H, W, 3)`` or, for multi-page TIFF, ``(N, H, W[, 3])``.

    Files are never modified. Unreadable files raise :class:`FusionInputError`
    naming the file and what is wrong (missing, empty, not that format,
    truncated, unsupported layout).
    """
    from .output_safety import remember_input

    path = check_image_file(path)
    suffix = path.suffix.lower()
    try:
        if suffix in (".tif", ".tiff"):
            import tifffile

            arr = tifffile.imread(path)
        elif suffix == ".png" and _is_16bit_colour_png(path):
            arr = _read_png_16bit_colour(path)
        else:
            import imageio.v3 as iio

            arr = iio.imread(path, extension=suffix)
    except FusionInputError:
        raise
    except MemoryError:
        raise FusionInputError(
            f"{path} is too large to read into memory; use --chunks (chunks=) for tiled fusion"
        ) from None
    except Exception as exc:  # the readers raise many kinds of errors
        raise _read_error(path, exc) from None
    remember_input(path)
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[-1] == 4 and suffix not in (".tif", ".tiff"):
        arr = arr[..., :3]  # PNG alpha carries no image content for fusion
    if arr.ndim == 3 and arr.shape[-1] == 2 and suffix not in (".tif", ".tiff"):
        arr = arr[..., 0]  # grey + alpha PNG
    _check_layout(path, arr)
    return arr


#: PNG colour types with more than one sample per pixel: grey + alpha (4), RGB (2), RGBA (6)
_PNG_MULTI_SAMPLE = (2, 4, 6)
#: zlib level of PNG output: 3 writes a 2048x1536 RGB image in 0.45 s against 1.2 s at Pillow's
#: default 6, for a file 3 % larger (lossless either way)
PNG_COMPRESS_LEVEL = 3


def _is_16bit_colour_png(path: Path) -> bool:
    """Whether the PNG's header says 16 bits per sample with more than one sample per pixel."""
    with open(path, "rb") as f:
        head = f.read(26)
    return len(head) == 26 and head[12:16] == b"IHDR" and head[24] == 16 and head[25] in _PNG_MULTI_SAMPLE


def _png_codec():
    """imagecodecs (libpng), which reads and writes 16-bit colour PNG; Pillow would read it as 8 bits."""
    try:
        import imagecodecs
    except ImportError:
        raise FusionInputError(
            "16-bit colour PNG needs the imagecodecs package (pip install imagecodecs); "
            "without it the image would lose its low 8 bits. Or use TIFF"
        ) from None
    return imagecodecs


def _read_png_16bit_colour(path: Path) -> np.ndarray:
    return np.asarray(_png_codec().png_decode(path.read_bytes()))


def list_image_files(folder: str | Path) -> list[Path]:
    """Image files of a folder in natural order (slice_2 before slice_10)."""
    folder = Path(folder)
    files = [
        p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    ]  # hidden files include the temporaries of interrupted writes
    return sorted(files, key=natural_key)


#: Most decoder threads :func:`read_stack` uses (PNG/JPEG/TIFF decoders release the GIL).
READ_THREADS = 4


def _read_images_parallel(files: list[Path]):
    """``read_image`` of each file, in order, decoded in a few threads ahead of the consumer.

    The first unreadable file (in order) raises its error, as a sequential
    read would; reads still pending are then cancelled.
    """
    workers = min(len(files), READ_THREADS, os.cpu_count() or 1)
    if workers <= 1:
        yield from (read_image(p) for p in files)
        return
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="read_stack")
    try:
        futures = [pool.submit(read_image, p) for p in files]
        for fut in futures:
            yield fut.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def read_stack(paths: str | Path | Sequence[str | Path]) -> list[np.ndarray]:
    """Read the images to fuse.

    ``paths`` is one multi-page TIFF (a stack), a folder of slices (natural
    order), or several files. Returns a list of 2-D grey or ``(H, W, 3)``
    arrays.
    """
    given = [paths] if isinstance(paths, (str, Path)) else list(paths)
    files: list[Path] = [Path(p) for p in given]
    if len(files) == 1 and files[0].is_dir():
        from .output_safety import remember_input

        folder = files[0]
        remember_input(folder)
        files = list_image_files(folder)
        if not files:
            raise FusionInputError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in folder {folder}")
    images: list[np.ndarray] = []
    for p, arr in zip(files, _read_images_parallel(files)):
        if arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] in (3, 4)):
            images.append(arr)  # one grey or colour image
        elif arr.ndim == 3 or (arr.ndim == 4 and arr.shape[-1] in (3, 4)):
            images.extend(arr[i] for i in range(arr.shape[0]))  # multi-page stack
        else:
            raise FusionInputError(
                f"{p}: unsupported image shape {arr.shape}: a stack is (Z, Y, X) or (Z, Y, X, RGB). For a file "
                "with more axes (channels, time points), save one z stack per file, or an OME-TIFF whose axes "
                "are named (then choose with --channel / --timepoint)"
            )
    return images


def write_image(
    path: str | Path,
    image: np.ndarray,
    *,
    metadata: dict | None = None,
    overwrite: bool = False,
    inputs: Sequence[str | Path] = (),
    calibration: Calibration | None = None,
) -> Path:
    """Write an array; TIFF keeps any dtype (16-bit, float), PNG/JPEG need uint8 (or uint16 PNG).

    Safe by default: an existing file is replaced only with ``overwrite=True``,
    and never when it is one of ``inputs`` or a file read by this module in
    this process (same path, a link to it, or a hard link); an output inside an
    input folder or zarr store is refused too
    (:class:`~napari_fusion.FusionOutputError`, before anything is written).
    The file is written under a hidden temporary name in the same folder and
    renamed into place when complete, so an interrupted write never leaves a
    cut-short file at ``path``. Parent folders are created. ``metadata`` is
    stored in the TIFF description. A known ``calibration``
    (:func:`read_calibration`) goes into a TIFF's resolution tags (pixels per
    centimetre when the unit is a length, as ImageJ and Fiji read them) and,
    whole, into its description under ``"calibration"``.
    """
    from .output_safety import atomic_file, check_output_path

    path = Path(path)
    suffix = path.suffix.lower()
    image = np.asarray(image)
    if suffix not in (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp"):
        raise FusionInputError(f"unsupported output format {suffix!r}; use .tif, .png or .jpg")
    if suffix not in (".tif", ".tiff") and (
        image.dtype not in (np.uint8, np.uint16) or (image.dtype == np.uint16 and suffix != ".png")
    ):
        raise FusionInputError(f"cannot write {image.dtype} data as {suffix}; use .tif to keep the data unchanged")
    check_output_path(path, inputs=inputs, overwrite=overwrite)
    if calibration is not None and calibration.known:
        metadata = {**(metadata or {}), "calibration": calibration.as_dict()}
    resolution = _tiff_resolution(calibration)
    with atomic_file(path) as tmp:
        if resolution:
            _encode_image(tmp, image, suffix, metadata, resolution)
        else:  # the call of uncalibrated writes is unchanged
            _encode_image(tmp, image, suffix, metadata)
    return path


def _encode_image(
    target: Path, image: np.ndarray, suffix: str, metadata: dict | None, resolution: dict | None = None
) -> None:
    if suffix in (".tif", ".tiff"):
        import json

        import tifffile

        photometric = "rgb" if image.ndim == 3 and image.shape[-1] == 3 else "minisblack"
        desc = json.dumps(metadata, default=str) if metadata else None
        tifffile.imwrite(target, image, photometric=photometric, description=desc, **(resolution or {}))
    elif suffix == ".png" and image.dtype == np.uint16 and image.ndim == 3:
        target.write_bytes(_png_codec().png_encode(np.ascontiguousarray(image), level=PNG_COMPRESS_LEVEL))
    else:
        import imageio.v3 as iio

        if suffix == ".png":
            iio.imwrite(target, image, extension=suffix, compress_level=PNG_COMPRESS_LEVEL)
        else:
            iio.imwrite(target, image, extension=suffix)


def read_calibration(path: str | Path | Sequence[str | Path]) -> Calibration:
    """Pixel size, z step and unit of an input, as its metadata states them (nothing guessed).

    Reads only metadata: OME-XML of OME-TIFFs, ImageJ TIFF calibration, the
    calibration napari-fusion writes into its outputs, OME-Zarr (NGFF) scales
    and units, and, through bioio and its plugins, CZI, ND2 and LIF. Lengths
    with a known unit are in micrometres. Returns a
    :class:`~napari_fusion.microscopy.Calibration` whose ``known`` is False
    when the metadata says nothing (plain TIFF, PNG, folders of such slices).
    For several files, the z step is never taken (their distance is stated
    nowhere). See :mod:`napari_fusion.microscopy`.
    """
    from .microscopy import read_calibration as _read

    return _read(path)


def _tiff_resolution(calibration: Calibration | None) -> dict[str, Any]:
    """tifffile ``resolution`` keywords for a calibrated image: pixels per cm (µm known), else per unit."""
    if calibration is None or calibration.pixel_size_yx is None:
        return {}
    y, x = calibration.pixel_size_yx
    if calibration.unit == "µm":
        return {"resolution": (1e4 / x, 1e4 / y), "resolutionunit": "CENTIMETER"}
    return {"resolution": (1.0 / x, 1.0 / y), "resolutionunit": "NONE"}


# --------------------------------------------------------------------------- lazy (out-of-core) I/O

#: Spatial chunk used when a file's own layout allows any (memory-mappable TIFF).
LAZY_READ_CHUNK = 1024
#: Tile size of TIFF files written by :func:`write_lazy` (a multiple of 16, as TIFF requires).
TIFF_TILE = 256
#: Fusion tiles computed together when writing TIFF (bounds memory on wide images);
#: None: dask's ``num_workers`` setting, else the CPU count (at least 2).
TILES_PER_COMPUTE: int | None = None


class LazyTiff:
    """Array-like, picklable window onto one series of a TIFF file, read on demand.

    Uncompressed contiguous files are memory-mapped (any region is cheap to
    read); others are read through tifffile's zarr store, chunk by chunk.
    The open file is not pickled, so dask.distributed workers reopen it.
    """

    def __init__(self, path: str | Path, *, series: int = 0, level: int = 0):
        import tifffile

        self.path = Path(path)
        self.series = series
        self.level = level
        with tifffile.TiffFile(self.path) as tf:
            if series >= len(tf.series):
                raise FusionInputError(f"{self.path} has {len(tf.series)} image series; series {series} requested")
            s = tf.series[series]
            levels = getattr(s, "levels", [s])
            if level >= len(levels):
                raise FusionInputError(f"{self.path} series {series} has {len(levels)} resolution levels")
            s = levels[level]
            self.shape = tuple(int(v) for v in s.shape)
            self.dtype = np.dtype(s.dtype)
            self.axes = s.axes
            self.memmappable = level == 0 and s.dataoffset is not None
            if self.memmappable:
                need = int(s.dataoffset) + int(np.prod(self.shape)) * self.dtype.itemsize
                have = self.path.stat().st_size
                if have < need:
                    raise FusionInputError(
                        f"{self.path} is truncated: its image data needs {need} bytes, the file has {have}"
                    )
            if self.memmappable:
                self.native_chunks = None
            else:
                import zarr

                with s.aszarr() as store:
                    z: Any = zarr.open(store, mode="r")
                    self.native_chunks = tuple(z.chunks)
        self._handle = None

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def chunks(self, spatial: int = LAZY_READ_CHUNK) -> tuple[int, ...]:
        """Dask chunk shape: the file's own chunks, or one plane in ``spatial``-sized squares."""
        if self.native_chunks is not None:
            return self.native_chunks
        chunk = [1] * self.ndim
        yx = [i for i, a in enumerate(self.axes) if a in "YX"] or [self.ndim - 2, self.ndim - 1]
        for i in yx:
            chunk[i] = min(spatial, self.shape[i])
        if self.axes.endswith("S"):  # interleaved samples (RGB) stay together
            chunk[-1] = self.shape[-1]
        return tuple(chunk)

    def _open(self):
        if self._handle is None:
            import tifffile

            if self.memmappable:
                self._handle = tifffile.memmap(self.path, series=self.series, mode="r")
            else:
                import zarr

                store = tifffile.imread(self.path, aszarr=True, series=self.series, level=self.level)
                self._handle = zarr.open(store, mode="r")
        return self._handle

    def __getitem__(self, key):
        return np.asarray(self._open()[key])

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_handle"] = None
        return state


def _stack_axes_to_front(arr, axes: str, path):
    """Arrange a lazily opened array with named axes as ``(N, H, W[, 3])``."""
    axes = axes.upper()
    # drop singleton axes that are neither the stack, rows, columns nor colour
    keep: list[str] = []
    shape = tuple(arr.shape)
    for i, a in enumerate(axes):
        if shape[i] == 1 and a not in "YX":
            arr = arr[(slice(None),) * len(keep) + (0,)]
            continue
        keep.append(a)
    axes = "".join(keep)
    colour = None
    if "S" in axes and arr.shape[axes.index("S")] in (3, 4):
        colour = "S"
    elif "C" in axes and arr.shape[axes.index("C")] == 3 and sum(a in "ZTQIC" for a in axes) > 1:
        colour = "C"
    stack_axes = [a for a in axes if a not in "YX" and a != colour]
    if len(stack_axes) != 1:
        raise FusionInputError(
            f"{path}: cannot tell which axis holds the images to fuse (axes {axes!r}, shape {tuple(arr.shape)}); "
            "open it with zarr or tifffile and pass one (N, H, W[, 3]) array"
        )
    order = [axes.index(stack_axes[0]), axes.index("Y"), axes.index("X")]
    if colour:
        order.append(axes.index(colour))
    arr = arr.transpose(order)
    if colour and arr.shape[-1] == 4:
        arr = arr[..., :3]
    return arr


def _open_tiff_lazy(path: Path, chunks: int | None):
    import dask.array as da
    from dask.base import tokenize

    check_image_file(path)
    reader = LazyTiff(path)
    stat = path.stat()
    name = "tiff-" + tokenize(str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    arr = da.from_array(reader, chunks=reader.chunks(chunks or LAZY_READ_CHUNK), name=name, asarray=False)
    axes = reader.axes
    if len(axes) == arr.ndim and "Y" in axes and "X" in axes:
        return arr, axes
    return arr, None


def _is_zarr_path(path: Path) -> bool:
    return path.suffix.lower() == ".zarr" or (
        path.is_dir() and any((path / n).exists() for n in ("zarr.json", ".zarray", ".zgroup"))
    )


def _open_zarr_lazy(path: Path, component: str | None):
    import dask.array as da
    import zarr

    for candidate in (path, path.parent):  # the output group itself, or one of its arrays
        info = zarr_output_status(candidate)
        if info is not None and not info.get("complete"):
            raise FusionInputError(_incomplete_message(candidate, info))
    try:
        node: Any = zarr.open(str(path), mode="r")
    except Exception as exc:
        raise FusionInputError(f"cannot open {path} as zarr: {exc}") from None
    if component:
        try:
            node = node[component]
        except KeyError:
            raise FusionInputError(f"{path} has no array {component!r}") from None
    axes = None
    if isinstance(node, zarr.Group):
        attrs: dict[str, Any] = dict(node.attrs)
        ms = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")
        if ms:  # OME-Zarr (NGFF 0.4 / 0.5): highest resolution, axes from metadata
            first = ms[0]
            names = [a["name"] if isinstance(a, dict) else str(a) for a in first.get("axes", [])]
            node = node[first["datasets"][0]["path"]]
            if names:
                axes = "".join({"t": "T", "c": "C", "z": "Z", "y": "Y", "x": "X"}.get(n.lower(), "Q") for n in names)
        else:
            arrays = sorted(k for k, _ in node.arrays())
            if ZARR_OUTPUT_MARKER in attrs and "fused" in arrays and component is None:
                arrays = ["fused"]  # a napari-fusion output: its fused image
            if len(arrays) != 1:
                raise FusionInputError(f"{path} is a zarr group with arrays {arrays}; name one with component=...")
            node = node[arrays[0]]
    return da.from_zarr(node), axes


def open_lazy_stack(
    path: str | Path | Sequence[str | Path],
    *,
    chunks: int | None = None,
    component: str | None = None,
):
    """Open a stack without reading it: a dask array ``(N, H, W)`` or ``(N, H, W, 3)``.

    ``path`` is a multi-page (or OME-) TIFF, a zarr array or group, an
    OME-Zarr image (its highest resolution; axes from its metadata), a folder
    of slices, or a list of files. ``chunks`` sets the spatial chunk
    (pixels) where the file allows any (uncompressed TIFF, memory-mapped);
    otherwise the file's own chunks are used. Slices that cannot be read in
    parts (JPEG, PNG...) are one chunk each, decoded when first needed: a tiled
    run then holds them decoded while it runs (TIFF slices are read per tile). ``component`` names an array in
    a zarr group. Pass the result to :func:`napari_fusion.fuse` (tiled, lazy)
    or to napari.
    """

    if not isinstance(path, (str, Path)):
        paths = [Path(p) for p in path]
        if len(paths) == 1:
            return open_lazy_stack(paths[0], chunks=chunks, component=component)
        return _stack_files(paths, chunks)
    from .output_safety import remember_input

    arr = _open_lazy_path(Path(path), chunks=chunks, component=component)
    remember_input(path)  # writers of this process will refuse it
    return arr


def _open_lazy_path(path: Path, *, chunks: int | None, component: str | None):
    if not path.exists():
        raise FusionInputError(f"file not found: {path}")
    if _is_zarr_path(path):
        arr, axes = _open_zarr_lazy(path, component)
        if axes and len(axes) == arr.ndim:
            return _stack_axes_to_front(arr, axes, path)
        return arr
    if path.is_dir():
        files = list_image_files(path)
        if not files:
            raise FusionInputError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in folder {path}")
        return _stack_files(files, chunks)
    if path.suffix.lower() not in (".tif", ".tiff"):
        raise FusionInputError(f"{path}: only TIFF and zarr can be read lazily; use read_stack for {path.suffix} files")
    try:
        arr, axes = _open_tiff_lazy(path, chunks)
    except FusionInputError:
        raise
    except Exception as exc:
        raise _read_error(path, exc) from None
    if axes and arr.ndim > 3:  # drop singleton axes (e.g. T, C of an OME-TIFF)
        for i in reversed(range(arr.ndim)):
            if arr.shape[i] == 1 and axes[i] not in "YX":
                arr = arr[(slice(None),) * i + (0,)]
    # same convention as read_stack: (N, H, W) or (N, H, W, 3|4) is a stack
    if arr.ndim == 4 and arr.shape[-1] in (3, 4):
        return arr[..., :3]
    if arr.ndim == 3 and arr.shape[-1] not in (3, 4):
        if axes and axes[-1] == "S" or (arr.shape[-1] <= 8 and min(arr.shape[:2]) > 8):
            raise FusionInputError(
                f"{path}: unsupported layout {arr.shape[0]}x{arr.shape[1]} pixels with {arr.shape[-1]} channels; "
                "napari-fusion fuses grey or RGB images: save each channel as its own image or stack"
            )
        return arr
    raise FusionInputError(
        f"{path} holds an array of shape {tuple(arr.shape)}, not a stack (N, H, W) or (N, H, W, 3); "
        "open a folder of slices or a list of files instead"
    )


def _stack_files(paths: list[Path], chunks: int | None):
    import dask.array as da

    from .output_safety import remember_input

    planes: list[Any] = []
    first_decoded: np.ndarray | None = None
    for p in paths:
        remember_input(p)  # writers of this process will refuse it, before any slice is decoded
        if p.suffix.lower() not in (".tif", ".tiff"):
            if first_decoded is None:
                first_decoded = read_image(p)
            planes.append(_decoded_on_demand(p, first_decoded))
            continue
        try:
            arr, _ = _open_tiff_lazy(p, chunks)
        except FusionInputError:
            raise
        except Exception as exc:
            raise _read_error(p, exc) from None
        if arr.ndim == 3 and arr.shape[-1] not in (3, 4):
            planes.extend(arr[i] for i in range(arr.shape[0]))
        else:
            planes.append(arr[..., :3] if arr.ndim == 3 else arr)
    shapes = {tuple(a.shape) for a in planes}
    if len(shapes) > 1:
        raise FusionInputError(
            "images have different sizes: "
            + ", ".join(f"{i}: {a.shape[0]}x{a.shape[1]}" for i, a in enumerate(planes))
            + "; all images must have the same height and width (crop, resize or align them first)"
        )
    return da.stack(planes)


def _decoded_on_demand(path: Path, like: np.ndarray):
    """A slice that cannot be read in parts (JPEG, PNG...) as one dask chunk, decoded when a
    tile first needs it; ``like`` (the first such slice, decoded) gives its shape and dtype.
    Every tile needs every slice, so a tiled run holds these slices decoded while it runs."""
    import dask
    import dask.array as da

    check_image_file(path)
    size = _header_size(path)  # a colour or bit-depth difference shows when the slice is decoded
    if size is not None and size != like.shape[:2]:
        raise FusionInputError(
            f"{path} is {size[0]}x{size[1]} pixels, the first slice {like.shape[0]}x{like.shape[1]}; "
            "all images must have the same height and width (crop, resize or align them first)"
        )
    return da.from_delayed(dask.delayed(_read_like, pure=True)(path, like.shape, like.dtype), like.shape, like.dtype)


def _header_size(path: Path) -> tuple[int, int] | None:
    """``(height, width)`` from the file's header (no decoding), or None where Pillow cannot tell."""
    try:
        from PIL import Image

        with Image.open(path) as im:
            return im.size[1], im.size[0]
    except Exception:
        return None


def _read_like(path: Path, shape: tuple, dtype) -> np.ndarray:
    arr = read_image(path)
    if arr.shape != tuple(shape) or arr.dtype != dtype:
        raise FusionInputError(
            f"{path} decodes to {'x'.join(map(str, arr.shape))} {arr.dtype}, the first slice to "
            f"{'x'.join(map(str, shape))} {np.dtype(dtype)}: all slices must have the same size, colour and bit depth"
        )
    return arr


#: Group attribute of zarr outputs: ``{"complete": bool, "fingerprint": str, "tiles": int, ...}``.
ZARR_OUTPUT_MARKER = "napari_fusion_output"
#: Array of a zarr output recording which tiles are written (1 per finished tile).
ZARR_TILES_DONE = "tiles_done"
#: Entries a zarr output of ours may hold (anything else is somebody else's data).
#: The whole-image steps of the run writing a zarr output, for a resumed run (:func:`read_zarr_steps`).
ZARR_STEPS = "whole_image_steps.pt"
_ZARR_OWN_ENTRIES = {
    "zarr.json",
    ".zgroup",
    ".zattrs",
    ".zmetadata",
    "fused",
    "labels",
    "depth",
    ZARR_TILES_DONE,
    ZARR_STEPS,
    ZARR_STEPS + ".part",
}


def zarr_output_status(path: str | Path) -> dict[str, Any] | None:
    """What a zarr output of :func:`write_lazy` holds, or None if ``path`` is not one.

    Returns ``{"complete": bool, "tiles": n, "tiles_done": k, "fingerprint": str,
    "method": ..., "foreign_entries": [...]}``.
    """
    path = Path(path)
    if not path.is_dir():
        return None
    try:
        import zarr

        group: Any = zarr.open_group(str(path), mode="r")
        info = dict(group.attrs.get(ZARR_OUTPUT_MARKER) or {})
    except Exception:
        return None
    if not info:
        return None
    done = 0
    if ZARR_TILES_DONE in group:
        done = int(np.asarray(group[ZARR_TILES_DONE][...]).sum())
    info["tiles_done"] = done
    info["method"] = group.attrs.get("method")
    info["foreign_entries"] = sorted(e.name for e in path.iterdir() if e.name not in _ZARR_OWN_ENTRIES)
    return info


def read_zarr_steps(path: str | Path, fingerprint: str):
    """The whole-image steps kept in the *incomplete* zarr output at ``path`` by the run with
    ``fingerprint`` (:class:`~napari_fusion.whole_image.StepResults`), for the same run resumed
    (``fuse_lazy(..., whole_image_steps=...)``); None when there are none to reuse."""
    from .whole_image import load_steps

    path = Path(path)
    info = zarr_output_status(path)
    if info is None or info.get("complete") or info.get("fingerprint") != fingerprint:
        return None
    return load_steps(path / ZARR_STEPS, fingerprint=fingerprint)


def _keep_steps(path: Path, lazy, fingerprint: str) -> None:
    """Keep the run's whole-image steps in its zarr output (once) for a resumed run to read."""
    steps = getattr(lazy, "whole_image_steps", None)
    if steps is None or not (steps.maps or steps.stats) or (path / ZARR_STEPS).exists():
        return
    from .whole_image import save_steps

    if not save_steps(steps, path / ZARR_STEPS, fingerprint=fingerprint):
        log.info("whole-image steps of %s not kept: a statistic cannot be stored", path)


def _incomplete_message(path: Path, info: dict) -> str:
    return (
        f"{path} is an incomplete napari-fusion output ({info.get('tiles_done', 0)} of {info.get('tiles', '?')} "
        "tiles written; the run that made it was interrupted): rerun the same command to finish it"
    )


def _lazy_outputs(result: Any) -> dict[str, Any]:
    if hasattr(result, "fused"):
        return {k: getattr(result, k) for k in ("fused", "labels", "depth") if getattr(result, k, None) is not None}
    return {"fused": result}


def write_lazy(
    result: Any,
    path: str | Path,
    *,
    labels: str | Path | None = None,
    depth: str | Path | None = None,
    progress=None,
    compression: str | None = None,
    overwrite: bool = False,
    inputs: Sequence[str | Path] = (),
    fingerprint: str | None = None,
    calibration: Calibration | None = None,
) -> list[Path]:
    """Write a (lazy) fusion result tile by tile, never holding a whole output in memory.

    ``result`` is a :class:`~napari_fusion.FusionResult` (lazy or not) or one
    array. ``path`` ending in ``.zarr`` gets a zarr group with arrays
    ``fused``, ``labels`` and ``depth`` (those that exist; chunks = tiles) and
    the method and parameters as attributes. A ``.tif``/``.tiff`` path gets
    the fused image as a tiled TIFF, and ``labels``/``depth`` name optional
    further TIFFs. Each tile is computed once for all outputs. ``progress``
    (``progress(done, total, message)``) counts tiles on dask's local
    schedulers; raising :class:`~napari_fusion.FusionCancelled` from it stops
    the write. Returns the paths written.

    Safety (see ``docs/reliability.md``): outputs that are, or lie inside, an
    input (``inputs`` or any file read by :mod:`napari_fusion.io` in this
    process) are refused before any work. TIFFs are written under temporary
    names and renamed into place together at the end; an existing TIFF is
    replaced only with ``overwrite=True``. A zarr output records each finished
    tile and is marked complete last; writing again to an *incomplete* output
    with the same ``fingerprint`` (default: method, parameters, output layout
    and input identity) resumes it, computing only the missing tiles; a
    complete one is replaced only with ``overwrite=True``; a folder holding
    anything else is never deleted.

    A known ``calibration`` is stored with the outputs: as the ``calibration``
    attribute of a zarr group, and in TIFF resolution tags and descriptions
    (as :func:`write_image` does).
    """
    import dask.array as da

    from .output_safety import check_distinct, check_output_path

    path = Path(path)
    outputs = {
        k: (v if hasattr(v, "dask") else da.from_array(np.asarray(v), chunks=(1024, 1024) + (-1,) * (np.ndim(v) - 2)))
        for k, v in _lazy_outputs(result).items()
    }
    meta = {"method": getattr(result, "method", ""), "params": getattr(result, "params", {})}
    if calibration is not None and calibration.known:
        meta["calibration"] = calibration.as_dict()
    suffix = path.suffix.lower()
    from .tiling import LazyFusionResult, tile_progress

    lazy = result if isinstance(result, LazyFusionResult) else LazyFusionResult(fused=outputs["fused"])
    if suffix == ".zarr":
        if labels is not None or depth is not None:
            raise FusionInputError("with a .zarr output, labels and depth are written into the same group")
        check_output_path(path, inputs=inputs, overwrite=overwrite, folder=True)
        return [_write_zarr(outputs, path, meta, lazy, progress, overwrite=overwrite, fingerprint=fingerprint)]
    if suffix not in (".tif", ".tiff"):
        raise FusionInputError(f"unsupported output format {suffix!r} for tiled writing; use .tif, .tiff or .zarr")
    targets = {"fused": path}
    for name, target in (("labels", labels), ("depth", depth)):
        if target is None:
            continue
        if name not in outputs:
            raise FusionInputError(f"the result has no {name}; method {meta['method']!r} does not make them")
        if Path(target).suffix.lower() not in (".tif", ".tiff"):
            raise FusionInputError(f"{name} output {target} must be a .tif or .tiff file")
        targets[name] = Path(target)
    check_distinct(targets)
    for name, target in targets.items():
        check_output_path(target, inputs=inputs, overwrite=overwrite, what=f"{name} output")
    with tile_progress(lazy, progress), lazy.releasing_inputs():
        _write_tiffs({k: (outputs[k], p) for k, p in targets.items()}, meta, compression, _tiff_resolution(calibration))
    return list(targets.values())


def _default_fingerprint(outputs: dict, meta: dict, lazy) -> str:
    import hashlib
    import json

    layout = {k: [list(a.shape), str(a.dtype), [list(c) for c in a.chunks]] for k, a in outputs.items()}
    key = getattr(lazy, "key_prefix", "") or outputs["fused"].name
    text = json.dumps({"meta": meta, "layout": layout, "graph": key}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def zarr_output_action(path: str | Path, fingerprint: str, *, overwrite: bool = False) -> str:
    """What writing a zarr output to ``path`` will do: ``"create"``, ``"resume"`` or ``"replace"``.

    Raises :class:`~napari_fusion.FusionOutputError` when it must not be
    written: ``path`` holds something that is not a napari-fusion output (never
    deleted), a complete output (without ``overwrite``), or an incomplete output
    of a different run (without ``overwrite``). Nothing is changed on disk.
    """
    path = Path(path)
    if not path.exists():
        return "create"
    if path.is_dir() and not any(path.iterdir()):
        return "create"
    info = zarr_output_status(path)
    if info is None:
        entries = sorted(e.name for e in path.iterdir())[:5] if path.is_dir() else []
        raise FusionOutputError(
            f"{path} already exists and is not a napari-fusion output"
            + (f" (it holds {', '.join(entries)})" if entries else "")
            + "; napari-fusion never deletes it: choose another output path"
        )
    if info.get("complete"):
        if not overwrite:
            raise FusionOutputError(
                f"{path} already holds a complete napari-fusion output; pass --overwrite (overwrite=True) to replace it"
            )
    elif info.get("fingerprint") == fingerprint:
        return "resume"
    elif not overwrite:
        raise FusionOutputError(
            f"{path} holds an incomplete output of a different run (other inputs, method, parameters or tiles); "
            "rerun the command that made it to finish it, or pass --overwrite (overwrite=True) to replace it"
        )
    if info.get("foreign_entries"):
        raise FusionOutputError(
            f"{path} is a napari-fusion output but also holds {', '.join(info['foreign_entries'])}; "
            "it is not deleted: move those entries out or choose another output path"
        )
    return "replace"


#: Group metadata of a zarr output, removed last when it is replaced.
_ZARR_METADATA = ("zarr.json", ".zgroup", ".zattrs", ".zmetadata")


def _remove_own_zarr(path: Path) -> None:
    """Delete a napari-fusion zarr output (only its own entries: see :func:`zarr_output_action`).

    The group is first marked incomplete and its metadata is deleted last, so a run killed
    while deleting leaves an output that still reads as an incomplete one of ours (which
    ``--overwrite`` replaces again), never a folder of unknown arrays that is refused. The
    record of finished tiles goes first: a tile still recorded as done still has its data.
    """
    import zarr

    group: Any = zarr.open_group(str(path), mode="r+")
    group.attrs[ZARR_OUTPUT_MARKER] = {**dict(group.attrs[ZARR_OUTPUT_MARKER]), "complete": False}
    entries = sorted(path.iterdir(), key=lambda e: (e.name in _ZARR_METADATA, e.name != ZARR_TILES_DONE))
    for entry in entries:
        _delete_entry(entry)
    path.rmdir()


def _delete_entry(entry: Path) -> None:
    """Delete one file or folder of an output of ours being replaced."""
    import shutil

    if entry.is_dir():
        shutil.rmtree(entry)
    else:
        entry.unlink()


def _store_tile(targets: list, done, index: tuple[int, int], box: tuple[int, int, int, int], *blocks) -> None:
    """Write one tile of every output, then record it as done (the record comes last)."""
    r0, r1, c0, c1 = box
    for target, block in zip(targets, blocks):
        target[r0:r1, c0:c1] = block
    done[index[0], index[1]] = 1


def _in_stored_tiles(outputs: dict, group: Any) -> dict:
    """``outputs`` rechunked to the tiles of the interrupted run being resumed, where they differ.

    Its ``tiles_done`` record is by tile; a resumed run may be tiled otherwise (the command line's
    fingerprint names the tile asked for, and tiles shrink to fit the memory available, which can
    differ between the runs). Written in the stored tiles, the recorded ones stay right."""
    if "fused" not in group:
        return outputs
    stored = tuple(group["fused"].chunks)[:2]
    if stored == tuple(c[0] for c in outputs["fused"].chunks[:2]):
        return outputs
    return {name: arr.rechunk(stored + tuple(arr.shape[2:])) for name, arr in outputs.items()}


def _write_zarr(
    outputs: dict, path: Path, meta: dict, lazy, progress, *, overwrite: bool, fingerprint: str | None
) -> Path:
    import json

    import dask
    import zarr

    from . import __version__

    for name, arr in list(outputs.items()):
        chunks = tuple(c[0] for c in arr.chunks)
        if not all(len(set(c[:-1])) <= 1 and c[-1] <= c[0] for c in arr.chunks):
            outputs[name] = arr.rechunk(chunks)  # zarr needs regular chunks (the last may be smaller)
    fingerprint = fingerprint or _default_fingerprint(outputs, meta, lazy)
    fused = outputs["fused"]
    grid = (len(fused.chunks[0]), len(fused.chunks[1]))
    n_tiles = grid[0] * grid[1]
    action = zarr_output_action(path, fingerprint, overwrite=overwrite)
    if action == "replace":
        _remove_own_zarr(path)
    resume = action == "resume"
    marker = {"complete": False, "fingerprint": fingerprint, "tiles": n_tiles, "version": __version__}
    group: Any
    if resume:
        group = zarr.open_group(str(path), mode="r+")
        outputs = _in_stored_tiles(outputs, group)
        fused = outputs["fused"]
        grid = (len(fused.chunks[0]), len(fused.chunks[1]))
    else:
        # the group's first (atomic) write already carries the marker: a run killed at any later
        # point leaves an output that is recognised as ours, incomplete, and resumable
        attributes = {**json.loads(json.dumps(meta, default=str)), ZARR_OUTPUT_MARKER: marker}
        group = zarr.open_group(str(path), mode="w", attributes=attributes)
    # on resume, arrays a killed run had not created yet are created now (each is written atomically)
    targets = [
        group[name]
        if name in group
        else group.create_array(name, shape=arr.shape, chunks=tuple(c[0] for c in arr.chunks), dtype=arr.dtype)
        for name, arr in outputs.items()
    ]
    _keep_steps(path, lazy, fingerprint)
    if ZARR_TILES_DONE in group:
        done = group[ZARR_TILES_DONE]
    else:
        done = group.create_array(ZARR_TILES_DONE, shape=grid, chunks=(1, 1), dtype="uint8", fill_value=0)
    row_edges = np.cumsum((0,) + tuple(fused.chunks[0])).tolist()
    col_edges = np.cumsum((0,) + tuple(fused.chunks[1])).tolist()
    finished = np.asarray(done[...]).astype(bool)
    # one store task per missing tile, depending on that tile's block of every output: the
    # tile itself is computed once for all outputs (no graph fusion, shared keys)
    from dask.delayed import Delayed
    from dask.highlevelgraph import HighLevelGraph

    store_name = f"napari-fusion-store-{fingerprint[:16]}-{os.getpid()}"
    keys = [arr.__dask_keys__() for arr in outputs.values()]

    def block_key(k, i, j):
        key = k[i][j]
        while isinstance(key, list):  # colour axis: one chunk
            key = key[0]
        return key

    layer: dict[Any, Any] = {}
    for i in range(grid[0]):
        for j in range(grid[1]):
            if finished[i, j]:
                continue
            box = (row_edges[i], row_edges[i + 1], col_edges[j], col_edges[j + 1])
            layer[(store_name, i, j)] = (_store_tile, targets, done, (i, j), box, *[block_key(k, i, j) for k in keys])
    hlg = HighLevelGraph.from_collections(store_name, layer, dependencies=list(outputs.values()))
    tasks = [Delayed(key, hlg, layer=store_name) for key in layer]
    from .tiling import tile_progress

    with tile_progress(lazy, _after_finished_tiles(progress, int(finished.sum()))), lazy.releasing_inputs():
        dask.compute(*tasks, optimize_graph=False)
    if not np.asarray(done[...]).all():  # pragma: no cover - a store that lost writes
        raise FusionError(f"{path}: some tiles were not recorded as written; rerun to finish them")
    group.attrs[ZARR_OUTPUT_MARKER] = {**marker, "complete": True}
    return path


def _after_finished_tiles(progress, already: int):
    """``progress`` for a resumed run: tile counts offset by the ``already`` finished tiles."""
    if progress is None:
        return None

    def report(d, t, m):
        if ": " in m:  # a report from inside a tile: "tile k/n: <the method's message>"
            return progress(d + already, t, f"tile {min(int(d) + already + 1, t)}/{t}{m[m.index(': ') :]}")
        return progress(d + already, t, f"tile {int(d) + already}/{t}")

    return report


def _tiff_writer(
    q, arr, target: Path, desc: str, compression: str | None, errors: list, resolution: dict | None = None
) -> None:
    """Thread body: write the tiles arriving on ``q`` (None ends) as one tiled TIFF at ``target``."""
    import tifffile

    ended = []

    def tiles():
        while True:
            item = q.get()
            if item is None:
                ended.append(True)
                return
            yield item

    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        photometric = "rgb" if arr.ndim == 3 and arr.shape[-1] == 3 else "minisblack"
        nbytes = int(np.prod(arr.shape)) * arr.dtype.itemsize
        tifffile.imwrite(
            target,
            tiles(),
            shape=arr.shape,
            dtype=arr.dtype,
            tile=(TIFF_TILE, TIFF_TILE),
            photometric=photometric,
            description=desc,
            compression=compression,
            bigtiff=nbytes > 2**31,
            **(resolution or {}),
        )
    except BaseException as exc:  # reported by the main thread
        errors.append(exc)
        while not ended and q.get() is not None:  # keep draining so the producer never blocks
            pass


def _compute_band(arrays: list, r0: int, r1: int, col_edges: list[int], group: int) -> list[np.ndarray]:
    """One band of tile rows of every output, a few tile columns per compute.

    Memory stays bounded by the group, not the image width; each group computes
    its tiles once for all outputs.
    """
    import dask

    parts = []
    for g in range(0, len(col_edges) - 1, group):
        c0, c1 = col_edges[g], col_edges[min(g + group, len(col_edges) - 1)]
        parts.append(dask.compute(*[a[r0:r1, c0:c1] for a in arrays]))
    return [np.concatenate([part[k] for part in parts], axis=1) for k in range(len(arrays))]


def _queue_tiles(q, band: np.ndarray, carry: np.ndarray | None, last: bool) -> np.ndarray | None:
    """Cut full TIFF tile rows off ``carry + band`` onto ``q``; return the rows left over."""
    buf = band if carry is None else np.concatenate([carry, band])
    while buf.shape[0] >= TIFF_TILE or (last and buf.shape[0] > 0):
        rows, buf = buf[:TIFF_TILE], buf[TIFF_TILE:]
        for x0 in range(0, rows.shape[1], TIFF_TILE):
            q.put(np.ascontiguousarray(rows[:, x0 : x0 + TIFF_TILE]))
    return buf if buf.shape[0] else None


def _write_tiffs(items: dict, meta: dict, compression: str | None, resolution: dict | None = None) -> None:
    """Write each ``name -> (array, path)`` as a tiled TIFF, band by band, computing each band once.

    One writer thread per file streams tiles into a hidden temporary; all files
    are renamed into place together when every one is complete.
    """
    import json
    import queue
    import threading

    import dask

    from .output_safety import AtomicGroup

    arrays = [a for a, _ in items.values()]
    height = arrays[0].shape[0]
    row_edges = np.cumsum((0,) + tuple(arrays[0].chunks[0])).tolist()
    col_edges = np.cumsum((0,) + tuple(arrays[0].chunks[1])).tolist()
    desc = json.dumps(meta, default=str)
    errors: list[BaseException] = []
    files = AtomicGroup()  # every TIFF goes to a hidden temporary, renamed into place at the end
    queues: list[queue.Queue] = []
    threads: list[threading.Thread] = []
    carry: list[np.ndarray | None] = [None] * len(arrays)
    try:
        for arr, target in items.values():  # one writer thread per file (started inside the try)
            queues.append(queue.Queue(maxsize=2 * (arr.shape[1] // TIFF_TILE + 1)))
            args = (queues[-1], arr, files.temp_for(target), desc, compression, errors, resolution)
            threads.append(threading.Thread(target=_tiff_writer, args=args, daemon=True))
            threads[-1].start()
        try:
            group = TILES_PER_COMPUTE or max(2, int(dask.config.get("num_workers", None) or os.cpu_count() or 2))
            for r0, r1 in zip(row_edges[:-1], row_edges[1:]):
                for k, band in enumerate(_compute_band(arrays, r0, r1, col_edges, group)):
                    carry[k] = _queue_tiles(queues[k], band, carry[k], last=r1 == height)
                if errors:
                    break
        finally:
            for q in queues:
                q.put(None)
            for th in threads:
                th.join()
        if errors:
            raise errors[0]
        files.commit()
    except BaseException:
        # never leave a truncated file, even under a temporary name: also when the interrupt
        # (Ctrl-C, SIGTERM) comes while the writers finish or while the files are synced
        _stop_writers(queues, threads)
        files.abort()
        raise


def _stop_writers(queues: list, threads: list, timeout: float = 2.0) -> None:
    """End the TIFF writer threads (best effort, without blocking on a full queue)."""
    import queue

    for q in queues:
        with contextlib.suppress(queue.Full):
            q.put_nowait(None)
    for th in threads:
        if th.ident is not None:  # started
            th.join(timeout)
