"""SIGTERM stops the entry points as Ctrl-C does (the programs' own paths are tested with them)."""
import os
import signal

import pytest

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
