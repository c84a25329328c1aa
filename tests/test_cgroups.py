"""pipeline/cgroups.py and its use: a cgroup CPU quota (Docker's --cpus, a Kubernetes limit) caps the threads a
process starts, where the CPU affinity alone counted every core of the node; a cgroup memory limit is the memory
a CPU run is checked against, where /proc/meminfo gave the host's."""
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from conftest import REPO, tiny_settings
from pipeline import cores, cpu_memory
from pipeline.cgroups import MemoryLimit, cpu_quota, memory_limit
from pipeline.cpu_memory import available_bytes, memory_bytes


def fake_proc(tmp_path: Path, mounts: list, cgroups: str) -> Path:
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "mountinfo").write_text("".join(f"{index} 1 0:{index} {line}\n" for index, line in enumerate(mounts)))
    (proc / "cgroup").write_text(cgroups)
    return proc


def write(folder: Path, files: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text + "\n")


def test_a_containers_cgroup_v2_quota(tmp_path):
    mount = tmp_path / "sys fs cgroup"  # a space, escaped in mountinfo
    write(mount, {"cpu.max": "400000 100000"})
    proc = fake_proc(tmp_path, [f"/ {str(mount).replace(' ', chr(92) + '040')} rw,nosuid - cgroup2 cgroup2 rw"],
                     "0::/\n")
    assert cpu_quota(proc) == 4.0


def test_the_smallest_quota_on_the_way_up_applies(tmp_path):
    """A Kubernetes pod's limit sits on the pod's cgroup, above the container's, whose own says max."""
    mount = tmp_path / "cgroup"
    write(mount / "kubepods" / "pod1" / "ctr", {"cpu.max": "max 100000"})
    write(mount / "kubepods" / "pod1", {"cpu.max": "250000 100000"})
    write(mount / "kubepods", {"cpu.max": "6400000 100000"})
    proc = fake_proc(tmp_path, [f"/ {mount} rw - cgroup2 cgroup2 rw"], "0::/kubepods/pod1/ctr\n")
    assert cpu_quota(proc) == 2.5


def test_docker_on_cgroup_v1_sees_its_cgroup_at_the_mounts_root(tmp_path):
    mount = tmp_path / "cpu,cpuacct"
    write(mount, {"cpu.cfs_quota_us": "150000", "cpu.cfs_period_us": "100000"})
    proc = fake_proc(tmp_path, [f"/docker/abc {mount} rw,nosuid - cgroup cgroup rw,cpu,cpuacct",
                                f"/docker/abc {tmp_path} rw - cgroup cgroup rw,cpuset"],
                     "5:cpuset:/docker/abc\n4:cpu,cpuacct:/docker/abc\n0::/\n")
    assert cpu_quota(proc) == 1.5


@pytest.mark.parametrize("quota_files", [{"cpu.cfs_quota_us": "-1", "cpu.cfs_period_us": "100000"}, {}])
def test_no_quota(tmp_path, quota_files):
    """v1 without a limit (-1), or nothing readable: None; a cpuset-only mount and an empty v2 hierarchy (this
    machine's hybrid layout) count for nothing."""
    mount = tmp_path / "cpu"
    write(mount, quota_files)
    write(tmp_path / "unified", {})
    proc = fake_proc(tmp_path, [f"/ {mount} rw - cgroup cgroup rw,cpu", f"/ {tmp_path} rw - cgroup cgroup rw,cpuset",
                                f"/ {tmp_path / 'unified'} rw - cgroup2 cgroup2 rw"], "3:cpuset:/\n1:cpu:/\n0::/\n")
    assert cpu_quota(proc) is None
    assert cpu_quota(tmp_path / "no proc") is None


def test_the_quota_caps_the_cores_a_process_uses_and_the_blocks_of_runs_side_by_side(monkeypatch):
    monkeypatch.setattr(cores.os, "sched_getaffinity", lambda pid: set(range(96)))
    monkeypatch.setattr(cores, "cpu_quota", lambda: 8.5)  # --cpus=8.5: 8 whole CPUs
    assert cores.quota_cores() == 8 and cores.usable_cores() == 8
    monkeypatch.setattr(cores, "cpu_quota", lambda: 0.25)
    assert cores.usable_cores() == 1
    monkeypatch.setattr(cores, "cpu_quota", lambda: None)
    assert cores.quota_cores() is None and cores.usable_cores() == 96
    blocks = cores.share_cores(4, range(96), topology=lambda cpu: (0, cpu), allowed=8)
    assert blocks == [(0, 1), (2, 3), (4, 5), (6, 7)]  # four runs together within the quota's 8 CPUs


