"""The benchmarks' own logic, on the CPU: kernel_profile.py's groups, bench_model's rounds and profiled steps
(so that a device check cannot fail on a slip that any machine would show)."""
import gc
import importlib
import importlib.util
import json
import os
import re
import shlex
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO, run_script
from pipeline.models import build_model

_spec = importlib.util.spec_from_file_location("kernel_profile", REPO / "benchmarks" / "kernel_profile.py")
kernel_profile = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(kernel_profile)


@pytest.mark.parametrize("kernel, group", [
    ("triton_poi_fused__native_batch_norm_legit_functional_add_relu_12", "inductor"),
    ("triton_red_fused_native_batch_norm_backward_7", "inductor"),
    ("sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc_tilesize128x128x64", "conv/matmul"),
    ("void cutlass::Kernel2<cutlass_80_simt_sgemm_32x128_8x5_tn_align1>(cutlass_80_simt_sgemm_32x128)",
     "conv/matmul"),
    ("void cudnn::engines_precompiled::nchwToNhwcKernel<__nv_bfloat16>", "conv/matmul"),
    ("void fft2d_r2c_32x32<float, false, 1u, true>(float2*, float const*, int, int, int, int, int)", "conv/matmul"),
    ("Memcpy DtoD (Device -> Device)", "copy/fill"),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<int>, std::array<char*, 1> >",
     "copy/fill"),
    ("void at::native::batch_norm_collect_statistics_channels_last_kernel<at::native::Var, c10::BFloat16>", "other"),
])
def test_kernels_fall_in_their_group(kernel, group):
    assert kernel_profile.group_of(kernel, frozenset({"z_stats_kernel"})) == group


def test_the_fused_kernels_are_found_by_name():
    pytest.importorskip("triton")
    names = kernel_profile._se_kernel_names()
    assert {"z_stats_kernel", "forward_finalize_kernel", "excite_kernel", "apply_kernel", "grad_reduce_kernel",
            "excite_grad_kernel", "backward_finalize_kernel", "grad_apply_kernel"} == names  # both directions
    assert kernel_profile.group_of("grad_apply_kernel", names) == "SE passes"
    assert kernel_profile.group_of("backward_finalize_kernel", names) == "SE small"
    assert kernel_profile.SE_PASS_KERNELS < names


def test_bench_model_times_rounds_and_splits_a_profiled_step_into_groups(monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))  # the scripts import their siblings
    monkeypatch.setattr(sys, "argv", ["bench_model.py", "--arms", "gap", "--res", "32", "--batch", "2", "--steps", "1",
                                      "--warmup", "1", "--rounds", "3", "--profile-steps", "1"])
    bench_model = importlib.import_module("bench_model")
    tuned = []  # training's cuDNN set-up (autotuned convolutions on a GPU), given the device the models run on
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    monkeypatch.setattr(bench_model, "tune_convolutions",
                        lambda device: tuned.append(device) or setattr(torch.backends.cudnn, "benchmark", True))
    bench_model.main()  # in this process: a process start costs seconds of the suite
    stdout = capsys.readouterr().out
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert tuned == [torch.device("cpu")] and summary["cudnn_benchmark"] is True
    rows = summary["results"]["eager@32"]
    assert [row["rounds"] for row in rows.values()] == [3, 3]
    assert "eager 32 round 3 of 3: torchvision resnet18" in stdout
    assert rows["torchvision resnet18"]["ratio_vs_torchvision"] == 1.0 and rows["gap [torch]"]["img_s"] > 0
    assert all(row["gc_ms_per_step"] >= 0 and row["gc_full_collections"] >= 0 for row in rows.values())
    assert " gc ms" in stdout
    profiles = summary["profiles"]
    assert set(profiles) == {"eager@32/torchvision resnet18", "eager@32/gap [torch]"}
    for row in profiles.values():
        groups = [row[group] for group in kernel_profile.GROUPS]
        assert row["busy_ms"] == pytest.approx(sum(groups), abs=0.01)
        assert row["conv/matmul"] > 0 and row["step_ms"] > 0
        assert row["SE passes"] == row["SE small"] == 0  # the torch ops ran: no fused kernel
    assert "-- kernels of one eager 32 gap [torch] step" in stdout


