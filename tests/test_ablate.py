"""Ablation runner: the scheduler with a mocked launcher; skip, resume, refusal and orphans for real."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, tiny_settings
from pipeline import ablate
from pipeline.ablate import (Job, Slot, choose_gpus, command_for, launch_process, make_slots, pin_cores, plan_jobs,
                             run_schedule, time_to_go, visible_gpus)
from pipeline.ablate import main as ablate_main
from pipeline.ablation_inputs import freeze_settings
from pipeline.clock import clock_time
from pipeline.config import ConfigError, resolve
from pipeline.cores import core_ranges, quota_cores, share_cores
from pipeline.processes import wait_for_an_exit
from pipeline.provenance import code_version
from pipeline.run_dir import RunLock
from pipeline.trainer import parse_command_line as train_command_line


class FakeProcess:
    """Exits with `status` after `polls` polls; records when it was alive."""

    def __init__(self, status=0, polls=2):
        self.status, self.polls_left = status, polls

    def poll(self):
        self.polls_left -= 1
        return self.status if self.polls_left <= 0 else None


def run_mocked(jobs, slots, statuses=None, report=lambda _: None):
    launches, busy, overlaps = [], {}, []

    def launch(job, slot):
        overlaps.extend(d for d in slot.devices if busy.get(d))
        for device in slot.devices:
            busy[device] = True
        launches.append((job, slot))
        process = FakeProcess((statuses or {}).get(job.squeeze, 0))
        original_poll = process.poll

        def poll():
            status = original_poll()
            if status is not None:
                for device in slot.devices:
                    busy[device] = False
            return status
        process.poll = poll
        return process

    outcome = run_schedule(jobs, slots, launch, report=report, poll_seconds=0)
    return outcome, launches, overlaps


def test_eight_resnet18s_on_eight_gpus_one_per_gpu(tmp_path):
    jobs = plan_jobs(["baseline", "gap", "gmp", "std", "gapXstd", "random", "avgmax", "fca"], [0, 1, 2],
                     tmp_path, "resnet18", "rn18_16ep")
    slots = make_slots([str(i) for i in range(8)], 1)
    outcome, launches, overlaps = run_mocked(jobs, slots)
    assert len(outcome["done"]) == 24 and not outcome["failed"] and not overlaps
    assert {slot.devices for _, slot in launches[:8]} == {(str(i),) for i in range(8)}  # all 8 busy at once
    assert [job.seed for job in jobs[:8]] == [0] * 8  # seed-major: complete pairs first


def test_all_gpus_per_run_uses_torchrun(tmp_path):
    slots = make_slots(["0", "1", "2", "3"], None)
    assert slots == [Slot(("0", "1", "2", "3"))]
    command, env = command_for(Job("gmp", 1, tmp_path / "r"), slots[0], Path("recipes/rn50_88ep.yaml"),
                               ["--training.epochs=2"])
    assert command[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4"]
    assert env["CUDA_VISIBLE_DEVICES"] == "0,1,2,3"
    assert "--squeeze" in command and "gmp" in command and "--training.seed=1" in command
    assert command[-1] == "--training.epochs=2"
    assert make_slots(["0", "1", "2", "3"], 2) == [Slot(("0", "1")), Slot(("2", "3"))]
    with pytest.raises(ConfigError, match="does not divide"):
        make_slots(["0", "1", "2"], 2)
    assert make_slots([], 1) == make_slots([], None) == [Slot()]  # the default and 'all': one CPU slot
    with pytest.raises(ConfigError) as error:  # it trained on the CPU without a word
        make_slots([], 2)
    assert str(error.value) == ("--gpus-per-run 2 asks for GPUs, but the runs have none (this process sees no GPU, "
                                "or --gpus none): they would train on the CPU; drop --gpus-per-run to train there")


def two_socket_topology(cpu):
    """8 logical CPUs: sockets 0 (CPUs 0, 1, 4, 5) and 1 (2, 3, 6, 7); CPU n and n + 4 are hyperthread siblings."""
    return (cpu % 4) // 2, cpu % 4


def test_runs_side_by_side_get_disjoint_blocks_of_cores():
    """Eight runs on eight GPUs each sized its loader by the node's every core (8 x 96 threads on 96 cores)."""
    cores = range(8)
    assert share_cores(2, cores, two_socket_topology) == [(0, 1, 4, 5), (2, 3, 6, 7)]  # a socket each
    assert share_cores(4, cores, two_socket_topology) == [(0, 4), (1, 5), (2, 6), (3, 7)]  # siblings together
    assert share_cores(3, cores, two_socket_topology) == [(0, 1, 4), (2, 5, 6), (3, 7)]
    assert share_cores(16, cores, two_socket_topology) == [tuple(cores)] * 16  # too few to split
    blocks = share_cores(8, range(96))
    assert sorted(cpu for block in blocks for cpu in block) == list(range(96)) and {len(b) for b in blocks} == {12}
    assert core_ranges((0, 1, 2, 48, 49, 7)) == "0-2,7,48-49"
    assert pin_cores([Slot()]) == [Slot()]  # one run at a time keeps the runner's cores


