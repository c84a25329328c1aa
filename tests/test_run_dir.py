"""The run-directory contract: what 'finished' means, refusing another run's folder, the lock, stale temp files."""
import errno
import fcntl
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from pipeline.atomic import atomic_open, remove_stale_temporaries
from pipeline.config import describe
from pipeline.run_dir import (CHECKPOINT_NAME, CONFIG_NAME, DATA_NAME, LOG_NAME, RESULT_NAME, TRAIN_LOG_NAME,
                              RunDirError, RunLock, first_difference, foreign_files, is_finished, recorded_config)
from pipeline.termination import Terminated, sigterm_as_ctrl_c

CONFIG = {"training.epochs": 2, "lr.lr": 0.4, "model.squeeze": "gmp", "logging.run_dir": "a", "model.se_kernel": "auto"}


def finished_run(run_dir, config=CONFIG, finished=2):
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / RESULT_NAME).write_text(json.dumps({"finished_epochs": finished, "config": config}))
    return run_dir


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_speed_only_settings_do_not_make_another_run():
    assert first_difference(CONFIG, CONFIG | {"logging.run_dir": "b", "model.se_kernel": "triton"}) is None
    assert first_difference(CONFIG, CONFIG | {"lr.lr": 0.2}) == "lr.lr"


def test_finished_means_same_settings_and_every_epoch(tmp_path):
    assert is_finished(finished_run(tmp_path / "done"), CONFIG, "fix it") is True
    assert is_finished(finished_run(tmp_path / "half", finished=1), CONFIG, "fix it") is False
    assert is_finished(tmp_path / "absent", CONFIG, "fix it") is False
    (tmp_path / "torn").mkdir()
    (tmp_path / "torn" / RESULT_NAME).write_text('{"finished_ep')  # killed mid-write (before atomic writes)
    assert is_finished(tmp_path / "torn", CONFIG, "fix it") is False


def test_a_folder_holding_a_run_with_other_settings_is_refused(tmp_path):
    run_dir = finished_run(tmp_path / "r")
    with pytest.raises(RunDirError, match=r"holds a run with lr.lr=0.4, not 0.2; use another root"):
        is_finished(run_dir, CONFIG | {"lr.lr": 0.2}, "use another root")


def test_a_run_that_trained_nothing_may_start_again_with_other_settings(tmp_path):
    """Out of GPU memory at its first step, a run leaves only config.yaml; the smaller batch that fixes it was
    refused as "another run" until the folder was deleted."""
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    (run_dir / CONFIG_NAME).write_text("training:\n  epochs: 2\n  batch_size: 1024\n")
    assert is_finished(run_dir, {"training.epochs": 2, "training.batch_size": 512}, "fix it") is False
    (run_dir / CHECKPOINT_NAME).write_bytes(b"epoch 1")  # once an epoch is kept, other settings are another run
    with pytest.raises(RunDirError, match=r"holds a run with training.batch_size=1024, not 512; fix it"):
        is_finished(run_dir, {"training.epochs": 2, "training.batch_size": 512}, "fix it")


def test_files_named_as_a_runs_that_no_run_wrote_are_foreign(tmp_path):
    started = tmp_path / "started"  # a run killed before its first epoch ended: config.yaml and data.json
    started.mkdir()
    (started / CONFIG_NAME).write_text(describe({"model.squeeze": "gmp", "training.epochs": 2}))
    (started / DATA_NAME).write_text("{}")
    assert foreign_files(started) == [] and foreign_files(tmp_path / "absent") == []
    assert foreign_files(finished_run(tmp_path / "copied")) == []  # result.json alone (copied off a cluster)
    ablation = tmp_path / "ablation"  # ablate.py's train.log, before train.py starts
    ablation.mkdir()
    (ablation / TRAIN_LOG_NAME).write_text("starting\n")
    assert foreign_files(ablation) == []
    mine = tmp_path / "mine"
    mine.mkdir()
    for text in ("my notes\n", "model: resnet\n", "- a list\n", "training: {epochs: 2}\n"):
        (mine / CONFIG_NAME).write_text(text)
        assert foreign_files(mine) == [CONFIG_NAME]
        if "training" not in text:
            assert recorded_config(mine) is None  # "my notes" raised AttributeError here
    (mine / LOG_NAME).write_text("{}\n")
    assert foreign_files(mine) == [CONFIG_NAME, LOG_NAME]