def test_bench_model_steps_with_trainings_optimizer(monkeypatch):
    """Weight decay on conv and linear weights only, as build_sgd gives training (it stepped without any)."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    trainee = importlib.import_module("bench_model").Trainee(lambda: build_model("resnet18", "gap"),
                                                             torch.device("cpu"), 2, 32, "eager")
    groups = trainee.optimizer.param_groups
    assert [group["weight_decay"] for group in groups] == [1e-4, 0.0] and groups[0]["momentum"] == 0.9
    assert {id(parameter) for parameter in groups[1]["params"]} == {
        id(parameter) for module in trainee.model.modules() if isinstance(module, torch.nn.BatchNorm2d)
        for parameter in module.parameters(recurse=False)} | {id(trainee.model.fc.bias)}


def test_bench_model_names_the_rows_whose_rounds_disagree(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    bench_model = importlib.import_module("bench_model")
    rows = [("eager", 192, "torchvision resnet18", 16839.1, 1.0, 2.59, 1.0, 0.6, 0.0, 0.001),
            ("eager", 192, "gap [torch]", 14228.8, 0.84, 2.81, 1.09, 0.2, 0.0, 0.1),  # at the limit: steady enough
            ("eager", 192, "gap [triton]", 14241.1, 0.85, 2.54, 0.98, 9.9, 0.0, 0.28)]  # the H200's, 2026-11-27
    warning = bench_model.spread_warning(rows)
    assert warning.startswith("rounds more than 10% apart: eager 192 gap [triton] (28%); ")
    assert "gap [torch]" not in warning
    assert bench_model.spread_warning(rows[:2]) is None


def test_bench_model_counts_the_garbage_collectors_pauses_while_it_times(monkeypatch):
    """A kernel arm's first round ran 25 % slower than its later rounds on an H200 (fca 0.80 and 1.07 x
    torchvision); the collector's time per timed step is one host pause the table can now rule in or out."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    clock = importlib.import_module("bench_model").CollectorClock()
    gc.collect()  # before: not counted
    with clock:
        gc.collect()
        gc.collect(0)
    gc.collect()  # after: not counted
    assert clock.full_collections == 1 and clock.seconds > 0
    assert clock._observe not in gc.callbacks


def test_bench_model_settles_a_collection_the_warm_up_owes_before_it_times(monkeypatch):
    """On an H200 one full collection (225 ms) fell in SE-ResNet-18 gapXstd's timed steps after its warm-up had
    compiled and autotuned kernels: that round ran at 0.77 x torchvision, the next at 0.86. Here the warm-up's
    leftovers are 300,000 objects that survived young collections, which makes a full collection due."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    trainee = importlib.import_module("bench_model").Trainee(lambda: build_model("resnet18", "gap"),
                                                             torch.device("cpu"), 2, 32, "eager")
    trainee.step()
    thresholds = gc.get_threshold()
    gc.collect()
    gc.disable()
    try:
        leftovers = [[] for _ in range(300_000)]
        gc.set_threshold(50, 1, 1)  # young collections promote the leftovers within a few hundred allocations
        gc.enable()
        trainee.throughput(2)
    finally:
        gc.set_threshold(*thresholds)
        gc.enable()
    assert len(leftovers) == 300_000 and trainee.collector_figures()[1] == 0


# a graph of one matrix product: inductor calls it as an extern kernel and generates no C++ for the CPU, so neither
# process runs a C++ compiler (16-19 s a process with a pointwise graph, 10 s with this), and its FX graph is cached
COMPILE_CACHE_PROBE = (
    "import json, sys; from pathlib import Path; import torch; from torch._dynamo.utils import counters; "
    "sys.path.insert(0, 'benchmarks'); import compile_cache; path = Path(sys.argv[1]); "
    "print(compile_cache.load(path)); torch.compile(lambda x: x @ x.t())(torch.randn(4, 8)); "
    "print(compile_cache.save(path)); print(json.dumps(dict(counters['inductor'])))")


def test_a_compile_cache_file_carries_compiled_work_to_a_machine_whose_caches_are_empty(tmp_path):
    """Each device lease starts on a bare machine, where ResNet-50 compiled in 46-77 s a model: a second
    process with its own empty inductor cache (another machine) finds the first one's graph in the file."""
    cache = tmp_path / "compiled.gz"
    outputs = []
    for machine in ("first", "second"):
        # no pool of compile workers to start for one tiny graph: seconds less per process
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / machine), "TORCHINDUCTOR_COMPILE_THREADS": "1"}
        env.pop("TRITON_INTERPRET", None)
        result = run_script(["-c", COMPILE_CACHE_PROBE, str(cache)], env=env)
        assert result.returncode == 0, result.stderr[-2000:]
        outputs.append(result.stdout.splitlines())
    (loaded, written, counts), (reloaded, rewritten, recounts) = outputs
    assert loaded == f"compile cache: none at {cache}, compiling from scratch"
    assert json.loads(counts).get("fxgraph_cache_miss") == 1 and "fxgraph_cache_hit" not in json.loads(counts)
    assert written.startswith("compile cache: ") and written.endswith(f" MB written to {cache}")
    assert re.fullmatch(rf"compile cache: [1-9]\d* artifacts loaded from {re.escape(str(cache))}", reloaded)
    assert json.loads(recounts).get("fxgraph_cache_hit") == 1 and "fxgraph_cache_miss" not in json.loads(recounts)
    assert rewritten.endswith(f" MB written to {cache}")


