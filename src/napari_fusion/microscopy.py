"""Files from microscopes: CZI, ND2, LIF, OME-TIFF and OME-Zarr, opened lazily with their calibration.

:func:`open_microscopy` returns a :class:`MicroscopyStack`: a dask array
``(Z, Y, X)``, ``(Z, Y, X, C)`` (several channels) or ``(Z, Y, X, S)`` (RGB
samples), nothing read yet, and a :class:`Calibration` (pixel size, z step and
unit taken from the file's metadata). :func:`read_calibration` reads the
calibration alone.

Readers:

* OME-TIFF, plain TIFF and OME-Zarr (NGFF 0.4/0.5) are read by the built-in
  readers (tifffile, zarr): no further dependency. Their calibration comes from
  the OME-XML ``PhysicalSizeX/Y/Z`` (and units), the ImageJ metadata of
  ImageJ TIFFs, the calibration napari-fusion writes into its own TIFF outputs,
  or the NGFF ``coordinateTransformations`` scale and axis units.
* CZI (Zeiss), ND2 (Nikon), LIF (Leica) and any other format are read through
  `bioio <https://github.com/bioio-devs/bioio>`_ and its reader plugins
  (``pip install 'napari-fusion[microscopy]'``). A missing plugin is reported
  by name. ``backend="bioio"`` reads OME-TIFF and OME-Zarr through bioio too.

Calibration is never guessed: what the metadata does not say stays ``None``
(``Calibration.source == "none"``), and depth maps then stay in slice units.
Lengths are converted to micrometres (``unit == "µm"``) whenever the unit is
known; a length whose unit is not given is kept as it is, with ``unit=None``.

No napari or Qt import here: the napari side reads :meth:`Calibration.scale`.
"""

from __future__ import annotations

import importlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import FusionInputError

#: Formats read through bioio: suffix -> (plugin module, plugin package, what to call the format).
BIOIO_FORMATS: dict[str, tuple[str, str, str]] = {
    ".czi": ("bioio_czi", "bioio-czi", "Zeiss CZI"),
    ".nd2": ("bioio_nd2", "bioio-nd2", "Nikon ND2"),
    ".lif": ("bioio_lif", "bioio-lif", "Leica LIF"),
}
#: bioio plugins of the formats that also have a built-in reader (``backend="bioio"``).
BIOIO_BUILTIN_PLUGINS = {
    "tiff": ("bioio_ome_tiff", "bioio-ome-tiff", "OME-TIFF"),
    "zarr": ("bioio_ome_zarr", "bioio-ome-zarr", "OME-Zarr"),
}
INSTALL_HINT = "pip install 'napari-fusion[microscopy]'"

MICRON = "µm"
_TO_MICRON = {
    "µm": 1.0,  # micro sign
    "μm": 1.0,  # greek mu
    "um": 1.0,
    "micron": 1.0,
    "microns": 1.0,
    "micrometer": 1.0,
    "micrometre": 1.0,
    "nm": 1e-3,
    "nanometer": 1e-3,
    "nanometre": 1e-3,
    "pm": 1e-6,
    "picometer": 1e-6,
    "å": 1e-4,
    "angstrom": 1e-4,
    "mm": 1e3,
    "millimeter": 1e3,
    "millimetre": 1e3,
    "cm": 1e4,
    "centimeter": 1e4,
    "centimetre": 1e4,
    "m": 1e6,
    "meter": 1e6,
    "metre": 1e6,
}