def test_a_run_starts_on_its_slots_cores(tmp_path, monkeypatch):
    probe = tmp_path / "probe.py"
    probe.write_text("import os\nprint('cores', sorted(os.sched_getaffinity(0)))\n")
    monkeypatch.setattr("pipeline.ablate.TRAIN_SCRIPT", probe)
    available = sorted(os.sched_getaffinity(0))
    slots = pin_cores(make_slots(["0", "1"], 1))
    assert [slot.cores for slot in slots] == share_cores(2, allowed=quota_cores()) and slots[0].devices == ("0",)
    job = Job("gap", 0, tmp_path / "run")
    assert launch_process(job, Slot(("0",), (available[-1],)), Path("recipes/sample.yaml"), []).wait() == 0
    assert f"cores [{available[-1]}]" in (job.run_dir / "train.log").read_text()


def test_cpu_runs_one_after_another(tmp_path):
    command, env = command_for(Job("gap", 0, tmp_path / "r"), Slot(), Path("recipes/sample.yaml"), [])
    assert command[1].endswith("pipeline/train.py")
    outcome, launches, _ = run_mocked(plan_jobs(["gap", "std"], [0], tmp_path, "resnet18", "s"), make_slots([], 1))
    assert len(launches) == 2 and len(outcome["done"]) == 2


def test_the_next_run_starts_when_a_run_exits_not_at_the_next_poll(tmp_path):
    """Real processes of 0.1 s, one slot, a poll interval of 30 s: each exit wakes the scheduler (pidfds). It
    slept a whole interval after each start before, and left the GPU idle for up to that long."""
    jobs = plan_jobs(["gap", "std", "gmp"], [0], tmp_path, "resnet18", "s")
    started = time.monotonic()
    outcome = run_schedule(jobs, make_slots(["0"], 1), lambda job, slot: subprocess.Popen(["sleep", "0.1"]),
                           report=lambda _: None, poll_seconds=30)
    assert len(outcome["done"]) == 3 and time.monotonic() - started < 10


def test_without_pidfds_the_wait_is_the_poll_interval(monkeypatch):
    """Where Linux's pidfds are missing (macOS), a wait sleeps its interval and the schedule goes on."""
    monkeypatch.delattr(os, "pidfd_open")
    process = subprocess.Popen(["sleep", "5"])
    try:
        started = time.monotonic()
        wait_for_an_exit([process], 0.2)
        assert 0.2 <= time.monotonic() - started < 4 and process.poll() is None
    finally:
        process.kill()
        process.wait()


def test_failed_run_is_retried_once_then_reported(tmp_path):
    jobs = plan_jobs(["gap", "std"], [0], tmp_path, "resnet18", "s")
    outcome, launches, _ = run_mocked(jobs, make_slots(["0"], 1), statuses={"std": 1})
    assert [job.squeeze for job, _ in launches] == ["gap", "std", "std"]
    assert [job.squeeze for job in outcome["failed"]] == ["std"] and len(outcome["done"]) == 1


