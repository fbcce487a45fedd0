"""Writer contribution: save an Image or Labels layer as TIFF with its dtype unchanged.

Uses :func:`napari_fusion.io.write_image` (the same writer as the CLI), storing
the layer's scale and translate and, for fusion outputs, the ``napari_fusion``
provenance record (method, parameters, sources) as JSON in the TIFF description.

No reader is contributed: napari's built-in reader already opens multi-page TIFFs
and folders of slices as one stack layer (use "stack layer" in the fusion widget),
and a second reader claiming ``*.tif`` would make ``viewer.open(path)`` ambiguous
for every user (napari raises ``MultipleReaderError`` without ``plugin=``).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from ..io import write_image
from ._layers import full_resolution


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except TypeError:
        if isinstance(value, dict):
            return {str(k): _jsonable(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [_jsonable(v) for v in value]
        if hasattr(value, "tolist"):
            return value.tolist()
        return str(value)


def _layer_sources() -> list[str]:
    """Files the open layers were read from (a save onto any of them is refused)."""
    try:
        import napari

        viewer = napari.current_viewer()
    except Exception:  # noqa: BLE001 - no viewer: nothing to protect beyond io's own record
        return []
    if viewer is None:
        return []
    out = []
    for layer in viewer.layers:
        src = getattr(getattr(layer, "source", None), "path", None)
        if src:
            out.append(str(src))
    return out


def write_tiff(path: str, data: Any, meta: dict) -> list[str]:
    """npe2 single-layer writer: ``data`` is written unchanged (dtype kept; level 0 of a multiscale layer).

    napari's save dialog has already asked before replacing an existing file,
    so an existing output is replaced, but never a file an open layer was read
    from (or a file inside such a folder or zarr store): that raises
    :class:`~napari_fusion.FusionOutputError`. The file is written under a
    temporary name and renamed into place.
    """
    array = np.asarray(full_resolution(data))  # a multiscale layer is written at full resolution
    record: dict[str, Any] = {
        "name": meta.get("name"),
        "scale": _jsonable(meta.get("scale")),
        "translate": _jsonable(meta.get("translate")),
    }
    fusion = (meta.get("metadata") or {}).get("napari_fusion")
    if fusion is not None:
        record["napari_fusion"] = _jsonable(fusion)
    written = write_image(path, array, metadata=record, overwrite=True, inputs=_layer_sources())
    return [str(written)]
