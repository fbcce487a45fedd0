from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="session")
def grey_photo():
    from skimage import data
    from skimage.transform import resize

    return resize(data.camera(), (128, 128), anti_aliasing=True).astype(np.float32)


@pytest.fixture(scope="session")
def rgb_stack():
    """5-slice 96x128 RGB uint8 synthetic stack with known depth."""
    from skimage import data
    from skimage.transform import resize

    from napari_fusion.synthetic import render_focal_stack

    photo = (resize(data.astronaut(), (96, 128), anti_aliasing=True) * 255).astype(np.uint8)
    return render_focal_stack(photo, n_slices=5, max_sigma=4.0, seed=1)


@pytest.fixture(scope="package", autouse=True)
def _one_torch_thread():
    """Small images: one thread avoids oversubscription on shared CI machines."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
