"""Shared fixtures. Real data is read from ``$NAPARI_FUSION_DATA`` or
``../shared/data`` beside the checkout; tests that need it skip when absent.

Tests that run methods take the ``device`` fixture: ``"cpu"`` by default,
``NAPARI_FUSION_TEST_DEVICE=cuda`` (or ``cuda:1``, ``mps``) runs them there.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from napari_fusion.datasets import shared_data_dir

#: Environment variable naming the torch device the ``device`` fixture gives.
TEST_DEVICE_ENV = "NAPARI_FUSION_TEST_DEVICE"


@pytest.fixture(scope="session")
def device() -> str:
    """The device tests fuse on: ``$NAPARI_FUSION_TEST_DEVICE``, default ``"cpu"``.

    A named device that is not available fails the tests that use it (a GPU
    run asked for must not quietly become a CPU run).
    """
    from napari_fusion.device import resolve_device
    from napari_fusion.errors import FusionInputError

    name = os.environ.get(TEST_DEVICE_ENV, "").strip() or "cpu"
    try:
        resolve_device(name)
    except FusionInputError as exc:
        pytest.fail(f"{TEST_DEVICE_ENV}={name!r}: {exc}", pytrace=False)
    return name


@pytest.fixture(scope="session")
def data_dir():
    d = shared_data_dir()
    if d is None:
        pytest.skip("shared data not found (set NAPARI_FUSION_DATA)")
    return d


@pytest.fixture
def dataset(data_dir):
    """``dataset("multifocus/mf_voc")`` -> its folder, or skip if missing."""

    def get(rel: str):
        p = data_dir / rel
        if not p.exists():
            pytest.skip(f"dataset {rel} not found under {data_dir}")
        return p

    return get


@pytest.fixture(scope="session")
def small_focal_stack():
    """A 4-slice 96x128 RGB synthetic focal stack with known ground truth."""
    from skimage import data
    from skimage.transform import resize

    from napari_fusion.synthetic import render_focal_stack

    photo = (resize(data.astronaut(), (96, 128), anti_aliasing=True) * 255).astype(np.uint8)
    return render_focal_stack(photo, n_slices=4, max_sigma=4.0, seed=3)
