"""Batched OMP (napari_fusion.ops.sparse) against a plain one-signal reference OMP."""

import numpy as np
import pytest
import torch

from napari_fusion.ops.sparse import batch_omp, normalise_columns, overcomplete_dct


def reference_omp(x, d, max_atoms, eps):
    """Textbook OMP for one signal: residual vectors and least squares each step."""
    support = []
    r = x.copy()
    coef = np.zeros(0)
    while len(support) < max_atoms and float(r @ r) > eps:
        corr = np.abs(d.T @ r)
        corr[support] = -1
        support.append(int(corr.argmax()))
        coef, *_ = np.linalg.lstsq(d[:, support], x, rcond=None)
        r = x - d[:, support] @ coef
    return support, coef, float(r @ r)


def _problem(seed, n=32, k=96, b=60, true_atoms=4, noise=0.01):
    rng = np.random.default_rng(seed)
    d = rng.standard_normal((n, k))
    d /= np.linalg.norm(d, axis=0)
    a = np.zeros((k, b))
    for j in range(b):
        sup = rng.choice(k, true_atoms, replace=False)
        a[sup, j] = rng.standard_normal(true_atoms) * 2
    x = (d @ a).T + noise * rng.standard_normal((b, n))
    return d, x


@pytest.mark.parametrize("seed,max_atoms,eps", [(0, 6, 0.0), (1, 3, 0.0), (2, 8, 0.05), (3, 10, 1.0)])
def test_batch_omp_matches_reference(seed, max_atoms, eps):
    d, x = _problem(seed)
    codes = batch_omp(torch.from_numpy(x), torch.from_numpy(d), max_atoms=max_atoms, eps=eps, chunk=17)
    dense = codes.dense().numpy()
    for j in range(x.shape[0]):
        sup, coef, res = reference_omp(x[j], d, max_atoms, eps)
        got = [int(i) for i in codes.index[j] if i >= 0]
        assert got == sup, f"signal {j}"
        assert int(codes.count[j]) == len(sup)
        np.testing.assert_allclose(codes.coef[j, : len(sup)].numpy(), coef, rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(float(codes.residual[j]), res, rtol=1e-5, atol=1e-9)
        ref_dense = np.zeros(d.shape[1])
        ref_dense[sup] = coef
        np.testing.assert_allclose(dense[j], ref_dense, atol=1e-8)
        # stopping rule: either the residual is small enough or the atom budget is spent
        assert res <= eps or len(sup) == max_atoms


def test_batch_omp_residual_rule_and_recon():
    d, x = _problem(5, noise=0.0)
    xt, dt = torch.from_numpy(x), torch.from_numpy(d)
    codes = batch_omp(xt, dt, max_atoms=10, eps=1e-6)
    rec = codes.reconstruct(dt)
    res = ((xt - rec) ** 2).sum(1)
    torch.testing.assert_close(res, codes.residual, atol=1e-8, rtol=1e-5)
    assert bool((codes.residual <= 1e-6).all())  # exact 4-sparse signals are recovered
    assert int(codes.count.max()) <= 5


def test_batch_omp_zero_and_tiny_signals_get_no_atoms():
    d, x = _problem(6)
    x[:5] = 0
    x[5] *= 1e-4
    codes = batch_omp(torch.from_numpy(x), torch.from_numpy(d), max_atoms=4, eps=1e-6)
    assert codes.count[:6].tolist() == [0] * 6
    assert bool((codes.index[:6] == -1).all())
    assert bool((codes.count[6:] > 0).all())


def test_batch_omp_float32_and_dependent_atoms():
    d, x = _problem(7)
    d = np.concatenate([d, d[:, :3]], axis=1)  # duplicated atoms: never chosen twice
    codes = batch_omp(torch.from_numpy(x).float(), torch.from_numpy(d).float(), max_atoms=8)
    for j in range(x.shape[0]):
        got = [int(i) for i in codes.index[j] if i >= 0]
        assert len(set(got)) == len(got)
    rel = codes.residual / (torch.from_numpy(x).float() ** 2).sum(1)
    assert float(rel.max()) < 0.05


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_batch_omp_cuda_matches_cpu():
    d, x = _problem(8, b=500)
    cpu = batch_omp(torch.from_numpy(x), torch.from_numpy(d), max_atoms=6, eps=0.01)
    gpu = batch_omp(torch.from_numpy(x).cuda(), torch.from_numpy(d).cuda(), max_atoms=6, eps=0.01)
    assert torch.equal(cpu.index, gpu.index.cpu())
    torch.testing.assert_close(cpu.coef, gpu.coef.cpu())


def test_overcomplete_dct():
    d = overcomplete_dct(8, 256)
    assert d.shape == (64, 256)
    torch.testing.assert_close(d.norm(dim=0), torch.ones(256))
    assert float(d[:, 0].std()) < 1e-6  # DC atom
    torch.testing.assert_close(d[:, 1:].mean(0), torch.zeros(255), atol=1e-6, rtol=0)
    torch.testing.assert_close(normalise_columns(3 * d), d)
    with pytest.raises(ValueError):
        overcomplete_dct(8, 200)


def test_batch_omp_stops_on_dependent_atoms():
    # atoms span only the x-y plane; signals have a z component that no atom can explain
    d = np.array([[1.0, 0, 0.6, 0.8, -0.6], [0, 1.0, 0.8, 0.6, 0.8], [0, 0, 0, 0, 0]])
    d /= np.linalg.norm(d, axis=0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 3))
    codes = batch_omp(torch.from_numpy(x), torch.from_numpy(d), max_atoms=4, eps=0.0)
    assert codes.count.tolist() == [2] * 40
    torch.testing.assert_close(codes.residual, torch.from_numpy(x[:, 2] ** 2), atol=1e-9, rtol=1e-6)
    rec = codes.reconstruct(torch.from_numpy(d))
    torch.testing.assert_close(rec[:, :2], torch.from_numpy(x[:, :2]))


def test_batch_omp_default_chunks_stay_below_the_mapped_size_and_change_nothing(monkeypatch):
    """The default chunk keeps each (chunk, K) float32 array at OMP_CHUNK_BYTES (below the size
    tiled runs map afresh); chunking never changes the codes."""
    import napari_fusion.ops.sparse as S
    from napari_fusion.ops.tiles import LARGE_ALLOCATION_BYTES

    assert S.OMP_CHUNK_BYTES < LARGE_ALLOCATION_BYTES
    d, x = _problem(6, b=300)
    xt, dt = torch.from_numpy(x).float(), torch.from_numpy(d).float()
    seen = []
    chunked = S._omp_chunk
    monkeypatch.setattr(S, "_omp_chunk", lambda xs, *a: seen.append(len(xs)) or chunked(xs, *a))
    monkeypatch.setattr(S, "OMP_CHUNK_BYTES", 4 * d.shape[1] * 128)  # 128 signals per chunk
    small = batch_omp(xt, dt, max_atoms=5)
    assert seen == [128, 128, 44]
    whole = batch_omp(xt, dt, max_atoms=5, chunk=x.shape[0])
    assert torch.equal(small.index, whole.index) and torch.allclose(small.coef, whole.coef, atol=1e-6)
