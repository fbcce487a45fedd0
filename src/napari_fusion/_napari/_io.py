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


def write_tiff(path: str, data: Any, meta: dict) -> list[str]:
    """npe2 single-layer writer: ``data`` is written unchanged (dtype kept)."""
    array = np.asarray(data)
    record: dict[str, Any] = {
        "name": meta.get("name"),
        "scale": _jsonable(meta.get("scale")),
        "translate": _jsonable(meta.get("translate")),
    }
    fusion = (meta.get("metadata") or {}).get("napari_fusion")
    if fusion is not None:
        record["napari_fusion"] = _jsonable(fusion)
    written = write_image(path, array, metadata=record)
    return [str(written)]
