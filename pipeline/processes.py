"""Child processes that end with their parent however it ends, kill -9 included (Linux's parent-death signal),
and leave Ctrl-C to it; hooks run in every forked child; and a wait that wakes when one of them exits."""
import ctypes
import os
import select
import signal
import subprocess
import sys
import time
from typing import Sequence

_PR_SET_PDEATHSIG = 1
_REGISTERED = set()  # fork hooks this process has registered: os.register_at_fork cannot take one back


def die_with_parent(signal_number: int = signal.SIGTERM) -> None:
    """Ask the kernel to send this process `signal_number` when its parent dies (no-op off Linux)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal_number)


def children_die_with_this_process() -> None:
    """Every process forked from now on (pool and writer workers too) dies with this one."""
    in_every_child(die_with_parent)


def _ignore_ctrl_c() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def children_leave_ctrl_c_to_this_process() -> None:
    """Every process forked from now on ignores SIGINT. Ctrl-C reaches the terminal's whole process group: each
    pool or writer worker printed its own KeyboardInterrupt traceback. This process alone stops the work (and
    its workers) and says so in one line."""
    in_every_child(_ignore_ctrl_c)


def in_every_child(hook, before=None, after_in_parent=None) -> None:
    """Run `hook` in every process forked from now on (and `before`, `after_in_parent` in the forking process
    around each fork), registered once however often asked (write_imagenet's main, called again in one process,
    added it again at each call)."""
    if hook not in _REGISTERED:
        around = {name: step for name, step in (("before", before), ("after_in_parent", after_in_parent)) if step}
        os.register_at_fork(after_in_child=hook, **around)
        _REGISTERED.add(hook)


def wait_for_an_exit(processes: Sequence[subprocess.Popen], timeout: float) -> None:
    """Return once one of `processes` has exited, or after `timeout` seconds. On Linux each process's pidfd
    becomes readable at its exit, so a scheduler starts the next run at once; it slept a whole poll interval
    before. Elsewhere (no pidfds) this sleeps `timeout`."""
    if timeout <= 0:
        return
    poller, descriptors = select.poll(), []
    try:
        for process in processes:
            descriptors.append(os.pidfd_open(process.pid))
            poller.register(descriptors[-1], select.POLLIN)
    except (AttributeError, OSError):  # not Linux 5.3+, or no descriptor left: wait the whole interval
        poller = None
    try:
        if poller is None:
            time.sleep(timeout)
        else:
            poller.poll(timeout * 1000)
    finally:
        for descriptor in descriptors:
            os.close(descriptor)
