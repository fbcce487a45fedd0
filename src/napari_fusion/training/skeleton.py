"""The one shape of every ``napari-fusion train <model>`` run.

A model fills in a :class:`TrainingRecipe` (its data, its network, how to
train and score it, what its manifest and model card say) and
:func:`run_recipe` does the rest, in this order:

1. create the run folder and write ``config.json`` (unless the recipe says not to);
2. set the CPU threads, build the data (timed, logged);
3. seed torch, build the model, train it, score it;
4. export ``<name>.pt`` and its manifest (the recipe's entries plus the
   environment and the command), then let the recipe write its model card and
   any other files;
5. log where the weights went.

:func:`run_from_args` is the ``main_from_args`` every model module shares:
run folder from ``--out`` or the default, the command line for the card,
``--install`` at the end.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .checkpoints import export_weights
from .model_card import environment
from .run_options import command_line, install_weights


@dataclass
class Run:
    """The run a recipe is part of: its folder and how to behave."""

    out_dir: Path
    resume: bool = False
    progress: bool = True
    command: str = ""
    log: Callable[[str], None] = print
    data_seconds: float = 0.0


class TrainingRecipe:
    """What one model provides to :func:`run_recipe` (subclass and fill in the hooks)."""

    #: file stem of the exported weights, manifest and card (``<name>.pt/.json/.md``)
    name: str = ""
    #: write the configuration to ``config.json`` in the run folder
    write_config: bool = True

    def config_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def seed(self) -> int:
        raise NotImplementedError

    def threads(self) -> int | None:
        return None

    def build_data(self, run: Run) -> Any:
        """The data (datasets, info...), built once before the model."""
        raise NotImplementedError

    def data_message(self, data: Any, seconds: float) -> str:
        return f"data ready in {seconds:.0f} s"

    def build_model(self, data: Any) -> torch.nn.Module | None:
        """The untrained model (torch is seeded just before)."""
        raise NotImplementedError

    def train(self, model: torch.nn.Module | None, data: Any, run: Run) -> Any:
        """Train; returns the result the other hooks receive."""
        raise NotImplementedError

    def evaluate(self, result: Any, data: Any, run: Run) -> Any:
        """Scores beyond the training loop's (default: none)."""
        return None

    def manifest(self, result: Any, data: Any, scores: Any, run: Run) -> dict[str, Any]:
        """The manifest's entries (``environment`` and ``command`` are added)."""
        raise NotImplementedError

    def weights(self, result: Any) -> dict[str, torch.Tensor]:
        """The tensors to export (default: the trained model's state dict)."""
        return result.model.state_dict()

    def finish(self, result: Any, data: Any, scores: Any, manifest: dict[str, Any], run: Run) -> None:
        """Write the model card and any other files of the run folder."""
        raise NotImplementedError

    def done_message(self, result: Any, scores: Any, manifest: dict[str, Any], run: Run) -> str:
        return f"wrote {run.out_dir / (self.name + '.pt')} (sha256 {manifest['sha256']})"


class LoopRecipe(TrainingRecipe):
    """A recipe trained by :func:`napari_fusion.training.loop.train`.

    ``cfg.train`` is its :class:`~napari_fusion.training.loop.TrainConfig`;
    its data begins with ``(train_set, val_set)``.
    """

    cfg: Any
    #: what the datasets hold, for the "data ready" line
    examples: str = "examples"

    def config_dict(self) -> dict[str, Any]:
        return self.cfg.as_dict()

    def seed(self) -> int:
        return self.cfg.train.seed

    def threads(self) -> int | None:
        return self.cfg.train.threads

    def data_message(self, data: Any, seconds: float) -> str:
        return f"data ready in {seconds:.0f} s: {len(data[0])} training, {len(data[1])} validation {self.examples}"

    def done_message(self, result: Any, scores: Any, manifest: dict[str, Any], run: Run) -> str:
        return f"{super().done_message(result, scores, manifest, run)}, {result.train_seconds / 60:.1f} min"

    def step(self) -> Callable:
        """The loop's step function ``(model, batch) -> (loss, n_correct, n)``."""
        raise NotImplementedError

    def train(self, model: torch.nn.Module | None, data: Any, run: Run) -> Any:
        from .loop import train

        return train(
            model,
            data[0],
            data[1],
            self.step(),
            self.cfg.train,
            run_dir=run.out_dir,
            resume=run.resume,
            progress=run.progress,
            log=run.log,
        )


def run_recipe(
    recipe: TrainingRecipe,
    out_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    command: str | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Build the data, train, export ``out_dir/<name>.{pt,json,md}``; returns the manifest."""
    run = Run(Path(out_dir), resume, progress, command or "", log)
    run.out_dir.mkdir(parents=True, exist_ok=True)
    if recipe.write_config:
        (run.out_dir / "config.json").write_text(json.dumps(recipe.config_dict(), indent=2) + "\n")
    threads = recipe.threads()
    if threads:
        torch.set_num_threads(int(threads))
    t0 = time.perf_counter()
    data = recipe.build_data(run)
    run.data_seconds = time.perf_counter() - t0
    log(recipe.data_message(data, run.data_seconds))
    torch.manual_seed(recipe.seed())
    model = recipe.build_model(data)
    result = recipe.train(model, data, run)
    scores = recipe.evaluate(result, data, run)
    entries = {**recipe.manifest(result, data, scores, run), "environment": environment(), "command": run.command}
    manifest = export_weights(recipe.weights(result), run.out_dir / f"{recipe.name}.pt", manifest=entries)
    recipe.finish(result, data, scores, manifest, run)
    log(recipe.done_message(result, scores, manifest, run))
    return manifest


def loop_summary(
    seed: int,
    result: Any,
    *,
    val_examples: int,
    train_examples: int | None = None,
    omit: tuple[str, ...] = (),
    **extra: Any,
) -> dict[str, Any]:
    """The manifest's ``training`` entry for a run of :func:`napari_fusion.training.loop.train`."""
    out = {
        "seed": seed,
        "steps": result.steps,
        "epochs_done": result.epochs_done,
        "train_minutes": result.train_seconds / 60,
        "stopped_by_time": result.stopped_by_time,
        "val_accuracy": result.val_accuracy,
        "val_loss": result.val_loss,
        "val_examples": val_examples,
    }
    if train_examples is not None:
        out["train_examples"] = train_examples
    for key in omit:
        out.pop(key, None)
    out.update(extra)
    return out


def run_from_args(args, recipe: TrainingRecipe, default_out: str, *, progress: bool | None = None) -> int:
    """``main_from_args`` of a model: run ``recipe`` into ``--out`` (or ``default_out``), ``--install`` after."""
    out = Path(args.out or default_out)
    from ..output_safety import check_output_path

    check_output_path(out, folder=True, what="run folder --out")  # a file there, or not writable: before any work
    command = command_line()
    manifest = run_recipe(
        recipe,
        out,
        resume=bool(getattr(args, "resume", False)),
        progress=(not args.no_progress) if progress is None else progress,
        command=command,
    )
    if args.install:
        install_weights(out, recipe.name)
    return 0 if manifest else 1


__all__ = ["Run", "TrainingRecipe", "LoopRecipe", "run_recipe", "loop_summary", "run_from_args"]
