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


@dataclass
class _LoopState:
    """Everything the loop changes as it goes (what a checkpoint saves, and the running sums)."""

    model: torch.nn.Module
    opt: torch.optim.Optimizer
    cfg: TrainConfig
    device: torch.device
    ckpt_path: Path
    steps_per_epoch: int
    total_steps: int
    global_step: int = 0
    elapsed: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)
    run_loss: float = 0.0
    run_ok: int = 0
    run_n: int = 0
    last_val_step: int = -1
    val_loss: float = float("nan")
    val_acc: float = float("nan")
    stopped_by_time: bool = False
    t_mark: float = 0.0


def _prepare(model: torch.nn.Module, train_set, cfg: TrainConfig, run_dir: Path) -> _LoopState:
    """Device, threads, seeds, optimiser and step counts of a fresh run."""
    from ..device import resolve_device

    run_dir.mkdir(parents=True, exist_ok=True)
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
    return _LoopState(model, opt, cfg, device, run_dir / "checkpoint.pt", steps_per_epoch, steps_per_epoch * cfg.epochs)


def _resume(st: _LoopState, log: Callable[[str], None]) -> None:
    """Continue from the run folder's checkpoint (model, optimiser, step, time, history, RNG)."""
    ck = load_checkpoint(st.ckpt_path)
    st.model.load_state_dict(ck["model"])
    st.opt.load_state_dict(ck["optimizer"])
    st.global_step = int(ck["step"])
    st.elapsed = float(ck["elapsed"])
    st.history = list(ck.get("history", []))
    if "rng" in ck:
        set_rng_states(ck["rng"])
    elif "torch_rng" in ck:  # format 1 (torch state only)
        torch.set_rng_state(ck["torch_rng"])
    log(f"resumed from {st.ckpt_path} at step {st.global_step}/{st.total_steps} ({st.elapsed / 60:.1f} min trained)")


def _checkpoint(st: _LoopState) -> None:
    # only tensors and plain values, so load_checkpoint can use weights_only=True
    save_checkpoint(
        st.ckpt_path,
        {
            "format": CHECKPOINT_FORMAT,
            "model": st.model.state_dict(),
            "optimizer": st.opt.state_dict(),
            "step": int(st.global_step),
            "elapsed": float(st.elapsed),
            "history": st.history,
            "rng": rng_states(),
            "config": st.cfg.as_dict(),
        },
    )


def _optimise(st: _LoopState, batch: tuple, step: StepFn) -> None:
    """One gradient step on ``batch``, with the scheduled learning rate; counts time and running sums."""
    cfg = st.cfg
    for group in st.opt.param_groups:
        group["lr"] = cfg.lr * _lr_factor(cfg, st.global_step, st.total_steps, st.elapsed)
    loss, ok, cnt = step(st.model, _to(batch, st.device))
    st.opt.zero_grad(set_to_none=True)
    loss.backward()
    st.opt.step()
    st.global_step += 1
    st.run_loss += float(loss.detach()) * cnt
    st.run_ok += ok
    st.run_n += cnt
    now = time.perf_counter()
    st.elapsed += now - st.t_mark
    st.t_mark = now


def _validate(st: _LoopState, val_set, step: StepFn, log: Callable[[str], None]) -> None:
    """Score the validation set, add a history row, log it and reset the running sums."""
    cfg, g = st.cfg, st.global_step
    st.val_loss, st.val_acc = evaluate(st.model, val_set, step, batch_size=cfg.val_batch_size, device=st.device)
    st.last_val_step = g
    st.t_mark = time.perf_counter()  # validation time is not training time
    train_loss, train_acc = st.run_loss / max(st.run_n, 1), st.run_ok / max(st.run_n, 1)
    st.history.append(
        {
            "step": g,
            "epoch": g / st.steps_per_epoch,
            "train_loss": train_loss,
            "train_acc": train_acc,
            "val_loss": st.val_loss,
            "val_acc": st.val_acc,
            "minutes": st.elapsed / 60,
        }
    )
    log(
        f"step {g}/{st.total_steps} epoch {g / st.steps_per_epoch:.2f}: "
        f"train loss {train_loss:.4f} acc {train_acc:.4f}, "
        f"val loss {st.val_loss:.4f} acc {st.val_acc:.4f} ({st.elapsed / 60:.1f} min)"
    )
    st.run_loss, st.run_ok, st.run_n = 0.0, 0, 0


def _run_epoch(st: _LoopState, train_set, val_set, step: StepFn, bar, log: Callable[[str], None]) -> bool:
    """The rest of the current epoch; True when the run must stop (time budget or last step)."""
    cfg = st.cfg
    epoch = st.global_step // st.steps_per_epoch
    order = _epoch_order(len(train_set), cfg.seed, epoch)
    for pos in range(st.global_step - epoch * st.steps_per_epoch, st.steps_per_epoch):
        _optimise(st, train_set.batch(order[pos * cfg.batch_size : (pos + 1) * cfg.batch_size]), step)
        bar.update(1)
        if st.global_step % 20 == 0 or st.global_step == st.total_steps:
            bar.set_postfix(loss=f"{st.run_loss / st.run_n:.4f}", acc=f"{st.run_ok / st.run_n:.3f}")
        end_of_epoch = pos == st.steps_per_epoch - 1
        last = st.global_step == st.total_steps
        want_val = (cfg.val_every and st.global_step % cfg.val_every == 0) or (not cfg.val_every and end_of_epoch)
        over_time = cfg.max_minutes is not None and st.elapsed >= cfg.max_minutes * 60
        if want_val or over_time or last:
            _validate(st, val_set, step, log)
        if st.global_step % cfg.checkpoint_every == 0 or over_time or last:
            _checkpoint(st)
            st.t_mark = time.perf_counter()
        if over_time:
            st.stopped_by_time = True
            log(f"time budget of {cfg.max_minutes} min reached at step {st.global_step}/{st.total_steps}")
            return True
        if st.global_step >= st.total_steps:
            return True
    return False


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

    st = _prepare(model, train_set, cfg, Path(run_dir))
    if resume and st.ckpt_path.is_file():
        _resume(st, log)
    bar = tqdm(total=st.total_steps, initial=st.global_step, desc="training", unit="step", disable=not progress)
    st.t_mark = time.perf_counter()
    while st.global_step < st.total_steps:
        if _run_epoch(st, train_set, val_set, step, bar, log):
            break
    bar.close()
    if st.last_val_step != st.global_step:  # resumed a finished run, or nothing to do
        st.val_loss, st.val_acc = evaluate(model, val_set, step, batch_size=cfg.val_batch_size, device=st.device)
    return TrainResult(
        model=model,
        steps=st.global_step,
        epochs_done=st.global_step / st.steps_per_epoch,
        train_seconds=st.elapsed,
        val_accuracy=st.val_acc,
        val_loss=st.val_loss,
        stopped_by_time=st.stopped_by_time,
        history=st.history,
    )