def test_a_run_that_exits_with_a_user_error_is_not_retried_and_says_which(tmp_path):
    """The error line was only in the run's log, behind a path: the runner now prints it."""
    jobs = plan_jobs(["gap", "std"], [0], tmp_path, "resnet18", "s")
    jobs[0].run_dir.mkdir(parents=True)
    error = "train.py: error: training on the CPU at training.batch_size 512, 192 px needs at least 47.1 GB (...)"
    (jobs[0].run_dir / "train.log").write_text(f"settings ...\n{error}\n")
    messages = []
    outcome, launches, _ = run_mocked(jobs, make_slots(["0"], 1), statuses={"gap": 2}, report=messages.append)
    assert [job.squeeze for job, _ in launches] == ["gap", "std"]
    assert [job.squeeze for job in outcome["failed"]] == ["gap"]
    assert f"FAILED {jobs[0].run_dir.name} (a user error, not retried): {error[len('train.py: error: '):]}; log: " \
           f"{jobs[0].run_dir / 'train.log'} (1 of 2 ended)" in messages


def test_each_run_that_ends_is_reported_with_its_top1_its_time_and_the_count(tmp_path, monkeypatch):
    """An ablation of 24 ResNet-50 runs prints a line per run over days: 'done NAME' said nothing of how the
    run went, how long it took or how many were left."""
    jobs = plan_jobs(["gap", "std", "gmp"], [0], tmp_path, "resnet18", "s")
    jobs[0].run_dir.mkdir(parents=True)
    (jobs[0].run_dir / "result.json").write_text(json.dumps({"top1": 61.254}))
    clock = iter([0.0, 3725.0, 3725.0, 3800.0, 3800.0, 3812.0])  # each start and each end
    monkeypatch.setattr(ablate.time, "monotonic", lambda: next(clock))
    messages = []
    run_mocked(jobs, make_slots(["0"], 1), statuses={"std": 2}, report=messages.append)
    ended = [message for message in messages if not message.startswith("[")]
    # two runs left on one GPU, at the pace of the one done
    assert ended[0] == (f"done {jobs[0].run_dir.name} in 1:02:05: top-1 61.25 (1 of 3 ended; ≈ 2:04:10 to go at this "
                        "pace)")
    assert ended[1].startswith(f"FAILED {jobs[1].run_dir.name} (a user error, not retried)")
    assert ended[1].endswith("(2 of 3 ended; ≈ 1:02:05 to go at this pace)")
    assert ended[2] == f"done {jobs[2].run_dir.name} in 0:00:12 (3 of 3 ended)"  # no readable result: no top-1


def test_the_time_to_go_finishes_the_running_runs_then_queues_the_rest_on_the_first_free_slot():
    # runs take 150 s (the mean of 100 and 200); one running for 50 s (100 s left), one for 200 s (due now), a
    # third slot free; four queued: at 0, 0, 100 and 150 s from now they start, the last ends at 300 s
    assert time_to_go([100.0, 200.0], [950.0, 800.0], 4, 3, 1000.0) == 300.0
    assert time_to_go([], [950.0], 4, 3, 1000.0) is None  # no run done yet: no pace
    assert time_to_go([100.0], [], 0, 3, 1000.0) is None  # nothing left


def test_gpus_are_numbered_as_this_process_sees_them(monkeypatch):
    """Under CUDA_VISIBLE_DEVICES=4,5,6,7 (a SLURM job's GPUs) --gpus 0,1 are GPUs 4 and 5: the runs were given
    CUDA_VISIBLE_DEVICES=0 and 1, someone else's GPUs."""
    monkeypatch.setattr("torch.cuda.device_count", lambda: 4)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
    assert visible_gpus() == ["4", "5", "6", "7"]
    assert choose_gpus("0,1", visible_gpus()) == ["4", "5"] and choose_gpus(None, ["4", "5"]) == ["4", "5"]
    command, env = command_for(Job("gap", 0, Path("r")), make_slots(choose_gpus("2", visible_gpus()), 1)[0],
                               Path("recipes/rn18_16ep.yaml"), [])
    assert env["CUDA_VISIBLE_DEVICES"] == "6"
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert visible_gpus() == ["0", "1", "2", "3"]
    assert choose_gpus("none", ["0"]) == []


