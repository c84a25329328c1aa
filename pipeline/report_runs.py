"""The runs a report is about: the finished runs under one or several runs roots, what the roots asked for
(ablation.json), and their split into experiments, one table each. Torch-free, as report.py."""
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Collection, Dict, List, Optional, Sequence, Tuple

from pipeline.errors import UserError
from pipeline.run_dir import (CONFIG_NAME, DATA_KEYS, LOG_NAME, RESULT_NAME, RESUME_FREE_KEYS, RunLock, read_json,
                              read_log, read_result, recorded_config)

MANIFEST_NAME = "ablation.json"
ARM_KEYS = ("model.squeeze", "training.seed")  # the settings in which the runs of one table differ
# result-changing, resolved at run time: 8 GPUs x 512 is not 4 x 512; the betons' identities stand for their paths
RESOLVED_KEYS = ("global_batch", "precision", "data")
LABEL_SETTINGS = 4  # at most this many settings name an experiment in its title

# what the report reads of a finished run's result.json: (key, its types, what to say when it is not one)
RESULT_FIELDS = (("arch", str, "a string"), ("squeeze", str, "a string"), ("seed", int, "an integer"),
                 ("epochs", int, "an integer"), ("top1", (int, float), "a finite number"),
                 ("top5", (int, float), "a finite number"), ("parameters", int, "an integer"),
                 ("train_images_per_s", (int, float), "a finite number"))


def result_problem(result: Dict[str, Any]) -> Optional[str]:
    """What a finished run's result.json lacks for the report (None: nothing). The trainer writes every field;
    another tool's file or a hand edit may not, and was a KeyError or matplotlib's TypeError traceback."""
    for key, kinds, description in RESULT_FIELDS:
        value = result.get(key)
        if isinstance(value, bool) or not isinstance(value, kinds) or (
                isinstance(value, float) and not math.isfinite(value)):
            return f"has no {key!r} ({description})"
    if not isinstance(result.get("config", {}), dict):
        return "has no 'config' (an object)"
    return None


def read_runs(root: Path) -> Tuple[List[dict], List[str]]:
    """(every finished run under `root`: its result.json plus its log lines, a note for each file that does not
    parse). The trainer writes both whole: a log damaged since stopped the report with a JSON traceback, and a
    result left its run out without a word."""
    runs, notes = [], []
    for result_path in sorted(root.glob(f"*/{RESULT_NAME}")):
        result = read_result(result_path.parent)
        if result is None:
            notes.append(f"left out {result_path.parent}: its {RESULT_NAME} is unreadable")
            continue
        if result.get("finished_epochs") != result.get("epochs"):
            continue
        problem = result_problem(result)
        if problem:
            notes.append(f"left out {result_path.parent}: its {RESULT_NAME} {problem}")
            continue
        try:
            result["log"] = read_log(result_path.parent)
        except ValueError as error:
            result["log"] = []
            notes.append(f"{result_path.parent / LOG_NAME} is unreadable ({error}): the run has no curve")
        result["run_dir"] = str(result_path.parent)
        runs.append(result)
    return runs, notes


@dataclass(frozen=True)
class InProgress:
    """A run under a runs root that started and has not finished: how far it got, and whether a process trains
    in it now (its lock is held) or it stopped (killed, failed, or its ablation interrupted)."""
    squeeze: str
    seed: int
    epochs_done: int
    epochs: int
    training_now: bool
    config: Dict[str, Any]

    def describe(self) -> str:
        return (f"{self.squeeze} s{self.seed} ({self.epochs_done} of {self.epochs} epochs, "
                f"{'training now' if self.training_now else 'stopped'})")


def read_in_progress(root: Path, finished: Collection[str] = ()) -> List[InProgress]:
    """The runs under `root` that started (a config.yaml) and have no finished result (`finished`: the run
    directories read_runs took, not read again)."""
    found = []
    for config_path in sorted(root.glob(f"*/{CONFIG_NAME}")):
        run_dir = config_path.parent
        if str(run_dir) in finished:
            continue
        result = read_result(run_dir)
        if result and result.get("finished_epochs") == result.get("epochs"):
            continue
        config = recorded_config(run_dir, result) or {}
        squeeze, seed, epochs = (config.get(key) for key in ("model.squeeze", "training.seed", "training.epochs"))
        if not (isinstance(squeeze, str) and isinstance(seed, int) and isinstance(epochs, int)):
            continue
        try:
            done = len(read_log(run_dir))
            training_now = RunLock(run_dir).is_held()
        except (OSError, ValueError):  # a log cut mid-line, a lock file it may not open (a read-only copy)
            continue
        found.append(InProgress(squeeze, seed, done, epochs, training_now, config))
    return found


