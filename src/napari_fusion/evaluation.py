"""Run methods on a dataset and score them with the fusion metrics (``napari-fusion evaluate``,
whose command line is :mod:`napari_fusion.cli.evaluate`).

Works on any folder in the shared layout (``<case>/src_00.*``, ``src_01.*``...,
optional ``gt.*``, optional ``reference/<METHOD>.*``). For each case it fuses
the sources with every requested method (timing each call), optionally scores
the published outputs in ``reference/`` with the same code, and reports the
mean of each metric per method, like the tables of fusion papers.
"""

from __future__ import annotations

import csv
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._cpu_threads import threads_for_current_load
from .errors import FusionInputError


@dataclass
class EvaluationResult:
    """Per-case scores and their summary.

    ``rows``: one dict per (case, method) with keys ``case``, ``method``,
    ``kind`` (``'ours'`` or ``'reference'``), ``seconds`` (fusion time, NaN for
    references) and one key per metric.
    """

    metrics: list[str]
    rows: list[dict[str, Any]] = field(default_factory=list)
    #: ``(case, method, metric, reason)`` of each score that could not be computed (NaN in ``rows``)
    skipped: list[tuple[str, str, str, str]] = field(default_factory=list)

    def skipped_note(self, *, show: int = 3) -> str:
        """One line per metric that could not be computed on some runs, with the first reason."""
        by_metric: dict[str, list[tuple[str, str, str, str]]] = {}
        for item in self.skipped:
            by_metric.setdefault(item[2], []).append(item)
        lines = []
        for metric, items in by_metric.items():
            case, method, _, reason = items[0]
            lines.append(
                f"note: metric {metric!r} could not be computed on {len(items)} run(s) (left out of the means); "
                f"first: case {case}, {method}: {reason}"
            )
        return "\n".join(lines)

    def summary(self) -> list[dict[str, Any]]:
        """Mean of each metric (NaN-ignoring) and seconds per case, per (kind, method)."""
        groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for r in self.rows:
            groups.setdefault((r["kind"], r["method"]), []).append(r)
        out = []
        for (kind, method), rows in sorted(groups.items(), key=lambda kv: (kv[0][0] != "ours", kv[0][1].lower())):
            entry: dict[str, Any] = {"method": method, "kind": kind, "cases": len(rows)}
            for m in self.metrics:
                vals = np.array([r.get(m, math.nan) for r in rows], dtype=np.float64)
                finite = vals[~np.isnan(vals)]
                entry[m] = float(finite.mean()) if finite.size else math.nan
            secs = np.array([r["seconds"] for r in rows], dtype=np.float64)
            entry["s_per_case"] = float(np.nanmean(secs)) if np.isfinite(secs).any() else math.nan
            out.append(entry)
        return out

    def format_table(self) -> str:
        """The summary as an aligned text table."""
        summ = self.summary()
        cols = ["method", "kind", "cases", *self.metrics, "s_per_case"]
        cells = [cols]
        for e in summ:
            row = []
            for c in cols:
                v = e[c]
                if isinstance(v, float):
                    row.append("nan" if math.isnan(v) else f"{v:.4g}")
                else:
                    row.append(str(v))
            cells.append(row)
        widths = [max(len(r[i]) for r in cells) for i in range(len(cols))]
        lines = []
        for k, r in enumerate(cells):
            lines.append("  ".join(s.ljust(w) if i < 2 else s.rjust(w) for i, (s, w) in enumerate(zip(r, widths))))
            if k == 0:
                lines.append("  ".join("-" * w for w in widths))
        return "\n".join(lines)

    def write(self, path: str | Path, *, overwrite: bool = False, inputs: Sequence[str | Path] = ()) -> Path:
        """Write the summary as CSV (``.csv``) or summary + per-case rows as JSON (``.json``).

        An existing file is replaced only with ``overwrite=True``, never an input; the
        table is written under a temporary name and renamed into place.
        """
        from .output_safety import atomic_file, check_output_path

        path = Path(path)
        if path.suffix.lower() not in (".json", ".csv"):
            raise FusionInputError(f"output must end in .csv or .json, not {path.name!r}")
        check_output_path(path, inputs=inputs, overwrite=overwrite)
        with atomic_file(path) as tmp:
            self._write_to(tmp, path.suffix.lower())
        return path

    def _write_to(self, path: Path, suffix: str) -> None:
        summ = self.summary()
        if suffix == ".json":
            clean = lambda v: None if isinstance(v, float) and not math.isfinite(v) else v  # noqa: E731
            doc = {
                "metrics": self.metrics,
                "summary": [{k: clean(v) for k, v in e.items()} for e in summ],
                "cases": [{k: clean(v) for k, v in r.items()} for r in self.rows],
            }
            path.write_text(json.dumps(doc, indent=2))
        else:
            cols = ["method", "kind", "cases", *self.metrics, "s_per_case"]
            with open(path, "w", newline="") as fh:
                w = csv.writer(fh)
                w.writerow(cols)
                for e in summ:
                    w.writerow([e[c] for c in cols])


