"""Model cards: the markdown file shipped beside released weights."""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

import torch


def environment() -> dict[str, str]:
    """Software/hardware the weights were trained with."""
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "machine": f"{platform.system()} {platform.machine()}",
        "processor": platform.processor() or "unknown",
    }


def write_model_card(
    path: str | Path,
    *,
    title: str,
    summary: str,
    manifest: dict[str, Any],
    command: str,
    data: str,
    history: list[dict[str, Any]],
    citation: str,
) -> Path:
    """Write a markdown model card; ``manifest`` is the weights' JSON manifest."""
    path = Path(path)
    t = manifest.get("training", {})
    lines = [
        f"# {title}",
        "",
        summary,
        "",
        "| | |",
        "|---|---|",
        f"| weights file | `{manifest['file']}` ({manifest['bytes']} bytes) |",
        f"| sha256 | `{manifest['sha256']}` |",
        f"| architecture | {manifest.get('architecture', '')} |",
        f"| parameters | {manifest.get('parameters', '')} |",
        f"| seed | {t.get('seed', '')} |",
        f"| training time | {t.get('train_minutes', float('nan')):.1f} min ({t.get('steps', '')} steps, "
        f"{t.get('epochs_done', float('nan')):.2f} epochs{', stopped by the time budget' if t.get('stopped_by_time') else ''}) |",
        f"| validation accuracy | {t.get('val_accuracy', float('nan')):.4f} ({t.get('val_examples', '')} held-out examples) |",
        f"| validation loss | {t.get('val_loss', float('nan')):.4f} |",
        "",
        "## Reproduce",
        "",
        "```",
        command,
        "```",
        "",
        "## Data",
        "",
        data,
        "",
        "## Configuration",
        "",
        "```json",
        json.dumps(manifest.get("config", {}), indent=2, sort_keys=True),
        "```",
        "",
        "## Training history",
        "",
        "| step | epoch | minutes | train loss | train acc | val loss | val acc |",
        "|---|---|---|---|---|---|---|",
    ]
    for h in history:
        lines.append(
            f"| {h['step']} | {h['epoch']:.2f} | {h['minutes']:.1f} | {h['train_loss']:.4f} | "
            f"{h['train_acc']:.4f} | {h['val_loss']:.4f} | {h['val_acc']:.4f} |"
        )
    env = manifest.get("environment", {})
    lines += ["", "## Environment", ""] + [f"- {k}: {v}" for k, v in env.items()]
    lines += ["", "## Citation", "", citation, ""]
    path.write_text("\n".join(lines))
    return path