def _length(value: Any, unit: Any) -> tuple[float, str | None] | None:
    """A positive finite length, converted to µm when its unit is known; None when unusable."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(v) or v <= 0:
        return None
    if unit is None or str(unit).strip() == "":
        return v, None
    factor = _TO_MICRON.get(str(unit).strip().lower().replace("\u00b5", "µ"))
    if factor is None:
        factor = _TO_MICRON.get(str(unit).strip())
    return (v * factor, MICRON) if factor is not None else (v, str(unit))


@dataclass(frozen=True)
class Calibration:
    """Physical size of a stack's voxels, as its file's metadata states it.

    ``pixel_size_yx`` (row and column pitch) and ``z_step`` are in ``unit``
    (``"µm"`` when the file named a length unit), or ``None`` when the
    metadata does not say. ``source`` names where they were read
    (``"OME-XML"``, ``"OME-Zarr multiscales"``, ``"bioio-czi"``, ...), or
    ``"none"``.
    """

    pixel_size_yx: tuple[float, float] | None = None
    z_step: float | None = None
    unit: str | None = None
    source: str = "none"

    @property
    def known(self) -> bool:
        """Whether the metadata gave any physical size."""
        return self.pixel_size_yx is not None or self.z_step is not None

    @property
    def unit_text(self) -> str:
        return self.unit or "(unit not given)"

    def describe(self) -> str:
        """One line for people: what is known, in which unit, from where."""
        if not self.known:
            return "no calibration in the metadata (sizes in pixels and slices)"
        parts = []
        if self.pixel_size_yx is not None:
            y, x = self.pixel_size_yx
            parts.append(f"pixel {x:g} x {y:g} {self.unit_text}")
        parts.append(f"z step {self.z_step:g} {self.unit_text}" if self.z_step is not None else "no z step")
        return ", ".join(parts) + f" (from {self.source})"

    def scale(self, ndim: int = 3) -> tuple[float, ...]:
        """napari layer scale for a ``(Z, Y, X)`` (``ndim=3``) or ``(Y, X)`` (``ndim=2``) layer; 1 where unknown."""
        y, x = self.pixel_size_yx or (1.0, 1.0)
        return (self.z_step or 1.0, y, x) if ndim == 3 else (y, x)

    def as_dict(self) -> dict[str, Any]:
        return {
            "pixel_size_yx": list(self.pixel_size_yx) if self.pixel_size_yx else None,
            "z_step": self.z_step,
            "unit": self.unit,
            "source": self.source,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str | None = None) -> Calibration:
        yx = d.get("pixel_size_yx")
        return make_calibration(
            yx[1] if yx else None,
            yx[0] if yx else None,
            d.get("z_step"),
            d.get("unit"),
            source=source or str(d.get("source") or "metadata"),
        )

    def with_z_step(self, z_step: float | None, source: str) -> Calibration:
        return Calibration(self.pixel_size_yx, z_step, self.unit, source)


UNCALIBRATED = Calibration()


def make_calibration(
    x: Any, y: Any, z: Any, unit_x: Any = None, unit_y: Any = None, unit_z: Any = None, *, source: str
) -> Calibration:
    """A :class:`Calibration` from raw metadata values (unusable values become None).

    ``unit_y`` and ``unit_z`` default to ``unit_x``. Lengths with known units
    are converted to µm; lengths in different unknown units are not mixed (the
    z step is dropped when its unit differs from the pixel size's).
    """
    unit_y = unit_x if unit_y is None else unit_y
    unit_z = unit_x if unit_z is None else unit_z
    lx, ly, lz = _length(x, unit_x), _length(y, unit_y), _length(z, unit_z)
    unit: str | None = None
    yx = None
    if lx and ly and lx[1] == ly[1]:
        yx, unit = (ly[0], lx[0]), lx[1]
    zs = None
    if lz and (yx is None or lz[1] == unit):
        zs, unit = lz[0], lz[1]
    if yx is None and zs is None:
        return UNCALIBRATED
    return Calibration(yx, zs, unit, source)


@dataclass
class MicroscopyStack:
    """A lazily opened stack and its calibration.

    ``data``: dask array with axes ``axes`` (``"ZYX"``, ``"ZYXC"`` or
    ``"ZYXS"``); ``reader``: what read it (``"tifffile"``, ``"zarr"``,
    ``"bioio-czi"``, ...); ``scene``: the scene (image series) read;
    ``channel_names``: names of the channels in the file, when it has any.
    """

    data: Any
    calibration: Calibration
    axes: str
    path: Path
    reader: str
    scene: str | None = None
    channel_names: list[str] = field(default_factory=list)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)


# --------------------------------------------------------------------------- what kind of file


def _kind(path: Path) -> str:
    """``"zarr"``, ``"tiff"``, ``"bioio"`` (CZI, ND2, LIF or another bioio format) or ``"folder"``."""
    if path.suffix.lower() == ".zarr" or (
        path.is_dir() and any((path / n).exists() for n in ("zarr.json", ".zarray", ".zgroup"))
    ):
        return "zarr"
    if path.is_dir():
        return "folder"
    if path.suffix.lower() in (".tif", ".tiff", ".btf", ".tf2", ".tf8"):
        return "tiff"
    return "bioio"


def is_microscopy_file(path: str | Path) -> bool:
    """Whether ``path`` is a CZI, ND2 or LIF file or a zarr store (which napari-fusion reads through this module)."""
    path = Path(path)
    return path.suffix.lower() in BIOIO_FORMATS or _kind(path) == "zarr"


# --------------------------------------------------------------------------- calibration of TIFF and zarr


def _ome_pixels(xml: str, series: int) -> dict[str, Any] | None:
    import tifffile

    ome = tifffile.xml2dict(xml).get("OME", {})
    images = ome.get("Image")
    if isinstance(images, dict):
        images = [images]
    if not images or series >= len(images):
        return None
    pixels = images[series].get("Pixels")
    return pixels if isinstance(pixels, dict) else None


def _ome_calibration(xml: str, series: int = 0) -> Calibration:
    pixels = _ome_pixels(xml, series)
    if pixels is None:
        return UNCALIBRATED
    # OME's default length unit is the micrometre
    units = [pixels.get(f"PhysicalSize{a}Unit", MICRON) for a in "XYZ"]
    return make_calibration(
        pixels.get("PhysicalSizeX"), pixels.get("PhysicalSizeY"), pixels.get("PhysicalSizeZ"), *units, source="OME-XML"
    )


def _imagej_calibration(tf) -> Calibration:
    meta = tf.imagej_metadata or {}
    unit = meta.get("unit")
    if not unit or str(unit).lower() in ("pixel", "pixels", "inch", "inches"):
        return UNCALIBRATED  # ImageJ writes unit=pixel, or nothing, when uncalibrated
    unit = {"micron": MICRON, "\\u00B5m": MICRON}.get(str(unit), str(unit))
    page = tf.pages[0]
    x = y = None
    try:
        xr, yr = page.tags["XResolution"].value, page.tags["YResolution"].value
        x, y = xr[1] / xr[0], yr[1] / yr[0]
    except (KeyError, ZeroDivisionError, TypeError, IndexError):
        pass
    return make_calibration(x, y, meta.get("spacing"), unit, source="ImageJ metadata")


def _own_calibration(description: str | None) -> Calibration:
    """The calibration napari-fusion writes into the JSON description of its TIFF outputs."""
    if not description or not description.lstrip().startswith("{"):
        return UNCALIBRATED
    try:
        meta = json.loads(description)
    except ValueError:
        return UNCALIBRATED
    cal = meta.get("calibration") if isinstance(meta, dict) else None
    if not isinstance(cal, dict):
        return UNCALIBRATED
    return Calibration.from_dict(cal, source="napari-fusion output")


def tiff_calibration(path: str | Path, series: int = 0) -> Calibration:
    """Calibration of a TIFF: OME-XML, ImageJ metadata or a napari-fusion output's record; else none."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tf:
            if tf.is_ome and tf.ome_metadata:
                cal = _ome_calibration(tf.ome_metadata, series)
                if cal.known:
                    return cal
            if tf.is_imagej:
                cal = _imagej_calibration(tf)
                if cal.known:
                    return cal
            return _own_calibration(tf.pages[0].description)
    except Exception:  # noqa: BLE001 - unreadable metadata is no calibration; the reader reports the file
        return UNCALIBRATED


def ngff_calibration(attrs: dict[str, Any], dataset: int = 0) -> Calibration:
    """Calibration from OME-Zarr (NGFF 0.4 / 0.5) group attributes: scale of ``dataset`` and axis units."""
    ms = attrs.get("multiscales") or (attrs.get("ome") or {}).get("multiscales")
    if not ms:
        return UNCALIBRATED
    first = ms[0]
    axes = first.get("axes") or []
    names = [str(a.get("name", "") if isinstance(a, dict) else a).lower() for a in axes]
    units = [a.get("unit") if isinstance(a, dict) else None for a in axes]
    scale = [1.0] * len(names)
    datasets = first.get("datasets") or []
    transforms = list(datasets[dataset].get("coordinateTransformations") or []) if dataset < len(datasets) else []
    transforms += list(first.get("coordinateTransformations") or [])  # applies after the dataset's own
    found = False
    for t in transforms:
        if isinstance(t, dict) and t.get("type") == "scale" and len(t.get("scale") or []) == len(names):
            scale = [s * float(v) for s, v in zip(scale, t["scale"])]
            found = True
    if not found:
        return UNCALIBRATED

    def axis(name: str) -> tuple[Any, Any]:
        return (scale[names.index(name)], units[names.index(name)]) if name in names else (None, None)

    (x, ux), (y, uy), (z, uz) = axis("x"), axis("y"), axis("z")
    return make_calibration(x, y, z, ux, uy, uz, source="OME-Zarr multiscales")


def zarr_calibration(path: str | Path) -> Calibration:
    """Calibration of an OME-Zarr image, or of a napari-fusion zarr output; else none."""
    import zarr

    try:
        group: Any = zarr.open_group(str(path), mode="r")
        attrs = dict(group.attrs)
    except Exception:  # noqa: BLE001 - not a group (a bare array), or unreadable: no calibration
        return UNCALIBRATED
    cal = ngff_calibration(attrs)
    if not cal.known and isinstance(attrs.get("calibration"), dict):
        cal = Calibration.from_dict(attrs["calibration"], source="napari-fusion output")
    return cal


def read_calibration(path: str | Path | Sequence[str | Path]) -> Calibration:
    """The calibration of an input as its metadata states it; :data:`UNCALIBRATED` when it says nothing.

    ``path`` is anything :func:`open_microscopy` or :func:`napari_fusion.io.open_lazy_stack`
    reads. For a folder or list of single-plane files the pixel size of the
    first file is used; a z step comes only from a file that holds the whole
    stack. CZI, ND2 and LIF need bioio and their plugin (a missing one raises
    :class:`~napari_fusion.FusionInputError` naming it). Nothing is guessed.
    """
    if not isinstance(path, (str, Path)):
        paths = [Path(p) for p in path]
        if len(paths) == 1:
            return read_calibration(paths[0])
        return _slices_calibration(paths)
    path = Path(path)
    kind = _kind(path)
    if kind == "zarr":
        return zarr_calibration(path)
    if kind == "folder":
        return _slices_calibration(_folder_files(path))
    if kind == "tiff":
        return tiff_calibration(path)
    if not path.exists():
        raise FusionInputError(f"file not found: {path}")
    img, plugin = _open_bioio(path, BIOIO_FORMATS.get(path.suffix.lower()))
    return _bioio_calibration(img, plugin)


def _folder_files(folder: Path) -> list[Path]:
    """TIFF files of a folder (hidden ones are temporaries of interrupted writes)."""
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in (".tif", ".tiff")]
    return sorted((p for p in files if not p.name.startswith(".")), key=lambda p: p.name)


