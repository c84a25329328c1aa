"""The CPU time per second that this process's cgroups allow: Docker's `--cpus`, Kubernetes' CPU limits.

A quota leaves the CPU affinity alone, so a pod limited to 8 CPUs on a 96-core node sees 96 cores, and a loader
sized by them started 96 threads: they spend the quota in the first twelfth of each scheduling period (100 ms),
then every thread of the container, the one that feeds the GPU included, waits for the next period. The quota is
read where the kernel publishes it: the cgroup v2 file `cpu.max` or v1's `cpu.cfs_quota_us` and `cpu.cfs_period_us`
in the process's cgroup and each one above it (the smallest applies), found through /proc/self/cgroup and the
cgroup mounts in /proc/self/mountinfo (a container sees its own cgroup at the mount's root)."""
import re
from pathlib import Path
from typing import Iterator, Optional, Tuple


def _unescaped(field: str) -> str:
    """A mountinfo path with its octal escapes (`\\040` for a space) undone."""
    return re.sub(r"\\([0-7]{3})", lambda match: chr(int(match.group(1), 8)), field)


def _cgroup_mounts(mountinfo: str) -> Iterator[Tuple[int, str, Path]]:
    """(cgroup version, cgroup path at the mount's root, mount point) of the v2 mounts and the v1 cpu mounts."""
    for line in mountinfo.splitlines():
        mount, _, source = line.partition(" - ")
        fields, kinds = mount.split(), source.split()
        if len(fields) < 5 or len(kinds) < 3:
            continue
        if kinds[0] == "cgroup2":
            yield 2, _unescaped(fields[3]), Path(_unescaped(fields[4]))
        elif kinds[0] == "cgroup" and "cpu" in kinds[2].split(","):
            yield 1, _unescaped(fields[3]), Path(_unescaped(fields[4]))


def _cgroup_paths(cgroups: str) -> dict:
    """{version: this process's cgroup path} from /proc/self/cgroup: v2's `0::path`, v1's line with `cpu`."""
    paths = {}
    for line in cgroups.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and not controllers:
            paths[2] = path
        elif "cpu" in controllers.split(","):
            paths[1] = path
    return paths


def _quota_in(folder: Path, version: int) -> Optional[float]:
    """CPUs' worth of time one cgroup folder allows; None for no limit or nothing readable."""
    try:
        if version == 2:
            quota, period = (folder / "cpu.max").read_text().split()[:2]
            return None if quota == "max" else int(quota) / int(period)
        quota = int((folder / "cpu.cfs_quota_us").read_text())
        return None if quota < 0 else quota / int((folder / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError, ZeroDivisionError):
        return None


def cpu_quota(proc: Path = Path("/proc/self")) -> Optional[float]:
    """The smallest quota, in CPUs, of this process's cgroups and those above them; None without one (no cgroups,
    not Linux, nothing readable)."""
    try:
        mountinfo, cgroups = (proc / "mountinfo").read_text(), (proc / "cgroup").read_text()
    except OSError:
        return None
    paths, quotas = _cgroup_paths(cgroups), []
    for version, root, point in _cgroup_mounts(mountinfo):
        path = paths.get(version)
        if path is None:
            continue
        inside = Path(path).relative_to(root) if Path(path).is_relative_to(root) else Path()
        leaf = point / inside
        for folder in (leaf, *leaf.parents):  # up to the mount point, the highest cgroup this process sees
            quotas.append(_quota_in(folder, version))
            if folder == point:
                break
    limits = [quota for quota in quotas if quota is not None and quota > 0]
    return min(limits) if limits else None
