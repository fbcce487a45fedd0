"""Fewer torch threads under load (``napari_fusion._cpu_threads``), with a fake ``/proc/stat``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_fusion import _cpu_threads as ct


@pytest.fixture(autouse=True)
def _no_cpu_quota(monkeypatch):
    """As without a container's CPU quota, whatever the machine running the tests has
    (tests/test_cgroups.py covers the quota)."""
    monkeypatch.setattr(ct, "cpus_allowed_by_quota", lambda: None)


def _stat(tmp_path, running: int, cpus: int):
    lines = ["cpu  1 2 3 4"] + [f"cpu{i} 1 2 3 4" for i in range(cpus)] + ["ctxt 5", f"procs_running {running}"]
    path = tmp_path / "stat"
    path.write_text("\n".join(lines) + "\n")
    return path


def _tasks(tmp_path, states: str):
    """A fake ``/proc/self/task``: one thread per letter of ``states`` (R running, S sleeping)."""
    folder = tmp_path / "task"
    folder.mkdir(exist_ok=True)
    for tid, state in enumerate(states, start=100):
        (folder / str(tid)).mkdir(exist_ok=True)
        (folder / str(tid) / "stat").write_text(f"{tid} (a (strange) name) {state} 1 2 3\n")
    return str(folder)


@pytest.mark.parametrize(
    ("running", "cpus", "usable", "have", "want"),
    [
        (1, 2, 2, 2, 2),  # only the caller runs: every thread
        (2, 2, 2, 2, 1),  # one other task on two CPUs: one thread
        (9, 2, 2, 2, 1),  # never fewer than one
        (3, 16, 16, 8, 8),  # two tasks elsewhere on 16 CPUs: torch's 8 still fit
        (13, 16, 16, 8, 4),  # twelve elsewhere: four CPUs left
        (5, 64, 2, 2, 2),  # a container's 2 CPUs of a big host: four tasks spread over 64 CPUs
        (2, 2, 2, 1, 1),  # one thread already
    ],
)
def test_threads_for_load(tmp_path, running, cpus, usable, want, have):
    path = str(_stat(tmp_path, running, cpus))
    assert ct.threads_for_load(have, usable_cpus=usable, path=path, task_dir=_tasks(tmp_path, "RS")) == want


def test_this_process_own_running_threads_are_not_load(tmp_path):
    # five runnable tasks, three of them ours (the caller, a reader, a spinning torch thread)
    path = str(_stat(tmp_path, 5, 2))
    assert ct.busy_elsewhere(path=path, task_dir=_tasks(tmp_path, "RRSRS")) == (2, 2)
    assert (
        ct.threads_for_load(2, usable_cpus=2, path=str(_stat(tmp_path, 3, 2)), task_dir=_tasks(tmp_path, "RRSRS")) == 2
    )
    assert ct._own_running_threads(str(tmp_path / "none")) == 1  # unreadable: the caller only


def test_unknown_load_changes_nothing(tmp_path):
    assert ct.threads_for_load(4, usable_cpus=4, path=str(tmp_path / "missing")) == 4
    bad = tmp_path / "bad"
    bad.write_text("cpu0 1 2\nprocs_running many\n")
    assert ct.threads_for_load(4, usable_cpus=4, path=str(bad)) == 4
    no_cpus = tmp_path / "nocpu"
    no_cpus.write_text("procs_running 3\n")
    assert ct.busy_elsewhere(path=str(no_cpus)) is None


def test_busy_elsewhere_takes_the_least_of_its_reads(tmp_path, monkeypatch):
    path = _stat(tmp_path, 5, 2)
    counts = iter([5, 2, 4])

    def rewrite(_seconds):
        _stat(tmp_path, next(counts), 2)

    monkeypatch.setattr(ct.time, "sleep", rewrite)  # each pause sees another count
    tasks = _tasks(tmp_path, "R")
    assert ct.busy_elsewhere(reads=3, path=str(path), task_dir=tasks) == (
        1,
        2,
    )  # reads 5, 2, 4: the least, less the caller


@pytest.fixture
def two_torch_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.mark.skipif(not ct.os.path.exists("/proc/stat"), reason="Linux only")
def test_fuse_in_memory_runs_with_the_threads_left_over_and_restores_them(tmp_path, monkeypatch, two_torch_threads):
    import napari_fusion as nf
    from napari_fusion import api

    if not __import__("napari_fusion.ops.tiles", fromlist=["x"])._threads_are_per_thread():
        pytest.skip("torch's parallel backend is not OpenMP")
    seen = []
    real = api.run_method

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(api, "run_method", spy)
    monkeypatch.setattr(ct.os, "sched_getaffinity", lambda _pid: {0, 1}, raising=False)
    monkeypatch.setattr(ct, "_OWN_TASKS", _tasks(tmp_path, "RS"))  # the caller running, one thread asleep
    rng = np.random.default_rng(0)
    stack = (rng.random((3, 32, 32)) * 255).astype(np.uint8)

    monkeypatch.setattr(ct, "_PROC_STAT", str(_stat(tmp_path, 2, 2)))  # one other task on two CPUs
    busy = nf.fuse(stack, method="focus_measure")
    assert seen == [1] and torch.get_num_threads() == 2

    monkeypatch.setattr(ct, "_PROC_STAT", str(_stat(tmp_path, 1, 2)))  # quiet
    quiet = nf.fuse(stack, method="focus_measure")
    assert seen == [1, 2]
    np.testing.assert_array_equal(busy.labels, quiet.labels)
    np.testing.assert_allclose(busy.fused.astype(float), quiet.fused.astype(float), atol=1)

    monkeypatch.setenv(ct.ADAPT_ENV, "0")  # switched off: torch's count whatever the load
    monkeypatch.setattr(ct, "_PROC_STAT", str(_stat(tmp_path, 2, 2)))
    nf.fuse(stack, method="focus_measure")
    assert seen == [1, 2, 2]


@pytest.mark.skipif(not ct.os.path.exists("/proc/stat"), reason="Linux only")
def test_focal_stack_alignment_also_runs_with_the_threads_left_over(tmp_path, monkeypatch, two_torch_threads):
    from napari_fusion.focalstack import pipeline

    if not __import__("napari_fusion.ops.tiles", fromlist=["x"])._threads_are_per_thread():
        pytest.skip("torch's parallel backend is not OpenMP")
    seen = []

    def spy(items, **kwargs):
        seen.append(torch.get_num_threads())
        return items, None

    monkeypatch.setattr(pipeline, "align_stack", spy)
    monkeypatch.setattr(ct.os, "sched_getaffinity", lambda _pid: {0, 1}, raising=False)
    monkeypatch.setattr(ct, "_OWN_TASKS", _tasks(tmp_path, "R"))
    monkeypatch.setattr(ct, "_PROC_STAT", str(_stat(tmp_path, 2, 2)))
    items = [np.zeros((16, 16), np.float32)] * 2
    pipeline._align(items, "translation", None, crop=False, ref_c=None)
    assert seen == [1] and torch.get_num_threads() == 2


@pytest.mark.skipif(not ct.os.path.exists("/proc/stat"), reason="Linux only")
def test_evaluation_metrics_also_run_with_the_threads_left_over(tmp_path, monkeypatch, two_torch_threads):
    from types import SimpleNamespace

    from napari_fusion import evaluation

    if not __import__("napari_fusion.ops.tiles", fromlist=["x"])._threads_are_per_thread():
        pytest.skip("torch's parallel backend is not OpenMP")
    seen = []

    class Metric:
        name = "spy"

        def __call__(self, fused, srcs, gt, device=None):
            seen.append(torch.get_num_threads())
            return 0.0

    monkeypatch.setattr(ct.os, "sched_getaffinity", lambda _pid: {0, 1}, raising=False)
    monkeypatch.setattr(ct, "_OWN_TASKS", _tasks(tmp_path, "R"))
    monkeypatch.setattr(ct, "_PROC_STAT", str(_stat(tmp_path, 2, 2)))
    rng = np.random.default_rng(1)
    srcs = [(rng.random((32, 32)) * 255).astype(np.uint8) for _ in range(2)]
    row = evaluation._score(SimpleNamespace(name="c"), "ours", "average", srcs, None, [Metric()], "cpu", {})
    assert row["spy"] == 0.0 and seen == [1] and torch.get_num_threads() == 2
