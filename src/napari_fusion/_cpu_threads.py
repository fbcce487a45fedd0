"""Fewer torch threads when other processes keep the CPUs busy.

Torch's CPU kernels run in OpenMP parallel regions, and the fusion methods run
many small ones (cache-sized blocks of rows). Each region ends at a barrier
where every thread waits for the slowest. When another process keeps one of
the cores busy, one of our threads is often descheduled, and the others spin
at the barrier until it runs again: on a 2-core machine, with one busy-loop
process beside it, the default fusion of the PCB stack (7 x 2048x1536 RGB)
took 9-11 s with two torch threads and 5.6-5.9 s with one (on the quiet machine
4.1-4.2 s with two, 5.5-5.6 s with one); with this module 5.6-5.9 s loaded
against 14-19 s before (``benchmarks/vs_focus_stack.py --load 1``, README).

So an in-memory :func:`fuse <napari_fusion.api.fuse>` counts the runnable tasks
of other processes just before it starts (``procs_running`` of ``/proc/stat``
less this process's own running threads, from ``/proc/self/task``: its reader
threads and torch's threads, which spin for a while after each region; the
least of three reads a few milliseconds apart) and gives torch only the cores
left over, at least one, never more than it had, nor than the CPU quota of
its control group (a container's ``--cpus``). The count is
the calling thread's (OpenMP keeps it per thread) and is restored afterwards.
Nothing changes where ``/proc/stat`` is missing (not Linux), where torch's
parallel backend is not OpenMP (the count would change for every thread), or
with ``NAPARI_FUSION_ADAPT_THREADS=0``.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from typing import Literal

from ._cgroups import cpus_allowed_by_quota

#: Set to ``0`` to keep torch's thread count whatever the load.
ADAPT_ENV = "NAPARI_FUSION_ADAPT_THREADS"
_PROC_STAT = "/proc/stat"
_OWN_TASKS = "/proc/self/task"


def _read_proc_stat(path: str | None = None) -> tuple[int, int] | None:
    """``(procs_running, online CPUs)`` from ``/proc/stat``; None if unreadable."""
    try:
        with open(path or _PROC_STAT, encoding="ascii") as f:
            text = f.read()
    except OSError:
        return None
    running = None
    cpus = 0
    for line in text.splitlines():
        if line.startswith("cpu") and line[3:4].isdigit():
            cpus += 1
        elif line.startswith("procs_running "):
            try:
                running = int(line.split()[1])
            except (IndexError, ValueError):
                return None
    if running is None or cpus == 0:
        return None
    return running, cpus


def _own_running_threads(task_dir: str | None = None) -> int:
    """Threads of this process in state R (running or runnable), at least 1 (the caller)."""
    folder = task_dir or _OWN_TASKS
    n = 0
    try:
        tids = os.listdir(folder)
    except OSError:
        return 1
    for tid in tids:
        try:
            with open(os.path.join(folder, tid, "stat"), encoding="ascii", errors="replace") as f:
                text = f.read()
        except OSError:  # the thread ended meanwhile
            continue
        fields = text[text.rfind(")") + 1 :].split()  # the name in parentheses may hold spaces
        if fields and fields[0] == "R":
            n += 1
    return max(1, n)


def busy_elsewhere(
    *, reads: int = 3, pause: float = 0.002, path: str | None = None, task_dir: str | None = None
) -> tuple[int, int] | None:
    """``(tasks, cpus)``: runnable tasks of other processes (the least of ``reads`` reads, so a
    task that only passes by is not counted) and the system's online CPUs; None if unknown."""
    least = None
    cpus = 0
    for i in range(max(1, reads)):
        if i:
            time.sleep(pause)
        got = _read_proc_stat(path)
        if got is None:
            return None
        running, cpus = got
        others = max(0, running - _own_running_threads(task_dir))
        least = others if least is None else min(least, others)
    assert least is not None
    return least, cpus


def threads_for_load(
    have: int,
    *,
    usable_cpus: int | None = None,
    quota_cpus: int | None | Literal["detect"] = "detect",
    path: str | None = None,
    task_dir: str | None = None,
) -> int:
    """Torch threads to use now: the CPUs this process may run on, less their share of the
    tasks running in other processes, at least 1 and at most ``have``; never more than the CPU
    quota of the process's control group (``quota_cpus``, rounded up: torch's own count is the
    host's cores, however few CPUs' worth of time a container may use)."""
    if quota_cpus == "detect":
        quota_cpus = cpus_allowed_by_quota()
    if quota_cpus is not None:
        have = max(1, min(have, quota_cpus))
    load = busy_elsewhere(path=path, task_dir=task_dir)
    if load is None or have <= 1:
        return have
    tasks, cpus = load
    if usable_cpus is None:
        usable_cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cpus
    # the other tasks are spread over all the system's CPUs; ours get their share of them
    free = usable_cpus - tasks * usable_cpus / max(cpus, 1)
    return max(1, min(have, int(free + 0.5)))


@contextlib.contextmanager
def threads_for_current_load() -> Iterator[None]:
    """Run the block with :func:`threads_for_load` torch threads in the calling thread."""
    if os.environ.get(ADAPT_ENV, "1").strip() == "0":
        yield
        return
    import torch

    from .ops.tiles import _threads_are_per_thread, torch_threads

    have = torch.get_num_threads()
    if have <= 1 or not _threads_are_per_thread():
        yield
        return
    use = threads_for_load(have)
    with torch_threads((use, have) if use < have else None):
        yield
