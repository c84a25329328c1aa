"""Every command line's --help opens with what it does in whole sentences: the docstring's first paragraph
(its first line ended bench_write.py's mid-sentence: '... over the same files (same run),')."""
import importlib

import pytest

from conftest import REPO
from dataset_prep import write_imagenet
from pipeline import ablate, report

BENCHMARKS = ("bench_e2e", "bench_loader", "bench_model", "bench_se_tail", "bench_write", "project")


def help_of(name: str):
    """(module, a call that prints its --help)."""
    if name in BENCHMARKS:
        module = importlib.import_module(name)
        parse = module.main if name == "project" else module.parse_arguments
        return module, lambda: parse(["--help"])
    return {"write_imagenet": (write_imagenet, lambda: write_imagenet.parse_args(["--help"])),
            "ablate": (ablate, lambda: ablate.parse_command_line(["--help"])),
            "report": (report, lambda: report.main(["--help"]))}[name]


@pytest.mark.parametrize("name", ("write_imagenet", "ablate", "report") + BENCHMARKS)
def test_help_opens_with_whole_sentences(name, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))  # the benchmarks import their siblings
    module, show_help = help_of(name)
    with pytest.raises(SystemExit) as exit_status:
        show_help()
    assert exit_status.value.code == 0
    description = "".join(capsys.readouterr().out.split("\n\n")[1].split())  # argparse wraps at spaces and hyphens
    assert description == "".join(module.__doc__.split("\n\n")[0].split()) and description.endswith("."), name