@pytest.mark.parametrize("text, visible, message", [
    ("4", ["0", "1", "2", "3"], "--gpus 4: there is no GPU 4 here (this process sees 4 GPU(s), 0-3, numbered after "
                                "CUDA_VISIBLE_DEVICES); pass visible indices, or --gpus none to run on the CPU"),
    ("0", [], "--gpus 0: there is no GPU 0 here (this process sees no GPU"),
    ("0,0", ["0", "1"], "--gpus 0,0: a GPU is listed twice"),
    ("gpu0", ["0"], "--gpus 'gpu0': give GPU indices as a comma list (e.g. 0,1,2,3), or 'none' for the CPU"),
])
def test_gpus_that_are_not_visible_are_refused(text, visible, message):
    with pytest.raises(ConfigError) as raised:
        choose_gpus(text, visible)
    assert str(raised.value).startswith(message)


@pytest.mark.parametrize("arguments, message", [
    (["--squeeze", "gap,gap"], "--squeeze gap,gap: 'gap' is listed twice; list each arm once (--seeds repeats them)"),
    (["--squeeze", ""], "--squeeze '': name at least one arm (a comma list, e.g. baseline,gap), or 'all'"),
    (["--squeeze", " , "], "--squeeze ' , ': name at least one arm"),
    (["--squeeze", "gap,", "gmp"], "--squeeze gap, gmp: a comma list takes no spaces; write --squeeze gap,gmp"),
    (["--gpus", "0,", "1"], "--gpus 0, 1: a comma list takes no spaces; write --gpus 0,1"),
    (["--first-seed", "-3"], "--first-seed -3 --seeds 1: the seeds must lie in 0..4294967295"),
    (["--first-seed", "4294967295", "--seeds", "2"], "--first-seed 4294967295 --seeds 2: the seeds must lie in 0.."),
    (["--gpus-per-run", "0"], "--gpus-per-run '0': give a number of at least 1, or 'all'"),
    (["--training.seed=5"], "--training.seed: ablate.py sets training.seed for each run; use --seeds and --first-seed"),
    (["--logging.run_dir", "/tmp/x"], "--logging.run_dir: ablate.py sets logging.run_dir for each run; use "
                                      "--runs-root"),
    (["--model.squeeze=gmp"], "--model.squeeze: ablate.py sets model.squeeze for each run; use --squeeze"),
    (["--seed", "3"], "unexpected argument '--seed'; settings are given as --section.key=value; did you mean "
                      "--seeds and --first-seed?"),
])
def test_ablate_refuses_arms_and_seeds_that_make_no_ablation(arguments, message, tmp_path, capsys):
    """gap,gap ran gap twice into one folder, '' wrote a manifest of no arms and reported success, a negative
    first seed was blamed on --seeds, and a shared --training.seed=5 won over each run's seed (every seed the same);
    `--squeeze gap, gmp` was refused as an unexpected argument 'gmp'; `--seed 3` ran three seeds (argparse took it
    for --seeds)."""
    root = tmp_path / "ablation"
    assert ablate_main(["--cfg", "recipes/demo.yaml", "--runs-root", str(root), "--gpus", "none", *arguments]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"ablate.py: error: {message}") and error.count("\n") == 1
    assert not root.exists()


def test_a_runs_root_that_is_a_file_is_one_line(tiny_betons, tmp_path, capsys):
    """It was mkdir's FileExistsError traceback."""
    notes = tmp_path / "notes.txt"
    notes.write_text("mine\n")
    assert ablate_main(["--cfg", "recipes/demo.yaml", "--runs-root", str(notes), "--gpus", "none",
                        f"--data.train_dataset={tiny_betons / 'train.beton'}",
                        f"--data.val_dataset={tiny_betons / 'val.beton'}"]) == 2
    assert capsys.readouterr().err == f"ablate.py: error: {notes} is a file, not a folder; choose another --runs-root\n"
    assert notes.read_text() == "mine\n"


