"""The CPU cores this process may run on, and how runs that share a node split them."""
import math
import os
from pathlib import Path
from typing import Callable, Iterable, List, Optional, Tuple

from pipeline.cgroups import cpu_quota


def quota_cores() -> Optional[int]:
    """The whole CPUs a cgroup quota allows (at least 1), None without a quota (cgroups.py)."""
    quota = cpu_quota()
    return None if quota is None else max(1, math.floor(quota))


def affinity_cores() -> int:
    """Cores in this process's CPU affinity (taskset, SLURM's --cpus-per-task, Docker's --cpuset-cpus), which
    os.cpu_count() ignores: a job given 16 of a node's 128 cores would otherwise start 128 workers."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def usable_cores() -> int:
    """The threads a process's parallel work should use: its affinity's cores, fewer where a cgroup quota allows
    fewer CPUs' worth of time (at 1 CPU on 2 cores, the sample loader ran 3,700 img/s on one thread, 2,000 on
    two: the quota stops every thread of the cgroup once spent)."""
    cores = affinity_cores()
    allowed = quota_cores()
    return cores if allowed is None else min(cores, allowed)


def cpu_topology(cpu: int) -> Tuple[int, int]:
    """(socket, physical core) of a logical CPU, from Linux's sysfs: hyperthread siblings share both."""
    folder = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
    try:
        return int((folder / "physical_package_id").read_text()), int((folder / "core_id").read_text())
    except (OSError, ValueError):
        return 0, cpu


def share_cores(parts: int, cores: Optional[Iterable[int]] = None,
                topology: Callable[[int], Tuple[int, int]] = cpu_topology,
                allowed: Optional[int] = None) -> List[Tuple[int, ...]]:
    """This process's cores (or `cores`) in `parts` disjoint blocks, one per run that shares the node. Each run
    sizes its loader by its own affinity, so without blocks eight runs on eight GPUs each started a thread per
    core of the whole node. A block keeps a socket's cores together and hyperthread siblings in one block
    where the sizes allow. Empty blocks (no pinning) where the affinity is unknown; all cores in every block
    when there are fewer cores than parts. Under a cgroup quota of fewer CPUs than this process's cores, the blocks
    share as many cores as the quota allows (`allowed`), so that the runs together never outrun it."""
    if cores is None:
        if not hasattr(os, "sched_getaffinity"):
            return [()] * parts
        cores = os.sched_getaffinity(0)
    ordered = sorted(cores, key=lambda cpu: (*topology(cpu), cpu))[:allowed]
    if len(ordered) < parts:
        return [tuple(sorted(ordered))] * parts
    size, extra = divmod(len(ordered), parts)
    blocks, start = [], 0
    for index in range(parts):
        end = start + size + (index < extra)
        blocks.append(tuple(sorted(ordered[start:end])))
        start = end
    return blocks


def core_ranges(cores: Iterable[int]) -> str:
    """'0-11,48-59' for those cores, as taskset and /proc write them."""
    spans: List[List[int]] = []
    for cpu in sorted(cores):
        if spans and cpu == spans[-1][1] + 1:
            spans[-1][1] = cpu
        else:
            spans.append([cpu, cpu])
    return ",".join(str(low) if low == high else f"{low}-{high}" for low, high in spans)