def test_betons_are_matched_by_what_they_hold_not_where_they_lie(tmp_path):
    """Betons copied to a node's local disk (README, "Several nodes") made a run "another run" by its path alone."""
    shared = CONFIG | {"data.train_dataset": "/shared/train.beton"}
    moved = shared | {"data.train_dataset": "/local/train.beton"}
    held = {"data.train_dataset": "2000 images written 2026-11-26T17:19"}
    old = finished_run(tmp_path / "old", shared)  # from before the run directory recorded its data: by path
    with pytest.raises(RunDirError, match=r"holds a run with data.train_dataset='/shared/train.beton', not "):
        is_finished(old, moved, "fix it", held)
    run_dir = finished_run(tmp_path / "r", shared)
    (run_dir / DATA_NAME).write_text(json.dumps(held))
    assert is_finished(run_dir, moved, "fix it", held) is True
    with pytest.raises(RunDirError, match=r"r was trained on other data: its data.train_dataset held 2000 images "
                                          r"written 2026-11-26T17:19, /local/train.beton holds 2000 images written "
                                          r"2026-11-27T09:00; fix it"):
        is_finished(run_dir, moved, "fix it", {"data.train_dataset": "2000 images written 2026-11-27T09:00"})
    with pytest.raises(RunDirError, match=r"holds a run with lr.lr=0.4, not 0.2"):
        is_finished(run_dir, moved | {"lr.lr": 0.2}, "fix it", held)  # other settings are still compared


def test_a_locked_run_directory_names_its_holder(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", f"""
import sys, time
sys.path.insert(0, {str(os.getcwd())!r})
from pipeline.run_dir import RunLock
with RunLock({str(tmp_path)!r}):
    print("held", flush=True)
    time.sleep(60)
"""], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert RunLock(tmp_path).is_held()
        with pytest.raises(RunDirError, match=f"in use by process {holder.pid} on "):
            with RunLock(tmp_path):
                pass
    finally:
        holder.kill()
        holder.wait()
    deadline = time.time() + 10
    while RunLock(tmp_path).is_held() and time.time() < deadline:  # the kernel drops a dead holder's lock
        time.sleep(0.1)
    with RunLock(tmp_path):
        assert f"process {os.getpid()}" in (tmp_path / ".lock").read_text()


@pytest.mark.parametrize("number", [errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOLCK])
def test_a_filesystem_without_locks_is_used_unlocked_with_a_note(tmp_path, monkeypatch, capsys, number):
    """Lustre mounted without flock, FUSE mounts (a notebook's cloud drive): flock raised, and every train.py and
    ablate.py run ended in that traceback; is_held said every run directory was in use."""
    def flock(handle, operation):
        raise OSError(number, os.strerror(number))
    monkeypatch.setattr(fcntl, "flock", flock)
    with RunLock(tmp_path):
        assert not RunLock(tmp_path).is_held()
        assert f"process {os.getpid()}" in (tmp_path / ".lock").read_text()
    assert capsys.readouterr().err == (f"note: the filesystem of {tmp_path} takes no file locks ({os.strerror(number)})"
                                       ": another process started in it meanwhile would not be refused\n")


def test_only_temporaries_of_dead_processes_are_removed(tmp_path):
    stale = tmp_path / f".checkpoint.pt.tmp-{dead_pid()}"
    stale_failures = tmp_path / f".train.beton.failures-{dead_pid()}"
    live = tmp_path / f".checkpoint.pt.tmp-{os.getpid()}"
    kept = tmp_path / "checkpoint.pt"
    for path in (stale, stale_failures, live, kept):
        path.write_text("x")
    assert sorted(remove_stale_temporaries(tmp_path)) == sorted([stale, stale_failures])
    assert live.exists() and kept.exists() and not stale.exists()


@pytest.mark.parametrize("stop, raised", [(signal.SIGINT, KeyboardInterrupt), (signal.SIGTERM, Terminated)])
def test_ctrl_c_during_an_atomic_write_takes_effect_once_the_file_is_whole(tmp_path, terminal_ctrl_c, stop, raised):
    """Ctrl-C in mid-checkpoint became torch.save's short-write error, reported as a full disk; SIGTERM (a job's
    time limit) left the checkpoint as a temp file."""
    target = tmp_path / "checkpoint.pt"
    with sigterm_as_ctrl_c():
        handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
        with pytest.raises(raised):
            with atomic_open(target, "wb") as handle:
                handle.write(b"first half, ")
                os.kill(os.getpid(), stop)
                handle.write(b"second half")
        assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers
    assert target.read_bytes() == b"first half, second half"
    assert [path.name for path in tmp_path.iterdir()] == ["checkpoint.pt"]
