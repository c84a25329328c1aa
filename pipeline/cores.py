"""The CPU cores this process may run on: the default count of loader threads and writer processes."""
import os


def usable_cores() -> int:
    """Cores in this process's CPU affinity (taskset, SLURM's --cpus-per-task, Docker's --cpuset-cpus), which
    os.cpu_count() ignores: a job given 16 of a node's 128 cores would otherwise start 128 workers."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
