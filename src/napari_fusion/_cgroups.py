"""The Linux control groups this process runs in: where their limits are read (no torch import).

Containers (Docker, Kubernetes, JupyterHub, SLURM jobs) cap a process's memory and CPU time with
control groups; neither ``/proc/meminfo`` nor the CPU count shows those caps. Used by
:mod:`.memory` (memory room) and :mod:`._cpu_threads` (CPU quota).
"""

from __future__ import annotations

import math

PROC_CGROUP = "/proc/self/cgroup"
CGROUP_ROOT = "/sys/fs/cgroup"


def cgroup_dirs(controller: str, *, proc_cgroup: str = PROC_CGROUP, root: str = CGROUP_ROOT) -> list[tuple[str, str]]:
    """``(version, folder)`` candidates holding ``controller``'s files for this process: its own
    cgroup (v2 unified, then v1 ``root/<controller>``), then the roots (inside a container with
    its own cgroup namespace the root is the container's cgroup)."""
    candidates = []
    try:
        with open(proc_cgroup) as f:
            for line in f:
                parts = line.strip().split(":", 2)
                if len(parts) != 3:
                    continue
                hier, ctrls, path = parts
                if hier == "0" and ctrls == "":
                    candidates.append(("v2", root + path.rstrip("/")))
                elif controller in ctrls.split(","):
                    candidates.append(("v1", f"{root}/{controller}" + path.rstrip("/")))
    except OSError:
        pass
    candidates += [("v2", root), ("v1", f"{root}/{controller}")]
    return candidates


def read_int(path: str) -> int | None:
    """The integer in a one-line file (``max``, missing or unreadable: None)."""
    try:
        with open(path) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def cpu_quota(*, proc_cgroup: str = PROC_CGROUP, root: str = CGROUP_ROOT) -> float | None:
    """CPUs' worth of time this process's CPU cgroup may use (quota / period), None if unlimited."""
    for kind, base in cgroup_dirs("cpu", proc_cgroup=proc_cgroup, root=root):
        if kind == "v2":
            try:
                with open(base + "/cpu.max") as f:
                    fields = f.read().split()
            except OSError:
                continue
            if len(fields) != 2 or fields[0] == "max":
                continue
            try:
                quota, period = int(fields[0]), int(fields[1])
            except ValueError:
                continue
        else:
            q, p = read_int(base + "/cpu.cfs_quota_us"), read_int(base + "/cpu.cfs_period_us")
            if q is None or p is None or q <= 0:  # -1: unlimited
                continue
            quota, period = q, p
        if quota > 0 and period > 0:
            return quota / period
    return None


def cpus_allowed_by_quota(**kwargs) -> int | None:
    """The CPU quota rounded up to whole CPUs (at least 1), None if unlimited."""
    q = cpu_quota(**kwargs)
    return None if q is None else max(1, math.ceil(q - 1e-9))
