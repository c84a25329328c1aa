"""SIGTERM stops the entry points as Ctrl-C does. It is how jobs are ended: SLURM at its time limit or on
preemption (SIGKILL follows after its KillWait, 30 s by default), `docker stop`, `kill`, torchrun stopping its
workers, ablate.py stopping its runs. Its default action ended a run at once and without a word: the log stopped
after the last epoch line, a checkpoint in mid-write was left as a temp file. As a KeyboardInterrupt it takes
Ctrl-C's paths: a file being written is finished first (atomic.py), the program says what is kept and how to go
on, and exits with 143, the status a shell reports for a process that SIGTERM ended."""
import contextlib
import signal
import sys
import threading

from pipeline.processes import in_every_child

# what a shell reports for a program that Ctrl-C (SIGINT) or SIGTERM ended
INTERRUPTED_EXIT = 128 + signal.SIGINT
TERMINATED_EXIT = 128 + signal.SIGTERM


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread while `sigterm_as_ctrl_c` is in effect."""


def _raise_terminated(signal_number, frame):
    raise Terminated


_mask_before_fork = threading.local()  # the forking thread's signal mask, where it blocked SIGTERM for a fork


def _block_before_fork() -> None:
    """Before a fork with the handler in place: SIGTERM waits (blocked) in the forking thread, whose mask the child
    inherits, until the child has its default action. A SIGTERM that reached the child in between ran the
    handler inside the child's at-fork hooks, where Python reports an exception and goes on: a pool worker
    that its Pool terminated the instant it started lived on, and the Pool's join waited for it forever (seen in
    the suite: `with Pool(...)` over a 2-image scan, the test hung in Pool._terminate_pool)."""
    ours = signal.getsignal(signal.SIGTERM) is _raise_terminated
    _mask_before_fork.value = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM}) if ours else None


def _unblock_after_fork() -> None:
    """The mask as it was before the fork: in the parent, a SIGTERM that came during the fork now reaches its
    handler."""
    previous = getattr(_mask_before_fork, "value", None)
    if previous is not None:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _default_action_in_child() -> None:
    """A forked worker (write_imagenet's scan pool, ffcv's writer processes) is stopped by its parent with SIGTERM
    and should simply end, not raise in whatever it was doing and print a traceback. A SIGTERM sent during the
    fork waited, blocked (_block_before_fork): it ends the child here."""
    if signal.getsignal(signal.SIGTERM) is _raise_terminated:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _unblock_after_fork()


@contextlib.contextmanager
def sigterm_as_ctrl_c():
    """Within the block (or the function it decorates) SIGTERM raises Terminated in this process. A SIGTERM that
    was ignored stays ignored."""
    if signal.getsignal(signal.SIGTERM) == signal.SIG_IGN:
        yield
        return
    in_every_child(_default_action_in_child, before=_block_before_fork, after_in_parent=_unblock_after_fork)
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def report_stop(program: str, interrupt: KeyboardInterrupt, kept: str, say: bool = True) -> int:
    """Print `program: interrupted; <kept>` (`stopped by SIGTERM` for SIGTERM) on stderr, after what stdout still
    holds, so that the line comes last in a log that takes both; returns the exit status, 130 or 143. `say`:
    False for the processes of a distributed run but rank 0, which stop alike."""
    terminated = isinstance(interrupt, Terminated)
    if say:
        sys.stdout.flush()
        print(f"{program}: {'stopped by SIGTERM' if terminated else 'interrupted'}; {kept}", file=sys.stderr,
              flush=True)
    return TERMINATED_EXIT if terminated else INTERRUPTED_EXIT
