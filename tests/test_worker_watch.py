"""When a worker dies, waits on worker processes end; a full disk is one line: ffcv's writer, the sample set, Pools."""
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from conftest import REPO, ctrl_c_as_in_a_terminal, run_script
from pipeline.worker_watch import stop_if_a_worker_dies
from test_write_imagenet import photo, write_args


def ignore_sigint():
    """As a shell starts a background job (`… &` in a script)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def file_size_limit(limit: int):
    """A process start hook: files the process writes stop at `limit` bytes (EFBIG, as ENOSPC on a full disk)."""
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def run_python(code: str) -> subprocess.CompletedProcess:
    """In a process of its own (the watcher signals the main thread), with SIGINT ignored."""
    return run_script(["-c", textwrap.dedent(code)], timeout=60, preexec_fn=ignore_sigint,
                      env={**os.environ, "PYTHONUNBUFFERED": "1"})  # what it printed before a signal ended it


def test_a_killed_pool_worker_stops_the_wait_in_one_line():
    """Pool.imap waited forever for the task of a worker the OOM killer (here SIGKILL) took down. One that SIGTERM
    ended (SLURM signals every process of a job, the workers sooner than the main process at times) stops the
    program as that SIGTERM does."""
    result = run_python("""
        import os, signal
        from multiprocessing import Pool
        from pipeline.termination import Terminated
        from pipeline.worker_watch import WorkerDiedError, stop_if_a_worker_dies

        def task(index, signal_number):
            if index == 5:
                os.kill(os.getpid(), signal_number)
            return index

        for signal_number in (signal.SIGKILL, signal.SIGTERM):
            with Pool(2) as pool:
                try:
                    with stop_if_a_worker_dies("the scan", poll_seconds=0.05):
                        print(sorted(pool.starmap(task, [(index, signal_number) for index in range(10)], 1)))
                except WorkerDiedError as error:
                    print(error)
                except Terminated:
                    print("Terminated")
    """)
    assert result.returncode == 0, result.stderr
    killed, terminated = result.stdout.splitlines()
    assert killed.startswith("the scan stopped: worker process ") and killed.endswith("was killed by SIGKILL")
    assert terminated == "Terminated"


def test_workers_that_end_well_ctrl_c_and_a_sigusr1_from_outside_are_left_alone():
    result = run_python("""
        from multiprocessing import Pool
        from pipeline.worker_watch import stop_if_a_worker_dies

        with stop_if_a_worker_dies("the scan", poll_seconds=0.05):
            with Pool(2, maxtasksperchild=1) as pool:  # each worker ends (status 0) after one task
                print(sum(pool.imap(abs, range(-20, 0))))
                pool.close()
                pool.join()
        try:
            with stop_if_a_worker_dies("the scan", poll_seconds=0.05):
                raise KeyboardInterrupt
        except KeyboardInterrupt:
            print("Ctrl-C stays Ctrl-C")
        import os, signal
        signal.signal(signal.SIGUSR1, lambda number, frame: print("the program's own SIGUSR1 handler"))
        with stop_if_a_worker_dies("the scan", poll_seconds=0.05):  # SLURM's --signal=USR1@60, say
            os.kill(os.getpid(), signal.SIGUSR1)
        signal.signal(signal.SIGUSR1, signal.SIG_DFL)
        with stop_if_a_worker_dies("the scan", poll_seconds=0.05):
            os.kill(os.getpid(), signal.SIGUSR1)  # ends the process, as without the watch
        print("not reached")
    """)
    assert result.returncode == -signal.SIGUSR1, result.stderr
    assert result.stdout.split("\n") == ["210", "Ctrl-C stays Ctrl-C", "the program's own SIGUSR1 handler", ""]


def test_a_full_disk_under_the_beton_writer_is_one_line_and_leaves_nothing(tmp_path):
    """ENOSPC in an ffcv writer worker (here EFBIG, from a file size limit) hung write_imagenet.py forever; and
    once stopped, its exit waited for the writer's work queue to be fed to the dead workers."""
    val = tmp_path / "imagenet" / "val"
    original = tmp_path / "photo.JPEG"
    photo(256, 256).save(original)
    for label in range(2):
        (val / str(label)).mkdir(parents=True)
        for index in range(500):  # the workers die at their first page (40 raw images): 900 chunks stay queued
            shutil.copyfile(original, val / str(label) / f"{index}.JPEG")
    out = tmp_path / "out"
    out.mkdir()
    result = subprocess.run([sys.executable, "dataset_prep/write_imagenet.py",
                             *write_args(tmp_path / "imagenet", out, "--split", "val", "--max-res", "256",
                                         "--compress-prob", "0", "--chunk-size", "1")],  # more than a pipe holds
                            cwd=REPO, capture_output=True, text=True, timeout=60,
                            preexec_fn=file_size_limit(300_000))  # the beton needs more, the rest fits
    assert result.returncode == 2, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("write_imagenet.py: error: writing val.beton stopped: worker process ") and \
        "exited with status 1" in last and f"free on the disk of {out}" in last, last
    assert sorted(path.name for path in out.iterdir()) == []  # no beton, no temp file