def _slices_calibration(paths: list[Path]) -> Calibration:
    tiffs = [p for p in paths if p.suffix.lower() in (".tif", ".tiff")]
    if not tiffs:
        return UNCALIBRATED
    cal = tiff_calibration(tiffs[0])
    if len(paths) > 1 and cal.z_step is not None:
        cal = cal.with_z_step(None, cal.source)  # the distance between separate files is not stated anywhere
    return cal


# --------------------------------------------------------------------------- bioio


def _open_bioio(path: Path, spec: tuple[str, str, str] | None):
    """A ``bioio.BioImage`` of ``path`` (nothing read yet) and the name of the plugin that reads it.

    ``spec`` is ``(plugin module, plugin package, format)``, or None to let
    bioio choose among the installed plugins.
    """
    label = spec[2] if spec else f"{path.suffix or path.name} files"
    try:
        import bioio
    except ImportError:
        need = f"bioio and its reader plugin {spec[1]}: pip install bioio {spec[1]}" if spec else "bioio"
        raise FusionInputError(f"{path}: reading {label} needs {need} (or {INSTALL_HINT})") from None
    reader = None
    if spec is not None:
        try:
            reader = importlib.import_module(spec[0]).Reader
        except ImportError:
            raise FusionInputError(
                f"{path}: reading {label} needs the bioio reader plugin {spec[1]}, which is not installed: "
                f"pip install {spec[1]} (or {INSTALL_HINT})"
            ) from None
    kwargs: dict[str, Any] = {}
    if reader is not None:
        import inspect

        if "chunk_dims" in inspect.signature(reader.__init__).parameters:
            kwargs["chunk_dims"] = ["Y", "X", "S"]  # one plane per chunk: read as needed, not whole volumes
    try:
        img = bioio.BioImage(path, reader=reader, **kwargs)
    except Exception as exc:  # noqa: BLE001 - the plugins raise many kinds of errors
        raise FusionInputError(f"{path}: bioio cannot read it ({type(exc).__name__}: {exc})") from None
    plugin = spec[1] if spec else type(img.reader).__module__.split(".")[0].replace("_", "-")
    return img, plugin


