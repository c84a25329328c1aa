"""What every run of an ablation reads (settings, betons), held to what it was at the runner's start.

An ablation of days outlives edits: a recipe (or the base recipe every GPU recipe names) edited, a `git pull`, a
beton written again at the same path. Each run read them as it started, so the runs left trained on other settings
or data than the runs before; the report put them in a table apart, and the ablation ended with exit 0.
"""
from pathlib import Path
from typing import Dict

from pipeline.atomic import write_text_atomic
from pipeline.config import describe
from pipeline.data import DataError
from pipeline.run_data import check_data, data_identities
from pipeline.run_dir import DATA_KEYS

SETTINGS_NAME = "settings.yaml"  # in the runs root


def freeze_settings(root: Path, config: Dict[str, object]) -> Path:
    """The shared settings as the runner resolved them at its start, written as a recipe of their own that every
    run reads instead of the recipe (the runner gives each its squeeze, seed and folder)."""
    path = root / SETTINGS_NAME
    write_text_atomic(path, "# every setting of this ablation's runs but their squeeze, seed and folder: the recipe "
                            "and the command line's settings (ablation.json), as ablate.py resolved them at its start\n"
                      + describe(config))
    return path


def check_same_data(config: Dict[str, object], data: Dict[str, str]) -> None:
    """The betons hold what they held at the runner's start (`data`: {setting: identity}); else a DataError
    that names the beton and the two ways on."""
    now = data_identities(check_data(config))
    changed = next((key for key in DATA_KEYS if now[key] != data[key]), None)
    if changed:
        raise DataError(f"{changed} {config[changed]} was written again since this ablation started (it held "
                        f"{data[changed]}, now {now[changed]}): the runs left would train on other data than the "
                        "runs before; put the earlier beton back and run the same command, or run the ablation "
                        "on the new one with another --runs-root")