def test_a_damaged_compile_cache_file_only_means_compiling_from_scratch(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    compile_cache = importlib.import_module("compile_cache")
    damaged = tmp_path / "compiled.gz"
    damaged.write_bytes(b"not gzip")
    assert compile_cache.load(damaged).startswith(f"compile cache: {damaged} unreadable (BadGzipFile: ")
    assert compile_cache.load(damaged).endswith("), compiling from scratch")


def test_bench_cpu_convolution_times_one_network_with_and_without_the_gemm(monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))  # the scripts import their siblings
    bench = importlib.import_module("bench_cpu_convolution")
    built = []
    monkeypatch.setattr(bench, "build_model", lambda *args: built.append(build_model(*args)) or built[-1])
    summary = bench.main(["--res", "32", "--batch", "2", "--steps", "1", "--warmup", "0", "--rounds", "2"])
    assert list(summary["gemm_vs_torch"]) == ["32"] and summary["gemm_vs_torch"]["32"] > 0
    assert [sum(type(module).__name__ == "SmallMapConv2d" for module in model.modules()) for model in built] == [0, 20]
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == summary


@pytest.mark.filterwarnings("ignore:CUDA is not available:UserWarning")  # its bf16 autocast, meant for the GPU
def test_bench_se_tail_host_breakdown_runs_on_cpu_tensors(monkeypatch, capsys):
    """Its last step (on the device it comes after minutes of others), with the kernels interpreted."""
    pytest.importorskip("triton")
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))  # the scripts import their siblings
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *args: None)
    import bench_se_tail

    def make():
        return torch.randn(2, 32, 3, 3).contiguous(memory_format=torch.channels_last)

    breakdown = bench_se_tail.host_breakdown(make(), make(), make(), 2)
    assert "host us per gap tail, forward + backward: module and autograd" in capsys.readouterr().out
    assert sorted(breakdown) == ["module_us", "per_launch_us", "per_triton_launch_us", "python_us", "se_launch_us",
                                 "through_triton_us"]


def device_check_table():
    """(the text of scripts/device_check.sh, {step: command} from its table)."""
    text = (REPO / "scripts" / "device_check.sh").read_text()
    return text, dict(re.findall(r'^\s+\[(\w+)\]="([^"]+)"', text, re.M))


