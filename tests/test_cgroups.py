"""Control-group limits read from fake ``/proc/self/cgroup`` and ``/sys/fs/cgroup`` trees."""

from __future__ import annotations

import pytest

from napari_fusion import _cgroups as cg


def _tree(tmp_path, proc_lines: str, files: dict[str, str]):
    tmp_path.mkdir(parents=True, exist_ok=True)
    proc = tmp_path / "proc_cgroup"
    proc.write_text(proc_lines)
    root = tmp_path / "cgroup"
    for rel, text in files.items():
        f = root / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text)
    return {"proc_cgroup": str(proc), "root": str(root)}


def test_cpu_quota_v2_of_the_process_own_cgroup(tmp_path):
    kw = _tree(tmp_path, "0::/job/42\n", {"job/42/cpu.max": "150000 100000\n", "cpu.max": "max 100000\n"})
    assert cg.cpu_quota(**kw) == pytest.approx(1.5)
    assert cg.cpus_allowed_by_quota(**kw) == 2


def test_cpu_quota_v2_unlimited_and_v1(tmp_path):
    assert cg.cpu_quota(**_tree(tmp_path / "a", "0::/\n", {"cpu.max": "max 100000\n"})) is None
    v1 = _tree(
        tmp_path / "b",
        "4:memory:/x\n3:cpu,cpuacct:/docker/abc\n0::/\n",
        {"cpu/docker/abc/cpu.cfs_quota_us": "200000\n", "cpu/docker/abc/cpu.cfs_period_us": "100000\n"},
    )
    assert cg.cpu_quota(**v1) == pytest.approx(2.0) and cg.cpus_allowed_by_quota(**v1) == 2
    unlimited = _tree(
        tmp_path / "c",
        "3:cpu:/\n",
        {"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"},
    )
    assert cg.cpu_quota(**unlimited) is None
    assert cg.cpu_quota(proc_cgroup=str(tmp_path / "none"), root=str(tmp_path / "none")) is None
    small = _tree(tmp_path / "d", "0::/\n", {"cpu.max": "10000 100000\n"})  # a tenth of a CPU
    assert cg.cpus_allowed_by_quota(**small) == 1


def test_memory_room_reads_the_same_cgroup_folders(tmp_path, monkeypatch):
    from napari_fusion import memory

    kw = _tree(tmp_path, "0::/job\n", {"job/memory.max": "1000000\n", "job/memory.current": "250000\n"})
    monkeypatch.setattr(memory, "cgroup_dirs", lambda c: cg.cgroup_dirs(c, **kw))
    assert memory._cgroup_room() == 750000


def test_quota_caps_torch_threads_even_on_a_quiet_machine(tmp_path, monkeypatch):
    from napari_fusion import _cpu_threads as ct

    stat = tmp_path / "stat"
    stat.write_text("cpu  1\n" + "".join(f"cpu{i} 1\n" for i in range(64)) + "procs_running 1\n")
    tasks = tmp_path / "task" / "1"
    tasks.mkdir(parents=True)
    (tasks / "stat").write_text("1 (py) R 0\n")
    args = {"usable_cpus": 64, "path": str(stat), "task_dir": str(tmp_path / "task")}
    assert ct.threads_for_load(32, quota_cpus=None, **args) == 32
    assert ct.threads_for_load(32, quota_cpus=2, **args) == 2


def test_quota_caps_the_threads_shared_out_between_tiles(monkeypatch):
    import torch

    from napari_fusion.ops import tiles

    if not tiles._threads_are_per_thread():
        pytest.skip("torch's parallel backend is not OpenMP")
    before = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        monkeypatch.setattr(tiles, "cpus_allowed_by_quota", lambda: None)
        assert tiles.threads_per_tile(1) is None and tiles.threads_per_tile(2) == (2, 4)
        monkeypatch.setattr(tiles, "cpus_allowed_by_quota", lambda: 2)
        assert tiles.threads_per_tile(1) == (2, 4) and tiles.threads_per_tile(2) == (1, 4)
    finally:
        torch.set_num_threads(before)
