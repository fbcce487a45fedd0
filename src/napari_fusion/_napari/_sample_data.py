"""Sample data rendered at run time (napari's File > Open Sample > napari-fusion).

* ``focal_stack`` - :func:`napari_fusion.synthetic.render_focal_stack` of scikit-image's
  astronaut photograph (downsized to 256x256 so it renders in about half a second):
  6 RGB slices focused at evenly spaced depths of a smooth depth map. The all-in-focus
  photograph and the true depth come along as hidden layers for comparison.
* ``exposure_series`` - :func:`napari_fusion.synthetic.render_exposure_series` of the
  same photograph: 3 exposures two stops apart.

Both are returned as one stack layer (images along axis 0): choose "stack layer" in
the fusion widget.
"""

from __future__ import annotations

import numpy as np

from ..synthetic import demo_photograph, render_exposure_series, render_focal_stack

SAMPLE_SIZE = 256


def _photo(size: int = SAMPLE_SIZE) -> np.ndarray:
    from skimage.transform import resize

    photo = demo_photograph()
    if photo.shape[0] != size or photo.shape[1] != size:
        photo = resize(photo, (size, size), anti_aliasing=True, preserve_range=True)
        photo = np.clip(np.rint(photo), 0, 255).astype(np.uint8)
    return photo


def focal_stack(n_slices: int = 6, max_sigma: float = 5.0, size: int = SAMPLE_SIZE):
    """Synthetic RGB focal stack with known ground truth, as napari layer data."""
    stack = render_focal_stack(_photo(size), n_slices=n_slices, max_sigma=max_sigma, seed=0)
    meta = {
        "napari_fusion": {
            "sample": "focal_stack",
            "focus_depths": [float(z) for z in stack.focus_depths],
            "stack_axis": 0,
        }
    }
    return [
        (stack.slices, {"name": "focal stack", "rgb": True, "metadata": meta}, "image"),
        (stack.ground_truth, {"name": "all-in-focus truth", "rgb": True, "visible": False}, "image"),
        (
            stack.depth,
            {"name": "true depth", "colormap": "viridis", "visible": False, "contrast_limits": (0.0, 1.0)},
            "image",
        ),
    ]


def exposure_series(n_exposures: int = 3, stops: float = 2.0, size: int = SAMPLE_SIZE):
    """Synthetic RGB exposure bracket, as napari layer data."""
    series = render_exposure_series(_photo(size), n_exposures=n_exposures, stops=stops)
    meta = {"napari_fusion": {"sample": "exposure_series", "stops": stops, "stack_axis": 0}}
    return [(series, {"name": "exposure series", "rgb": True, "metadata": meta}, "image")]
