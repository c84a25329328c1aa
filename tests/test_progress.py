"""Progress of an epoch and of the writer's loops: a bar on a terminal, plain lines in a file."""
import io
import subprocess
import sys

import torch
from torch import nn

import pipeline.engine as engine
import pipeline.progress as progress
from conftest import REPO
from pipeline.acceleration import Precision


class Terminal(io.StringIO):
    def isatty(self):
        return True


def one_epoch(batches: int) -> dict:
    """train_one_epoch of a linear classifier on `batches` random batches, its progress shown."""
    with torch.random.fork_rng():  # the process's random state as the tests after this one would find it
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
        loader = [(torch.randn(4, 3, 2, 2), torch.randint(0, 3, (4, 1))) for _ in range(batches)]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    return engine.train_one_epoch(model, loader, nn.Identity(), optimizer, None, Precision("fp32", "cpu"),
                                  0.0, lambda step: 0.1, epoch=2, device=torch.device("cpu"), show_progress=True)


def test_an_epoch_in_a_file_writes_plain_lines_and_its_own_line_stays_whole(monkeypatch, capsys):
    """Under SLURM, nohup or a redirect, the bar's redraws (carriage returns) piled up on one line of the log, at
    whose end train.py's epoch line landed: `grep 'val top-1'` printed the pile."""
    monkeypatch.setattr(progress, "PLAIN_LINE_SECONDS", 0)
    monkeypatch.setattr(engine, "NONFINITE_CHECK_EVERY", 2)
    one_epoch(batches=4)
    print("epoch 3: res 32 … | val top-1 50.00")  # what train.py prints next
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert "\r" not in captured.err and lines, captured.err
    assert lines[-1].startswith("epoch 3: 4/4 batch (100%), 00:00 in, ≈ 00:00 to go, loss=")
    assert all(line.startswith("epoch 3: ") for line in lines)
    assert captured.out == "epoch 3: res 32 … | val top-1 50.00\n"


def test_a_loop_shorter_than_a_minute_writes_nothing_to_a_file(capsys):
    one_epoch(batches=3)
    assert capsys.readouterr().err == ""


def test_a_terminal_still_gets_the_bar(monkeypatch):
    terminal = Terminal()
    for _ in progress.Progress(range(3), desc="epoch 1", unit="batch", leave=False, file=terminal, mininterval=0):
        pass
    shown = terminal.getvalue()
    assert shown.startswith("\repoch 1:   0%|") and "3/3" in shown and "\n" not in shown  # cleared: leave=False


def test_the_beton_writers_own_bar_writes_plain_lines_to_a_file(tiny_betons, tmp_path, monkeypatch, capsys):
    """ffcv's writer draws a tqdm bar of its own; an ImageNet write to a log took hours of redraws on one line."""
    from dataset_prep.beton import WriteSettings, write_beton
    from dataset_prep.image_folder import find_split
    monkeypatch.setattr(progress, "PLAIN_LINE_SECONDS", 0)
    split = find_split(tiny_betons / "images" / "val")
    write_beton(split.files[:6], split.classes, tmp_path / "six.beton", WriteSettings(max_res=32, workers=1), "t", 0)
    err = capsys.readouterr().err
    assert "\r" not in err and "write six.beton: 6/6 img (100%), " in err.splitlines()[-1], err


def test_a_line_in_a_log_comes_after_what_the_program_printed_before_it(tmp_path):
    """stdout to a file waits in a buffer and the progress lines (stderr) do not: the program's header must be out
    before them (tqdm flushes stdout as a bar starts)."""
    program = ("import pipeline.progress as p, time; p.PLAIN_LINE_SECONDS = 0\n"
               "print('header')\n"
               "for _ in p.Progress(range(2), desc='epoch 1', unit='batch'): time.sleep(0.01)\n")
    with open(tmp_path / "log", "w") as log:
        subprocess.run([sys.executable, "-c", program], cwd=REPO, stdout=log, stderr=log, check=True, timeout=60)
    lines = (tmp_path / "log").read_text().splitlines()
    assert lines[0] == "header" and lines[-1].startswith("epoch 1: 2/2 batch (100%)"), lines