def _bioio_calibration(img, plugin: str) -> Calibration:
    sizes = img.physical_pixel_sizes
    units: list[Any] = [None, None, None]
    try:
        props = img.dimension_properties
        units = [getattr(getattr(props, a, None), "unit", None) for a in "XYZ"]
    except Exception:  # noqa: BLE001 - older bioio: no units
        pass
    # bioio's convention: physical pixel sizes are in micrometres unless the reader names a unit
    units = [MICRON if u is None else str(u) for u in units]
    return make_calibration(sizes.X, sizes.Y, sizes.Z, *units, source=plugin)


def _open_with_bioio(path: Path, spec, scene) -> tuple[Any, str, Calibration, str, str | None, list[str]]:
    img, plugin = _open_bioio(path, spec)
    if scene is not None:
        if isinstance(scene, str) and scene.isdigit() and scene not in img.scenes:
            scene = int(scene)
        try:
            img.set_scene(scene)
        except Exception:  # noqa: BLE001 - index or name not in the file
            raise FusionInputError(f"{path} has no scene {scene!r}; its scenes are {list(img.scenes)}") from None
    names = [str(c) for c in (img.channel_names or [])]
    return img.dask_data, img.dims.order, _bioio_calibration(img, plugin), plugin, str(img.current_scene), names