def in_progress_of(experiment: "Experiment", in_progress: Sequence[InProgress],
                   unfinished: Sequence[Tuple[str, int]]) -> List[InProgress]:
    """The runs in progress that are `experiment`'s unfinished (squeeze, seed) pairs: the same settings where
    both record them (a run in progress records no resolved ones: global batch, precision, data)."""
    return [run for run in in_progress if (run.squeeze, run.seed) in unfinished and all(
        experiment.settings[key] == value for key, value in experiment_settings(
            {"config": run.config, "arch": run.config.get("model.arch"), "epochs": run.epochs}).items()
        if key in experiment.settings)]


@dataclass
class Experiment:
    """Runs that differ only in squeeze and seed: one table. `label` names the settings that set it apart
    from the other experiments of its arch under the same root (empty when there is none)."""
    arch: str
    settings: Dict[str, Any]
    runs: List[dict] = field(default_factory=list)
    label: str = ""


def experiment_settings(run: dict) -> Dict[str, Any]:
    """Every result-changing setting of a run except its squeeze and seed."""
    config = run.get("config") or {"model.arch": run["arch"], "training.epochs": run["epochs"]}
    free = RESUME_FREE_KEYS + ARM_KEYS + (DATA_KEYS if "data" in run else ())
    settings = {key: value for key, value in config.items() if not key.startswith(free)}
    return settings | {key: run[key] for key in RESOLVED_KEYS if key in run}


def group_experiments(runs: List[dict]) -> Tuple[List[Experiment], List[str]]:
    """(the runs split into experiments, a note for each run left out as a copy of another). A folder may hold
    several recipes (train.py's default runs/): pooling them would count a 16- and an 88-epoch run as two seeds."""
    experiments: Dict[str, Experiment] = {}
    seen: Dict[tuple, str] = {}
    notes = []
    for run in runs:
        settings = experiment_settings(run)
        key = json.dumps(settings, sort_keys=True, default=str)
        experiment = experiments.setdefault(key, Experiment(run["arch"], settings))
        copy_of = seen.setdefault((key, run["squeeze"], run["seed"]), run["run_dir"])
        if copy_of != run["run_dir"]:
            notes.append(f"left out {run['run_dir']}: the same settings, squeeze and seed as {copy_of}")
            continue
        experiment.runs.append(run)
    for arch in {experiment.arch for experiment in experiments.values()}:
        same_arch = [experiment for experiment in experiments.values() if experiment.arch == arch]
        keys = sorted({key for experiment in same_arch for key in experiment.settings})
        differing = [key for key in keys if len({repr(e.settings.get(key)) for e in same_arch}) > 1]
        for experiment in same_arch if len(same_arch) > 1 else []:
            named = [label_part(key, experiment.settings.get(key)) for key in differing[:LABEL_SETTINGS]]
            experiment.label = ", ".join(named) + (", …" if len(differing) > LABEL_SETTINGS else "")
    return sorted(experiments.values(), key=lambda e: (e.arch, e.label)), notes


def label_part(key: str, value: Any) -> str:
    """`key=value` in a table's title; the betons a run read as `data: train …; val …` (the dict of what each
    holds made a title of Python's repr: runs on ImageNet-100 and on ImageNet beside each other)."""
    if key == "data" and isinstance(value, dict):
        return "data: " + "; ".join(f"{name.split('.')[-1].replace('_dataset', '')} {text}"
                                    for name, text in value.items())
    return f"{key}={value}"


def read_manifest(root: Path) -> dict:
    return read_json(root / MANIFEST_NAME) or {}


def check_root(root: Path, runs: List[dict], manifest: dict, unreadable: List[str]) -> None:
    """Refuse a folder that is no runs root, naming what to give instead."""
    if runs or manifest:
        return
    if (root / RESULT_NAME).is_file():  # a run directory itself: it was told to train first
        raise UserError(f"{root} is a run directory; give the folder that holds run directories: {root.parent}")
    roots = sorted({path.parent.parent for path in root.glob(f"*/*/{RESULT_NAME}")})
    if roots:  # `runs`, above make demo's runs/demo and ablate.py's runs/ablate-<recipe>
        raise UserError(f"{root} holds no run directory itself but folders of runs: "
                        f"{', '.join(map(str, roots))}; give one of them, or several to pool them (with --out)")
    if unreadable:
        raise UserError(f"{root} holds no readable finished run: {'; '.join(unreadable)}")
    raise UserError(f"{root} holds no finished run (no */{RESULT_NAME}); train first, e.g. with ablate.py")


def merge_manifests(manifests: Sequence[dict]) -> dict:
    """What several runs roots asked for together (an ablation split over nodes by --first-seed or --squeeze):
    every arm and seed asked of any, every failure; the recipe where they share one."""
    present = [manifest for manifest in manifests if manifest]
    if len(present) < 2:
        return present[0] if present else {}
    recipes = {manifest.get("recipe") for manifest in present}
    return {"arch": present[0].get("arch"), "recipe": recipes.pop() if len(recipes) == 1 else None,
            "squeezes": list(dict.fromkeys(name for manifest in present for name in manifest.get("squeezes", []))),
            "seeds": sorted({seed for manifest in present for seed in manifest.get("seeds", [])}),
            "failed": [failure for manifest in present for failure in manifest.get("failed", [])]}
