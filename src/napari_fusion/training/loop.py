"""A small, generic, resumable training loop for the learned methods.

The loop knows nothing about a particular network: it gets a model, train
and validation datasets exposing ``len()`` and ``batch(indices)``, and a
``step`` function that returns ``(loss, n_correct, n)`` for a batch. It
provides what every learned method needs: fixed seeds, a deterministic
example order per epoch (so a resumed run sees the same data it would have
seen), SGD or Adam, step learning-rate drops or cosine decay, gradient
steps on any device, periodic atomic checkpoints, resumption, a wall-clock
budget, tqdm progress bars and a history of losses and validation accuracy.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .checkpoints import load_checkpoint, save_checkpoint

StepFn = Callable[[torch.nn.Module, tuple], tuple[torch.Tensor, int, int]]


@dataclass
class TrainConfig:
    """Optimisation settings (data settings live with each method's config)."""

    seed: int = 0
    batch_size: int = 128
    epochs: int = 10
    optimizer: str = "sgd"  # "sgd" (momentum) or "adam"
    lr: float = 1e-4
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "step"  # "step": x lr_drop_factor at lr_drop_at; "cosine": to 0 at the end
    lr_drop_at: tuple[float, ...] = (0.7,)  # fractions of all steps
    lr_drop_factor: float = 0.1
    max_minutes: float | None = None  # stop (and finish cleanly) after this much training time
    checkpoint_every: int = 200  # steps
    val_every: int | None = None  # steps; None: once per epoch
    val_batch_size: int = 512
    threads: int | None = None  # torch.set_num_threads on CPU
    device: str = "auto"

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["lr_drop_at"] = list(self.lr_drop_at)
        return d


@dataclass
class TrainResult:
    """What a finished (or time-capped) run produced."""

    model: torch.nn.Module
    steps: int
    epochs_done: float
    train_seconds: float
    val_accuracy: float
    val_loss: float
    stopped_by_time: bool
    history: list[dict[str, Any]] = field(default_factory=list)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


#: Version of the checkpoint layout written by :func:`train` (2: only tensors and plain
#: values, readable with ``torch.load(weights_only=True)``; RNG states included).
CHECKPOINT_FORMAT = 2


def rng_states() -> dict[str, Any]:
    """Python, NumPy and torch RNG states as tensors and plain values (safe to unpickle)."""
    version, internal, gauss_next = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": {"version": int(version), "state": [int(v) for v in internal], "gauss_next": gauss_next},
        "numpy": {
            "name": str(name),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore what :func:`rng_states` returned (missing parts are left as they are)."""
    py = states.get("python")
    if py is not None:
        random.setstate((int(py["version"]), tuple(int(v) for v in py["state"]), py["gauss_next"]))
    nps = states.get("numpy")
    if nps is not None:
        keys = np.asarray(nps["keys"].numpy() if torch.is_tensor(nps["keys"]) else nps["keys"], dtype=np.uint32)
        np.random.set_state((nps["name"], keys, int(nps["pos"]), int(nps["has_gauss"]), float(nps["cached_gaussian"])))
    if states.get("torch") is not None:
        torch.set_rng_state(states["torch"])


def _lr_factor(cfg: TrainConfig, step: int, total: int, elapsed: float = 0.0) -> float:
    """Learning-rate multiplier. Progress is the fraction of steps done or, with a
    wall-clock budget, of the budget used, whichever is larger, so a time-capped
    run still completes its schedule."""
    frac = step / max(total, 1)
    if cfg.max_minutes:
        frac = max(frac, elapsed / (cfg.max_minutes * 60))
    if cfg.schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(frac, 1.0)))
    factor = 1.0
    for at in cfg.lr_drop_at:
        if frac >= at:
            factor *= cfg.lr_drop_factor
    return factor


def _make_optimizer(cfg: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}")


def _epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(int(seed) * 100003 + int(epoch))
    return torch.randperm(n, generator=g)


def _to(batch: tuple, device: torch.device) -> tuple:
    return tuple(t.to(device, non_blocking=True) for t in batch)


@torch.no_grad()
def evaluate(model, dataset, step: StepFn, *, batch_size: int, device: torch.device) -> tuple[float, float]:
    """(mean loss, accuracy) of ``model`` over a whole dataset."""
    was_training = model.training
    model.eval()
    total_loss, correct, count = 0.0, 0, 0
    for start in range(0, len(dataset), batch_size):
        idx = torch.arange(start, min(start + batch_size, len(dataset)))
        loss, ok, n = step(model, _to(dataset.batch(idx), device))
        total_loss += float(loss) * n
        correct += ok
        count += n
    model.train(was_training)
    return total_loss / max(count, 1), correct / max(count, 1)


def train(
    model: torch.nn.Module,
    train_set,
    val_set,
    step: StepFn,
    cfg: TrainConfig,
    *,
    run_dir: str | Path,
    resume: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> TrainResult:
    """Train ``model``; checkpoints go to ``run_dir/checkpoint.pt``.

    With ``resume=True`` and an existing checkpoint the run continues from
    it (model, optimiser, step, elapsed time); otherwise it starts afresh.
    """
    from tqdm.auto import tqdm

    from ..device import resolve_device

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = run_dir / "checkpoint.pt"
    device = resolve_device(cfg.device)
    if cfg.threads and device.type == "cpu":
        torch.set_num_threads(int(cfg.threads))
    seed_everything(cfg.seed)
    model.to(device)
    model.train()
    opt = _make_optimizer(cfg, model)
    n = len(train_set)
    if n < cfg.batch_size:
        raise ValueError(f"training set has {n} examples, fewer than one batch of {cfg.batch_size}")
    steps_per_epoch = n // cfg.batch_size
    total_steps = steps_per_epoch * cfg.epochs
    global_step = 0
    elapsed = 0.0
    history: list[dict[str, Any]] = []
    if resume and ckpt_path.is_file():
        ck = load_checkpoint(ckpt_path)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        global_step = int(ck["step"])
        elapsed = float(ck["elapsed"])
        history = list(ck.get("history", []))
        if "rng" in ck:
            set_rng_states(ck["rng"])
        elif "torch_rng" in ck:  # format 1 (torch state only)
            torch.set_rng_state(ck["torch_rng"])
        log(f"resumed from {ckpt_path} at step {global_step}/{total_steps} ({elapsed / 60:.1f} min trained)")

    def checkpoint():
        # only tensors and plain values, so load_checkpoint can use weights_only=True
        save_checkpoint(
            ckpt_path,
            {
                "format": CHECKPOINT_FORMAT,
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "step": int(global_step),
                "elapsed": float(elapsed),
                "history": history,
                "rng": rng_states(),
                "config": cfg.as_dict(),
            },
        )

    stopped_by_time = False
    val_loss, val_acc = float("nan"), float("nan")
    bar = tqdm(total=total_steps, initial=global_step, desc="training", unit="step", disable=not progress)
    run_loss, run_ok, run_n = 0.0, 0, 0
    last_val_step = -1
    t_mark = time.perf_counter()
    while global_step < total_steps:
        epoch = global_step // steps_per_epoch
        order = _epoch_order(n, cfg.seed, epoch)
        for pos in range(global_step - epoch * steps_per_epoch, steps_per_epoch):
            for group in opt.param_groups:
                group["lr"] = cfg.lr * _lr_factor(cfg, global_step, total_steps, elapsed)
            idx = order[pos * cfg.batch_size : (pos + 1) * cfg.batch_size]
            loss, ok, cnt = step(model, _to(train_set.batch(idx), device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            global_step += 1
            run_loss += float(loss.detach()) * cnt
            run_ok += ok
            run_n += cnt
            now = time.perf_counter()
            elapsed += now - t_mark
            t_mark = now
            bar.update(1)
            if global_step % 20 == 0 or global_step == total_steps:
                bar.set_postfix(loss=f"{run_loss / run_n:.4f}", acc=f"{run_ok / run_n:.3f}")
            end_of_epoch = pos == steps_per_epoch - 1
            want_val = (cfg.val_every and global_step % cfg.val_every == 0) or (not cfg.val_every and end_of_epoch)
            over_time = cfg.max_minutes is not None and elapsed >= cfg.max_minutes * 60
            if want_val or over_time or global_step == total_steps:
                val_loss, val_acc = evaluate(model, val_set, step, batch_size=cfg.val_batch_size, device=device)
                last_val_step = global_step
                t_mark = time.perf_counter()  # validation time is not training time
                history.append(
                    {
                        "step": global_step,
                        "epoch": global_step / steps_per_epoch,
                        "train_loss": run_loss / max(run_n, 1),
                        "train_acc": run_ok / max(run_n, 1),
                        "val_loss": val_loss,
                        "val_acc": val_acc,
                        "minutes": elapsed / 60,
                    }
                )
                log(
                    f"step {global_step}/{total_steps} epoch {global_step / steps_per_epoch:.2f}: "
                    f"train loss {run_loss / max(run_n, 1):.4f} acc {run_ok / max(run_n, 1):.4f}, "
                    f"val loss {val_loss:.4f} acc {val_acc:.4f} ({elapsed / 60:.1f} min)"
                )
                run_loss, run_ok, run_n = 0.0, 0, 0
            if global_step % cfg.checkpoint_every == 0 or over_time or global_step == total_steps:
                checkpoint()
                t_mark = time.perf_counter()
            if over_time:
                stopped_by_time = True
                log(f"time budget of {cfg.max_minutes} min reached at step {global_step}/{total_steps}")
                break
            if global_step >= total_steps:
                break
        if stopped_by_time:
            break
    bar.close()
    if last_val_step != global_step:  # resumed a finished run, or nothing to do
        val_loss, val_acc = evaluate(model, val_set, step, batch_size=cfg.val_batch_size, device=device)
    return TrainResult(
        model=model,
        steps=global_step,
        epochs_done=global_step / steps_per_epoch,
        train_seconds=elapsed,
        val_accuracy=val_acc,
        val_loss=val_loss,
        stopped_by_time=stopped_by_time,
        history=history,
    )
