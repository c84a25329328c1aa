"""A run's disk need, known before it starts: the estimate against the files a run writes, and the refusals of
train.py and ablate.py on a disk without room (it was a failed checkpoint write after an epoch of training)."""
from pathlib import Path

import pytest
import torch

from conftest import REPO, tiny_settings
from pipeline import run_room
from pipeline.ablate import main as ablate_main
from pipeline.checkpoint import save_checkpoint, save_final_weights
from pipeline.config import resolve
from pipeline.errors import StorageError
from pipeline.models import build_model
from pipeline.optim import build_sgd_for
from pipeline.run_room import RunBytes, check_room, check_run_room, run_bytes
from pipeline.trainer import main as train_main


def sample_config(**settings):
    return resolve(REPO / "recipes" / "sample.yaml", {key: (value, "test") for key, value in settings.items()})


@pytest.mark.parametrize("squeeze, momentum", [("gap", 0.9), ("baseline", 0.9), ("fca", 0.0)])
def test_the_estimate_covers_the_files_a_run_writes(tmp_path, squeeze, momentum):
    """Against a checkpoint after a real SGD step (with its momentum) and final.pt: never short, within 3 %."""
    config = sample_config(**{"model.squeeze": squeeze, "training.momentum": momentum})
    model = build_model("resnet18", squeeze, 16, 10, blurpool=config["model.blurpool"])
    optimizer = build_sgd_for(model, 0.1, config)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    optimizer.step()
    save_checkpoint(tmp_path / "checkpoint.pt", model, optimizer, None, 0, config, [{"epoch": 1}], 1)
    save_final_weights(tmp_path / "final.pt", model, {"arch": "resnet18", "squeeze": squeeze, "reduction": 16,
                                                      "num_classes": 10, "blurpool": False})
    estimate = run_bytes(config, 10)
    for name, estimated in (("checkpoint.pt", estimate.checkpoint), ("final.pt", estimate.final)):
        written = (tmp_path / name).stat().st_size
        assert written <= estimated <= 1.03 * written, (name, written, estimated)
    with_momentum = estimate.checkpoint - estimate.final
    assert (with_momentum > 0.9 * estimate.final) == (momentum > 0)  # SGD keeps no buffer without momentum


def test_a_run_peaks_at_three_checkpoints_and_keeps_two_and_its_weights():
    sizes = RunBytes(checkpoint=10, final=4)
    assert [sizes.peak(epochs) for epochs in (1, 2, 3, 88)] == [14, 24, 30, 30]
    assert [sizes.kept(epochs) for epochs in (1, 2, 88)] == [14, 24, 24]


def test_a_resumed_run_counts_the_checkpoints_it_holds(tmp_path, monkeypatch):
    config = sample_config()
    peak = run_bytes(config, 10).peak(config["training.epochs"])
    (tmp_path / "checkpoint.pt").write_bytes(b"x" * 1000)
    monkeypatch.setattr(run_room, "free_bytes", lambda folder: peak - 1000)
    check_run_room(config, 10, tmp_path)
    monkeypatch.setattr(run_room, "free_bytes", lambda folder: peak - 1001)
    with pytest.raises(StorageError, match=r"the run's checkpoints and final.pt \(0.09 GB a checkpoint\) need ≈ "
                                           r"0.27 GB more on the disk of .*, and 0.27 GB are free there"):
        check_run_room(config, 10, tmp_path)


def test_a_disk_that_reports_no_size_is_not_refused():
    """sysfs, procfs and FUSE mounts that report 0 of 0 bytes while they take writes: writing there tells."""
    check_room(Path("/proc/ssenet-test/run"), 10**15, "a run", "free space")
    with pytest.raises(StorageError, match=r"^a run need ≈ 1000000.00 GB more on the disk of /tmp/r, and "):
        check_room(Path("/tmp/r"), 10**15, "a run", "free space")


def test_train_refuses_a_disk_without_room_before_the_run_directory_exists(tiny_betons, tmp_path, monkeypatch,
                                                                            capsys):
    """Before, the run trained its first epochs and stopped at the first checkpoint it could not write."""
    monkeypatch.setattr(run_room, "free_bytes", lambda folder: 50_000_000)
    assert train_main(tiny_settings(tiny_betons, tmp_path / "run", "--training.epochs=3")) == 2
    assert capsys.readouterr().err == (
        f"train.py: error: the run's checkpoints and final.pt (0.09 GB a checkpoint) need ≈ 0.27 GB more on the disk "
        f"of {tmp_path / 'run'}, and 0.05 GB are free there; free space or choose another --logging.run_dir\n")
    assert not (tmp_path / "run").exists()


def test_ablate_refuses_a_disk_without_room_for_the_runs_left_before_any_starts(tiny_betons, tmp_path, monkeypatch,
                                                                               capsys):
    """Before, each run failed at its first checkpoint, one after another, each after an epoch of training."""
    started = []
    monkeypatch.setattr("pipeline.ablate.run_schedule", lambda *args, **kwargs: started.append(args))
    root = tmp_path / "ablation"
    arguments = ["--squeeze", "baseline,gap", "--seeds", "2", "--gpus", "none", "--runs-root", str(root),
                 *tiny_settings(tiny_betons, tmp_path / "unused", "--training.epochs=3")]
    arguments.remove(f"--logging.run_dir={tmp_path / 'unused'}")
    # four runs that each keep two checkpoints and final.pt (0.22 GB baseline, 0.23 GB gap), one at a time, with
    # a third checkpoint of 0.09 GB while one is replaced: ≈ 0.96 GB
    monkeypatch.setattr(run_room, "free_bytes", lambda folder: 900_000_000)
    assert ablate_main(arguments) == 2
    assert capsys.readouterr().err == (
        "ablate.py: error: the 4 runs left (each keeps its checkpoints and final.pt, up to 0.23 GB) need ≈ 0.96 GB "
        f"more on the disk of {root}, and 0.90 GB are free there; free space, pass another --runs-root, or run fewer "
        "arms or seeds\n")
    assert not started and not [path for path in root.iterdir() if path.is_dir()]