# --------------------------------------------------------------------------- built-in readers


def _scene_index(scene: Any, names: list[str], path: Path) -> int:
    if scene is None:
        return 0
    if isinstance(scene, str) and scene in names:
        return names.index(scene)
    try:
        idx = int(scene)
    except (TypeError, ValueError):
        idx = -1
    if not 0 <= idx < len(names):
        raise FusionInputError(f"{path} has no scene {scene!r}; it has {len(names)}: {names}")
    return idx


def _open_tiff(path: Path, scene) -> tuple[Any, str, Calibration, str, str | None, list[str]]:
    import dask.array as da
    import tifffile
    import zarr

    try:
        with tifffile.TiffFile(path) as tf:
            names = [s.name or str(i) for i, s in enumerate(tf.series)]
            idx = _scene_index(scene, names, path)
            axes = tf.series[idx].axes
        store = tifffile.imread(path, aszarr=True, series=idx, level=0)
        arr = da.from_zarr(zarr.open(store, mode="r"))
    except FusionInputError:
        raise
    except Exception as exc:  # noqa: BLE001 - damaged, truncated or not a TIFF
        raise FusionInputError(f"{path} is damaged or not a readable TIFF: {exc}") from None
    return arr, axes, tiff_calibration(path, idx), "tifffile", names[idx], []


def _ngff_axes(first: dict[str, Any]) -> str:
    letters = {"t": "T", "c": "C", "z": "Z", "y": "Y", "x": "X"}
    names = [a.get("name", "") if isinstance(a, dict) else str(a) for a in first.get("axes", [])]
    return "".join(letters.get(n.lower(), "Q") for n in names)


