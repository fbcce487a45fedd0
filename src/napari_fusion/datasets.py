"""Locating the shared evaluation data and reading its case layout.

Layout (``shared/data/README.md``): a dataset folder holds one folder per case
with ``src_00.*``, ``src_01.*``... (the images to fuse), optionally ``gt.*``
(all-in-focus ground truth) and ``reference/<METHOD>.*`` (published outputs).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .io import IMAGE_SUFFIXES, natural_key, read_image

DATA_ENV = "NAPARI_FUSION_DATA"


def shared_data_dir() -> Path | None:
    """The shared data folder: ``$NAPARI_FUSION_DATA``, else ``../shared/data`` beside the checkout."""
    env = os.environ.get(DATA_ENV)
    if env:
        p = Path(env).expanduser()
        return p if p.is_dir() else None
    here = Path(__file__).resolve()
    for parent in here.parents:
        cand = parent.parent / "shared" / "data"
        if (parent / "pyproject.toml").exists() and cand.is_dir():
            return cand
    return None


@dataclass
class Case:
    """One fusion case of a dataset."""

    name: str
    path: Path
    sources: list[Path]
    gt: Path | None = None
    references: dict[str, Path] = field(default_factory=dict)

    def load_sources(self) -> list[np.ndarray]:
        return [read_image(p) for p in self.sources]

    def load_gt(self) -> np.ndarray | None:
        return None if self.gt is None else read_image(self.gt)


def _images(folder: Path, stem_prefix: str) -> list[Path]:
    return sorted(
        (
            p
            for p in folder.iterdir()
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and p.stem.startswith(stem_prefix)
        ),
        key=natural_key,
    )


def load_case(path: str | Path) -> Case:
    """Read the file layout of one case folder."""
    path = Path(path)
    sources = _images(path, "src_")
    gts = _images(path, "gt")
    refs = {}
    ref_dir = path / "reference"
    if ref_dir.is_dir():
        for p in sorted(ref_dir.iterdir()):
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.stem.startswith("src_"):
                refs[p.stem] = p
    return Case(path.name, path, sources, gts[0] if gts else None, refs)


def iter_cases(dataset_dir: str | Path) -> list[Case]:
    """All cases of a dataset folder (sub-folders with at least two ``src_*`` images)."""
    dataset_dir = Path(dataset_dir)
    cases = []
    for sub in sorted(dataset_dir.iterdir(), key=natural_key):
        if sub.is_dir():
            case = load_case(sub)
            if len(case.sources) >= 2:
                cases.append(case)
    return cases
