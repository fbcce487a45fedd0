"""Tikhonov base/detail split (ops.decomposition) against a direct sparse solve."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch

from napari_fusion.ops.decomposition import pad_symmetric, tikhonov_base, tikhonov_split


@pytest.mark.parametrize("pad", [0, 1, 3, 7, 16, 40])
def test_pad_symmetric_matches_numpy(pad):
    rng = np.random.default_rng(pad)
    x = rng.random((2, 7, 5))
    got = pad_symmetric(torch.from_numpy(x), pad).numpy()
    want = np.pad(x, ((0, 0), (pad, pad), (pad, pad)), mode="symmetric")
    np.testing.assert_array_equal(got, want)


def test_pad_symmetric_uneven_sides():
    x = torch.arange(12.0).reshape(3, 4)
    got = pad_symmetric(x, (1, 2, 3, 0)).numpy()
    want = np.pad(x.numpy(), ((3, 0), (1, 2)), mode="symmetric")
    np.testing.assert_array_equal(got, want)


def _circular_diff(n: int) -> sp.csr_matrix:
    """(D x)[i] = x[i+1] - x[i] with wrap-around: the FFT's convolution with [-1, 1]."""
    eye = sp.identity(n, format="csr")
    shift = sp.csr_matrix((np.ones(n), (np.arange(n), (np.arange(n) + 1) % n)), shape=(n, n))
    return shift - eye


def _direct_base(img: np.ndarray, lam: float, pad: int) -> np.ndarray:
    """Minimise ||P - B||^2 + lam(||Dx B||^2 + ||Dy B||^2) on the symmetric-padded image P by
    solving the normal equations as a sparse linear system, then crop."""
    p = np.pad(img, pad, mode="symmetric")
    hp, wp = p.shape
    dy = sp.kron(_circular_diff(hp), sp.identity(wp))  # row-major flattening: rows are slow
    dx = sp.kron(sp.identity(hp), _circular_diff(wp))
    a = sp.identity(hp * wp) + lam * (dx.T @ dx + dy.T @ dy)
    b = spla.spsolve(a.tocsc(), p.ravel()).reshape(hp, wp)
    return b[pad : pad + img.shape[0], pad : pad + img.shape[1]]


@pytest.mark.parametrize("shape,lam,pad", [((9, 12), 5.0, 16), ((11, 7), 5.0, 3), ((10, 10), 0.7, 0)])
def test_tikhonov_matches_direct_solve(shape, lam, pad):
    rng = np.random.default_rng(1)
    img = rng.random(shape)
    img[2:5, 3:6] += 2.0  # a bright block, so the smoothing matters
    got = tikhonov_base(torch.from_numpy(img), lam=lam, pad=pad).numpy()
    want = _direct_base(img, lam, pad)
    np.testing.assert_allclose(got, want, atol=1e-10)
    # and it is a real smoothing: the base is much flatter than the image
    assert np.abs(np.diff(got, axis=1)).mean() < 0.6 * np.abs(np.diff(img, axis=1)).mean()


def test_split_properties():
    rng = np.random.default_rng(2)
    x = torch.from_numpy(rng.random((3, 20, 17)).astype(np.float32))
    before = x.clone()
    base, detail = tikhonov_split(x, lam=5.0, pad=16)
    assert torch.equal(x, before)  # input untouched
    assert base.dtype == torch.float32 and base.shape == x.shape
    torch.testing.assert_close(base + detail, x)
    # planes are independent: each equals its own single-plane result
    torch.testing.assert_close(base[1], tikhonov_base(x[1]))
    # a constant image is all base
    c = torch.full((13, 9), 0.3, dtype=torch.float64)
    b, d = tikhonov_split(c)
    assert torch.allclose(b, c, atol=1e-12) and d.abs().max() < 1e-12
    # lam = 0 keeps everything in the base
    assert torch.equal(tikhonov_base(x, lam=0.0), x)
    with pytest.raises(ValueError):
        tikhonov_base(x, lam=-1.0)
