"""Config: every recipe loads, unknown keys and bad values are one-line errors, overrides win."""
from pathlib import Path

import pytest

from pipeline import config as config_module
from pipeline.config import ConfigError, describe, parse_overrides, resolve
from pipeline.models import build_model

RECIPES_DIR = Path(__file__).resolve().parents[1] / "recipes"
RECIPES = sorted(RECIPES_DIR.glob("*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_every_recipe_loads(recipe):
    config = resolve(recipe, {})
    assert config["training.epochs"] >= 1 and config["model.arch"].startswith("resnet")


def test_rn50_88ep_is_ffcv_imagenets_recipe():
    config = resolve(RECIPES[0].parent / "rn50_88ep.yaml", {})
    assert (config["model.arch"], config["training.epochs"]) == ("resnet50", 88)
    assert (config["resolution.start_ramp"], config["resolution.end_ramp"]) == (65, 76)
    assert config["lr.lr"] * 8 * config["training.batch_size"] / 256 == pytest.approx(1.7)  # on 8 GPUs
    assert config["training.label_smoothing"] == 0.1 and config["model.blurpool"] is True


def test_seed_recipe_matches_the_seed():
    config = resolve(RECIPES[0].parent / "ssenet_rn18.yaml", {})
    assert config["lr.milestones"] == [30, 60] and config["lr.schedule"] == "step"
    assert (config["lr.lr"], config["training.batch_size"], config["training.seed"]) == (0.01, 256, 123)
    assert config["training.decay_norm_and_bias"] is True and config["training.label_smoothing"] == 0


def test_command_line_overrides_recipe_and_parses_types():
    overrides = parse_overrides(["--training.epochs=2", "--model.blurpool", "false", "--lr.milestones=5,9"])
    config = resolve(RECIPES[0].parent / "sample.yaml", overrides)
    assert config["training.epochs"] == 2 and config["model.blurpool"] is False
    assert config["lr.milestones"] == [5.0, 9.0]


def test_typo_in_recipe_is_an_error_with_a_suggestion(tmp_path):
    recipe = tmp_path / "typo.yaml"
    recipe.write_text("training:\n  epochz: 9\n")
    with pytest.raises(ConfigError, match=r"unknown setting 'training.epochz' \(from .*typo.yaml\); "
                                          r"did you mean 'training.epochs'\?"):
        resolve(recipe, {})


@pytest.mark.parametrize("key, value, expected", [
    ("training.epochs", "abc", "expected an integer >= 1"),
    ("training.epochs", 0, "expected an integer >= 1"),
    ("training.label_smoothing", 1.5, "expected a number from 0 to 1"),
    ("model.blurpool", "maybe", "expected true or false"),
    ("lr.schedule", "linear", "expected one of: step, triangular, cosine"),
    ("model.squeeze", "gpa", "expected one of: baseline, avgmax, fca, gap, gapXstd, gmp, random, std"),
    # were taken: a nan lr trained a whole epoch to a non-finite loss, an inf warmup kept the lr at 0
    ("lr.lr", "nan", "expected a number >= 0"),
    ("lr.warmup_epochs", float("inf"), "expected a number >= 0"),
    ("lr.milestones", "30,nan", "expected a list of numbers >= 0, e.g. 30,60"),
    ("lr.milestones", "-30,60", "expected a list of numbers >= 0, e.g. 30,60"),  # was taken: gamma from the start
    ("training.epochs", 2.5, "expected an integer >= 1"),
    # a traceback after the start: each rank's seed (seed * 1009 + rank + 1) overflowed torch.manual_seed's 64 bits
    ("training.seed", 2**62, "expected an integer from 0 to 4294967295"),
])
def test_bad_values_name_key_source_and_what_is_valid(key, value, expected):
    with pytest.raises(ConfigError) as error:
        resolve(None, {key: (value, f"--{key}")})
    assert str(error.value) == f"bad value {value!r} for {key} (from --{key}); {expected}"


def test_an_integer_beyond_a_floats_precision_is_taken_as_given():
    """2**53 + 1 was refused as 'expected an integer >= 0': it was compared with its nearest float."""
    assert resolve(None, {"training.epochs": (2**53 + 1, "--training.epochs")})["training.epochs"] == 2**53 + 1
    assert resolve(None, {"training.epochs": (str(2**53 + 1), "--training.epochs")})["training.epochs"] == 2**53 + 1


def test_base_chain_and_missing_recipe(tmp_path):
    (tmp_path / "parent.yaml").write_text("training:\n  epochs: 7\n  seed: 3\n")
    (tmp_path / "child.yaml").write_text("base: parent.yaml\ntraining:\n  seed: 4\n")
    config = resolve(tmp_path / "child.yaml", {})
    assert (config["training.epochs"], config["training.seed"]) == (7, 4)
    with pytest.raises(ConfigError, match="does not exist"):
        resolve(tmp_path / "nope.yaml", {})


def test_a_missing_recipe_names_the_project_recipe_meant_or_lists_them(tmp_path, monkeypatch):
    """`--cfg demo.yaml` (or recipes/demo.yaml run from another folder) said "recipes live in recipes/*.yaml",
    a folder relative to where the user was not."""
    monkeypatch.chdir(tmp_path)
    for given in ("demo.yaml", "recipes/demo.yaml", "demo"):
        with pytest.raises(ConfigError) as error:
            resolve(Path(given), {})
        assert str(error.value) == f"recipe {given} does not exist in {tmp_path}; did you mean {RECIPES_DIR}/demo.yaml?"
    (tmp_path / "child.yaml").write_text("base: nowhere.yaml\n")
    with pytest.raises(ConfigError) as error:
        resolve(Path("child.yaml"), {})
    assert str(error.value).startswith(f"recipe nowhere.yaml (the base: of child.yaml) does not exist in {tmp_path}; "
                                       f"the project's recipes are in {RECIPES_DIR}: demo, rn18_16ep, ")
    assert "_ffcv_imagenet" not in str(error.value)  # a base of others, not a recipe to run
    monkeypatch.setattr(config_module, "RECIPES_DIR", tmp_path / "site-packages" / "recipes")  # a wheel install
    with pytest.raises(ConfigError, match=r"^recipe demo.yaml does not exist in .*; give a recipe file's path$"):
        resolve(Path("demo.yaml"), {})


def test_described_config_round_trips(tmp_path):
    config = resolve(RECIPES[0].parent / "rn18_16ep.yaml", {})
    (tmp_path / "resolved.yaml").write_text(describe(config))
    assert resolve(tmp_path / "resolved.yaml", {}) == config


def test_malformed_override_is_rejected():
    with pytest.raises(ConfigError, match="settings are given as --section.key=value"):
        parse_overrides(["epochs=3"])


@pytest.mark.parametrize("argument, hint", [
    ("--epochs=3", "; did you mean --training.epochs=3?"),
    ("--epochs", "; did you mean --training.epochs?"),
    ("--precision=bf16", "; did you mean --training.precision=bf16?"),
    ("--batch_size=64", "; did you mean --training.batch_size=64 or --validation.batch_size=64?"),
    ("--batch-size=64", "; did you mean --training.batch_size=64 or --validation.batch_size=64?"),
    ("--foo=1", ""),
])
def test_a_setting_given_without_its_section_names_the_section(argument, hint):
    """`--epochs=3`, the way most training scripts take it, was only told the general form."""
    with pytest.raises(ConfigError) as error:
        parse_overrides([argument])
    assert str(error.value) == f"unexpected argument '{argument}'; settings are given as --section.key=value{hint}"


def test_a_setting_given_twice_in_a_recipe_is_refused(tmp_path):
    """PyYAML keeps the last of two equal keys without a word: this recipe trained 3 epochs, the 2 above unread."""
    recipe = tmp_path / "twice.yaml"
    recipe.write_text("training:\n  epochs: 2\n  seed: 1\n  epochs: 3\n")
    with pytest.raises(ConfigError) as error:
        resolve(recipe, {})
    assert str(error.value) == (f"recipe {recipe} is not valid YAML at line 4, column 3: 'epochs' is given twice, "
                                "on lines 2 and 4")
    recipe.write_text("training:\n  epochs: 2\nlr:\n  lr: 0.1\ntraining:\n  seed: 1\n")  # a section twice
    with pytest.raises(ConfigError, match="'training' is given twice, on lines 1 and 5"):
        resolve(recipe, {})
    # YAML's merge key is no second key: the mapping's own keys override what it merges
    recipe.write_text("shared: &shared {epochs: 2, seed: 3}\ntraining:\n  <<: *shared\n  seed: 4\n")
    with pytest.raises(ConfigError, match="unknown setting 'shared.epochs'"):  # the anchor's section itself
        resolve(recipe, {})
    recipe.write_text("training:\n  <<: {epochs: 2, seed: 3}\n  seed: 4\n")
    config = resolve(recipe, {})
    assert (config["training.epochs"], config["training.seed"]) == (2, 4)


@pytest.mark.parametrize("base", ["[a.yaml, b.yaml]", "5"])
def test_a_base_that_is_not_one_file_name_is_refused(tmp_path, base):
    recipe = tmp_path / "child.yaml"
    recipe.write_text(f"base: {base}\n")
    with pytest.raises(ConfigError, match=rf"recipe {recipe}: 'base' names one recipe file \(a path from "):
        resolve(recipe, {})  # was a TypeError traceback


def test_a_section_given_a_value_and_a_folder_for_a_recipe_say_what_to_give(tmp_path):
    recipe = tmp_path / "scalar.yaml"
    recipe.write_text("training: 5\n")
    with pytest.raises(ConfigError) as error:  # was "unknown setting 'training'; did you mean 'training.seed'?"
        resolve(recipe, {})
    assert str(error.value) == (f"'training' (from {recipe}) is a section, not a setting; give its settings, "
                                "e.g. --training.epochs=VALUE on the command line, or `epochs: VALUE` indented "
                                "under `training:` in a recipe")
    with pytest.raises(ConfigError) as error:  # was "does not exist"
        resolve(tmp_path, {})
    assert str(error.value) == f"recipe {tmp_path} is a folder; give a recipe file, e.g. recipes/sample.yaml"


def test_a_yaml_syntax_error_names_line_and_column(tmp_path):
    recipe = tmp_path / "broken.yaml"
    recipe.write_text("training:\n  epochs: 3\n  seed: [1, 2\n")
    with pytest.raises(ConfigError, match=r"broken.yaml is not valid YAML at line 4, column 1: "):
        resolve(recipe, {})


@pytest.mark.parametrize("arch, largest", [("resnet18", 64), ("resnet50", 256)])
def test_a_reduction_the_model_cannot_take_is_one_line(arch, largest):
    """--model.reduction=1000 was build_model's ValueError traceback, after the data had been checked."""
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "demo.yaml"
    fits = resolve(recipe, parse_overrides([f"--model.arch={arch}", f"--model.reduction={largest}"]))
    assert fits["model.reduction"] == largest
    build_model(arch, "gap", largest, num_classes=10)  # the largest ratio the config takes builds
    with pytest.raises(ConfigError, match=rf"^model.reduction {largest + 1} \(from --model.reduction\) leaves no "
                                          rf"hidden unit in {arch}'s first SE blocks \({largest} channels\); use at "
                                          rf"most {largest}$"):
        resolve(recipe, parse_overrides([f"--model.arch={arch}", f"--model.reduction={largest + 1}"]))
    with pytest.raises(ValueError, match="leaves no hidden units"):
        build_model(arch, "gap", largest + 1, num_classes=10)  # the limit is the model's own
    baseline = ["--model.squeeze=baseline", f"--model.arch={arch}", f"--model.reduction={largest + 1}"]
    assert resolve(recipe, parse_overrides(baseline))["model.reduction"] == largest + 1  # no SE block: any ratio


def test_a_ramp_that_shrinks_the_resolution_is_refused():
    """ffcv-imagenet asserts min_res <= max_res; here --resolution.min_res=224 on an rn50 recipe trained from 224
    down to 192 px without a word."""
    recipe = RECIPES[0].parent / "rn50_16ep.yaml"
    with pytest.raises(ConfigError, match=r"^resolution.min_res 224 \(from --resolution.min_res\) is larger than "
                                          r"resolution.max_res 192 \(from \S*recipes/_ffcv_imagenet.yaml\); the "
                                          r"resolution ramps up from min_res to max_res: raise max_res or lower "
                                          r"min_res$"):
        resolve(recipe, parse_overrides(["--resolution.min_res=224"]))
    no_ramp = ["--resolution.min_res=224", "--resolution.start_ramp=0", "--resolution.end_ramp=0"]
    assert resolve(recipe, parse_overrides(no_ramp))["resolution.min_res"] == 224  # unused: max_res throughout