def test_a_full_disk_under_the_sample_set_is_one_line_and_leaves_nothing(tmp_path):
    """It was a traceback (exit 1) that left the partial photo folder on the full disk; and under a file size
    limit, PIL wrote truncated JPEGs without an error."""
    result = subprocess.run([sys.executable, "dataset_prep/write_imagenet.py", "--out-dir", str(tmp_path),
                             "--sample-train", "2", "--sample-val", "1", "--workers", "2"],
                            cwd=REPO, capture_output=True, text=True, timeout=60,
                            preexec_fn=file_size_limit(10_000))  # below a sample photo's size
    assert result.returncode == 2, result.stderr[-3000:]
    last = re.sub(r"\d+\.\d\d GB free", "N GB free", result.stderr.strip().splitlines()[-1])  # other tests write
    assert last == (f"write_imagenet.py: error: the sample set in {tmp_path}/images was not built: File too large (N "
                    f"GB free on the disk of {tmp_path}; free space or pass another --out-dir)")
    assert list(tmp_path.iterdir()) == []


def test_a_killed_sample_set_worker_stops_the_build(tmp_path):
    """Its Pool.imap waited forever for the photos of a worker the OOM killer (here SIGKILL) took down."""
    result = run_python(f"""
        import os, signal
        from pathlib import Path
        from dataset_prep import sample_set
        from pipeline.worker_watch import WorkerDiedError

        write = sample_set._write_views

        def write_or_die(task):
            if task[3] == "val":
                os.kill(os.getpid(), signal.SIGKILL)
            return write(task)

        sample_set._write_views = write_or_die  # the workers are forked: they call it too
        try:
            sample_set.build_sample_folder(Path("{tmp_path}/images"), 2, 1, workers=2)
        except WorkerDiedError as error:
            print(error)
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"building the sample set in {tmp_path}/images stopped: worker process ") and \
        "was killed by SIGKILL" in result.stdout, result.stdout
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("stop, status, stopped", [(signal.SIGINT, 130, "interrupted"),
                                                   (signal.SIGTERM, 143, "stopped by SIGTERM")])
def test_ctrl_c_under_the_beton_writer_is_one_line_and_leaves_nothing(tmp_path, stop, status, stopped):
    """Ctrl-C reaches the terminal's whole process group: the main process and every writer worker printed a
    KeyboardInterrupt traceback (exit -2), and the writer's shared memory was reported leaked. SLURM's time limit
    sends SIGTERM to every process of the job: the writer died without a word (exit -15), its temp file left."""
    train = tmp_path / "imagenet" / "train"
    original = tmp_path / "photo.JPEG"
    photo(256, 256).save(original)
    for label in range(2):
        (train / str(label)).mkdir(parents=True)
        for index in range(300):
            shutil.copyfile(original, train / str(label) / f"{index}.JPEG")
    out = tmp_path / "out"
    # -X faulthandler: a SIGABRT prints every thread's stack, for the report of a stop that does not end
    writer = subprocess.Popen([sys.executable, "-X", "faulthandler", "dataset_prep/write_imagenet.py",
                               *write_args(tmp_path / "imagenet", out, "--split", "train", "--max-res", "256",
                                           "--chunk-size", "1")],
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              start_new_session=True,  # a process group of its own, as a terminal's job
                              preexec_fn=ctrl_c_as_in_a_terminal)
    try:
        deadline = time.time() + 60
        # the workers are writing (a signal in the instant of a fork is lost in Python's at-fork handlers)
        while sum(path.stat().st_size for path in out.glob(".train.beton.tmp-*")) < 2_000_000:
            assert time.time() < deadline and writer.poll() is None
            time.sleep(0.02)
        os.killpg(writer.pid, stop)  # what Ctrl-C does; what SLURM does at a job's end
        try:
            _, stderr = writer.communicate(timeout=60)
        except subprocess.TimeoutExpired:  # seen once in CI, after the stop line: say where each process waits
            group = subprocess.run(["ps", "-o", "pid,stat,wchan:24,args", "-g", str(writer.pid)],
                                   capture_output=True, text=True).stdout
            os.killpg(writer.pid, signal.SIGABRT)
            _, stderr = writer.communicate(timeout=30)
            pytest.fail(f"the writer's processes did not end 60 s after the stop:\n{group}\n{stderr[-8000:]}")
    finally:
        writer.kill()
    assert writer.returncode == status, stderr[-3000:]
    assert "Traceback" not in stderr and "leaked" not in stderr, stderr[-3000:]
    assert stderr.strip().splitlines()[-1] == (f"write_imagenet.py: {stopped}; no beton was written (nothing "
                                                "half-written is left); the same command starts again")
    assert sorted(path.name for path in out.iterdir()) == []


def test_a_block_outside_the_main_thread_runs_unwatched():
    """Only the main thread may set a signal handler: signal.signal raised ValueError in any other thread."""
    outcome = []

    def scan_in_a_thread():
        try:
            with stop_if_a_worker_dies("the scan"):
                outcome.append("ran")
        except ValueError as error:
            outcome.append(str(error))

    thread = threading.Thread(target=scan_in_a_thread)
    thread.start()
    thread.join()
    assert outcome == ["ran"]


def test_a_worker_that_outlives_sigterm_is_killed_and_the_program_exits():
    """multiprocessing's exit joins every child without a time limit: a worker still alive after the stop's
    SIGTERM (here one that ignores it) kept the program from ever exiting after its stop line."""
    script = textwrap.dedent("""
        import multiprocessing, signal, time
        from pipeline.worker_watch import stop_workers
        def stubborn(ready):
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            ready.set()
            time.sleep(600)
        if __name__ == "__main__":
            ready = multiprocessing.get_context("fork").Event()
            worker = multiprocessing.get_context("fork").Process(target=stubborn, args=(ready,))
            worker.start()
            ready.wait()
            stop_workers(grace_seconds=0.5)
            print(worker.exitcode)
        """)
    result = run_script(["-c", script], timeout=60)
    assert result.returncode == 0 and result.stdout.split() == ["-9"], result.stderr