def test_every_device_check_step_parses_here(monkeypatch):
    """A slip in the device check costs a device call (of 15 minutes a session): every step has a cap and a
    command, the usage lines name real steps, every benchmark's arguments parse, every test file exists."""
    text, commands = device_check_table()
    caps = re.findall(r"\[(\w+)\]=\d+", re.search(r"declare -A cap=\(([^)]*)\)", text).group(1))
    assert sorted(caps) == sorted(commands) and len(commands) > 10
    assert set(re.search(r"^order=\(([^)]*)\)", text, re.M).group(1).split()) <= set(commands)
    for usage in re.findall(r"^#\s+scripts/device_check\.sh ([\w ]+?)\s*(?:#|$)", text, re.M):
        assert set(usage.split()) <= set(commands), usage
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))  # the scripts import their siblings
    parsed = 0
    for step, command in commands.items():
        words = shlex.split(command)
        tests = [word for word in words if word.startswith("tests/")]
        assert all((REPO / path.split("::")[0]).is_file() for path in tests), step
        script = next((word for word in words if word.startswith("benchmarks/")), None)
        if script:
            module = importlib.import_module(Path(script).stem)
            module.parse_arguments(words[words.index(script) + 1:])  # argparse exits 2 on a bad argument
            parsed += 1
    assert parsed >= 10


@pytest.mark.parametrize("arguments", [["--compiled-arms", "gpa"], ["--se-kernel", "trition"], ["--modes", "fast"],
                                       ["--res", "160,x"], ["--steps", "0"], ["--arch", "resnet99"]])
def test_a_benchmark_argument_typo_fails_at_once(arguments, monkeypatch, capsys):
    """A misspelt --compiled-arms measured nothing and exited 0, after minutes of a device lease."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    with pytest.raises(SystemExit) as raised:
        importlib.import_module("bench_model").parse_arguments(arguments)
    assert raised.value.code == 2 and f"argument {arguments[0]}:" in capsys.readouterr().err


@pytest.fixture
def project(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))  # the benchmarks import their siblings
    return importlib.import_module("project")


@pytest.mark.parametrize("arguments, message", [
    (["--cfg", "recipes/nope.yaml"],  # were tracebacks: ConfigError, then ZeroDivisionError
     f"recipe recipes/nope.yaml does not exist in {REPO}; the project's recipes are in {REPO / 'recipes'}: demo, "),
    (["--gpus", "0"], "argument --gpus: 0: must be at least 1"),
    (["--cores", "0"], "argument --cores: 0: must be at least 1"),
    (["--loader-img-s-per-core", "0"], "argument --loader-img-s-per-core: 0: must be more than 0"),
    (["--model-img-s", "0"], "argument --model-img-s: 0: must be more than 0"),  # was taken as not given
    (["--model-img-s", "inf"], "argument --model-img-s: inf: must be a finite number"),  # was taken: 0 s per step
    (["--scaling", "-1"], "argument --scaling: -1: must be more than 0"),  # projected a negative wall time
    (["--scaling", "1.5"], "argument --scaling: 1.5: must be at most 1"),
])
def test_projection_refuses_values_it_cannot_project_in_one_line(project, capsys, arguments, message):
    with pytest.raises(SystemExit) as exit_status:
        project.main(["--cfg", "recipes/rn50_16ep.yaml", *arguments])
    error = capsys.readouterr().err
    assert exit_status.value.code == 2 and f": error: {message}" in error.splitlines()[-1], error


def test_projection_is_the_slower_of_gpus_and_loader_per_epoch(project, capsys, tmp_path):
    recipe = tmp_path / "rn101.yaml"  # an architecture without a measured figure says whose it takes
    recipe.write_text(f"base: {REPO / 'recipes' / 'rn50_16ep.yaml'}\nmodel:\n  arch: resnet101\n")
    assert project.main(["--cfg", str(recipe), "--gpus", "2", "--cores", "1000", "--scaling", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "7,496 img/s per GPU at 192 px (resnet50's: none measured for resnet101; pass --model-img-s)" in out
    # GPU-bound at 160 px: 2 GPUs at 50 % efficiency = one GPU; val at 256 px, flip TTA: 2 passes of 1/3 a step
    train = 1_281_167 / (7_496 * (192 / 160) ** 2)
    val = 50_000 / (7_496 * 3 / 2 * (192 / 256) ** 2 * 2)
    assert f"epochs at 160 px: {train + val:6.1f} s each, bound by GPU" in out