def test_a_second_ablation_on_a_runs_root_in_use_is_refused(tiny_betons, tmp_path, capsys):
    """Two ablate.py on one root (the same command started twice) each failed the runs the other was training,
    wrote them into the manifest as failed, and a finished arm showed as '1 (1 failed)'."""
    root = tmp_path / "ablation"
    root.mkdir()
    (root / "ablation.json").write_text("{}\n")
    with RunLock(root, "--runs-root"):  # as the first ablate.py holds it
        assert ablate_main(["--cfg", "recipes/demo.yaml", "--runs-root", str(root), "--gpus", "none",
                            f"--data.train_dataset={tiny_betons / 'train.beton'}",
                            f"--data.val_dataset={tiny_betons / 'val.beton'}"]) == 2
    assert capsys.readouterr().err == (f"ablate.py: error: {root} is in use by process {os.getpid()} on "
                                       f"{socket.gethostname()}; wait for it to end or choose another --runs-root\n")
    assert (root / "ablation.json").read_text() == "{}\n"  # the first runner's manifest is left to it


@pytest.mark.parametrize("stop, status, stopped", [(signal.SIGINT, 130, "interrupted"),
                                                   (signal.SIGTERM, 143, "stopped by SIGTERM")])
def test_ctrl_c_says_the_same_command_continues(tiny_betons, tmp_path, capsys, monkeypatch, terminal_ctrl_c, stop,
                                                status, stopped):
    """Ctrl-C printed a traceback from the runner's polling loop; SIGTERM (a SLURM job's end) ended it silently."""
    def interrupted(*args, **kwargs):
        os.kill(os.getpid(), stop)
    monkeypatch.setattr(ablate, "run_schedule", interrupted)
    root = tmp_path / "ablation"
    arguments = ["--squeeze", "gap", "--gpus", "none", "--runs-root", str(root),
                 *tiny_settings(tiny_betons, tmp_path / "unused", "--training.epochs=1")]
    arguments.remove(f"--logging.run_dir={tmp_path / 'unused'}")
    assert ablate_main(arguments) == status
    assert capsys.readouterr().err == (f"ablate.py: {stopped}; the finished runs and epochs are kept in {root}: "
                                       "the same command continues the ablation\n")
    monkeypatch.setattr(ablate, "check_data", interrupted)  # reading the betons, before any run
    assert ablate_main(arguments) == status
    assert capsys.readouterr().err == f"ablate.py: {stopped}; no run had started\n"


def test_ablate_refuses_missing_data_or_gpus_before_any_run(tiny_betons, tmp_path, capsys, monkeypatch):
    """Each run failed alone before (twice each, a CPU run for a GPU that is not there)."""
    root = tmp_path / "ablation"
    arguments = ["--squeeze", "gap,std", "--runs-root", str(root),
                 *tiny_settings(tiny_betons, tmp_path / "unused", "--training.epochs=1")]
    arguments.remove(f"--logging.run_dir={tmp_path / 'unused'}")  # the runner names each run's directory
    missing = tmp_path / "nowhere" / "train.beton"
    assert ablate_main([*arguments, "--gpus", "none", f"--data.train_dataset={missing}"]) == 2
    assert f"ablate.py: error: dataset {missing} does not exist; write it" in capsys.readouterr().err
    monkeypatch.setattr(ablate, "visible_gpus", lambda: [])
    assert ablate_main([*arguments, "--gpus", "0"]) == 2
    assert "ablate.py: error: --gpus 0: there is no GPU 0 here" in capsys.readouterr().err
    assert not root.exists()


