"""Checkpoints and final.pt: what survives a truncated file or a full disk; final.pt loads into torchvision."""
import zipfile

import numpy as np
import pytest
import torch
import torchvision

from pipeline.checkpoint import (load_checkpoint, load_latest_checkpoint, load_weights, restore_rng_states,
                                 rng_states, save_checkpoint, save_final_weights)
from pipeline.distributed import World
from pipeline.errors import StorageError
from pipeline.models import build_model
from pipeline.resume import resume_state
from pipeline.run_dir import RunDirError

SETTINGS = {"arch": "resnet18", "squeeze": "baseline", "reduction": 16, "num_classes": 1000, "blurpool": False}


def test_baseline_final_weights_load_into_torchvision_and_record_the_model(tmp_path):
    model = build_model("resnet18", "baseline").eval()
    save_final_weights(tmp_path / "final.pt", model, SETTINGS)
    reference = torchvision.models.resnet18().eval()
    reference.load_state_dict(torch.load(tmp_path / "final.pt"), strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(reference(x), model(x), rtol=0, atol=0)
    state, recorded = load_weights(tmp_path / "final.pt")
    assert recorded == SETTINGS and set(state) == set(model.state_dict())


def test_weights_without_a_record_still_load(tmp_path):
    model = build_model("resnet18", "gmp", num_classes=10)
    torch.save(model.state_dict(), tmp_path / "old.pt")  # final.pt as written before it recorded its model
    state, recorded = load_weights(tmp_path / "old.pt")
    assert recorded is None and set(state) == set(model.state_dict())


def save_two_checkpoints(run_dir):
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for epoch in (0, 1):
        save_checkpoint(run_dir / "checkpoint.pt", model, optimizer, None, epoch, {"training.epochs": 2}, [], 1)
    return model, optimizer


def test_an_unreadable_checkpoint_falls_back_to_the_previous_one(tmp_path):
    save_two_checkpoints(tmp_path)
    assert load_checkpoint(tmp_path / "checkpoint.prev.pt")["epoch"] == 0
    current = tmp_path / "checkpoint.pt"
    current.write_bytes(current.read_bytes()[:100])  # truncated (copied half, disk trouble)
    state, warning = load_latest_checkpoint(tmp_path)
    assert state["epoch"] == 0 and "resuming from" in warning and "checkpoint.prev.pt (epoch 1)" in warning
    (tmp_path / "checkpoint.prev.pt").unlink()
    with pytest.raises(StorageError, match=r"checkpoint.pt is not a readable checkpoint .*delete .*checkpoint.pt "
                                           r"to train this run from the start"):
        load_latest_checkpoint(tmp_path)


def test_a_full_disk_names_the_file_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    model, optimizer = save_two_checkpoints(tmp_path)
    before = (tmp_path / "checkpoint.pt").read_bytes()

    def full_disk(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 4416 vs 4350")
    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(StorageError, match=r"could not write .*checkpoint.pt: .*unexpected pos.*\(disk full\?\) "
                                           r"\(\d+\.\d\d GB free on the disk of "):
        save_checkpoint(tmp_path / "checkpoint.pt", model, optimizer, None, 2, {}, [], 1)
    assert (tmp_path / "checkpoint.pt").read_bytes() == before
    assert not [path for path in tmp_path.iterdir() if ".tmp-" in path.name]


def test_a_file_that_is_no_checkpoint_is_named(tmp_path):
    junk = tmp_path / "notes.pt"
    junk.write_text("not a checkpoint")
    with pytest.raises(StorageError, match=r"notes.pt is not a readable weights file"):
        load_weights(junk)


class RunsCodeWhenUnpickled:
    """What a weights file from elsewhere may hold: unpickled, it makes the folder `marker`."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os
        return os.makedirs, (self.marker,)


def test_a_weights_file_that_would_run_code_is_refused_and_runs_none(tmp_path):
    """--eval-only --weights reads files from elsewhere (a collaborator's final.pt, a download); torch.load with
    weights_only=False ran whatever a file named. A whole pickled model (torch.save(model)) is named the same way."""
    marker = tmp_path / "code_ran"
    state = build_model("resnet18", "gap", num_classes=10).state_dict()
    torch.save({**state, "extra": RunsCodeWhenUnpickled(marker)}, tmp_path / "final.pt")
    with pytest.raises(StorageError, match=r"final.pt asks to run 'os.makedirs' as it loads; a weights file is "
                                           r"read as tensors and plain data only"):
        load_weights(tmp_path / "final.pt")
    assert not marker.exists()
    torch.save(torchvision.models.resnet18(), tmp_path / "model.pt")
    with pytest.raises(StorageError, match=r"asks to run 'torchvision.models.resnet.ResNet' as it loads"):
        load_weights(tmp_path / "model.pt")


def test_a_checkpoint_written_under_the_other_numpy_loads(tmp_path):
    """Its RNG state names numpy's array rebuilder by the other major version's module (numpy 1: numpy.core,
    numpy 2: numpy._core): a run trained on a machine with the other numpy resumes."""
    model = torch.nn.Linear(2, 2)
    save_checkpoint(tmp_path / "here.pt", model, torch.optim.SGD(model.parameters(), lr=0.1), None, 0, {}, [], 1)
    here = np.array(0).__reduce__()[0].__module__.encode()
    other = b"numpy.core.multiarray" if here == b"numpy._core.multiarray" else b"numpy._core.multiarray"
    with zipfile.ZipFile(tmp_path / "here.pt") as written, zipfile.ZipFile(tmp_path / "other.pt", "w") as copy:
        for entry in written.infolist():
            data = written.read(entry.filename)
            if entry.filename.endswith("data.pkl"):
                assert here in data
                data = data.replace(here, other)
            copy.writestr(entry, data)
    state = load_checkpoint(tmp_path / "other.pt")["rng"][0]["numpy"]
    assert state[0] == "MT19937" and state[1].dtype == np.uint32


def test_a_run_is_resumed_only_by_as_many_processes_as_trained_it(tmp_path):
    """A 2-process run resumed in one process trained on at half the global batch and lr, without a word."""
    config = {"training.epochs": 2, "training.batch_size": 64}
    model = torch.nn.Linear(2, 2)
    save_checkpoint(tmp_path / "checkpoint.pt", model, torch.optim.SGD(model.parameters(), lr=0.1), None, 0, config,
                    [], 2)
    with pytest.raises(RunDirError, match=r"was trained by 2 processes \(global batch 128\); resuming it with 1 "
                                          r"process would change the global batch .*resume it with 2 processes"):
        resume_state(tmp_path, config, World(0, 1, 0, 1, torch.device("cpu")), {})
    assert resume_state(tmp_path, config, World(1, 2, 1, 2, torch.device("cpu")), {})["epoch"] == 0


def test_each_rank_resumes_with_its_own_random_state(tmp_path):
    """Checkpoints held rank 0's random state alone, and every rank took it on resume: the `random` arm then drew
    rank 0's numbers on every rank."""
    model = torch.nn.Linear(2, 2)
    states = []
    for rank in range(2):
        torch.manual_seed(100 + rank)
        states.append(rng_states())
    save_checkpoint(tmp_path / "checkpoint.pt", model, torch.optim.SGD(model.parameters(), lr=0.1), None, 0, {}, [],
                    2, states)
    saved = load_checkpoint(tmp_path / "checkpoint.pt")["rng"]
    for rank in range(2):
        restore_rng_states(saved, rank)
        drawn = torch.rand(3)
        torch.manual_seed(100 + rank)
        assert torch.equal(drawn, torch.rand(3)), rank
