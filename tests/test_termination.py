"""SIGTERM stops the entry points as Ctrl-C does (the programs' own paths are tested with them)."""
import os
import signal
import textwrap

import pytest

from conftest import run_script
from pipeline.termination import Terminated, report_stop, sigterm_as_ctrl_c


def test_sigterm_raises_within_the_block_only_and_an_ignored_one_stays_ignored(capsys):
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Terminated) as stopped:
        with sigterm_as_ctrl_c():
            os.kill(os.getpid(), signal.SIGTERM)
    assert report_stop("x.py", stopped.value, "kept") == 143 and report_stop("x.py", KeyboardInterrupt(), "kept") == 130
    assert report_stop("x.py", KeyboardInterrupt(), "not said", say=False) == 130
    out, err = capsys.readouterr()
    assert err == "x.py: stopped by SIGTERM; kept\nx.py: interrupted; kept\n" and out == ""
    assert signal.getsignal(signal.SIGTERM) is before
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # as a parent that wants this process to outlive a SIGTERM
    try:
        with sigterm_as_ctrl_c():
            assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGTERM)
    finally:
        signal.signal(signal.SIGTERM, before)


def test_a_worker_stopped_while_it_starts_ends():
    """SIGTERM to a worker still in its at-fork hooks ran the inherited handler there, where Python reports the
    exception and goes on: the worker lived, and its Pool's terminate() waited for it forever (a hang the suite
    met in write_imagenet's scan pool). Here a hook keeps the worker in that window while the Pool stops it."""
    script = textwrap.dedent("""
        import multiprocessing, os, time
        from pipeline.termination import sigterm_as_ctrl_c
        os.register_at_fork(after_in_child=lambda: time.sleep(0.5))  # runs before the project's own hook
        with sigterm_as_ctrl_c():
            pool = multiprocessing.get_context("fork").Pool(1)
            pool.terminate()
        print("ended")
        """)
    result = run_script(["-c", script], timeout=60)
    assert result.returncode == 0 and result.stdout.split() == ["ended"], result.stderr
