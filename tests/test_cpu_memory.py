"""The CPU memory check: its per-image bytes against a hand count, its refusal, and train.py refusing a run that
the out-of-memory killer would have ended without a word."""
import pytest
from torch import nn

from conftest import tiny_settings
from pipeline import cpu_memory
from pipeline.acceleration import Precision
from pipeline.cpu_memory import MemoryTooSmallError, available_bytes, check_cpu_memory, saved_bytes_per_image
from pipeline.models import build_model
from pipeline.trainer import main as train_main

FP32 = Precision("fp32", "cpu")


def test_saved_bytes_are_the_activations_backward_keeps_per_image():
    # the conv keeps its input (3 channels) and the ReLU its output (8 channels), fp32; the conv's weight is
    # kept once for the whole batch, not per image. At 128 px, four times the 64 px probe's pixels.
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.ReLU())
    assert saved_bytes_per_image(model, 128, FP32) == (3 + 8) * 128 * 128 * 4
    assert saved_bytes_per_image(model, 128, Precision("bf16", "cpu")) < (3 + 8) * 128 * 128 * 4


def test_a_run_beyond_the_available_memory_is_refused_and_one_within_runs():
    model = build_model("resnet18", "gap", num_classes=10)
    with pytest.raises(MemoryTooSmallError, match=r"^training on the CPU at training.batch_size 512, 192 px needs "
                       r"at least \d+\.\d GB \(\d+ MB per image x 2 processes\), and 1.0 GB are available: lower "
                       r"training.batch_size \(at most ~\d+ fits\)"):
        check_cpu_memory(model, 512, 192, FP32, 2, available=10**9)
    check_cpu_memory(model, 512, 192, FP32, 2, available=10**12)
    check_cpu_memory(model, 512, 192, FP32, 2, available=None)  # no /proc/meminfo: not asked


def test_train_py_refuses_before_creating_anything(tiny_betons, tmp_path, monkeypatch, capsys):
    """`python pipeline/train.py` alone (ResNet-50, batch 512) was killed by the kernel minutes in, exit -9."""
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       16000000 kB\nMemAvailable:      50000 kB\n")
    monkeypatch.setattr(cpu_memory, "MEMINFO", meminfo)
    monkeypatch.setattr(cpu_memory, "memory_limit", lambda: None)  # no cgroup limit (test_cgroups.py has them)
    assert available_bytes() == 50000 * 1024
    run_dir = tmp_path / "run"
    assert train_main(tiny_settings(tiny_betons, run_dir, "--training.batch_size=64")) == 2
    assert capsys.readouterr().err.startswith("train.py: error: training on the CPU at training.batch_size 64, "
                                              "32 px needs at least ")
    assert not run_dir.exists()
