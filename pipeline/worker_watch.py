"""Stop waiting for worker processes that died: ffcv's beton writer and multiprocessing's Pool wait forever.

ffcv's DatasetWriter polls a count of written samples that a dead worker never raises (a full disk: ENOSPC in
its page write), and Pool.imap waits for the results of a task whose worker the OOM killer or a crashing
decoder took down. A thread of this process watches its child processes while such a wait runs and, when one
ends with an error status or a signal, sends the main thread a signal of its own (SIGUSR1: a blocked lock wait
wakes only for a signal, and SIGINT is ignored in a shell's background jobs), whose handler stops the wait.
"""
import contextlib
import gc
import multiprocessing
import multiprocessing.queues
import signal
import threading
import time
import traceback
from typing import Iterator, Optional, Set

from pipeline.errors import UserError
from pipeline.termination import Terminated

POLL_SECONDS = 0.1
WAKE_SIGNAL = signal.SIGUSR1


class WorkerDiedError(UserError, RuntimeError):
    """A worker process of this one ended with an error; the message names how (exit status or signal)."""


class _Stop(BaseException):
    """Raised in the main thread by the wake signal's handler; a BaseException, so that no `except Exception`
    of the interrupted code keeps it."""


def ending(exitcode: int) -> str:
    """'exited with status 1', 'was killed by SIGKILL' for a multiprocessing exit code (a signal is negative)."""
    if exitcode < 0:
        try:
            return f"was killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"was killed by signal {-exitcode}"
    return f"exited with status {exitcode}"


def started_children() -> Set[multiprocessing.process.BaseProcess]:
    """The Process objects this process started that multiprocessing has not forgotten yet. Read from its own
    registry: active_children() first forgets those that ended, so a worker that died between two looks was
    never seen (ffcv's writer never joins its workers: only that registry still holds a dead one). Kept by the
    watcher, an ended Process keeps its exit code."""
    registry = getattr(multiprocessing.process, "_children", None)
    return set(registry) if registry is not None else set(multiprocessing.active_children())


class _Watcher(threading.Thread):
    def __init__(self, poll_seconds: float):
        super().__init__(name="worker-watch", daemon=True)
        self.poll_seconds = poll_seconds
        self.death: Optional[str] = None
        self.terminated = False  # the dead worker was killed by SIGTERM
        self._stopped = threading.Event()
        self._lock = threading.Lock()  # no signal once the watched block has ended
        self._main = threading.main_thread().ident

    def run(self) -> None:
        known = started_children()
        while not self._stopped.wait(self.poll_seconds):
            known |= started_children()
            failed = next((child for child in known if child.exitcode not in (None, 0)), None)
            if failed is not None:
                with self._lock:
                    if not self._stopped.is_set():
                        self.death = f"worker process {failed.pid} {ending(failed.exitcode)}"
                        self.terminated = failed.exitcode == -signal.SIGTERM
                        signal.pthread_kill(self._main, WAKE_SIGNAL)
                return

    def stop(self) -> None:
        with self._lock:
            self._stopped.set()


def _wake_handler(watcher: _Watcher, previous):
    """The wake signal's handler: stop the block when the watcher sent it, else do what was done before (a SIGUSR1
    from outside, such as SLURM's --signal=USR1@60, still reaches the handler it had, or ends the process)."""
    def handle(signal_number, frame) -> None:
        if watcher.death is not None:
            raise _Stop
        if callable(previous):
            previous(signal_number, frame)
        elif previous == signal.SIG_DFL:
            signal.signal(signal_number, signal.SIG_DFL)
            signal.raise_signal(signal_number)
    return handle


def stop_workers(grace_seconds: float = 10) -> None:
    """Terminate this process's live workers, and let it exit without feeding their work queues: a Queue's
    feeder thread blocks on a full pipe that no worker reads any more, and the exit joins that thread. A worker
    still alive `grace_seconds` after SIGTERM is killed: multiprocessing's exit joins every child without a time
    limit, so one that outlived the stop kept the program from exiting after its last line."""
    children = multiprocessing.active_children()
    for child in children:
        child.terminate()
    deadline = time.monotonic() + grace_seconds
    for child in children:
        child.join(timeout=max(0.0, deadline - time.monotonic()))
    for child in children:
        if child.is_alive():
            child.kill()
            child.join()
    # type(), not isinstance(): that asks some objects for __class__ (torch's deprecated aliases then warn)
    for queue in [item for item in gc.get_objects() if issubclass(type(item), multiprocessing.queues.Queue)]:
        queue.cancel_join_thread()


@contextlib.contextmanager
def stop_if_a_worker_dies(what: str, advice: str = "", terminate_others: bool = False,
                          poll_seconds: float = POLL_SECONDS) -> Iterator[None]:
    """Run the block (in the main thread) while watching this process's children: one that ends with an error
    stops the block with `WorkerDiedError('<what> stopped: worker process N exited with status 1; <advice>')`,
    one killed by SIGTERM with termination.Terminated, as a SIGTERM to this process would.
    Where `terminate_others`, a block that ends early for any reason (Ctrl-C too) stops the other workers first
    (ffcv's writer, which would wait for them, and whose workers leave Ctrl-C to this process; not a Pool's,
    which its own terminate() stops, and which a worker stopped holding its task queue's lock would hang).
    Enter it inside a Pool's `with`: the Pool's exit kills its workers, which would read as deaths."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set a handler
        yield
        return
    watcher = _Watcher(poll_seconds)
    previous = signal.getsignal(WAKE_SIGNAL)
    signal.signal(WAKE_SIGNAL, _wake_handler(watcher, previous))
    watcher.start()
    try:
        yield
        watcher.stop()  # inside the try: a signal sent just before is still caught here
    except BaseException as stop:  # a dead worker (_Stop), or Ctrl-C, or an error: the block ends early
        watcher.stop()
        if terminate_others:
            stop_workers()  # while the interrupted code's frames still hold its queues
        if not isinstance(stop, _Stop):
            raise
        # the interrupted code's locals go now: ffcv's progress bar prints when collected, after the error line
        traceback.clear_frames(stop.__traceback__)
        if watcher.terminated:  # SLURM's end of a job signals every process: the worker's death came first
            raise Terminated from None
        raise WorkerDiedError(f"{what} stopped: {watcher.death}" + (f"; {advice}" if advice else "")) from None
    finally:
        watcher.stop()
        signal.signal(WAKE_SIGNAL, previous)