def _open_zarr(path: Path, scene) -> tuple[Any, str, Calibration, str, str | None, list[str]]:
    import dask.array as da
    import zarr

    try:
        node: Any = zarr.open(str(path), mode="r")
        if scene is not None:
            node = node[str(scene)]
    except KeyError:
        raise FusionInputError(f"{path} has no image {scene!r}") from None
    except Exception as exc:  # noqa: BLE001
        raise FusionInputError(f"cannot open {path} as zarr: {exc}") from None
    if not isinstance(node, zarr.Group):
        if node.ndim != 3:
            raise FusionInputError(
                f"{path} is a zarr array of shape {node.shape} without axis names; expected (Z, Y, X)"
            )
        return da.from_zarr(node), "ZYX", UNCALIBRATED, "zarr", None, []
    attrs = dict(node.attrs)
    ms = attrs.get("multiscales") or (attrs.get("ome") or {}).get("multiscales")
    if not ms:
        raise FusionInputError(
            f"{path} is a zarr group without OME-Zarr (NGFF) multiscales metadata; "
            "open it with napari_fusion.io.open_lazy_stack (component=...)"
        )
    first = ms[0]
    arr = da.from_zarr(node[first["datasets"][0]["path"]])
    axes = _ngff_axes(first) if first.get("axes") else "TCZYX"[-arr.ndim :]  # NGFF 0.3 and older: TCZYX
    omero = attrs.get("omero") or (attrs.get("ome") or {}).get("omero") or {}
    names = [str(c.get("label", i)) for i, c in enumerate(omero.get("channels") or []) if isinstance(c, dict)]
    return arr, axes, ngff_calibration(attrs), "zarr", str(scene) if scene is not None else None, names


def is_ome_zarr(path: str | Path) -> bool:
    """Whether ``path`` is a zarr group with OME-Zarr (NGFF) multiscales metadata."""
    if _kind(Path(path)) != "zarr":
        return False
    import zarr

    try:
        attrs = dict(zarr.open_group(str(path), mode="r").attrs)
    except Exception:  # noqa: BLE001
        return False
    return bool(attrs.get("multiscales") or (attrs.get("ome") or {}).get("multiscales"))


# --------------------------------------------------------------------------- axes


def _pick(arr, axes: str, letter: str, index: Any, path: Path, what: str, names: list[str]) -> tuple[Any, str]:
    """Index away axis ``letter`` at ``index`` (a number, or a channel name); None keeps a channel axis."""
    if letter not in axes:
        if index not in (None, 0, "0"):
            raise FusionInputError(f"{path} has no {what} axis; {what} {index!r} cannot be chosen")
        return arr, axes
    i = axes.index(letter)
    n = int(arr.shape[i])
    if index is None:
        if n == 1:
            return arr[(slice(None),) * i + (0,)], axes[:i] + axes[i + 1 :]
        if letter == "C":
            return arr, axes
        raise FusionInputError(f"{path} has {n} {what}s; choose one with {what}=N (--{what} N)")
    if isinstance(index, str) and index in names:
        index = names.index(index)
    try:
        k = int(index)
    except (TypeError, ValueError):
        k = -1
    if not 0 <= k < n:
        listed = f" ({', '.join(names)})" if names else ""
        raise FusionInputError(f"{path} has no {what} {index!r}: it has {n}{listed}, numbered from 0")
    return arr[(slice(None),) * i + (k,)], axes[:i] + axes[i + 1 :]


def _to_stack_axes(arr, axes: str, path: Path) -> tuple[Any, str]:
    """``(Z, Y, X[, C|S])`` from an array with the other axes already chosen."""
    i = 0
    while i < len(axes):  # by position: a plain TIFF may repeat a letter (QQYX)
        a = axes[i]
        if a in "ZYXCS":
            i += 1
        elif arr.shape[i] == 1:
            arr, axes = arr[(slice(None),) * i + (0,)], axes[:i] + axes[i + 1 :]
        elif "Z" not in axes:
            axes = axes[:i] + "Z" + axes[i + 1 :]  # pages of a plain multi-page TIFF (I, Q): the stack
            i += 1
        else:
            unnamed = " (its axes have no names in the file)" if a in "IQ" else ""
            raise FusionInputError(
                f"{path}: besides its z axis it has an axis {a!r} of size {arr.shape[i]} (axes {axes}, shape "
                f"{tuple(arr.shape)}){unnamed}; napari-fusion reads one z stack: save the stack to fuse on its "
                "own, or as an OME-TIFF with its axes named (then choose with --channel / --timepoint)"
            )
    if "Y" not in axes or "X" not in axes:
        raise FusionInputError(f"{path}: no Y and X axes (axes {axes!r}, shape {tuple(arr.shape)})")
    if "Z" not in axes:
        arr, axes = arr[None], "Z" + axes
    if "C" in axes and "S" in axes:
        i = axes.index("S")
        if arr.shape[i] != 1:
            raise FusionInputError(f"{path} has several channels of RGB images; choose one channel with --channel")
        arr, axes = arr[(slice(None),) * i + (0,)], axes[:i] + axes[i + 1 :]
    order = "ZYX" + "".join(a for a in "CS" if a in axes)
    return arr.transpose([axes.index(a) for a in order]), order


