"""The seed-style report: statistics against a hand computation, pairing by seed, what it writes, its errors."""
import json
import math
import warnings

import numpy as np
import pytest
import yaml
from PIL import Image
from scipy import stats

from conftest import REPO, run_script
from pipeline.config import resolve
from pipeline.paired_stats import detectable_difference, paired_interval
from pipeline.report import arm_order, main as report_main, summarize, write_report
from pipeline.report_figures import curves_figure, delta_figure
from pipeline.report_runs import read_runs
from pipeline.run_dir import RunLock


def write_result(root, squeeze, seed, top1, top5, epochs=2, name="x", recipe=None, **resolved):
    run_dir = root / f"resnet18-{squeeze}-{name}-s{seed}"
    run_dir.mkdir(parents=True)
    config = {"model.arch": "resnet18", "model.squeeze": squeeze, "training.seed": seed, "training.epochs": epochs,
              "logging.run_dir": str(run_dir), "model.se_kernel": "auto"}
    if recipe:  # every setting, as train.py records them
        config = resolve(REPO / "recipes" / recipe, {}) | config
    (run_dir / "result.json").write_text(json.dumps({
        "arch": "resnet18", "squeeze": squeeze, "seed": seed, "epochs": epochs, "finished_epochs": epochs,
        "top1": top1, "top5": top5, "parameters": 11_000_000, "train_images_per_s": 1000.0 + seed,
        "config": config, **resolved}))
    (run_dir / "log.jsonl").write_text("".join(json.dumps({"epoch": e + 1, "val_top1": top1 - 5 * (1 - e)}) + "\n"
                                               for e in range(epochs)))


def test_report_statistics_match_a_hand_computation(tmp_path):
    for seed, (base, gap) in enumerate([(70.0, 71.0), (71.0, 71.5), (72.0, 73.5)]):
        write_result(tmp_path, "baseline", seed, base, 90.0)
        write_result(tmp_path, "gap", seed, gap, 91.0)
    (tmp_path / "ablation.json").write_text(json.dumps({"squeezes": ["baseline", "gap", "gmp"], "failed": []}))
    text = write_report(tmp_path).text
    # by hand: differences 1.0, 0.5, 1.5 -> mean 1.0, sd 0.5; t(0.975, df=2) = 4.302653
    half = 4.302653 * 0.5 / math.sqrt(3)
    assert paired_interval([1.0, 0.5, 1.5]) == pytest.approx((1.0 - half, 1.0 + half), abs=1e-5)
    assert "| baseline | 71.00 ± 1.00 | 90.00 ± 0.00 | +0.00 [+0.00, +0.00] | 3 |" in text
    assert f"| gap | 72.00 ± 1.32 | 91.00 ± 0.00 | +1.00 [{1 - half:+.2f}, {1 + half:+.2f}] | 3 |" in text
    assert "| gmp | missing | missing | missing | 0 |" in text  # asked for, never ran
    rows = (tmp_path / "report.csv").read_text().splitlines()
    assert rows[0].startswith("squeeze,seeds,top1_mean") and rows[2].startswith("gap,0 1 2,72.0,")
    for name in ("top1.png", "curves.png"):
        with Image.open(tmp_path / name) as image:
            image.verify()
        assert Image.open(tmp_path / name).size[0] > 300


