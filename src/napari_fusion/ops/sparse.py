"""Batched sparse coding on torch: orthogonal matching pursuit (OMP) for many
signals at once, Batch-OMP style.

Batch-OMP (R. Rubinstein, M. Zibulevsky, M. Elad, "Efficient implementation
of the K-SVD algorithm using batch orthogonal matching pursuit", Technion
CS-2008-08, 2008) never forms residual vectors: with the Gram matrix
``G = D^T D`` and the initial correlations ``alpha0 = D^T x`` it keeps, per
signal,

* the support ``I`` (atoms chosen so far) and the Cholesky factor ``L`` of
  ``G[I, I]``, grown by one row per step;
* the coefficients ``gamma = G[I, I]^{-1} alpha0[I]`` (two triangular solves);
* the correlations of the residual with every atom,
  ``alpha = alpha0 - G[:, I] gamma``;
* the squared residual norm ``||x||^2 - gamma . alpha0[I]`` (exact for an
  orthogonal projection).

Here all signals of a chunk advance together; a signal leaves the active set
when it has ``max_atoms`` atoms, when its squared residual is ``<= eps``, or
when the next atom is numerically dependent on its support. Works on any
device (CPU, CUDA) and in float32 or float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class SparseCodes:
    """OMP result for ``B`` signals over a ``K``-atom dictionary.

    ``index``: ``(B, L)`` long, atom indices in selection order, ``-1`` where
    unused; ``coef``: ``(B, L)`` coefficients (0 where unused); ``count``:
    ``(B,)`` atoms used; ``residual``: ``(B,)`` squared residual norms.
    """

    index: torch.Tensor
    coef: torch.Tensor
    count: torch.Tensor
    residual: torch.Tensor
    n_atoms: int

    def dense(self) -> torch.Tensor:
        """Coefficients as a dense ``(B, K)`` tensor."""
        b = self.index.shape[0]
        out = torch.zeros((b, self.n_atoms), dtype=self.coef.dtype, device=self.coef.device)
        ok = self.index >= 0
        idx = torch.where(ok, self.index, torch.zeros_like(self.index))
        out.scatter_add_(1, idx, torch.where(ok, self.coef, torch.zeros_like(self.coef)))
        return out

    def reconstruct(self, dictionary: torch.Tensor) -> torch.Tensor:
        """``(B, n)`` reconstructions ``D a`` for a dictionary ``(n, K)``."""
        ok = self.index >= 0
        idx = torch.where(ok, self.index, torch.zeros_like(self.index))
        atoms = dictionary.t()[idx]  # (B, L, n)
        coef = torch.where(ok, self.coef, torch.zeros_like(self.coef))
        return torch.einsum("bl,bln->bn", coef, atoms)


def _omp_chunk(
    gram: torch.Tensor,
    alpha0: torch.Tensor,
    norms2: torch.Tensor,
    max_atoms: int,
    eps: float,
    tol: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    b, k = alpha0.shape
    dev, dt = alpha0.device, alpha0.dtype
    index = torch.full((b, max_atoms), -1, dtype=torch.long, device=dev)
    coef = torch.zeros((b, max_atoms), dtype=dt, device=dev)
    count = torch.zeros(b, dtype=torch.long, device=dev)
    resid = norms2.clone()
    chol = torch.zeros((b, max_atoms, max_atoms), dtype=dt, device=dev)
    diag_g = torch.diagonal(gram)
    active = (resid > eps).nonzero().squeeze(1)
    alpha = alpha0[active].clone()  # residual correlations of the active signals
    for j in range(max_atoms):
        if active.numel() == 0:
            break
        score = alpha.abs()
        if j > 0:
            score.scatter_(1, index[active, :j], -1.0)  # never re-select an atom
        new = score.argmax(1)  # (A,)
        # grow the Cholesky factor of G[I, I]
        if j == 0:
            d2 = diag_g[new]
            w = None
        else:
            g_in = gram[index[active, :j], new.unsqueeze(1)]  # (A, j): G[I, new]
            lj = chol[active, :j, :j]
            w = torch.linalg.solve_triangular(lj, g_in.unsqueeze(2), upper=False).squeeze(2)
            d2 = diag_g[new] - (w * w).sum(1)
        ok = d2 > tol * diag_g[new].clamp_min(tol)
        if not bool(ok.all()):  # dependent atom: those signals stop here
            keep = ok.nonzero().squeeze(1)
            active, new, d2, alpha = active[keep], new[keep], d2[keep], alpha[keep]
            if w is not None:
                w = w[keep]
            if active.numel() == 0:
                break
        if w is not None:
            chol[active, j, :j] = w
        chol[active, j, j] = d2.sqrt()
        index[active, j] = new
        count[active] = j + 1
        sup = index[active, : j + 1]  # (A, j+1)
        rhs = alpha0[active].gather(1, sup)  # alpha0[I]
        lfac = chol[active, : j + 1, : j + 1]
        gam = torch.cholesky_solve(rhs.unsqueeze(2), lfac, upper=False).squeeze(2)  # (A, j+1)
        coef[active, : j + 1] = gam
        r = norms2[active] - (gam * rhs).sum(1)
        resid[active] = r.clamp_min(0)
        still = (r > eps) if j + 1 < max_atoms else torch.zeros_like(r, dtype=torch.bool)
        if not bool(still.any()):
            break
        keep = still.nonzero().squeeze(1)
        active, sup, gam = active[keep], sup[keep], gam[keep]
        # alpha = alpha0 - G[:, I] gamma   (rows of the symmetric G)
        alpha = alpha0[active] - torch.bmm(gam.unsqueeze(1), gram[sup]).squeeze(1)
    return index, coef, count, resid


def batch_omp(
    signals: torch.Tensor,
    dictionary: torch.Tensor,
    *,
    max_atoms: int,
    eps: float = 0.0,
    gram: torch.Tensor | None = None,
    chunk: int = 8192,
    tol: float = 1e-7,
) -> SparseCodes:
    """Sparse codes of ``signals`` ``(B, n)`` over ``dictionary`` ``(n, K)`` by OMP.

    Each signal gets at most ``max_atoms`` atoms; coding stops earlier once
    the squared residual norm ``||x - D a||^2`` is ``<= eps`` (a signal whose
    squared norm is already ``<= eps`` gets no atoms). Atoms need not be
    normalised (selection uses plain correlations, as OMP with unit-norm
    atoms does; normalise the dictionary first for the textbook rule).
    ``gram`` may pass a precomputed ``D^T D``. Signals are processed
    ``chunk`` at a time to bound memory (``chunk * K * max_atoms`` values).
    """
    if signals.ndim != 2 or dictionary.ndim != 2:
        raise ValueError("signals must be (B, n) and dictionary (n, K)")
    if signals.shape[1] != dictionary.shape[0]:
        raise ValueError(
            f"signal length {signals.shape[1]} does not match the dictionary's {dictionary.shape[0]} rows"
        )
    if max_atoms < 1:
        raise ValueError("max_atoms must be >= 1")
    n, k = dictionary.shape
    max_atoms = int(min(max_atoms, k, n))
    d = dictionary.to(signals.dtype)
    g = d.t() @ d if gram is None else gram.to(signals.dtype)
    outs = []
    for s in range(0, signals.shape[0], chunk):
        x = signals[s : s + chunk]
        outs.append(_omp_chunk(g, x @ d, (x * x).sum(1), max_atoms, float(eps), tol))
    if not outs:
        e = torch.empty((0, max_atoms), device=signals.device)
        return SparseCodes(e.long(), e.to(signals.dtype), e[:, 0].long(), e[:, 0].to(signals.dtype), k)
    index, coef, count, resid = (torch.cat(t) for t in zip(*outs))
    return SparseCodes(index, coef, count, resid, k)


def normalise_columns(d: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """``d`` with every column scaled to unit l2 norm (zero columns stay zero)."""
    return d / d.norm(dim=0, keepdim=True).clamp_min(eps)


def overcomplete_dct(patch: int, n_atoms: int) -> torch.Tensor:
    """Overcomplete separable 2-D DCT dictionary ``(patch^2, n_atoms)``, unit-norm columns.

    ``n_atoms`` must be a perfect square ``m^2`` (``m >= patch``): the 1-D
    dictionary has ``m`` cosines ``cos(pi * i * k / m)`` sampled at ``patch``
    points, each AC atom with its mean removed (the construction of the
    K-SVD toolbox, Aharon, Elad & Bruckstein 2006); atom 0 is the constant.
    """
    m = int(round(n_atoms**0.5))
    if m * m != n_atoms or m < patch:
        raise ValueError(f"n_atoms must be a square >= patch^2, got {n_atoms} for patch {patch}")
    i = torch.arange(patch, dtype=torch.float64).unsqueeze(1)
    kk = torch.arange(m, dtype=torch.float64).unsqueeze(0)
    d1 = torch.cos(i * kk * torch.pi / m)
    d1[:, 1:] -= d1[:, 1:].mean(0, keepdim=True)
    d1 = d1 / d1.norm(dim=0, keepdim=True)
    d2 = torch.kron(d1, d1)  # (patch^2, m^2), row-major patches
    return normalise_columns(d2).float()