def test_memory_limits_v2_and_v1(tmp_path):
    """v2: the smallest limit, and the least room (limit less what is in use, less the inactive file cache the
    kernel reclaims first); v1's 'no limit' is its largest number."""
    mount = tmp_path / "cgroup"
    write(mount / "pod" / "ctr", {"memory.max": "max", "memory.current": "100", "memory.stat": "anon 1\n"})
    write(mount / "pod", {"memory.max": "8000", "memory.current": "5000", "memory.stat": "inactive_file 1000\n"})
    write(mount, {"memory.max": "10000", "memory.current": "2000"})
    proc = fake_proc(tmp_path, [f"/ {mount} rw - cgroup2 cgroup2 rw"], "0::/pod/ctr\n")
    assert memory_limit(proc) == (8000, 4000)
    v1 = tmp_path / "memory"
    write(v1, {"memory.limit_in_bytes": "9223372036854771712", "memory.usage_in_bytes": "5"})
    (tmp_path / "v1").mkdir()
    proc = fake_proc(tmp_path / "v1", [f"/ {v1} rw - cgroup cgroup rw,memory"], "4:memory:/\n")
    assert memory_limit(proc) is None
    (v1 / "memory.limit_in_bytes").write_text("3000\n")
    (v1 / "memory.stat").write_text("cache 9\ntotal_inactive_file 5\n")
    assert memory_limit(proc) == (3000, 3000)


def test_a_memory_limit_is_what_a_cpu_run_is_checked_against(monkeypatch, tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       16000000 kB\nMemAvailable:   12000000 kB\n")
    monkeypatch.setattr(cpu_memory, "MEMINFO", meminfo)
    monkeypatch.setattr(cpu_memory, "memory_limit", lambda: MemoryLimit(2 * 10**9, 10**9))  # --memory=2g, 1 GB used
    assert (available_bytes(), memory_bytes()) == (10**9, 2 * 10**9)
    monkeypatch.setattr(cpu_memory, "memory_limit", lambda: None)
    assert (available_bytes(), memory_bytes()) == (12000000 * 1024, 16000000 * 1024)


def own_cgroup_v1(controller: str, probe_file: str) -> Path:
    """A new cgroup under this machine's v1 `controller`, where there is one and this user may make it."""
    base = Path("/sys/fs/cgroup") / controller
    if not (base / probe_file).exists() or not os.access(base, os.W_OK):
        pytest.skip(f"no writable cgroup v1 {controller} controller here")
    folder = base / f"ssenet-test-{uuid.uuid4().hex[:8]}"
    try:
        folder.mkdir()
    except OSError as error:
        pytest.skip(f"cannot make a cgroup here: {error}")
    return folder


def test_a_real_quota_read_from_inside_the_cgroup():
    """The kernel's own files and a process moved into the cgroup, as Docker's --cpus=0.5 sets it up."""
    folder = own_cgroup_v1("cpu", "cpu.cfs_quota_us")
    try:
        (folder / "cpu.cfs_period_us").write_text("100000")
        (folder / "cpu.cfs_quota_us").write_text("50000")
        script = ("import os, sys; open(sys.argv[1], 'w').write(str(os.getpid())); from pipeline.cgroups import "
                  "cpu_quota; from pipeline.cores import usable_cores; print(cpu_quota(), usable_cores())")
        child = subprocess.run([sys.executable, "-c", script, str(folder / "tasks")], cwd=REPO,
                               capture_output=True, text=True, timeout=60)
        assert child.returncode == 0, child.stderr
        assert child.stdout.split() == ["0.5", "1"]
    finally:
        folder.rmdir()


def test_train_py_in_a_memory_limited_cgroup_is_refused_not_killed(tiny_betons, tmp_path):
    """train.py at batch 64, 224 px, in a cgroup of 1.5 GiB (Docker's --memory=1536m): the memory check
    read the host's /proc/meminfo and let it start, and the kernel killed it (a 2 GB limit and the demo recipe
    at batch 512, 96 px: exit 137, no line). Now one line and exit 2, before anything is made."""
    folder = own_cgroup_v1("memory", "memory.limit_in_bytes")
    run_dir = tmp_path / "run"
    try:
        (folder / "memory.limit_in_bytes").write_text(str(1536 * 2**20))
        command = f"echo $$ > {folder / 'tasks'}; exec {sys.executable} pipeline/train.py \"$@\""
        settings = tiny_settings(tiny_betons, run_dir, "--training.batch_size=64", "--resolution.min_res=224",
                                 "--resolution.max_res=224", "--resolution.val_res=224")
        trained = subprocess.run(["sh", "-c", command, "sh", *settings], cwd=REPO, capture_output=True, text=True,
                                 timeout=300)
    finally:
        folder.rmdir()
    assert trained.returncode == 2, trained.stdout[-2000:] + trained.stderr[-2000:]
    assert trained.stderr.startswith("train.py: error: training on the CPU at training.batch_size 64, 224 px needs "
                                     "at least "), trained.stderr
    assert not run_dir.exists()