def test_plots_show_their_whole_title_and_a_run_of_one_epoch(tmp_path):
    """Two arms' bar chart cut its title at the image's edges; a one-epoch run's curve was an invisible line of one
    point, over ticks at epochs 0.96, 0.98, ..."""
    root = tmp_path / "ablate-rn18_16ep"
    for squeeze in ("baseline", "gap"):
        write_result(root, squeeze, 0, 60.0, 80.0, epochs=1)
    write_report(root)
    with Image.open(root / "top1.png") as image:
        pixels = np.asarray(image.convert("L"))
    title_band = pixels[: pixels.shape[0] // 6]
    assert title_band.min() < 100  # the title is there ...
    assert title_band[:, :3].min() > 200 and title_band[:, -3:].min() > 200  # ... and ends inside the image
    figure = curves_figure(read_runs(root)[0], "resnet18", arm_order(["gap", "baseline"]))
    figure.canvas.draw()
    axis = figure.axes[0]
    low, high = axis.get_xlim()
    assert [tick for tick in axis.get_xticks() if low <= tick <= high] == [1.0]
    assert [line.get_marker() for line in axis.lines] == ["o", "o"]


def test_damaged_run_files_are_notes_not_a_traceback(tmp_path):
    """A log damaged after the run (the trainer writes it whole) stopped the report with json's traceback; a
    damaged result.json left its run out without a word."""
    for seed in (0, 1):
        write_result(tmp_path, "gap", seed, 70.0, 90.0)
    with open(tmp_path / "resnet18-gap-x-s0" / "log.jsonl", "a") as log:
        log.write('{"epoch": 3, "val_to')
    (tmp_path / "resnet18-gap-x-s1" / "result.json").write_text("{bad")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib's of a legend with no curve in it included
        text = write_report(tmp_path).text
    assert "| gap | 70.00 | 90.00 | no baseline | 1 |" in text
    assert text.splitlines()[-2:] == [
        f"Note: {tmp_path}/resnet18-gap-x-s0/log.jsonl is unreadable (line 3: Unterminated string starting at: "
        "line 1 column 14 (char 13)): the run has no curve",
        f"Note: left out {tmp_path}/resnet18-gap-x-s1: its result.json is unreadable"]
    assert (tmp_path / "curves.png").is_file()


@pytest.mark.parametrize("content, problem", [
    ("{}", "has no 'arch' (a string)"),
    ("[]", "is unreadable"),  # not a JSON object
    ('{"arch": "resnet18", "squeeze": "gap", "seed": 1, "epochs": 2, "finished_epochs": 2, "top1": NaN}',
     "has no 'top1' (a finite number)"),
    ('{"arch": "resnet18", "squeeze": "gap", "seed": 1, "epochs": 2, "finished_epochs": 2, "top1": 70, "top5": 90,'
     ' "parameters": 10, "train_images_per_s": 5, "config": "x"}', "has no 'config' (an object)"),
])
def test_a_result_json_that_parses_but_is_no_runs_result_is_a_note(tmp_path, content, problem):
    """Valid JSON without what the report reads (another tool's file, a hand edit) was a KeyError, an
    AttributeError or matplotlib's TypeError traceback, also at the end of an ablation."""
    write_result(tmp_path, "gap", 0, 70.0, 90.0)
    write_result(tmp_path, "gap", 1, 71.0, 91.0)
    (tmp_path / "resnet18-gap-x-s1" / "result.json").write_text(content)
    text = write_report(tmp_path).text
    assert "| gap | 70.00 | 90.00 | no baseline | 1 |" in text
    assert text.splitlines()[-1] == f"Note: left out {tmp_path}/resnet18-gap-x-s1: its result.json {problem}"


def test_report_pairs_only_common_seeds_and_marks_failures(tmp_path):
    write_result(tmp_path, "baseline", 0, 60.0, 80.0)
    write_result(tmp_path, "baseline", 1, 62.0, 80.0)
    write_result(tmp_path, "std", 1, 63.0, 81.0)
    (tmp_path / "ablation.json").write_text(json.dumps({"squeezes": ["baseline", "std"],
                                                        "failed": [{"squeeze": "std", "seed": 0}]}))
    text = write_report(tmp_path).text
    assert "| std | 63.00 | 81.00 | +1.00 | 1 (1 failed) |" in text  # one pair: no interval


def test_each_difference_has_a_paired_p_value_holm_adjusted_over_the_arms_compared(tmp_path):
    """Seven arms each with a 95 % interval: one excludes 0 by chance in up to 30 % of ablations where no squeeze
    matters, and the table said nothing of it."""
    base = [70.0, 71.0, 72.0, 73.0]
    arms = {"gap": [1.0, 1.2, 0.9, 1.1], "gmp": [0.5, -0.3, 0.2, 0.1], "std": [-0.2, -0.1, -0.45, -0.25]}
    for seed, top1 in enumerate(base):
        write_result(tmp_path, "baseline", seed, top1, 90.0)
        for name, deltas in arms.items():
            write_result(tmp_path, name, seed, top1 + deltas[seed], 90.0)
    text = write_report(tmp_path).text
    raw = {name: stats.ttest_rel([b + d for b, d in zip(base, deltas)], base).pvalue for name, deltas in arms.items()}
    ordered = sorted(raw, key=raw.get)  # Holm by hand: m * p1, then max of that and (m - 1) * p2, ...
    holm = {ordered[0]: 3 * raw[ordered[0]]}
    holm[ordered[1]] = max(holm[ordered[0]], 2 * raw[ordered[1]])
    holm[ordered[2]] = min(1.0, max(holm[ordered[1]], raw[ordered[2]]))
    assert holm["gap"] < 0.05 < holm["std"] and raw["std"] < 0.05 < holm["gmp"]  # std: its interval alone excludes 0
    rows = [row.split(",") for row in (tmp_path / "report.csv").read_text().splitlines()]
    column = {name: index for index, name in enumerate(rows[0])}
    for row in rows[1:]:
        if row[0] == "baseline":
            assert row[column["delta_p"]] == row[column["delta_p_holm"]] == ""  # compared to itself: not a test
            continue
        assert float(row[column["delta_p"]]) == pytest.approx(raw[row[0]], rel=1e-9), row[0]
        assert float(row[column["delta_p_holm"]]) == pytest.approx(holm[row[0]], rel=1e-9), row[0]
    cells = {line.split(" | ")[0].lstrip("| "): line.split(" | ")[3] for line in text.splitlines()
             if line.startswith("| ") and "Squeeze" not in line}
    assert cells["gap"].endswith("]*") and not cells["gmp"].endswith("*")
    assert cells["std"].endswith("]") and paired_interval(arms["std"])[1] < 0  # excludes 0, is not starred
    assert "*: not chance at the 5% level over the whole table (paired t-test, p Holm-adjusted over the 3 arms" in text
    summary = summarize(read_runs(tmp_path)[0], {})
    figure = delta_figure(summary, "resnet18", "baseline")  # what delta.png shows
    axis = figure.axes[0]
    assert [label.get_text() for label in axis.get_yticklabels()] == ["gap*", "gmp", "std"]  # the table's order
    centers = [line.get_xdata()[0] for line in axis.lines if line.get_marker() == "o"]
    assert centers == pytest.approx([np.mean(arms[name]) for name in ("gap", "gmp", "std")])
    with Image.open(tmp_path / "delta.png") as image:
        image.verify()


def test_differences_to_another_arm_with_versus(tmp_path, capsys):
    """"Does the squeeze matter?" is a difference to gap (SENet's squeeze), not to the network without SE; the
    table could only compare with baseline."""
    base, gap, gmp = [70.0, 71.0, 72.0], [71.0, 71.5, 73.5], [71.5, 72.5, 73.5]
    for seed in range(3):
        for name, top1 in (("baseline", base), ("gap", gap), ("gmp", gmp)):
            write_result(tmp_path, name, seed, top1[seed], 90.0)
    assert report_main([str(tmp_path), "--versus", "gap"]) == 0
    text = capsys.readouterr().out
    low, high = paired_interval([0.5, 1.0, 0.0])  # gmp - gap, seed by seed
    assert "| Top-1 vs gap %p (95% CI) |" in text and "Improved Top-1" not in text
    assert f"| gmp | 72.50 ± 1.00 | 90.00 ± 0.00 | +0.50 [{low:+.2f}, {high:+.2f}] | 3 |" in text
    assert "| gap | 72.00 ± 1.32 | 90.00 ± 0.00 | +0.00 [+0.00, +0.00] | 3 |" in text
    assert "| baseline | 71.00 ± 1.00 | 90.00 ± 0.00 | -1.00 [" in text
    assert "Top-1 vs gap: mean of the per-seed differences to gap" in text and "2 arms compared to gap" in text
    rows = [row.split(",") for row in (tmp_path / "report.csv").read_text().splitlines()]
    assert {row[rows[0].index("reference")] for row in rows[1:]} == {"gap"}
    assert [row[rows[0].index("delta_p")] == "" for row in rows[1:]] == [False, True, False]  # gap: not a test
    assert report_main([str(tmp_path), "--versus", "fca"]) == 2
    assert capsys.readouterr().err == (f"report.py: error: --versus fca: {tmp_path} holds no run of that arm; choose "
                                       "one of baseline, gap, gmp\n")


def test_the_legend_states_the_difference_the_seeds_could_have_found(tmp_path):
    """A null result says nothing without the difference its seeds could have found."""
    for seed, (base, gap) in enumerate([(70.0, 71.0), (71.0, 71.5), (72.0, 73.5)]):
        write_result(tmp_path, "baseline", seed, base, 90.0)
        write_result(tmp_path, "gap", seed, gap, 91.0)
    expected = detectable_difference(0.5, 3)  # differences 1.0, 0.5, 1.5: sd 0.5
    assert (f"Detectable: with 3 seeds, differences spreading by 0.50 %p (sd pooled over the arms), a true difference "
            f"of {expected:.2f} %p is found 80% of the time at the 5% level ({expected:.2f} %p for a *, Bonferroni "
            "over 1 arm)") in write_report(tmp_path).text


def test_a_difference_over_fewer_seeds_than_the_arms_says_how_many_pairs(tmp_path):
    """Baseline's seed 0 failed: gap's difference and its interval were over seeds 1 and 2 alone, beside a Seeds
    column of 3 and a top-1 over all three, with nothing to say so."""
    for seed, (base, gap) in enumerate([(None, 75.0), (71.0, 71.5), (72.0, 73.5)]):
        if base is not None:
            write_result(tmp_path, "baseline", seed, base, 90.0)
        write_result(tmp_path, "gap", seed, gap, 91.0)
    (tmp_path / "ablation.json").write_text(json.dumps({"squeezes": ["baseline", "gap"], "seeds": [0, 1, 2],
                                                        "failed": [{"squeeze": "baseline", "seed": 0}]}))
    text = write_report(tmp_path).text
    low, high = paired_interval([0.5, 1.5])  # seeds 1 and 2; seed 0's 75.0 has no baseline to pair with
    assert f"| gap | 73.33 ± 1.76 | 91.00 ± 0.00 | +1.00 [{low:+.2f}, {high:+.2f}] (2 pairs) | 3 |" in text
    assert "| baseline | 71.50 ± 0.71 | 90.00 ± 0.00 | +0.00 [+0.00, +0.00] | 2 (1 failed) |" in text
    assert "(N pairs): the difference is over the seeds that baseline finished too" in text
    rows = [row.split(",") for row in (tmp_path / "report.csv").read_text().splitlines()]
    assert [row[rows[0].index("delta_seeds")] for row in rows[1:]] == ["1 2", "1 2"]
    assert [row[rows[0].index("seeds")] for row in rows[1:]] == ["1 2", "0 1 2"]


def test_report_names_the_seeds_asked_for_that_have_not_finished(tmp_path):
    """report.py during an ablation, or after one was stopped: a seed asked for without a result yet was only
    one less in the Seeds column, as if it had never been asked for."""
    for seed in range(3):
        write_result(tmp_path, "baseline", seed, 60.0 + seed, 80.0)
    write_result(tmp_path, "gap", 0, 61.0, 81.0)
    (tmp_path / "resnet18-gap-x-s2").mkdir()  # running: its first epoch not done
    # gap seed 0 failed once and finished since (run by another command): it is finished
    (tmp_path / "ablation.json").write_text(json.dumps({"squeezes": ["baseline", "gap", "gmp"], "seeds": [0, 1, 2],
                                                        "failed": [{"squeeze": "gap", "seed": 1},
                                                                   {"squeeze": "gap", "seed": 0}]}))
    for squeeze, seed, epochs in (("gap", 2, 2), ("gmp", 0, 2), ("gmp", 1, 5)):  # started; gmp s1: other settings
        run_dir = tmp_path / f"resnet18-{squeeze}-x-s{seed}"
        run_dir.mkdir(exist_ok=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump({"model": {"arch": "resnet18", "squeeze": squeeze},
                                                             "training": {"seed": seed, "epochs": epochs}}))
        (run_dir / "log.jsonl").write_text(json.dumps({"epoch": 1, "val_top1": 50.0}) + "\n")
    with RunLock(tmp_path / "resnet18-gap-x-s2"):  # a process trains in it now
        text = write_report(tmp_path).text
    assert ("Started: gap s2 (1 of 2 epochs, training now), gmp s0 (1 of 2 epochs, stopped).") in text
    assert "| baseline | 61.00 ± 1.00 | 80.00 ± 0.00 | +0.00 [+0.00, +0.00] | 3 |" in text
    assert "| gap | 61.00 | 81.00 | +1.00 | 1 (1 failed, 1 not finished) |" in text
    assert "| gmp | missing | missing | missing | 0 (3 not finished) |" in text
    assert "Not finished: asked for (ablation.json) without a result yet" in text
    rows = [row.split(",") for row in (tmp_path / "report.csv").read_text().splitlines()]
    unfinished = rows[0].index("unfinished_seeds")
    assert [row[unfinished] for row in rows[1:]] == ["", "2", "0 1 2"]
    assert rows[2][rows[0].index("failed_seeds")] == "1"


def test_report_keeps_runs_of_other_settings_apart_and_counts_a_copy_once(tmp_path):
    """train.py's default runs/ holds every recipe: a 16- and an 88-epoch run of seed 0 were pooled as two seeds
    (and baseline's difference to itself was -2.00); so were runs of one recipe on 8 and on 4 GPUs."""
    for epochs, base, gap, name in [(16, 67.0, 68.0, "rn18_16ep"), (88, 71.0, 72.5, "rn18_88ep")]:
        write_result(tmp_path, "baseline", 0, base, 90.0, epochs, name, global_batch=1024)
        write_result(tmp_path, "gap", 0, gap, 90.0, epochs, name, global_batch=1024)
    write_result(tmp_path, "gap", 0, 68.0, 90.0, 16, "copy", global_batch=1024)  # the same run, another folder
    write_result(tmp_path, "gap", 0, 60.0, 90.0, 16, "half", global_batch=512)
    report = write_report(tmp_path)
    tables = report.text.split("### ")[1:]
    assert [table.splitlines()[0] for table in tables] == [
        f"resnet18 ({tmp_path.name}): global_batch=1024, training.epochs=16",
        f"resnet18 ({tmp_path.name}): global_batch=1024, training.epochs=88",
        f"resnet18 ({tmp_path.name}): global_batch=512, training.epochs=16"]
    for table, base, gap in [(tables[0], "67.00", "68.00 | 90.00 | +1.00"),
                             (tables[1], "71.00", "72.50 | 90.00 | +1.50")]:
        assert f"| baseline | {base} | 90.00 | +0.00 | 1 |" in table and f"| gap | {gap} | 1 |" in table
    assert "| gap | 60.00 | 90.00 | no baseline | 1 |" in tables[2]
    assert f"Note: left out {tmp_path / 'resnet18-gap-rn18_16ep-s0'}: the same settings, squeeze and seed as " \
           f"{tmp_path / 'resnet18-gap-copy-s0'}" in report.text
    rows = (tmp_path / "report.csv").read_text().splitlines()
    assert len(rows) == 6 and rows[0].endswith(",arch,experiment")
    assert rows[3] == ('baseline,0,71.0,,90.0,,0.0,,,0,,,baseline,11000000,1000.0,,,resnet18,'
                       '"global_batch=1024, training.epochs=88"')
    assert [path.name for path in report.files[2:]] == [f"{kind}_{n}.png" for n in (1, 2, 3) for kind in (
        "top1", "curves", "delta") if not (n == 3 and kind == "delta")]  # the third has no baseline to pair with


def test_tables_of_runs_on_other_betons_are_titled_by_what_the_betons_hold(tmp_path):
    """Runs on ImageNet-100 (write_imagenet.py --classes 100) beside runs on ImageNet: the title was Python's repr
    of a dict."""
    for name, (train, val) in {"in100": (126_689, 5_000), "in1k": (1_281_167, 50_000)}.items():
        data = {"data.train_dataset": f"{train} images written 2026-11-29T10:00:00", "data.val_dataset":
                f"{val} images written 2026-11-29T10:05:00"}
        write_result(tmp_path, "gap", 0, 70.0, 90.0, name=name, data=data)
    titles = [table.splitlines()[0] for table in write_report(tmp_path).text.split("### ")[1:]]
    assert titles == [f"resnet18 ({tmp_path.name}): data: train {train} images written 2026-11-29T10:00:00; val "
                      f"{val} images written 2026-11-29T10:05:00" for train, val in ((126_689, 5_000),
                                                                                      (1_281_167, 50_000))]


def test_a_table_whose_runs_other_code_trained_says_which(tmp_path):
    """An ablation continued after a `git pull` (or an edit) paired arms trained by other code without a word."""
    old, new = "aaaaaaaaaaaa", "bbbbbbbbbbbb+0123abcd"
    for seed, codes in enumerate([([old], [old]), ([old, new], [new])]):
        write_result(tmp_path, "baseline", seed, 70.0, 90.0, code=codes[0])
        write_result(tmp_path, "gap", seed, 71.0, 90.0, code=codes[1])
    text = write_report(tmp_path).text
    assert (f"Code: these runs were trained by 3 versions of the code ({old}: baseline s0, gap s0 (2 runs); {old} "
            f"then {new}: baseline s1 (1 run); {new}: gap s1 (1 run); +digest: uncommitted changes") in text
    assert "| gap | 71.00 ± 0.00 |" in text  # one table still: the code is not a setting
    for seed in (2, 3):  # one version, and runs that recorded none (trained before it was recorded): no note
        write_result(tmp_path / "one", "baseline", seed, 70.0, 90.0, code=[old])
        write_result(tmp_path / "one", "gap", seed, 71.0, 90.0, **({"code": [old]} if seed == 2 else {}))
    assert "Code:" not in write_report(tmp_path / "one").text


def test_a_table_states_the_settings_its_runs_trained_with(tmp_path):
    """report.md read alone did not say what the runs were: epochs, resolution, batch, precision, lr, recipe."""
    for squeeze in ("baseline", "gap"):
        write_result(tmp_path, squeeze, 0, 70.0, 90.0, epochs=16, recipe="rn18_16ep.yaml", global_batch=1024,
                     precision="bf16")
    write_result(tmp_path / "one", "gap", 0, 70.0, 90.0, epochs=1, recipe="demo.yaml", precision="fp32")
    assert "Settings: 1 epoch at 32 px, val 32 px; fp32; lr 0.4 per 256 images (triangular, 1 epoch of warmup);" in \
        write_report(tmp_path / "one").text
    (tmp_path / "ablation.json").write_text(json.dumps({"recipe": "recipes/rn18_16ep.yaml",
                                                        "squeezes": ["baseline", "gap"], "failed": []}))
    assert ("### resnet18 (" + tmp_path.name + ")\n\nSettings: 16 epochs at 160-192 px (epochs 11-13), val 256 px "
            "(flip test-time augmentation); global batch 1024; bf16; lr 0.125 per 256 images (triangular, 2 epochs of "
            "warmup); label smoothing 0.1; weight decay 5e-05; SE reduction 16; blurpool; recipe "
            "recipes/rn18_16ep.yaml.\n\n| Squeeze operation |") in write_report(tmp_path).text


def test_report_cli_on_an_empty_folder_is_a_clear_error(tmp_path):
    result = run_script(["pipeline/report.py", str(tmp_path)], timeout=60)
    assert result.returncode == 2 and "holds no finished run" in result.stderr


def test_report_on_a_run_directory_names_its_parent(tmp_path, capsys):
    """report.py runs/x (one run, not the folder of runs) said to train first."""
    write_result(tmp_path, "gap", 0, 70.0, 90.0)
    run_dir = tmp_path / "resnet18-gap-x-s0"
    assert report_main([str(run_dir)]) == 2
    assert capsys.readouterr().err == (f"report.py: error: {run_dir} is a run directory; give the folder that holds "
                                       f"run directories: {tmp_path}\n")
    assert report_main([str(tmp_path)]) == 0


def test_report_on_the_folder_above_runs_roots_names_them(tmp_path, capsys):
    """report.py runs after `make demo` (runs/demo/<run>/) said to train first."""
    for root in ("demo", "ablate-rn18_16ep"):
        write_result(tmp_path / root, "gap", 0, 70.0, 90.0)
    assert report_main([str(tmp_path)]) == 2
    assert capsys.readouterr().err == (f"report.py: error: {tmp_path} holds no run directory itself but folders of "
                                       f"runs: {tmp_path / 'ablate-rn18_16ep'}, {tmp_path / 'demo'}; give one of "
                                       "them, or several to pool them (with --out)\n")


def test_an_ablation_split_over_nodes_is_pooled_into_one_table(tmp_path, capsys):
    """Seeds 0-1 on one node and seed 2 on another, each into a runs root of its own (a runs root takes one
    runner): there was no way to one table of the three seeds."""
    for name, seeds, failed in (("node0", (0, 1), []), ("node1", (2,), [{"squeeze": "gap", "seed": 3}])):
        root = tmp_path / name
        for seed in seeds:
            write_result(root, "baseline", seed, 70.0 + seed, 90.0)
            write_result(root, "gap", seed, 71.0 + 2 * seed, 90.0)
        (root / "ablation.json").write_text(json.dumps({"recipe": "recipes/rn18_16ep.yaml", "arch": "resnet18",
                                                        "squeezes": ["baseline", "gap"],
                                                        "seeds": list(seeds) + ([3] if failed else []),
                                                        "failed": failed}))
    pooled = tmp_path / "pooled"
    assert report_main([str(tmp_path / "node0"), str(tmp_path / "node1"), "--out", str(pooled)]) == 0
    text = (pooled / "report.md").read_text()
    assert text.startswith("### resnet18 (node0 + node1)")
    half = stats.t.ppf(0.975, 2) * 1.0 / math.sqrt(3)  # differences 1, 2, 3: mean 2, sd 1
    assert f"| gap | 73.00 ± 2.00 | 90.00 ± 0.00 | +2.00 [{2 - half:+.2f}, {2 + half:+.2f}] | 3 (1 failed) |" in text
    assert sorted(path.name for path in pooled.iterdir()) == ["curves.png", "delta.png", "report.csv", "report.md",
                                                              "top1.png"]
    assert not (tmp_path / "node0" / "report.md").exists()  # the roots are only read
    assert report_main([str(tmp_path / "node0"), str(tmp_path / "node1")]) == 2
    assert capsys.readouterr().err == ("report.py: error: 2 runs roots are pooled into one report: say where it goes "
                                       "with --out DIR\n")
    assert report_main([str(tmp_path / "node0"), str(tmp_path / "node0" / "."), "--out", str(pooled)]) == 2
    assert "is given twice; give each runs root once" in capsys.readouterr().err
    assert report_main([str(tmp_path / "node0"), "--out", str(pooled / "report.md")]) == 2
    assert capsys.readouterr().err == f"report.py: error: --out {pooled / 'report.md'} is a file; give a folder for " \
                                      "the report\n"


def test_report_on_runs_whose_results_are_all_unreadable_names_them(tmp_path, capsys):
    """It said "no */result.json" of a folder that holds two, both damaged."""
    for name in ("resnet18-gap-x-s0", "resnet18-gmp-x-s0"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "result.json").write_text("{cut short")
    assert report_main([str(tmp_path)]) == 2
    assert capsys.readouterr().err == (f"report.py: error: {tmp_path} holds no readable finished run: left out "
                                       f"{tmp_path / 'resnet18-gap-x-s0'}: its result.json is unreadable; left out "
                                       f"{tmp_path / 'resnet18-gmp-x-s0'}: its result.json is unreadable\n")


def test_report_on_a_missing_folder_or_a_file_says_so(tmp_path, capsys):
    assert report_main([str(tmp_path / "nowhere")]) == 2
    assert f"{tmp_path / 'nowhere'} does not exist" in capsys.readouterr().err
    (tmp_path / "report.md").write_text("x")
    assert report_main([str(tmp_path / "report.md")]) == 2  # it said "does not exist"
    assert capsys.readouterr().err.startswith(f"report.py: error: {tmp_path / 'report.md'} is a file; give the folder")


def test_report_names_only_the_files_it_wrote(tmp_path):
    (tmp_path / "ablation.json").write_text(json.dumps({"squeezes": ["gap"], "failed": [{"squeeze": "gap",
                                                                                        "seed": 0}]}))
    report = write_report(tmp_path)
    assert report.files == [tmp_path / "report.md", tmp_path / "report.csv"]  # no finished run: no plots
    assert not (tmp_path / "top1.png").exists()
