"""Validation and conversion of user images into the tensor layout methods use."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import FusionInputError

SUPPORTED_DTYPES = (
    np.dtype(np.uint8),
    np.dtype(np.uint16),
    np.dtype(np.int8),
    np.dtype(np.int16),
    np.dtype(np.uint32),
    np.dtype(np.int32),
    np.dtype(np.float32),
    np.dtype(np.float64),
)

MIN_SIZE = 8


@dataclass
class PreparedStack:
    """Inputs as one float32 ``(N, C, H, W)`` numpy array plus how to undo the scaling.

    Prepared with ``materialise=False`` (:func:`prepare`), ``data`` is None and
    ``items`` holds the validated input arrays: :meth:`slice_view` then converts
    one slice at a time, when a method reads it.
    """

    data: np.ndarray | None  # (N, C, H, W) float32, scaled
    dtype: np.dtype
    colour: bool
    offset: float
    scale: float
    low: float  # smallest input value (output is clipped to [low, high])
    high: float
    items: list | None = None

    @property
    def n(self) -> int:
        return self.data.shape[0] if self.data is not None else len(self.items or ())

    def to_tensor(self, device: torch.device) -> torch.Tensor:
        if self.data is None:
            raise RuntimeError("this stack was prepared slice by slice; use slice_view()")
        return torch.from_numpy(self.data).to(device)

    def slice_view(self, device: torch.device) -> ScaledSlices:
        """The stack as :class:`ScaledSlices`: each ``view[k]`` converted when read."""
        if self.items is None:
            raise RuntimeError("this stack was materialised; use to_tensor()")
        return ScaledSlices(self.items, colour=self.colour, offset=self.offset, scale=self.scale, device=device)

    def restore(self, fused: torch.Tensor) -> np.ndarray:
        """Map a fused ``(C, H, W)`` tensor back to the input dtype, range and layout."""
        t = fused.detach().to("cpu", torch.float64)
        if t.data_ptr() == fused.data_ptr():  # already float64 on the CPU: never scale the caller's tensor
            t = t.clone()
        out = t.numpy()  # scaled in place below: one float64 buffer
        out *= self.scale
        out += self.offset
        np.clip(out, self.low, self.high, out=out)
        if np.issubdtype(self.dtype, np.integer):
            np.rint(out, out=out)
        out = out.astype(self.dtype)
        if self.colour:
            return np.ascontiguousarray(np.moveaxis(out, 0, -1))
        return out[0]


class ScaledSlices:
    """A read-only ``(N, C, H, W)`` float32 stack whose slices are converted when read.

    For methods registered with ``streams_slices=True``: they read the stack
    only through ``len(stack)``, ``stack.shape``, ``stack.dtype``,
    ``stack.device`` and ``stack[k]`` (one slice, ``(C, H, W)``), so the untiled
    path need not hold a float32 copy of the whole stack (1 GB for 20 RGB
    slices of 2048^2) beside the caller's arrays. ``stack[k]`` has exactly the
    values of slice ``k`` of the materialised stack (:func:`scale_into`); each
    read converts anew, so a method reads each slice as few times as it can.
    """

    def __init__(self, items: list, *, colour: bool, offset: float, scale: float, device: torch.device):
        self._items = list(items)
        h, w = self._items[0].shape[:2]
        self.shape = torch.Size((len(self._items), 3 if colour else 1, h, w))
        self.dtype = torch.float32
        self.device = torch.device(device)
        self._colour, self._offset, self._scale = colour, offset, scale

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, k: int) -> torch.Tensor:
        if not isinstance(k, (int, np.integer)):
            raise TypeError(f"a slice view is read one slice at a time (stack[k]), not with {k!r}")
        k = int(k)
        dst = np.empty(self.shape[1:], dtype=np.float32)
        scale_into(self._items[k], dst, colour=self._colour, offset=self._offset, scale=self._scale)
        return torch.from_numpy(dst).to(self.device)


def _describe(a: np.ndarray) -> str:
    return f"shape {tuple(a.shape)}"


def split_stack(arr: Any, *, stack_axis: int = 0, channel_axis: int | None = None) -> list:
    """Split one stack array into a list of images (stack axis first, colour axis last).

    Works on anything that follows numpy's array protocol (numpy or dask
    arrays): only ``ndim`` and ``np.moveaxis`` are used, so a dask array stays
    lazy.
    """
    ndim = arr.ndim
    if ndim < 3:
        raise FusionInputError(
            f"a single array must be a stack with a stack axis (3-D or 4-D); got {_describe(arr)}. "
            "Fusion needs at least two images."
        )
    if not -ndim <= stack_axis < ndim:
        raise FusionInputError(f"stack_axis {stack_axis} is out of range for an array of {_describe(arr)}")
    moved = np.moveaxis(arr, stack_axis, 0)
    if channel_axis is not None:
        if not -ndim <= channel_axis < ndim:
            raise FusionInputError(f"channel_axis {channel_axis} is out of range for an array of {_describe(arr)}")
        if (channel_axis - stack_axis) % ndim == 0:
            raise FusionInputError(f"channel_axis and stack_axis are the same axis ({stack_axis}) of {_describe(arr)}")
        ca = channel_axis if channel_axis >= 0 else channel_axis + ndim
        sa = stack_axis if stack_axis >= 0 else stack_axis + ndim
        ca = ca - (1 if ca > sa else 0) + 1  # position after moving the stack axis to 0
        moved = np.moveaxis(moved, ca, -1)
    return [moved[i] for i in range(moved.shape[0])]


def as_image_list(images: Any, *, stack_axis: int = 0, channel_axis: int | None = None) -> list[np.ndarray]:
    """Split the user's ``images`` into a list of 2-D grey or ``(H, W, 3)`` arrays.

    ``images`` is a sequence of arrays, or one array holding a stack along
    ``stack_axis``. ``channel_axis`` names the colour axis of a stack array
    when it is not last.
    """
    if isinstance(images, (str, bytes)):
        raise FusionInputError("images must be arrays; to read files use napari_fusion.io.read_stack")
    if hasattr(images, "__array__") or hasattr(images, "shape") and hasattr(images, "dtype"):
        return split_stack(np.asarray(images), stack_axis=stack_axis, channel_axis=channel_axis)
    try:
        items = list(images)
    except TypeError:
        raise FusionInputError(
            f"images must be a sequence of arrays or one stack array, got {type(images).__name__}"
        ) from None
    if any(isinstance(a, (str, bytes, Path)) for a in items):
        raise FusionInputError("images must be arrays, not file names; to read files use napari_fusion.io.read_stack")
    return [np.asarray(a) for a in items]


def grey_to_rgb(a: Any) -> Any:
    """A 2-D grey image as ``(H, W, 3)`` with three equal channels (a new array; lazy stays lazy)."""
    return np.repeat(a[..., None], 3, axis=-1)


def check_items(items: list, *, mixed_colour: bool = False) -> tuple[list, np.dtype, bool]:
    """Validate a list of images from their metadata alone (count, dtype, dimensions, sizes).

    Only ``dtype``, ``ndim``, ``shape`` and ``[..., 0]`` indexing are used, so
    lazy (dask) arrays are checked without reading them. Returns the items
    (a trailing channel axis of length 1 dropped), their dtype, and whether
    they are colour.

    Grey and RGB images together are refused unless ``mixed_colour`` (a
    method that declares it, e.g. infrared + colour visible): then every grey
    image is given three equal channels (no chroma), so the stack is colour
    and a method working on luminance sees the grey image unchanged.
    """
    items = list(items)
    if len(items) < 2:
        raise FusionInputError(f"fusion needs at least two images, got {len(items)}")
    dtypes = {np.dtype(a.dtype) for a in items}
    for a in items:
        if a.dtype not in SUPPORTED_DTYPES:
            hint = (
                f"; convert first, e.g. images.astype(np.float32){' (values beyond 2**24 lose precision)' if a.dtype.kind in 'iu' else ''}"
                if a.dtype.kind in "iuf"
                else ""
            )
            raise FusionInputError(
                f"unsupported dtype {a.dtype}; supported: " + ", ".join(str(d) for d in SUPPORTED_DTYPES) + hint
            )
    if len(dtypes) > 1:
        raise FusionInputError(
            "images have different dtypes ("
            + ", ".join(sorted(str(d) for d in dtypes))
            + "); convert them to one dtype first"
        )
    dtype = np.dtype(items[0].dtype)
    kinds = []
    for i, a in enumerate(items):
        if a.ndim == 3 and a.shape[-1] == 1:
            a = a[..., 0]
            items[i] = a
        if a.ndim == 2:
            kinds.append("grey")
        elif a.ndim == 3 and a.shape[-1] == 3:
            kinds.append("rgb")
        elif a.ndim == 3 and a.shape[-1] == 4:
            raise FusionInputError(f"image {i} has 4 channels (RGBA); drop the alpha channel first (image[..., :3])")
        else:
            raise FusionInputError(
                f"image {i} has {_describe(a)}; each image must be 2-D grey (H, W) or colour (H, W, 3)"
            )
    if len(set(kinds)) > 1 and mixed_colour:
        items = [grey_to_rgb(a) if k == "grey" else a for a, k in zip(items, kinds)]
        kinds = ["rgb"] * len(items)
    if len(set(kinds)) > 1:
        grey = [i for i, k in enumerate(kinds) if k == "grey"]
        rgb = [i for i, k in enumerate(kinds) if k == "rgb"]
        raise FusionInputError(
            f"grey and RGB images are mixed (grey: {grey}, RGB: {rgb}); convert them all to grey or all to RGB"
        )
    shapes = {tuple(a.shape[:2]) for a in items}
    if len(shapes) > 1:
        raise FusionInputError(
            "images have different sizes: "
            + ", ".join(f"{i}: {a.shape[0]}x{a.shape[1]}" for i, a in enumerate(items))
            + "; all images must have the same height and width (crop, resize or align them first)"
        )
    h, w = items[0].shape[:2]
    if h < MIN_SIZE or w < MIN_SIZE:
        raise FusionInputError(f"images are {h}x{w} pixels; at least {MIN_SIZE}x{MIN_SIZE} is needed")
    return items, dtype, kinds[0] == "rgb"


def non_finite_message(index: int, count: int) -> str:
    """The error text for an image holding NaN or inf values."""
    return f"image {index} contains {count} non-finite values (NaN or inf)"


def intensity_mapping(dtype: np.dtype, low: float, high: float, intensity: str) -> tuple[float, float, float, float]:
    """``(offset, scale, out_low, out_high)`` for inputs of ``dtype`` spanning ``[low, high]``.

    ``intensity='stack'`` maps the stack's own range to [0, 1];
    ``'dtype'`` divides by the dtype's full scale. The fused output is clipped
    to the inputs' range ``[low, high]``.
    """
    if intensity == "dtype":
        if np.issubdtype(dtype, np.integer):
            info = np.iinfo(dtype)
            return float(min(info.min, 0)), float(info.max - min(info.min, 0)), low, high
        return 0.0, 1.0, low, high
    scale = high - low if high > low else 1.0
    return low, scale, low, high


def scale_into(image: Any, dst: np.ndarray, *, colour: bool, offset: float, scale: float) -> None:
    """Write ``(float32(image) - float32(offset)) / float32(scale)``, channels first, into ``dst``."""
    a = np.asarray(image)
    src = np.moveaxis(a, -1, 0) if colour else a[None]
    if offset != 0.0 or scale != 1.0:
        np.subtract(src, np.float32(offset), out=dst, dtype=np.float32, casting="same_kind")
        np.divide(dst, np.float32(scale), out=dst)
    else:
        dst[...] = src


def scale_stack(items: Any, *, colour: bool, offset: float, scale: float) -> np.ndarray:
    """Stack images (a list, or an ``(N, H, W[, 3])`` array) into scaled float32 ``(N, C, H, W)``.

    The output is allocated once and each image is converted, moved to
    channels-first and scaled straight into its place (two threads for numpy
    inputs, which release the GIL; lazy inputs one at a time), with no
    intermediate copies of the whole stack. Values
    are those of ``(float32(image) - float32(offset)) / float32(scale)``.
    """
    items = list(items)
    n, (h, w) = len(items), tuple(items[0].shape[:2])
    out = np.empty((n, 3 if colour else 1, h, w), dtype=np.float32)

    def fill(i: int) -> None:
        scale_into(items[i], out[i], colour=colour, offset=offset, scale=scale)

    # threads only for in-memory arrays: concurrent computes of dask arrays race in dask's callbacks
    # (napari's dask cache), which raised KeyError on a graph key in the widget tests
    in_memory = all(isinstance(it, np.ndarray) for it in items)
    if in_memory and n > 1 and h * w >= 256 * 256:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=2) as pool:
            list(pool.map(fill, range(n)))
    else:
        for i in range(n):
            fill(i)
    return out


def prepare(
    images: Any,
    *,
    stack_axis: int = 0,
    channel_axis: int | None = None,
    intensity: str = "stack",
    mixed_colour: bool = False,
    materialise: bool = True,
) -> PreparedStack:
    """Validate the inputs and convert them to a scaled float32 ``(N, C, H, W)`` stack.

    ``mixed_colour``: accept grey and RGB images together (grey ones become
    three equal channels, see :func:`check_items`). ``materialise=False``:
    validate and find the scaling, but convert nothing; the result's
    :meth:`~PreparedStack.slice_view` converts each slice when it is read.
    """
    items = as_image_list(images, stack_axis=stack_axis, channel_axis=channel_axis)
    items, dtype, colour = check_items(items, mixed_colour=mixed_colour)
    if np.issubdtype(dtype, np.floating):
        for i, a in enumerate(items):
            if not np.isfinite(a).all():
                raise FusionInputError(non_finite_message(i, int((~np.isfinite(a)).sum())))
    low = float(min(a.min() for a in items))
    high = float(max(a.max() for a in items))
    offset, scale, out_low, out_high = intensity_mapping(dtype, low, high, intensity)
    if not materialise:
        return PreparedStack(None, dtype, colour, offset, scale, out_low, out_high, items=items)
    stack = scale_stack(items, colour=colour, offset=offset, scale=scale)
    return PreparedStack(stack, dtype, colour, offset, scale, out_low, out_high)