def _check_case_images(case_name: str, sources: Sequence[np.ndarray], gt: np.ndarray | None) -> None:
    shapes = [s.shape[:2] for s in sources]
    if len(set(shapes)) != 1:
        raise FusionInputError(f"case {case_name}: source images have different sizes {shapes}")
    for i, s in enumerate(sources):
        if s.ndim == 3 and s.shape[2] not in (1, 3):
            raise FusionInputError(f"case {case_name}: source {i} has {s.shape[2]} channels (expected 1 or 3)")
    if gt is not None and gt.shape[:2] != shapes[0]:
        raise FusionInputError(f"case {case_name}: ground truth has size {gt.shape[:2]}, sources {shapes[0]}")


def _harmonise_channels(sources: list[np.ndarray]) -> list[np.ndarray]:
    """Give grey sources three identical channels when others are colour (e.g. IR + RGB visible), for fusing."""
    if any(s.ndim == 3 for s in sources) and any(s.ndim == 2 for s in sources):
        return [np.repeat(s[..., None], 3, axis=2) if s.ndim == 2 else s for s in sources]
    return sources


def evaluate_dataset(
    dataset_dir: str | Path,
    *,
    methods: Sequence[str] = (),
    metrics: Sequence[str] | None = None,
    reference: bool | Sequence[str] = False,
    limit: int | None = None,
    cases: Sequence[str] | None = None,
    device: str = "auto",
    method_params: dict[str, dict[str, Any]] | None = None,
    progress: bool = False,
    on_row: Callable[[dict[str, Any]], None] | None = None,
) -> EvaluationResult:
    """Fuse every case of ``dataset_dir`` with ``methods`` and score the results (and, with
    ``reference``, the published outputs: ``True`` for all, or a list of names)."""
    dataset_dir = Path(dataset_dir)
    all_cases = _select_cases(dataset_dir, cases, limit)
    from .registry import get_method

    for m in methods:
        get_method(m)  # unknown names fail before any work
    if not methods and not reference:
        raise FusionInputError("nothing to evaluate: give methods (-m) and/or --reference")
    names, specs = _select_metrics(dataset_dir, all_cases, metrics)
    result = EvaluationResult(metrics=names)
    jobs = _jobs(all_cases, methods, reference)
    metric_device = device if device != "auto" else None
    bar = None
    if progress:
        from tqdm import tqdm

        est = estimate_metric_seconds(all_cases, jobs, specs, device=metric_device)
        print(_estimate_message(len(all_cases), len(jobs), methods, est), file=sys.stderr, flush=True)

        bar = tqdm(total=len(jobs), desc=f"evaluating {dataset_dir.name}", unit="run", file=sys.stderr)
    loaded: dict[str, tuple] = {}
    try:
        for case, kind, name in jobs:
            if case.name not in loaded:
                loaded.clear()
                srcs, gt = case.load_sources(), case.load_gt()
                _check_case_images(case.name, srcs, gt)
                loaded[case.name] = (srcs, gt)
            if bar is not None:
                bar.set_postfix_str(f"{case.name} {name}", refresh=False)
            row = _score(case, kind, name, *loaded[case.name], specs, device, (method_params or {}).get(name, {}))
            result.skipped.extend(row.pop("_skipped"))
            result.rows.append(row)
            if on_row is not None:
                on_row(row)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return result


def _probe_images(case) -> tuple[list[np.ndarray], Any, list[np.ndarray]]:
    """The sources and ground truth of ``case``, and two stand-in fused images (mean and maximum of the sources)."""
    srcs, gt = case.load_sources(), case.load_gt()
    _check_case_images(case.name, srcs, gt)
    stack = np.stack([s.astype(np.float64) for s in _harmonise_channels(list(srcs))])
    fakes = [stack.mean(0), stack.max(0)]
    dtype = srcs[0].dtype
    if np.issubdtype(dtype, np.integer):
        fakes = [np.round(f).astype(dtype) for f in fakes]
    return srcs, gt, fakes


def estimate_metric_seconds(all_cases: list, jobs: list, specs: list, *, device=None) -> float | None:
    """Seconds the metrics of ``jobs`` will take, from timing them on the first case (None if that fails).

    Two stand-in fused images (the mean and the maximum of the sources) are
    scored: the first pays the sources' side too (once per case), the second
    only the fused image's side (every further run of the case). The sources'
    side stays remembered, so this probe is not all extra work.
    """
    try:
        srcs, gt, (first, second) = _probe_images(all_cases[0])
        times = []
        for fused in (first, second):
            t0 = time.perf_counter()
            for spec in specs:
                spec(fused, srcs, gt, device=device)
            times.append(time.perf_counter() - t0)
    except (FusionInputError, ValueError, OSError):
        return None
    runs_per_case = {}
    for case, _, _ in jobs:
        runs_per_case[case.name] = runs_per_case.get(case.name, 0) + 1
    return sum(times[0] + (n - 1) * times[1] for n in runs_per_case.values())


