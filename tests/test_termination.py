"""SIGTERM stops the entry points as Ctrl-C does (the programs' own paths are tested with them)."""
import os
import signal

import pytest

from pipeline.termination import Terminated, sigterm_as_ctrl_c, stopped_by, stopped_exit


def test_sigterm_raises_within_the_block_only_and_an_ignored_one_stays_ignored():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Terminated) as stopped:
        with sigterm_as_ctrl_c():
            os.kill(os.getpid(), signal.SIGTERM)
    assert (stopped_by(stopped.value), stopped_exit(stopped.value)) == ("stopped by SIGTERM", 143)
    assert (stopped_by(KeyboardInterrupt()), stopped_exit(KeyboardInterrupt())) == ("interrupted", 130)
    assert signal.getsignal(signal.SIGTERM) is before
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # as a parent that wants this process to outlive a SIGTERM
    try:
        with sigterm_as_ctrl_c():
            assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGTERM)
    finally:
        signal.signal(signal.SIGTERM, before)
