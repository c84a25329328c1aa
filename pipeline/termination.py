"""SIGTERM stops the entry points as Ctrl-C does. It is how jobs are ended: SLURM at its time limit or on
preemption (SIGKILL follows after its KillWait, 30 s by default), `docker stop`, `kill`, torchrun stopping its
workers, ablate.py stopping its runs. Its default action ended a run at once and without a word: the log stopped
after the last epoch line, a checkpoint in mid-write was left as a temp file. As a KeyboardInterrupt it takes
Ctrl-C's paths: a file being written is finished first (atomic.py), the program says what is kept and how to go
on, and exits with 143, the status a shell reports for a process that SIGTERM ended."""
import contextlib
import signal

from pipeline.processes import in_every_child

# what a shell reports for a program that Ctrl-C (SIGINT) or SIGTERM ended
INTERRUPTED_EXIT = 128 + signal.SIGINT
TERMINATED_EXIT = 128 + signal.SIGTERM


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread while `sigterm_as_ctrl_c` is in effect."""


def _raise_terminated(signal_number, frame):
    raise Terminated


def _default_action_in_child() -> None:
    """A forked worker (write_imagenet's scan pool, ffcv's writer processes) is stopped by its parent with SIGTERM
    and should simply end, not raise in whatever it was doing and print a traceback."""
    if signal.getsignal(signal.SIGTERM) is _raise_terminated:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


@contextlib.contextmanager
def sigterm_as_ctrl_c():
    """Within the block (or the function it decorates) SIGTERM raises Terminated in this process. A SIGTERM that
    was ignored stays ignored."""
    if signal.getsignal(signal.SIGTERM) == signal.SIG_IGN:
        yield
        return
    in_every_child(_default_action_in_child)
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def stopped_by(interrupt: KeyboardInterrupt) -> str:
    """How the program was stopped, as its last line says it: 'interrupted' (Ctrl-C) or 'stopped by SIGTERM'."""
    return "stopped by SIGTERM" if isinstance(interrupt, Terminated) else "interrupted"


def stopped_exit(interrupt: KeyboardInterrupt) -> int:
    """The exit status of a program stopped so: 143 for SIGTERM, 130 for Ctrl-C."""
    return TERMINATED_EXIT if isinstance(interrupt, Terminated) else INTERRUPTED_EXIT
