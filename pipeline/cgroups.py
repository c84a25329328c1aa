"""What this process's cgroups allow: CPU time (Docker's `--cpus`, a Kubernetes CPU limit) and memory (Docker's
`--memory`, a Kubernetes memory limit). Neither shows where a program usually looks.

A CPU quota leaves the CPU affinity alone, so a pod limited to 8 CPUs on a 96-core node sees 96 cores, and a
loader sized by them started 96 threads: they spend the quota in the first twelfth of each scheduling period
(100 ms), then every thread of the container, the one that feeds the GPU included, waits for the next period.
A memory limit leaves /proc/meminfo at the host's memory, so a CPU run that the memory check let start on a
24 GB machine was killed at a 2 GB limit without a word (exit 137).

The limits are read where the kernel publishes them, in the process's cgroup and each one above it (the
smallest applies), found through /proc/self/cgroup and the cgroup mounts in /proc/self/mountinfo (a container
sees its own cgroup at the mount's root): cgroup v2's `cpu.max`, `memory.max`; v1's `cpu.cfs_quota_us` over
`cpu.cfs_period_us`, `memory.limit_in_bytes`."""
import re
from pathlib import Path
from typing import Iterator, List, NamedTuple, Optional, Tuple

PROC = Path("/proc/self")
UNLIMITED_V1 = 1 << 60  # cgroup v1 writes "no limit" as the largest page-aligned 64-bit number


def _unescaped(field: str) -> str:
    """A mountinfo path with its octal escapes (`\\040` for a space) undone."""
    return re.sub(r"\\([0-7]{3})", lambda match: chr(int(match.group(1), 8)), field)


def _mounts(mountinfo: str, controller: str) -> Iterator[Tuple[int, str, Path]]:
    """(cgroup version, cgroup path at the mount's root, mount point) of the v2 mounts and of the v1 mounts of
    `controller`."""
    for line in mountinfo.splitlines():
        mount, _, source = line.partition(" - ")
        fields, kinds = mount.split(), source.split()
        if len(fields) < 5 or len(kinds) < 3:
            continue
        if kinds[0] == "cgroup2" or (kinds[0] == "cgroup" and controller in kinds[2].split(",")):
            yield (2 if kinds[0] == "cgroup2" else 1), _unescaped(fields[3]), Path(_unescaped(fields[4]))


def _paths(cgroups: str, controller: str) -> dict:
    """{version: this process's cgroup path} from /proc/self/cgroup: v2's `0::path`, v1's line of `controller`."""
    paths = {}
    for line in cgroups.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and not controllers:
            paths[2] = path
        elif controller in controllers.split(","):
            paths[1] = path
    return paths


def cgroup_folders(controller: str, proc: Path = PROC) -> List[Tuple[int, Path]]:
    """(version, folder) of this process's cgroups for `controller` and of those above them up to each mount's
    root, the process's own first; none where cgroups are missing or unreadable (not Linux)."""
    try:
        mountinfo, cgroups = (proc / "mountinfo").read_text(), (proc / "cgroup").read_text()
    except OSError:
        return []
    paths, folders = _paths(cgroups, controller), []
    for version, root, point in _mounts(mountinfo, controller):
        path = paths.get(version)
        if path is None:
            continue
        inside = Path(path).relative_to(root) if Path(path).is_relative_to(root) else Path()
        leaf = point / inside
        for folder in (leaf, *leaf.parents):  # up to the mount point, the highest cgroup this process sees
            folders.append((version, folder))
            if folder == point:
                break
    return folders


def _read(folder: Path, name: str) -> Optional[str]:
    try:
        return (folder / name).read_text()
    except OSError:
        return None


def _cpus_in(version: int, folder: Path) -> Optional[float]:
    """CPUs' worth of time one cgroup allows; None for no limit or nothing readable."""
    try:
        if version == 2:
            quota, period = (_read(folder, "cpu.max") or "").split()[:2]
            return None if quota == "max" else int(quota) / int(period)
        quota = int(_read(folder, "cpu.cfs_quota_us") or "")
        return None if quota < 0 else quota / int(_read(folder, "cpu.cfs_period_us") or "")
    except (ValueError, ZeroDivisionError):
        return None


def cpu_quota(proc: Path = PROC) -> Optional[float]:
    """The smallest CPU quota, in CPUs, of this process's cgroups; None without one."""
    limits = [cpus for cpus in (_cpus_in(*place) for place in cgroup_folders("cpu", proc)) if cpus and cpus > 0]
    return min(limits) if limits else None


def _memory_in(version: int, folder: Path) -> Optional[Tuple[int, int]]:
    """(limit, bytes in use less the file cache the kernel reclaims first) of one cgroup with a memory limit."""
    limit_file, usage_file, cache_field = (("memory.max", "memory.current", "inactive_file") if version == 2 else
                                           ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file"))
    try:
        limit_bytes = int(_read(folder, limit_file) or "")
    except ValueError:
        return None  # "max", or unreadable
    if limit_bytes >= UNLIMITED_V1:
        return None
    usage, stat = _read(folder, usage_file), _read(folder, "memory.stat")
    cache = re.search(rf"^{cache_field} (\d+)$", stat or "", re.M)
    in_use = int(usage) if usage and usage.strip().isdigit() else 0
    return limit_bytes, max(0, in_use - (int(cache.group(1)) if cache else 0))


class MemoryLimit(NamedTuple):
    limit: int  # bytes: the smallest limit of this process's cgroups
    room: int  # bytes: the least that any of them has left (its limit less what is in use)


def memory_limit(proc: Path = PROC) -> Optional[MemoryLimit]:
    """What this process's cgroups allow in memory; None where none limits it."""
    limits = [place for place in (_memory_in(*folder) for folder in cgroup_folders("memory", proc)) if place]
    if not limits:
        return None
    return MemoryLimit(min(limit for limit, _ in limits), max(0, min(limit - in_use for limit, in_use in limits)))
