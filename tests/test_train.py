"""End-to-end training on the CPU: loss goes down, SIGKILL + resume, 2-process gloo equals 1-process eval."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numba
import pytest
import torch

from conftest import REPO, run_script, tiny_settings
from pipeline.acceleration import choose_precision, compile_mode_used
from pipeline.checkpoint import load_checkpoint, load_weights, save_final_weights
from pipeline.data import DeviceAugment, LoaderSettings, set_train_resolution, shard_indices, train_loader, val_loader
from pipeline.distributed import World
from pipeline.engine import evaluate
from pipeline.models import build_model
from pipeline.provenance import code_version
from pipeline.run_dir import RunLock
from pipeline.trainer import main as train_main, se_kernel_used


def read_log(run_dir):
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


def test_short_run_lowers_loss_and_writes_the_run_directory(tiny_betons, tmp_path, capsys, monkeypatch):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    stale = run_dir / f".checkpoint.pt.tmp-{dead_pid()}"  # a checkpoint write killed midway, earlier
    stale.write_bytes(b"partial")
    # in this process (a process start costs seconds of the suite's budget; the SIGKILL, ablation and two-node
    # tests run train.py as a program)
    # validated at 96 px from betons stored at 64 px (a small --max-res): said at the start
    upscaled = "--resolution.val_res=96"
    monkeypatch.setattr("pipeline.trainer.memory_bytes", lambda: 1_000_000)  # a train beton larger than RAM
    assert train_main(tiny_settings(tiny_betons, run_dir, "--training.epochs=4", "--squeeze", "gmp",
                                    "--training.compile=auto", upscaled)) == 0
    out = capsys.readouterr().out
    note = (f"note: data.val_dataset {tiny_betons / 'val.beton'} stores images of at most 64 px (write_imagenet.py "
            "--max-res 64) and resolution.val_res is 96: every crop is upscaled; write the betons with --max-res 96 "
            "or more for this recipe")
    assert note in out.splitlines()
    assert not [line for line in out.splitlines() if line.startswith("note: data.train_dataset") and "upscaled" in line]
    assert (f"note: data.train_dataset {tiny_betons / 'train.beton'} is 0.0 GB and this machine has 0.0 GB of "
            "memory: the beton cannot stay in the page cache, so every epoch reads it from the disk again") in out
    log = read_log(run_dir)
    assert [line["epoch"] for line in log] == [1, 2, 3, 4]
    assert log[-1]["train_loss"] < log[0]["train_loss"]
    assert all(line["train_loss"] is not None and line["train_images_per_s"] > 0 for line in log)
    assert set(log[0]) >= {"lr", "train_loss", "train_images_per_s", "val_top1", "val_top5", "val_loss",
                           "resolution", "wall_time"}
    summary = json.loads((run_dir / "result.json").read_text())
    assert summary["squeeze"] == "gmp" and summary["finished_epochs"] == 4 and summary["top1"] == log[-1]["val_top1"]
    assert [line["code"] for line in log] == [code_version()] * 4 and summary["code"] == [code_version()]
    assert code_version() is not None or not (REPO / ".git").exists()  # a checkout (CI: a fresh clone) has one
    assert f"code {code_version()} (pipeline/provenance.py)" in out.splitlines() or code_version() is None
    weights, recorded = load_weights(run_dir / "final.pt")
    assert recorded == {"arch": "resnet18", "squeeze": "gmp", "reduction": 16, "num_classes": 10, "blurpool": False}
    assert not any(key.startswith("module.") for key in weights)
    build_model("resnet18", "gmp", num_classes=10, blurpool=False).load_state_dict(weights)  # strict
    assert "squeeze: gmp" in (run_dir / "config.yaml").read_text()
    assert "se_kernel: auto" in (run_dir / "config.yaml").read_text()
    assert (summary["se_kernel"], summary["se_kernel_used"]) == ("auto", "torch")  # auto runs torch ops on a CPU
    assert (summary["compile"], summary["compile_used"]) == ("auto", "none")  # and does not compile there
    assert "first step incl. torch.compile" not in out
    assert f"training on the CPU: torch {torch.__version__} sees no CUDA GPU" in out  # a GPU recipe too
    assert not stale.exists() and f"removed 1 temporary file(s) left by dead processes: {stale.name}" in out
    assert train_main(tiny_settings(tiny_betons, run_dir, "--training.epochs=4", "--squeeze", "gmp", upscaled)) == 0
    assert "already finished" in capsys.readouterr().out
    # --eval-only takes the model from final.pt (sample.yaml alone would build a 'gap' model), here with more
    # loader threads than numba starts (a recipe from a bigger machine: numba raised) and without the training set
    # (it was refused: "dataset .../train.beton does not exist") ...
    threads = numba.config.NUMBA_NUM_THREADS
    assert train_main([*tiny_settings(tiny_betons, tmp_path / "unused", f"--data.num_workers={threads + 6}", upscaled),
                       f"--data.train_dataset={tmp_path / 'nowhere' / 'train.beton'}",
                       "--eval-only", "--weights", str(run_dir / "final.pt")]) == 0
    out = capsys.readouterr().out
    assert f"val top-1 {summary['top1']:.2f}" in out and note in out.splitlines()
    assert f"data.num_workers {threads + 6} is more than the {threads} threads numba starts" in out
    # ... and refuses a command line that names another one
    status = train_main([*tiny_settings(tiny_betons, tmp_path / "unused"), "--eval-only", "--weights",
                         str(run_dir / "final.pt"), "--squeeze", "gap"])
    assert status == 2 and "hold a resnet18 'gmp' model with squeeze='gmp', not 'gap' (from --squeeze)" in \
        capsys.readouterr().err


def test_sigkill_mid_run_then_resume_ends_at_the_right_epoch(tiny_betons, tmp_path, capsys):
    run_dir = tmp_path / "killed"
    arguments = [sys.executable, "pipeline/train.py", *tiny_settings(tiny_betons, run_dir, "--training.epochs=3")]
    process = subprocess.Popen(arguments, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 180
        while not (run_dir / "checkpoint.pt").exists():  # epoch 1 is done: kill during epoch 2
            assert time.time() < deadline and process.poll() is None
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        process.kill()
    state = load_checkpoint(run_dir / "checkpoint.pt")
    assert state["epoch"] in (0, 1)
    for line in state["history"]:
        line["code"] = "0123456789ab"  # as if an older checkout had trained the epochs so far
    torch.save(state, run_dir / "checkpoint.pt")
    copied = shutil.copytree(tiny_betons, tmp_path / "local", ignore=shutil.ignore_patterns("images"))
    # resumed in this process (a process start less), with the data moved: the same data; and with a smaller val
    # batch, as after running out of GPU memory in validation (it was refused as another run)
    assert train_main(arguments[2:] + [f"--data.train_dataset={copied / 'train.beton'}",
                                       f"--data.val_dataset={copied / 'val.beton'}", "--validation.batch_size=5"]) == 0
    out = capsys.readouterr().out
    assert "resuming" in out
    if code_version() is not None:  # a checkout: the resume says that other code trained the epochs before
        assert (f"note: the epochs so far were trained by code 0123456789ab, and this is {code_version()}: the run "
                "goes on with it") in out
        assert json.loads((run_dir / "result.json").read_text())["code"] == ["0123456789ab", code_version()]
    assert [line["epoch"] for line in read_log(run_dir)] == [1, 2, 3]
    assert load_checkpoint(run_dir / "checkpoint.pt")["epoch"] == 2
    recorded = json.loads((run_dir / "data.json").read_text())
    assert json.loads((run_dir / "result.json").read_text())["data"] == recorded
    assert recorded["data.train_dataset"].startswith("120 images written ")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def two_nodes(tmp_path, betons, *extra, status=0):
    """Two "nodes" of one process each, each started in a folder of its own that holds `run`: nodes whose disks
    are not shared (the same relative --logging.run_dir on each). Each node's process gets the environment
    torchrun gives its workers (torchrun's own agent processes cost the suite seconds it does not have). Returns
    both nodes' output, after checking their exit `status`."""
    port, processes = free_port(), []
    for rank in range(2):
        node = tmp_path / f"node{rank}"
        node.mkdir(exist_ok=True)
        environment = {"RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1",
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}
        processes.append(subprocess.Popen(
            [sys.executable, str(REPO / "pipeline" / "train.py"), *tiny_settings(betons, Path("run"), *extra),
             "--dist.timeout_min=1"],
            cwd=node, env={**os.environ, **environment}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [process.communicate(timeout=200)[0] for process in processes]
    assert [process.returncode for process in processes] == [status, status], outputs
    return outputs


def test_two_nodes_train_evaluate_exactly_and_resume_from_rank_0s_run_directory(tiny_betons, tmp_path, capsys):
    """Two gloo processes (one per node): val metrics equal to a 1-process eval of final.pt, and a
    resume where only rank 0's node holds the run directory. Each rank used to read the folder on its own: on
    a node without it, rank 1 started at epoch 1 while rank 0 resumed, their collectives paired different
    epochs, and rank 0 wrote that as the result; and a refusal stopped rank 0 alone while rank 1 waited."""
    # 49 val images: rank 0 gets 24, rank 1 gets 25. A val batch of 8 divides 24, so both evals push the same
    # images through the network in the same batches, and both use one thread (as torchrun sets), so the
    # float arithmetic (hence any near-tie in top-1/top-5) is identical: the metrics must agree exactly.
    settings = ("--training.epochs=2", "--training.batch_size=8", "--validation.batch_size=8")
    outputs = two_nodes(tmp_path, tiny_betons, *settings)
    run_dir = tmp_path / "node0" / "run"
    trained = json.loads((run_dir / "result.json").read_text())
    assert trained["world_size"] == 2 and trained["global_batch"] == 16
    assert "(torch.cuda.is_available() is False), 2 processes" in outputs[0]
    assert "Grad strides do not match bucket view strides" not in outputs[0]  # images in the model's format
    assert not (tmp_path / "node1" / "run").exists()  # rank 0 alone writes
    uninterrupted = read_log(run_dir)
    assert uninterrupted[-1]["val_images"] == 49  # every val image once across ranks: no padded duplicates
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each trained rank
    try:
        assert train_main([*tiny_settings(tiny_betons, tmp_path / "unused"), "--validation.batch_size=8",
                           "--eval-only", "--weights", str(run_dir / "final.pt")]) == 0
    finally:
        torch.set_num_threads(threads)
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics["val_images"] == 49
    assert (metrics["val_top1"], metrics["val_top5"]) == (trained["top1"], trained["top5"])
    assert metrics["val_loss"] == pytest.approx(trained["val_loss"], rel=1e-6)
    # rank 0's folder as a kill during epoch 2 leaves it
    (run_dir / "checkpoint.prev.pt").replace(run_dir / "checkpoint.pt")
    for name in ("result.json", "final.pt"):
        (run_dir / name).unlink()
    (run_dir / "log.jsonl").write_text(json.dumps(uninterrupted[0]) + "\n")
    outputs = two_nodes(tmp_path, tiny_betons, *settings)
    assert "resuming run after epoch 1 of 2" in outputs[0]
    resumed = read_log(run_dir)
    assert [line["epoch"] for line in resumed] == [1, 2]
    for key in ("train_loss", "val_top1", "val_loss"):
        assert resumed[1][key] == pytest.approx(uninterrupted[1][key], rel=1e-6), key
    outputs = two_nodes(tmp_path, tiny_betons, *settings, "--training.label_smoothing=0.2", status=2)
    refusal = "train.py: error: run holds a run with training.label_smoothing=0.1, not 0.2; choose another"
    assert all(out.strip() == refusal + " --logging.run_dir or delete that directory" for out in outputs), outputs


@pytest.mark.parametrize("extra, message", [
    (["--squeeze", "gpa"], "unknown squeeze 'gpa' (from --squeeze); choose one of: avgmax, baseline, fca, gap"),
    (["--training.epochz=3"], "unknown setting 'training.epochz' (from --training.epochz); did you mean"),
    (["--data.train_dataset=/nowhere/train.beton"], "dataset /nowhere/train.beton does not exist; write it with "
                                                    "`python dataset_prep/write_imagenet.py`"),
    (["--eval-only"], "--eval-only needs --weights"),
    # was ignored: the run trained from scratch while its user thought it started from those weights
    (["--weights", "/nowhere/final.pt"], "--weights are read by --eval-only alone; a run starts from scratch, "
                                         "or resumes from its run directory's checkpoint"),
    (["--resume"], "holds no checkpoint.pt to resume from"),
])
def test_user_errors_are_one_line_with_exit_2(tiny_betons, tmp_path, capsys, extra, message):
    status = train_main([*tiny_settings(tiny_betons, tmp_path / "r"), *extra])
    error = capsys.readouterr().err
    assert status == 2 and error.count("\n") == 1 and message in error and "Traceback" not in error
    assert not (tmp_path / "r").exists()


def test_a_local_rank_beyond_the_nodes_gpus_is_a_user_error(tiny_betons, tmp_path, capsys, monkeypatch):
    """torchrun --nproc_per_node=8 on a 4-GPU node: rank 5 raised CUDA's 'invalid device ordinal' traceback."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setenv("LOCAL_RANK", "5")
    assert train_main(tiny_settings(tiny_betons, tmp_path / "r")) == 2
    assert capsys.readouterr().err == ("train.py: error: local rank 5 has no GPU: this node shows 4; start at most "
                                       "that many processes per node (torchrun --nproc_per_node)\n")


def test_a_user_error_in_a_real_process_is_one_line_and_exit_2(tiny_betons, tmp_path):
    result = run_script(["pipeline/train.py", *tiny_settings(tiny_betons, tmp_path / "r"), "--squeeze", "gpa"],
                        timeout=60)
    assert result.returncode == 2 and result.stderr.startswith("train.py: error: unknown squeeze 'gpa'")
    assert result.stderr.count("\n") == 1


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_run_directory_in_use_is_refused_with_its_holder(tiny_betons, tmp_path, capsys):
    run_dir = tmp_path / "busy"
    run_dir.mkdir()
    with RunLock(run_dir):  # as another train.py would hold it
        status = train_main(tiny_settings(tiny_betons, run_dir))
    error = capsys.readouterr().err
    assert status == 2 and error.count("\n") == 1
    assert f"{run_dir} is in use by process {os.getpid()} on " in error and "another --logging.run_dir" in error


def truncated_copy(beton: Path, folder: Path) -> Path:
    """A copy of `beton` (and its metadata) cut at 90 %: a write or a copy that did not finish."""
    folder.mkdir()
    copy = folder / beton.name
    copy.write_bytes(beton.read_bytes()[:beton.stat().st_size * 9 // 10])
    shutil.copy(beton.with_suffix(".meta.json"), folder)
    return copy


def a_file(path: Path) -> Path:
    path.write_text("notes\n")
    return path


@pytest.mark.parametrize("change, message", [
    (lambda betons, tmp: ["--training.batch_size=500"],
     "training.batch_size 500 is larger than the 120 train images per process of"),
    (lambda betons, tmp: [f"--data.train_dataset={truncated_copy(betons / 'train.beton', tmp / 'cut')}"],
     "train.beton is unreadable (truncated or corrupt: negative dimensions are not allowed); rewrite it"),
    (lambda betons, tmp: ["--model.num_classes=3"],
     "train.beton has 10 classes but model.num_classes is 3; set model.num_classes to 0"),
    (lambda betons, tmp: ["--logging.run_dir=/sys/ssenet-test/r"],
     "cannot write in /sys/ssenet-test/r: Operation not permitted; choose a writable --logging.run_dir"),
    (lambda betons, tmp: [f"--logging.run_dir={a_file(tmp / 'notes.txt')}"],
     "notes.txt is a file, not a folder; choose another --logging.run_dir"),  # was mkdir's 'File exists'
])
def test_faults_are_one_line_before_the_run_directory_exists(tiny_betons, tmp_path, capsys, change, message):
    status = train_main([*tiny_settings(tiny_betons, tmp_path / "r"), *change(tiny_betons, tmp_path)])
    error = capsys.readouterr().err
    assert status == 2 and error.count("\n") == 1 and message in error, error
    assert not (tmp_path / "r").exists()


def test_eval_of_weights_that_do_not_fit_the_model_is_one_line(tiny_betons, tmp_path, capsys):
    weights = tmp_path / "old.pt"  # a plain state_dict, as final.pt was before it recorded its model
    torch.save(build_model("resnet18", "gmp", num_classes=10).state_dict(), weights)
    status = train_main([*tiny_settings(tiny_betons, tmp_path / "r"), "--eval-only", "--weights", str(weights),
                         "--squeeze", "gmp", "--arch", "resnet50"])
    error = capsys.readouterr().err
    assert status == 2 and error.count("\n") == 1, error
    assert f"--weights {weights} do not fit a resnet50 'gmp' model with 10 classes (" in error


def test_eval_on_a_val_beton_of_other_classes_than_the_weights_is_one_line(tiny_betons, tmp_path, capsys):
    """Without the training set (test_short_run... evaluates so), the val beton is checked against the weights."""
    weights = tmp_path / "final.pt"
    no_train = [f"--data.train_dataset={tmp_path / 'nowhere' / 'train.beton'}"]
    model = build_model("resnet18", "gmp", num_classes=7, blurpool=False)
    save_final_weights(weights, model, {"arch": "resnet18", "squeeze": "gmp", "reduction": 16, "num_classes": 7,
                                        "blurpool": False})
    assert train_main([*tiny_settings(tiny_betons, tmp_path / "r"), *no_train, "--eval-only",
                       "--weights", str(weights)]) == 2
    assert capsys.readouterr().err == (f"train.py: error: --weights {weights} hold a model of 7 classes but "
                                       f"{tiny_betons / 'val.beton'} has 10; evaluate them on a val beton of "
                                       "their classes (--data.val_dataset)\n")
    assert not (tmp_path / "r").exists()


def test_a_run_directory_holding_files_no_run_wrote_is_refused_and_kept(tiny_betons, tmp_path, capsys):
    """--logging.run_dir naming a folder of one's own: its config.yaml and log.jsonl were overwritten."""
    mine = tmp_path / "experiment"
    mine.mkdir()
    (mine / "config.yaml").write_text("my sweep's settings\n")
    (mine / "log.jsonl").write_text("my notes\n")
    assert train_main(tiny_settings(tiny_betons, mine)) == 2
    assert capsys.readouterr().err == (f"train.py: error: {mine} holds config.yaml, log.jsonl, which no run wrote (a "
                                       "run's config.yaml names its settings); a run would overwrite them: choose "
                                       "a new or empty --logging.run_dir\n")
    assert (mine / "config.yaml").read_text() == "my sweep's settings\n"
    assert sorted(path.name for path in mine.iterdir()) == ["config.yaml", "log.jsonl"]


def test_eval_of_a_file_that_is_no_checkpoint_is_one_line(tiny_betons, tmp_path, capsys):
    junk = tmp_path / "weights.pt"
    junk.write_text("hello")
    status = train_main([*tiny_settings(tiny_betons, tmp_path / "r"), "--eval-only", "--weights", str(junk)])
    error = capsys.readouterr().err
    assert status == 2 and error.count("\n") == 1 and f"{junk} is not a readable weights file" in error


@pytest.mark.parametrize("choice, device, distributed, used", [
    ("auto", "cuda", False, "reduce-overhead"),  # one GPU: CUDA graphs, the fastest measured
    ("auto", "cuda", True, "default"),  # DDP: CUDA graphs reported skipped there (BatchNorm, pytorch#139207)
    ("auto", "cpu", False, "none"), ("auto", "cpu", True, "none"),
    ("reduce-overhead", "cuda", True, "reduce-overhead"),  # an explicit mode is kept (with a warning line)
    ("none", "cuda", False, "none"),
])
def test_compile_auto_follows_the_device_and_ddp(choice, device, distributed, used):
    assert compile_mode_used(choice, torch.device(device), distributed) == used


@pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 is valid on a GPU")
def test_fp16_on_a_cpu_is_refused_before_the_run_directory_exists(tiny_betons, tmp_path, capsys):
    status = train_main([*tiny_settings(tiny_betons, tmp_path / "r"), "--training.precision=fp16"])
    assert status == 2 and "training.precision fp16 needs a GPU" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="the kernels run on this machine's GPU")
def test_triton_kernels_refused_on_a_cpu_before_the_run_directory_exists(tiny_betons, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    status = train_main([*tiny_settings(tiny_betons, tmp_path / "r"), "--model.se_kernel=triton"])
    error = capsys.readouterr().err
    assert status == 2 and error.count("\n") == 1, error
    assert "se_kernel=triton runs on CUDA tensors" in error and "use se_kernel=auto or torch" in error
    assert not (tmp_path / "r").exists()


def test_closed_form_tails_train_and_are_recorded(tiny_betons, tmp_path):
    run_dir = tmp_path / "closed"
    assert train_main(tiny_settings(tiny_betons, run_dir, "--training.epochs=1", "--squeeze", "std",
                                    "--model.se_kernel=closed-form")) == 0
    summary = json.loads((run_dir / "result.json").read_text())
    assert (summary["se_kernel"], summary["se_kernel_used"]) == ("closed-form", "closed-form")
    assert "se_kernel: closed-form" in (run_dir / "config.yaml").read_text()


def test_a_compiled_runs_estimate_leaves_out_the_compilation_of_its_first_step(tiny_betons, tmp_path, monkeypatch):
    """The first step of each resolution compiles (a minute for a GPU recipe): once, not in every epoch left."""
    import pipeline.trainer as trainer
    monkeypatch.setattr(trainer, "maybe_compile", lambda network, mode: network)  # compiling is not the point here
    estimates = []
    monkeypatch.setattr(trainer, "time_to_finish", lambda *args: estimates.append(args) or None)
    assert train_main(tiny_settings(tiny_betons, tmp_path / "r", "--training.epochs=2",
                                    "--training.compile=default")) == 0
    first_steps = [line["first_step_seconds"] for line in read_log(tmp_path / "r")]
    assert [one_off for *_, one_off in estimates] == [first_steps[0], 0]


@pytest.mark.parametrize("compile_mode,expected", [("none", "torch"), ("default", "torch")])
def test_a_squeeze_with_no_fused_form_is_recorded_as_the_torch_ops_it_runs(compile_mode, expected):
    """`auto` on a GPU runs the torch ops for a registered squeeze that has no fused form (SqueezeExcite.tail);
    result.json said triton or closed-form for it."""
    world = World(rank=0, world_size=1, local_rank=0, local_world_size=1, device=torch.device("cuda", 0))
    config = {"model.squeeze": "my_squeeze", "model.se_kernel": "auto", "training.channels_last": True,
              "training.compile": compile_mode}
    assert se_kernel_used(config, world) == expected
    assert se_kernel_used({**config, "model.squeeze": "gmp"}, world) == ("triton" if compile_mode == "none"
                                                                        else "closed-form")


def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(tiny_betons, tmp_path, capsys):
    run_dir = tmp_path / "nan"
    assert train_main(tiny_settings(tiny_betons, run_dir, "--training.epochs=2", "--lr.lr=1e30",
                                    "--lr.warmup_epochs=0")) == 1
    error = capsys.readouterr().err
    assert "training loss became non-finite" in error and "Traceback" not in error
    assert not (run_dir / "final.pt").exists()


def test_eval_of_the_random_arm_is_reproducible(tiny_betons):
    # the reference the DDP test relies on: evaluating the same weights twice gives identical numbers
    model = build_model("resnet18", "random", num_classes=10, blurpool=False)
    cpu = torch.device("cpu")
    loader = val_loader(str(tiny_betons / "val.beton"), LoaderSettings(10, 1, True, 2, 0), 32, cpu,
                        shard_indices(49, 0, 1))
    first, second = (evaluate(model, loader, DeviceAugment(False), choose_precision("fp32", cpu), True, cpu)
                     for _ in range(2))
    assert first == second and first["val_images"] == 49


def test_progressive_resizing_changes_the_batch_shape(tiny_betons):
    loader = train_loader(str(tiny_betons / "train.beton"), LoaderSettings(16, 1, True, 2, 0), 32,
                          torch.device("cpu"), False)
    assert next(iter(loader))[0].shape == (16, 3, 32, 32)
    set_train_resolution(loader, 64)
    assert next(iter(loader))[0].shape == (16, 3, 64, 64)


def test_weights_that_name_a_run_directory_say_which_file_to_give(tmp_path, capsys):
    """--weights runs/x (the run directory, not its final.pt) was refused as "does not exist"."""
    (tmp_path / "final.pt").write_bytes(b"")
    recipe = str(REPO / "recipes" / "demo.yaml")
    assert train_main(["--cfg", recipe, "--eval-only", "--weights", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (f"train.py: error: --weights {tmp_path} is a directory; give a weights file, "
                                       f"e.g. {tmp_path / 'final.pt'}\n")
    assert train_main(["--cfg", recipe, "--eval-only", "--weights", str(tmp_path / "nowhere.pt")]) == 2
    assert capsys.readouterr().err == f"train.py: error: --weights {tmp_path / 'nowhere.pt'} does not exist\n"


def test_out_of_gpu_memory_is_one_line_that_says_what_to_change(monkeypatch, capsys):
    """A recipe from a bigger GPU (rn18's 1,024 per GPU on a 16 GB card) ended in CUDA's traceback."""
    def out_of_memory(*args):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.53 GiB")
    monkeypatch.setattr("pipeline.trainer.run_in_directory", out_of_memory)
    assert train_main(["--cfg", str(REPO / "recipes" / "demo.yaml")]) == 2
    assert capsys.readouterr().err == ("train.py: error: out of GPU memory (cpu) at training.batch_size 64 per GPU, up "
                                       "to 32 px: lower --training.batch_size (a new run: the lr follows the global "
                                       "batch)\n")


def test_validation_out_of_memory_names_the_val_batch(tiny_betons, tmp_path, monkeypatch, capsys):
    """It said to lower training.batch_size in a new run (and a resume with another validation.batch_size was
    refused as another run: test_sigkill_mid_run_then_resume_ends_at_the_right_epoch resumes with one)."""
    def out_of_memory(*args):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.53 GiB")
    monkeypatch.setattr("pipeline.trainer.evaluate", out_of_memory)
    assert train_main(tiny_settings(tiny_betons, tmp_path / "run", "--training.epochs=1")) == 2
    assert capsys.readouterr().err == ("train.py: error: out of GPU memory (cpu) validating epoch 1 at "
                                       "validation.batch_size 10: run the same command with a lower "
                                       "--validation.batch_size (epoch 1 is trained again; the epochs before it are "
                                       "kept)\n")


@pytest.mark.parametrize("stop, status, stopped", [(signal.SIGINT, 130, "interrupted"),
                                                   (signal.SIGTERM, 143, "stopped by SIGTERM")])
def test_ctrl_c_says_what_is_kept_and_how_to_resume(monkeypatch, capsys, tmp_path, terminal_ctrl_c, stop, status,
                                                    stopped):
    """Ctrl-C printed a traceback into autograd's engine. SIGTERM (SLURM's time limit or preemption, `docker stop`)
    ended the run without a word: its log stopped after the last epoch line."""
    def interrupted(*args):
        os.kill(os.getpid(), stop)
    monkeypatch.setattr("pipeline.trainer.run_in_directory", interrupted)
    run_dir = tmp_path / "run"
    sigterm = signal.getsignal(signal.SIGTERM)
    assert train_main(["--cfg", str(REPO / "recipes" / "demo.yaml"), f"--logging.run_dir={run_dir}"]) == status
    assert capsys.readouterr().err == (f"train.py: {stopped}; the epochs finished so far are kept in {run_dir}: the "
                                       "same command resumes after the last of them\n")
    monkeypatch.setattr("pipeline.trainer.evaluate_weights", interrupted)  # --eval-only: it was a traceback too
    (tmp_path / "final.pt").write_bytes(b"")
    assert train_main(["--cfg", str(REPO / "recipes" / "demo.yaml"), "--eval-only", "--weights",
                       str(tmp_path / "final.pt")]) == status
    assert capsys.readouterr().err == f"train.py: {stopped}; --eval-only writes no file, so nothing is lost\n"
    monkeypatch.setattr("pipeline.trainer.init_world", interrupted)  # waiting for the other processes to start
    assert train_main(["--cfg", str(REPO / "recipes" / "demo.yaml"), f"--logging.run_dir={run_dir}"]) == status
    assert capsys.readouterr().err == f"train.py: {stopped}; training had not started: nothing was written\n"
    assert signal.getsignal(signal.SIGTERM) is sigterm  # as it was, for whoever called main
