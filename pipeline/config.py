"""Every training setting, declared once as a fastargs Section; recipes (YAML) and the command line override.

fastargs 1.2.0 drops keys that no Section declares and exits 0 on a bad value (`validate(mode='stderr')`),
so recipe keys are checked here, values are validated with `errordict`, and each problem becomes a one-line
`ConfigError`. Recipes may name a `base:` recipe (path relative to themselves) whose values they override.
"""
import difflib
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import yaml
from fastargs import Param, Section
from fastargs.config import Config
from fastargs.validation import Checker

from pipeline.errors import UserError
from pipeline.kernels import SE_KERNELS
from pipeline.models import ARCHITECTURES, largest_reduction
from pipeline.squeeze import BASELINE, squeeze_names


RECIPES_DIR = Path(__file__).resolve().parents[1] / "recipes"  # the project's recipes, named where one is missing


class ConfigError(UserError, ValueError):
    """A bad recipe, key or value: one line saying what was given, where, and what is valid."""


# ---- checkers with messages that say what is valid (fastargs' Bool would take "false" as True) ----------

class TrueFalse(Checker):
    WORDS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}

    def check(self, value):
        if isinstance(value, bool):
            return value
        if isinstance(value, (str, int)) and str(value).lower() in self.WORDS:
            return self.WORDS[str(value).lower()]
        raise ValueError(value)

    def help(self):
        return "true or false"


class Number(Checker):
    def __init__(self, kind=float, low=None, high=None):
        self.kind, self.low, self.high = kind, low, high

    def check(self, value):
        if isinstance(value, bool):
            raise ValueError(value)
        number = self.kind(value)
        # nan, inf: no setting's value; 2.5 is no integer (compared as given: a float of 2**64 - 1 is not that int)
        if not math.isfinite(number) or (self.kind is int and not isinstance(value, (int, str)) and value != number):
            raise ValueError(value)
        if (self.low is not None and number < self.low) or (self.high is not None and number > self.high):
            raise ValueError(value)
        return number

    def help(self):
        name = "an integer" if self.kind is int else "a number"
        if self.low is not None and self.high is not None:  # was 'a number >= 0 <= 1'
            return f"{name} from {self.low} to {self.high}"
        bounds = [f">= {self.low}" if self.low is not None else "", f"<= {self.high}" if self.high is not None else ""]
        return " ".join([name] + [b for b in bounds if b])


class Choice(Checker):
    def __init__(self, choices):
        self.choices = list(choices)

    def check(self, value):
        if value not in self.choices:
            raise ValueError(value)
        return value

    def help(self):
        return "one of: " + ", ".join(self.choices)


class Text(Checker):
    def check(self, value):
        if not isinstance(value, str):
            raise ValueError(value)
        return value

    def help(self):
        return "a string"


class NumberList(Checker):
    """A list of numbers, none below `low`: YAML list or comma-separated text."""

    def __init__(self, low: float = 0):
        self.low = low

    def check(self, value):
        items = value.split(",") if isinstance(value, str) else value
        if isinstance(items, (int, float)):
            items = [items]
        numbers = [float(item) for item in items if str(item).strip() != ""]
        if not all(math.isfinite(number) and number >= self.low for number in numbers):
            raise ValueError(value)
        return numbers

    def help(self):
        return f"a list of numbers >= {self.low:g}, e.g. 30,60"


