"""Combining sources with per-pixel weights or choices."""

from __future__ import annotations

import torch

from .colour import luminance


def luminance_stack(stack: torch.Tensor) -> torch.Tensor:
    """``(N, C, H, W)`` -> ``(N, H, W)`` BT.601 luma (grey stacks are squeezed)."""
    return luminance(stack, channel_dim=1)


def normalise_weights(weights: torch.Tensor, *, eps: float = 1e-12) -> torch.Tensor:
    """Scale ``(N, H, W)`` non-negative weights to sum to one per pixel (uniform where all are 0)."""
    w = weights.clamp_min(0)
    total = w.sum(0, keepdim=True)
    uniform = torch.full_like(w, 1.0 / w.shape[0])
    return torch.where(total > eps, w / total.clamp_min(eps), uniform)


def normalise_weights_(weights: torch.Tensor, *, eps: float = 1e-12) -> torch.Tensor:
    """:func:`normalise_weights` in place: the same values, without the extra ``(N, H, W)`` copies.

    ``weights`` (a float tensor) is overwritten and returned.
    """
    w = weights.clamp_min_(0)
    total = w.sum(0, keepdim=True)
    w.div_(total.clamp_min(eps))
    flat = ~(total > eps)  # as normalise_weights: uniform where the total is 0 (or NaN)
    if bool(flat.any()):
        w.masked_fill_(flat.expand_as(w), 1.0 / w.shape[0])
    return w


def weighted_sum(stack: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``sum_n weights[n] * stack[n]`` with ``(N, H, W)`` weights over ``(N, C, H, W)`` images."""
    return (stack * weights.unsqueeze(1)).sum(0)


def select(stack: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Pick, per pixel, the source named by ``labels`` ``(H, W)``; returns ``(C, H, W)``."""
    n, c, h, w = stack.shape
    idx = labels.long().view(1, 1, h, w).expand(1, c, h, w)
    return stack.gather(0, idx)[0]


def one_hot(labels: torch.Tensor, n: int, dtype=torch.float32) -> torch.Tensor:
    """``(H, W)`` labels -> ``(N, H, W)`` one-hot weights."""
    return torch.nn.functional.one_hot(labels.long(), n).movedim(-1, 0).to(dtype)