def open_microscopy(
    path: str | Path,
    *,
    scene: int | str | None = None,
    channel: int | str | None = None,
    timepoint: int | None = None,
    backend: str = "auto",
) -> MicroscopyStack:
    """Open a microscope's file lazily as a z stack with its calibration.

    ``path``: CZI, ND2, LIF (through bioio and its plugins), OME-TIFF or any
    TIFF, or OME-Zarr. ``scene``: the scene (image series) by index or name,
    default the first. ``channel``: one channel by index or name; default all
    (a trailing ``C`` axis when there are several). ``timepoint``: required
    when the file holds several. ``backend``: ``"auto"`` (built-in readers for
    TIFF and zarr, bioio for the rest), ``"bioio"`` or ``"builtin"``.

    Nothing is read but metadata; ``result.data`` is a dask array. The file
    is remembered as an input, so the writers of :mod:`napari_fusion.io`
    refuse to write onto it. Raises :class:`~napari_fusion.FusionInputError`
    naming the file and the problem (a missing bioio plugin by its name).

    >>> import numpy as np, tifffile, tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "s.ome.tif")
    >>> tifffile.imwrite(p, np.zeros((3, 8, 8), "uint8"), ome=True,
    ...                  metadata={"axes": "ZYX", "PhysicalSizeX": 0.2, "PhysicalSizeY": 0.2, "PhysicalSizeZ": 0.5})
    >>> ms = open_microscopy(p)
    >>> ms.shape, ms.calibration.z_step, ms.calibration.unit
    ((3, 8, 8), 0.5, 'µm')
    """
    from .output_safety import remember_input

    path = Path(path)
    if backend not in ("auto", "bioio", "builtin"):
        raise FusionInputError(f"backend must be 'auto', 'bioio' or 'builtin', got {backend!r}")
    if not path.exists():
        raise FusionInputError(f"file not found: {path}")
    kind = _kind(path)
    if kind == "folder":
        raise FusionInputError(f"{path} is a folder; open a folder of slices with napari_fusion.io.open_lazy_stack")
    if kind == "bioio" and backend == "builtin":
        raise FusionInputError(f"{path}: no built-in reader for {path.suffix or 'this'} files; use backend='bioio'")
    if kind == "bioio" or backend == "bioio":
        spec = BIOIO_FORMATS.get(path.suffix.lower()) if kind == "bioio" else BIOIO_BUILTIN_PLUGINS[kind]
        arr, axes, cal, reader, scene_name, names = _open_with_bioio(path, spec, scene)
    elif kind == "zarr":
        arr, axes, cal, reader, scene_name, names = _open_zarr(path, scene)
    else:
        arr, axes, cal, reader, scene_name, names = _open_tiff(path, scene)
    remember_input(path)
    axes = axes.upper()
    arr, axes = _pick(arr, axes, "T", timepoint, path, "timepoint", [])
    arr, axes = _pick(arr, axes, "C", channel, path, "channel", names)
    arr, axes = _to_stack_axes(arr, axes, path)
    return MicroscopyStack(arr, cal, axes, path, reader, scene_name, names)


__all__ = [
    "BIOIO_FORMATS",
    "UNCALIBRATED",
    "Calibration",
    "MicroscopyStack",
    "is_microscopy_file",
    "is_ome_zarr",
    "make_calibration",
    "ngff_calibration",
    "open_microscopy",
    "read_calibration",
    "tiff_calibration",
    "zarr_calibration",
]