SCHEDULES = ("step", "triangular", "cosine")
# seeds as numpy's and most tools' seeding takes them; each rank's seed is derived from it (seed * 1009 + rank + 1)
# and must stay within torch.manual_seed's 64 bits, which a seed of 2**62 did not (a traceback after the start)
MAX_SEED = 2**32 - 1
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
COMPILE_MODES = ("none", "auto", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def declare(config: Config) -> Config:
    """Declare every setting on `config` (a fresh fastargs Config, so tests and tools get their own)."""
    Section("data", "datasets and loader", config_descriptor=config).params(
        train_dataset=Param(Text(), "train .beton", default="data/sample/train.beton"),
        val_dataset=Param(Text(), "val .beton", default="data/sample/val.beton"),
        num_workers=Param(Number(int, 0), "loader threads per process; 0 = its cores (CPU affinity) / local "
                          "processes; at most numba's NUMBA_NUM_THREADS", default=0),
        os_cache=Param(TrueFalse(), "share the memory-mapped beton through the OS page cache", default=True),
        batches_ahead=Param(Number(int, 1), "batches prepared ahead", default=3),
    )
    Section("resolution", "progressive resizing (ffcv-imagenet)", config_descriptor=config).params(
        min_res=Param(Number(int, 16), "train resolution until start_ramp, px", default=160),
        max_res=Param(Number(int, 16), "train resolution from end_ramp on, px", default=192),
        start_ramp=Param(Number(int, 0), "epoch at which the ramp starts", default=0),
        end_ramp=Param(Number(int, 0), "epoch at which max_res is reached (<= start_ramp: max_res always)",
                       default=0),
        val_res=Param(Number(int, 16), "val resolution after the 224/256 center crop, px", default=256),
    )
    Section("model", "SE-ResNet", config_descriptor=config).params(
        arch=Param(Choice(ARCHITECTURES), "depth", default="resnet50"),
        squeeze=Param(Choice(squeeze_names()), "squeeze op ('baseline' = no SE)", default="gap"),
        reduction=Param(Number(int, 1), "SE reduction ratio r", default=16),
        num_classes=Param(Number(int, 0), "classes; 0 = from the beton's metadata", default=0),
        zero_init_last=Param(TrueFalse(), "zero the last BN gamma of each block", default=True),
        blurpool=Param(TrueFalse(), "blur before stride-2 convs", default=True),
        se_kernel=Param(Choice(SE_KERNELS), "SE tail: fused Triton kernels (triton), the torch ops (torch), their "
                        "algorithm in torch ops for torch.compile (closed-form), or auto = what was measured "
                        "faster on CUDA: the kernels eager and with CUDA graphs, the closed form in other compile "
                        "modes; speed only, results agree to float rounding", default="auto"),
    )
    Section("lr", "learning rate schedule, per iteration", config_descriptor=config).params(
        lr=Param(Number(float, 0), "peak lr per 256 images; scaled by the global batch", default=0.1),
        schedule=Param(Choice(SCHEDULES), "shape after warmup", default="triangular"),
        warmup_epochs=Param(Number(float, 0), "linear warmup from 0 (triangular: epoch of the peak)", default=2),
        milestones=Param(NumberList(), "step: epochs at which lr is multiplied by gamma", default=[30, 60]),
        gamma=Param(Number(float, 0, 1), "step: factor at each milestone", default=0.1),
    )
    Section("training", "optimisation", config_descriptor=config).params(
        epochs=Param(Number(int, 1), "epochs", default=88),
        batch_size=Param(Number(int, 1), "images per process per step (global = this x processes)", default=512),
        momentum=Param(Number(float, 0, 1), "SGD momentum", default=0.9),
        nesterov=Param(TrueFalse(), "Nesterov momentum", default=False),
        weight_decay=Param(Number(float, 0), "L2 weight decay", default=1e-4),
        decay_norm_and_bias=Param(TrueFalse(), "apply weight decay to BN parameters and biases too",
                                  default=False),
        label_smoothing=Param(Number(float, 0, 1), "label smoothing", default=0.1),
        precision=Param(Choice(PRECISIONS), "auto = bf16 on GPUs that compute in it (8.0+), else fp16 + GradScaler "
                        "on GPUs, fp32 on CPU", default="auto"),
        channels_last=Param(TrueFalse(), "NHWC memory format", default=True),
        compile=Param(Choice(COMPILE_MODES), "torch.compile mode; auto = reduce-overhead on one GPU, default "
                      "under DDP, none on CPU", default="none"),
        seed=Param(Number(int, 0, MAX_SEED), "seed of init, data order, crops, flips and SE init stream", default=0),
    )
    Section("validation", "evaluation", config_descriptor=config).params(
        batch_size=Param(Number(int, 1), "images per process", default=256),
        flip_tta=Param(TrueFalse(), "add the logits of the flipped image", default=True),
        every=Param(Number(int, 1), "evaluate every N epochs (and always after the last)", default=1),
    )
    Section("dist", "distributed (torchrun sets the world)", config_descriptor=config).params(
        backend=Param(Choice(("auto", "nccl", "gloo")), "auto = nccl on GPUs, gloo on CPU", default="auto"),
        timeout_min=Param(Number(int, 1), "collective timeout, minutes", default=30),
    )
    Section("logging", "run directory", config_descriptor=config).params(
        run_dir=Param(Text(), "run directory; '' = runs/<arch>-<squeeze>-<recipe>-s<seed>", default=""),
        runs_root=Param(Text(), "parent of the default run directory", default="runs"),
        progress=Param(TrueFalse(), "rank 0 shows each epoch's progress: a bar on a terminal, a line a "
                                      "minute in a file", default=True),
    )
    return config


def declared_keys(config: Config) -> List[str]:
    return [".".join(path) for path in config.entries]


def _flatten(tree: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping: PyYAML keeps the last without a word, so a
    recipe with `epochs: 2` and, further down, `epochs: 3` trained 3."""

    def construct_mapping(self, node, deep=False):
        lines = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *defaults`, whose keys the mapping may override
                continue
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, (str, int, float, bool)):
                continue  # an unhashable key: the safe loader's own error names it
            line = key_node.start_mark.line + 1
            if key in lines:
                raise yaml.constructor.ConstructorError(None, None, f"'{key}' is given twice, on lines {lines[key]} "
                                                        f"and {line}", key_node.start_mark)
            lines[key] = line
        return super().construct_mapping(node, deep)


def _missing_recipe_error(path: Path, included_by: Optional[str]) -> ConfigError:
    """What a missing recipe file may have meant: a project recipe of that name (given as `demo.yaml`, or as
    `recipes/demo.yaml` from another folder), else the project's recipes by name."""
    included = f" (the base: of {included_by})" if included_by else ""
    location = "" if path.is_absolute() else f" in {Path.cwd()}"
    meant = [candidate for candidate in (RECIPES_DIR / path.name, RECIPES_DIR / f"{path.name}.yaml")
             if candidate.is_file()]
    runnable = sorted(recipe.stem for recipe in RECIPES_DIR.glob("*.yaml") if not recipe.stem.startswith("_"))
    if meant:
        hint = f"did you mean {meant[0]}?"
    elif runnable:
        hint = f"the project's recipes are in {RECIPES_DIR}: {', '.join(runnable)}"
    else:  # an install without the project's folder
        hint = "give a recipe file's path"
    return ConfigError(f"recipe {path}{included} does not exist{location}; {hint}")


def read_recipe(path: Path, _seen: Tuple[Path, ...] = ()) -> Dict[str, Any]:
    """A recipe's flat {section.key: value}, its `base:` chain merged underneath."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"recipe {path} is a folder; give a recipe file, e.g. recipes/sample.yaml")
    if not path.is_file():
        raise _missing_recipe_error(path, _seen[-1].name if _seen else None)
    if path.resolve() in _seen:
        raise ConfigError(f"recipe {path} includes itself through 'base:'")
    try:
        tree = yaml.load(path.read_text(), Loader=_UniqueKeyLoader) or {}
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"recipe {path} is not valid YAML{where}: {problem}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"recipe {path} must be a mapping of sections, got {type(tree).__name__}")
    base = tree.pop("base", None)
    if base is not None and not isinstance(base, str):
        raise ConfigError(f"recipe {path}: 'base' names one recipe file (a path from {path.parent}), not "
                          f"{type(base).__name__} {base!r}")
    values = read_recipe(path.parent / base, _seen + (path.resolve(),)) if base else {}
    values.update({key: (value, str(path)) for key, value in _flatten(tree).items()})
    return values


def _unknown_key_error(key: str, source: str, known: List[str]) -> ConfigError:
    section = [name for name in known if name.startswith(key + ".")]
    if section:  # `training: 5`, or --training=5
        return ConfigError(f"'{key}' (from {source}) is a section, not a setting; give its settings, e.g. "
                           f"--{section[0]}=VALUE on the command line, or `{section[0].split('.')[1]}: VALUE` "
                           f"indented under `{key}:` in a recipe")
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"did you mean '{close[0]}'?" if close else f"valid keys: {', '.join(known)}"
    return ConfigError(f"unknown setting '{key}' (from {source}); {hint}")


def resolve(recipe: Optional[Path], overrides: Dict[str, Tuple[Any, str]]) -> Dict[str, Any]:
    """Defaults <- recipe chain <- overrides ({key: (value, source)}); returns the validated flat config."""
    config = declare(Config())
    known = declared_keys(config)
    values = read_recipe(recipe) if recipe else {}
    values.update(overrides)
    for key, (_, source) in values.items():
        if key not in known:
            raise _unknown_key_error(key, source, known)
    config.collect({key: value for key, (value, _) in values.items()})
    errors = config.validate(mode="errordict")
    if errors:
        path = next(iter(errors))
        key = ".".join(path)
        given, source = values.get(key, (None, "defaults"))
        checker = config.entries[path].checker
        raise ConfigError(f"bad value {given!r} for {key} (from {source}); expected {checker.help()}")
    resolved = {key: config[key] for key in known}
    check_reduction(resolved, values)
    check_ramp(resolved, values)
    return resolved


def check_reduction(config: Dict[str, Any], values: Dict[str, Tuple[Any, str]]) -> None:
    """A reduction ratio the model cannot take fails here in one line, not as build_model's ValueError."""
    arch, reduction = config["model.arch"], config["model.reduction"]
    largest = largest_reduction(arch)
    if config["model.squeeze"] != BASELINE and reduction > largest:
        source = values.get("model.reduction", (None, "defaults"))[1]
        raise ConfigError(f"model.reduction {reduction} (from {source}) leaves no hidden unit in {arch}'s first SE "
                          f"blocks ({largest} channels); use at most {largest}")


def check_ramp(config: Dict[str, Any], values: Dict[str, Tuple[Any, str]]) -> None:
    """Progressive resizing grows the resolution (ffcv-imagenet asserts it); min_res is unused without a ramp."""
    low, high = config["resolution.min_res"], config["resolution.max_res"]
    if config["resolution.end_ramp"] > config["resolution.start_ramp"] and low > high:
        sources = [values.get(f"resolution.{key}", (None, "defaults"))[1] for key in ("min_res", "max_res")]
        raise ConfigError(f"resolution.min_res {low} (from {sources[0]}) is larger than resolution.max_res {high} "
                          f"(from {sources[1]}); the resolution ramps up from min_res to max_res: raise max_res or "
                          "lower min_res")


def resolution_settings(config: Dict[str, Any]) -> List[int]:
    """min_res, max_res, start_ramp, end_ramp: data.resolution_at's arguments after the epoch."""
    return [config[f"resolution.{key}"] for key in ("min_res", "max_res", "start_ramp", "end_ramp")]


def parse_overrides(arguments: List[str], instead: Optional[Dict[str, str]] = None) -> Dict[str, Tuple[Any, str]]:
    """`--section.key=value` or `--section.key value` pairs; values parsed as YAML scalars (1e-4, true).
    `instead`: {setting: the option a caller sets it with}, named when a bare `--key` asks for that setting."""
    overrides, index = {}, 0
    while index < len(arguments):
        argument = arguments[index]
        if not argument.startswith("--") or "." not in argument.split("=")[0]:
            raise ConfigError(f"unexpected argument '{argument}'; settings are given as --section.key=value"
                              f"{_section_hint(argument, instead or {})}")
        if "=" in argument:
            key, text = argument[2:].split("=", 1)
        elif index + 1 < len(arguments):
            key, text = argument[2:], arguments[index + 1]
            index += 1
        else:
            raise ConfigError(f"{argument} needs a value (--section.key=value)")
        overrides[key] = (yaml.safe_load(text) if text != "" else "", f"--{key}")
        index += 1
    return overrides


def _section_hint(argument: str, instead: Dict[str, str]) -> str:
    """'; did you mean --training.epochs=3?' for `--epochs=3`, the form most training scripts take."""
    name, equals, value = argument[2:].partition("=") if argument.startswith("--") else ("", "", "")
    name = name.replace("-", "_")
    matches = [key for key in declared_keys(declare(Config())) if name and key.split(".", 1)[1] == name]
    options = [instead.get(key, f"--{key}{equals}{value}") for key in matches]
    return f"; did you mean {' or '.join(options)}?" if options else ""


def describe(config: Dict[str, Any]) -> str:
    """The resolved config as YAML, sections nested (what `config.yaml` in a run directory holds)."""
    tree: Dict[str, Dict[str, Any]] = {}
    for key, value in config.items():
        section, name = key.split(".", 1)
        tree.setdefault(section, {})[name] = value
    return yaml.safe_dump(tree, sort_keys=False)


def settings_help() -> str:
    """One line per setting, for --help."""
    config = declare(Config())
    lines = []
    for path, param in config.entries.items():
        lines.append(f"  --{'.'.join(path):28s} {param.desc} [{param.checker.help()}; default {param.default}]")
    return "\n".join(lines)