def test_runs_train_with_the_settings_of_the_ablations_start(tiny_betons, tmp_path, monkeypatch):
    """Each run read the recipe as it started: an edit of it while an ablation of days ran (another experiment
    prepared, a `git pull`) trained the runs left with the edited settings, which the report put in a table apart,
    and the ablation ended as if all were well. The runs read the settings the runner resolved at its start."""
    recipe = tmp_path / "mine.yaml"
    recipe.write_text((REPO / "recipes" / "sample.yaml").read_text())
    resolved = []

    def launch(job, slot, cfg, overrides):  # train.py's own reading of the command it would be started with
        recipe.write_text(recipe.read_text().replace("epochs: 5", "epochs: 3"))  # an edit while the runs go on
        command, _ = command_for(job, slot, cfg, overrides)
        resolved.append(train_command_line(command[2:])[1])
        return FakeProcess(0, polls=1)
    monkeypatch.setattr(ablate, "launch_process", launch)
    root = tmp_path / "ablation"
    settings = tiny_settings(tiny_betons, tmp_path / "unused", "--lr.lr=0.3")
    settings.remove(f"--logging.run_dir={tmp_path / 'unused'}")
    settings[1] = str(recipe)
    assert ablate_main(["--squeeze", "gap,gmp", "--seeds", "1", "--gpus", "none", "--runs-root", str(root),
                        *settings]) == 0
    asked = resolve(REPO / "recipes" / "sample.yaml", ablate.parse_overrides(settings[2:]))
    assert asked["training.epochs"] == 5 and resolve(recipe, {})["training.epochs"] == 3  # the edit is there
    assert resolved == [asked | {"model.squeeze": squeeze, "logging.run_dir": str(root / f"resnet18-{squeeze}-mine-s0")}
                        for squeeze in ("gap", "gmp")]


def test_betons_written_again_start_no_more_runs(tiny_betons, tmp_path, monkeypatch, capsys):
    """A beton written again while an ablation ran (the same path, other settings) gave the runs left other data:
    the report put them in a table apart, with no pair to compare, and the ablation ended with exit 0."""
    betons = shutil.copytree(tiny_betons, tmp_path / "betons", ignore=shutil.ignore_patterns("images"))
    launched = []

    def launch(job, slot, cfg, overrides):
        launched.append(job.squeeze)
        meta = json.loads((betons / "val.meta.json").read_text())  # written again, an hour in
        (betons / "val.meta.json").write_text(json.dumps(meta | {"created": "2026-11-29T12:00:00+00:00"}))
        return FakeProcess(0, polls=1)
    monkeypatch.setattr(ablate, "launch_process", launch)
    root = tmp_path / "ablation"
    settings = tiny_settings(betons, tmp_path / "unused", "--training.epochs=1")
    settings.remove(f"--logging.run_dir={tmp_path / 'unused'}")
    assert ablate_main(["--squeeze", "gap,gmp,std", "--seeds", "1", "--gpus", "none", "--runs-root", str(root),
                        *settings]) == 2
    assert launched == ["gap"]
    out, err = capsys.readouterr()
    reason = (f"data.val_dataset {betons / 'val.beton'} was written again since this ablation started (it held 49 "
              "images written ")
    assert f"not starting the 2 run(s) left: {reason}" in out and "1 ran, 0 skipped, 0 failed, 2 not started" in out
    assert err.startswith(f"ablate.py: error: {reason}") and err.count("\n") == 1
    assert "now 49 images written 2026-11-29T12:00:00+00:00): the runs left would train on other data" in err


def test_a_launch_refused_leaves_the_runs_in_progress_to_end():
    jobs = plan_jobs(["gap", "gmp", "std", "fca"], [0], Path("r"), "resnet18", "s")

    def launch(job, slot):
        if job.squeeze == "std":
            raise ConfigError("the data changed")
        return FakeProcess(0, polls=2 if job.squeeze == "gap" else 6)  # gmp still runs when std is refused
    lines = []
    outcome = run_schedule(jobs, make_slots(["0", "1"], 1), launch, report=lines.append, poll_seconds=0)
    assert [job.squeeze for job in outcome["done"]] == ["gap", "gmp"]
    assert [job.squeeze for job in outcome["unstarted"]] == ["std", "fca"] and outcome["failed"] == []
    assert str(outcome["stopped_by"][0]) == "the data changed"
    assert "not starting the 2 run(s) left: the data changed; the runs in progress go on" in lines


def test_frozen_settings_resolve_as_their_recipe_does(tmp_path):
    """Every project recipe, and odd values on the command line, read back the same from the runner's copy."""
    odd = {"data.train_dataset": ("/data/a b: c # d", "test"), "data.val_dataset": ("0.5", "test"),
           "lr.lr": (1e-3 / 3, "test"), "lr.milestones": ([7, 1.5], "test")}
    for recipe in sorted((REPO / "recipes").glob("[!_]*.yaml")):
        for overrides in ({}, odd):
            config = resolve(recipe, overrides)
            assert resolve(freeze_settings(tmp_path, config), {}) == config, recipe