def _estimate_message(n_cases: int, n_runs: int, methods: Sequence[str], seconds: float | None) -> str:
    """'evaluating N cases x M methods (R runs), about T s' for the start of a run."""
    per_case = n_runs / max(n_cases, 1)
    per = f"{per_case:.0f}" if per_case == int(per_case) else f"{per_case:.1f}"
    head = f"evaluating {n_cases} cases x {per} methods ({n_runs} runs)"
    if seconds is None:
        return head
    t = f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"
    if methods:
        return f"{head}, about {t} of metrics plus the fusion time of {len(methods)} method(s)"
    return f"{head}, about {t}"


def _select_cases(dataset_dir: Path, cases: Sequence[str] | None, limit: int | None) -> list:
    """The dataset's cases, restricted to ``cases`` and the first ``limit``; refused when none are left."""
    from .datasets import iter_cases

    if not dataset_dir.is_dir():
        raise FusionInputError(f"dataset folder not found: {dataset_dir}")
    all_cases = iter_cases(dataset_dir)
    if cases:
        wanted = set(cases)
        all_cases = [c for c in all_cases if c.name in wanted]
        missing = wanted - {c.name for c in all_cases}
        if missing:
            raise FusionInputError(f"cases not found in {dataset_dir}: {', '.join(sorted(missing))}")
    if limit is not None:
        all_cases = all_cases[: max(0, int(limit))]
    if not all_cases:
        raise FusionInputError(f"{dataset_dir} has no cases (folders with src_00.*, src_01.* ...)")
    return all_cases


def _select_metrics(dataset_dir: Path, all_cases: list, metrics: Sequence[str] | None) -> tuple[list[str], list]:
    """Metric names and specs: the defaults that fit the data (source count, ground truth), or those given."""
    from .metrics import DEFAULT_GT_METRICS, DEFAULT_METRICS, METRICS, get_metric

    has_gt = any(c.gt is not None for c in all_cases)
    if metrics is None:
        names = list(DEFAULT_METRICS)
        if {len(c.sources) for c in all_cases} != {2}:
            names = [n for n in names if METRICS[n].n_sources is None]
        if has_gt:
            names += list(DEFAULT_GT_METRICS)
    else:
        names = list(metrics)
    specs = [get_metric(n) for n in names]
    if not has_gt and any(s.needs == "gt" for s in specs):
        raise FusionInputError(
            f"{dataset_dir} has no ground truth (gt.*) for {[s.name for s in specs if s.needs == 'gt']}"
        )
    return names, specs


def _jobs(all_cases: list, methods: Sequence[str], reference: bool | Sequence[str]) -> list[tuple]:
    """``(case, "ours" | "reference", name)`` for every run, case by case (each case is loaded once)."""
    ref_names = None if reference is True else (list(reference) if reference else [])
    jobs = []
    for c in all_cases:
        jobs += [(c, "ours", m) for m in methods]
        if reference:
            refs = c.references if ref_names is None else {k: v for k, v in c.references.items() if k in ref_names}
            jobs += [(c, "reference", r) for r in sorted(refs)]
    return jobs


def _score(case, kind: str, name: str, srcs, gt, specs: list, device: str, params: dict) -> dict[str, Any]:
    """Fuse one case with ``name`` (or read its published output) and score it with every metric."""
    seconds = math.nan
    if kind == "ours":
        from .api import fuse

        t0 = time.perf_counter()
        try:
            fused = fuse(_harmonise_channels(list(srcs)), method=name, device=device, **params).fused
        except FusionInputError as exc:
            raise FusionInputError(f"case {case.name}, method {name}: {exc}") from None
        seconds = time.perf_counter() - t0
    else:
        from .io import read_image

        fused = read_image(case.references[name])
    row: dict[str, Any] = {"case": case.name, "method": name, "kind": kind, "seconds": seconds}
    failed: list[tuple[str, str, str, str]] = []
    with threads_for_current_load():  # the metrics, as a fusion: the cores other processes leave free
        for spec in specs:
            try:
                row[spec.name] = spec(fused, srcs, gt, device=device if device != "auto" else None)
            except FusionInputError as exc:  # e.g. VIF on images too small for its coarsest scale
                what = f"reference {name}" if kind == "reference" else f"method {name}"
                row[spec.name] = math.nan
                failed.append((case.name, what, spec.name, str(exc)))
    if failed and len(failed) == len(specs):  # nothing could be scored: the inputs are the problem
        case_name, what, metric, reason = failed[0]
        raise FusionInputError(f"case {case_name}, {what}, metric {metric}: {reason}")
    row["_skipped"] = failed
    return row