def test_ablate_skips_finished_and_resumes_interrupted_runs(tiny_betons, tmp_path, capsys):
    root = tmp_path / "ablation"
    arguments = ["--squeeze", "baseline,random", "--seeds", "1", "--gpus", "none", "--runs-root", str(root),
                 *tiny_settings(tiny_betons, tmp_path / "unused", "--training.epochs=1")]
    arguments.remove(f"--logging.run_dir={tmp_path / 'unused'}")  # the runner names each run's directory
    assert ablate_main(arguments) == 0  # in this process (its runs in their own), a process start less
    assert "2 ran, 0 skipped, 0 failed" in capsys.readouterr().out
    interrupted = root / "resnet18-random-sample-s0"
    (interrupted / "result.json").unlink()  # as if killed after its last checkpoint
    result_path = root / "resnet18-baseline-sample-s0" / "result.json"
    result_path.write_text(json.dumps(json.loads(result_path.read_text()) | {"code": ["0123456789ab"]}))  # older code
    assert ablate_main(arguments) == 0
    second = capsys.readouterr().out
    assert "1 ran, 1 skipped, 0 failed" in second
    if code_version() is not None:  # a checkout: the start and the report say that other code trained a run
        assert (f"note: 1 of the 1 finished runs was trained by other code (0123456789ab; this is {code_version()}): "
                "the report says so") in second
        assert (f"Code: these runs were trained by 2 versions of the code (0123456789ab: baseline s0 (1 run); "
                f"{code_version()}: random s0 (1 run);") in second
    finished = json.loads((root / "resnet18-baseline-sample-s0" / "result.json").read_text())["wall_time"]
    # a pace from the start of a resumed ablation: the one run left at the finished one's time
    assert f"2 runs (1 already finished) on 1 slot(s): cpu; ≈ {clock_time(finished)} to go at the pace of those " \
           "finished" in second
    assert "resuming" in (interrupted / "train.log").read_text()
    assert "| random |" in second and "| baseline |" in second
    assert f"report: {root / 'report.md'}, {root / 'report.csv'}, {root / 'top1.png'}" in second
    # the same root with other settings: its finished runs are not the runs asked for
    manifest = (root / "ablation.json").read_text()
    assert ablate_main([*arguments, "--lr.lr=0.2"]) == 2  # refused before any run starts
    refusal = capsys.readouterr().err
    assert refusal.count("\n") == 1 and "holds a run with lr.lr=0.4, not 0.2; pass another --runs-root" in refusal
    assert (root / "ablation.json").read_text() == manifest  # nothing rewritten


def test_runs_die_with_a_killed_runner(tiny_betons, tmp_path):
    """kill -9 of ablate.py leaves no train.py behind (its lock on the run directory is released); the run stops
    as on Ctrl-C, saying so in its log (its parent-death signal is SIGTERM)."""
    root = tmp_path / "ablation"
    arguments = [sys.executable, "pipeline/ablate.py", "--squeeze", "gap", "--gpus", "none", "--runs-root", str(root),
                 *tiny_settings(tiny_betons, tmp_path / "unused", "--training.epochs=50")]
    arguments.remove(f"--logging.run_dir={tmp_path / 'unused'}")
    runner = subprocess.Popen(arguments, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lock = RunLock(root / "resnet18-gap-sample-s0")
    try:
        deadline = time.time() + 120
        while not lock.is_held():  # train.py is running
            assert time.time() < deadline and runner.poll() is None
            time.sleep(0.1)
        runner.kill()
        runner.wait()
        deadline = time.time() + 30
        while lock.is_held():
            assert time.time() < deadline, f"train.py outlived its runner: {lock.holder()}"
            time.sleep(0.1)
    finally:
        runner.kill()
    log = (root / "resnet18-gap-sample-s0" / "train.log").read_text()
    assert log.splitlines()[-1].startswith("train.py: stopped by SIGTERM; the epochs finished so far are kept in "), log
