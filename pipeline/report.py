"""The seed-style results table from run directories, with seeds: mean ± sd, paired Δ to baseline with a 95% CI.

    python pipeline/report.py RUNS_ROOT        # writes RUNS_ROOT/report.{md,csv}, top1.png, curves.png, delta.png
    python pipeline/report.py RUNS_ROOT --versus gap    # differences to gap (SENet's squeeze), not to baseline
    python pipeline/report.py ROOT_A ROOT_B --out DIR   # several runs roots pooled (an ablation split over nodes)

Reads `*/result.json` and `*/log.jsonl` under RUNS_ROOT (and `ablation.json`, written by ablate.py, for the arms
and seeds that were asked for), so it needs no torch. The difference to baseline is paired by seed: with the
same seed both arms start from the same shared weights and train on the same images (order, crops, flips).
"""
import argparse
import csv
import io
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from statistics import mean, stdev
from typing import Any, Dict, List, Optional, Sequence, Tuple

from pipeline.atomic import write_text_atomic
from pipeline.errors import UserError, report_user_error
from pipeline.paired_stats import (POWER, SIGNIFICANT, detectable_difference, holm_adjust, paired_interval,
                                   paired_p_value)
from pipeline.provenance import run_version
from pipeline.report_figures import curves_figure, delta_figure, save_png, top1_figure
from pipeline.report_runs import (Experiment, InProgress, check_root, group_experiments, in_progress_of,
                                  merge_manifests, read_in_progress, read_manifest, read_runs)

SEED_ORDER = ["baseline", "gap", "gmp", "std", "gapXstd", "random"]  # the seed's row order; extras follow
BASELINE = "baseline"  # squeeze.BASELINE, the arm without SE (not imported: pipeline.squeeze needs torch)


@dataclass
class ArmSummary:
    squeeze: str
    seeds: List[int] = field(default_factory=list)
    top1: List[float] = field(default_factory=list)
    top5: List[float] = field(default_factory=list)
    parameters: Optional[int] = None
    images_per_s: List[float] = field(default_factory=list)
    failed_seeds: List[int] = field(default_factory=list)
    unfinished_seeds: List[int] = field(default_factory=list)  # asked for, neither finished nor failed (yet)
    delta: List[float] = field(default_factory=list)  # paired top-1 differences to baseline, %p
    delta_seeds: List[int] = field(default_factory=list)  # the seeds of `delta`: those baseline finished too
    delta_p: Optional[float] = None  # the paired t-test's p of `delta` (None: the reference itself, or < 2 pairs)
    delta_p_holm: Optional[float] = None  # that p Holm-adjusted over the arms compared


def arm_order(names: Sequence[str]) -> List[str]:
    known = [name for name in SEED_ORDER if name in names]
    return known + sorted(set(names) - set(known), key=str.lower)


def mean_sd(values: Sequence[float]) -> str:
    if not values:
        return "missing"
    return f"{mean(values):.2f} ± {stdev(values):.2f}" if len(values) > 1 else f"{values[0]:.2f}"


def summarize(runs: List[dict], manifest: dict, reference: str = BASELINE) -> Dict[str, ArmSummary]:
    """Each arm's runs, what was asked for of it (`manifest`: ablation.json) and its paired differences to the
    arm `reference` (baseline: does SE help; gap: does the squeeze matter, against SENet's)."""
    expected = manifest.get("squeezes", [])
    arms = {name: ArmSummary(name) for name in arm_order(set(expected) | {run["squeeze"] for run in runs})}
    for run in sorted(runs, key=lambda r: r["seed"]):
        arm = arms[run["squeeze"]]
        arm.seeds.append(run["seed"])
        arm.top1.append(run["top1"])
        arm.top5.append(run["top5"])
        arm.parameters = run["parameters"]
        arm.images_per_s.append(run["train_images_per_s"])
    for failure in manifest.get("failed", []):  # a seed that finished since (another command ran it) did not fail
        if failure["squeeze"] in arms and failure["seed"] not in arms[failure["squeeze"]].seeds:
            arms[failure["squeeze"]].failed_seeds.append(failure["seed"])
    for name in expected:
        arm = arms[name]
        arm.unfinished_seeds = [seed for seed in manifest.get("seeds", [])
                                if seed not in arm.seeds and seed not in arm.failed_seeds]
    compared_with = arms.get(reference)
    if compared_with:
        by_seed = dict(zip(compared_with.seeds, compared_with.top1))
        for arm in arms.values():
            arm.delta_seeds = [seed for seed in arm.seeds if seed in by_seed]
            arm.delta = [top1 - by_seed[seed] for seed, top1 in zip(arm.seeds, arm.top1) if seed in by_seed]
    p_values = {name: paired_p_value(arm.delta) for name, arm in arms.items() if name != reference}
    for name, adjusted in holm_adjust(p_values).items():  # over the arms compared (not the reference)
        arms[name].delta_p, arms[name].delta_p_holm = p_values[name], adjusted
    return arms


def detectable_text(arms: Dict[str, ArmSummary], reference: str) -> str:
    """What difference these seeds could have found (a null result says nothing without it): from the compared
    arms' differences, their sd pooled, at the fewest pairs an arm has."""
    spreads = [(len(arm.delta) - 1, stdev(arm.delta)) for name, arm in arms.items()
               if name != reference and len(arm.delta) > 1]
    if not spreads:
        return ""
    pooled = math.sqrt(sum(df * sd ** 2 for df, sd in spreads) / sum(df for df, _ in spreads))
    pairs = min(df for df, _ in spreads) + 1
    alone = detectable_difference(pooled, pairs)
    if alone is None:
        return ""
    table = detectable_difference(pooled, pairs, SIGNIFICANT / len(spreads))  # Holm's first step is Bonferroni's
    return (f" Detectable: with {pairs} seeds, differences spreading by {pooled:.2f} %p (sd pooled over the arms), "
            f"a true difference of {alone:.2f} %p is found {POWER:.0%} of the time at the 5% level ({table:.2f} %p "
            f"for a *, Bonferroni over {len(spreads)} {'arm' if len(spreads) == 1 else 'arms'}); more seeds shrink it "
            "about as 1/√seeds.")


def delta_text(arm: ArmSummary, reference: str, finished: bool) -> str:
    """The difference cell: to the arm `reference`, which has a finished run or not."""
    if not finished:
        return f"no {reference}"
    if not arm.delta:
        return "missing"
    interval = paired_interval(arm.delta)
    text = f"{mean(arm.delta):+.2f}" + (f" [{interval[0]:+.2f}, {interval[1]:+.2f}]" if interval else "")
    text += "*" if arm.delta_p_holm is not None and arm.delta_p_holm < SIGNIFICANT else ""
    # over fewer seeds than the arm's own columns (the reference's missing ones have no pair): said, as the interval is
    pairs = len(arm.delta)
    return text + (f" ({pairs} {'pair' if pairs == 1 else 'pairs'})" if pairs < len(arm.seeds) else "")


HEADER = ["Squeeze operation", "Top-1 Acc (%)", "Top-5 Acc (%)", "Improved Top-1 %p (95% CI)", "Seeds",
          "Params", "Train img/s"]


def table_rows(arms: Dict[str, ArmSummary], reference: str = BASELINE) -> List[List[str]]:
    finished = bool(arms.get(reference) and arms[reference].top1)
    rows = []
    for arm in arms.values():
        unseen = [f"{len(listed)} {what}" for listed, what in ((arm.failed_seeds, "failed"),
                                                               (arm.unfinished_seeds, "not finished")) if listed]
        seeds = str(len(arm.seeds)) + (f" ({', '.join(unseen)})" if unseen else "")
        rows.append([arm.squeeze, mean_sd(arm.top1), mean_sd(arm.top5),
                     delta_text(arm, reference, finished), seeds,
                     f"{arm.parameters:,}" if arm.parameters else "–",
                     f"{mean(arm.images_per_s):,.0f}" if arm.images_per_s else "–"])
    return rows


def settings_text(settings: Dict[str, Any], recipe: Optional[str] = None) -> str:
    """The settings every run of a table trained with, in a line, so that report.md read alone says what it
    measured ('' for runs that recorded no config)."""
    get = settings.get
    if get("resolution.max_res") is None or get("lr.lr") is None:
        return ""
    low, high, start, end = (get(f"resolution.{key}") for key in ("min_res", "max_res", "start_ramp", "end_ramp"))
    pixels = f"{high} px" if low == high or end <= start else f"{low}-{high} px (epochs {start}-{end})"
    steps = f", x{get('lr.gamma'):g} at {', '.join(f'{m:g}' for m in get('lr.milestones') or [])}" \
        if get("lr.schedule") == "step" else ""

    def epochs(count) -> str:
        return f"{count:g} epoch{'' if count == 1 else 's'}"
    parts = [f"{epochs(get('training.epochs'))} at {pixels}, val {get('resolution.val_res')} px"
             + (" (flip test-time augmentation)" if get("validation.flip_tta") else ""),
             f"global batch {get('global_batch')}" if get("global_batch") else None,
             get("precision"),
             f"lr {get('lr.lr'):g} per 256 images ({get('lr.schedule')}, {epochs(get('lr.warmup_epochs'))} of "
             f"warmup{steps})",
             f"label smoothing {get('training.label_smoothing'):g}", f"weight decay {get('training.weight_decay'):g}",
             f"SE reduction {get('model.reduction')}", "blurpool" if get("model.blurpool") else None,
             f"recipe {recipe}" if recipe else None]
    return "Settings: " + "; ".join(part for part in parts if part) + "."


def markdown(arms: Dict[str, ArmSummary], title: str, reference: str = BASELINE, settings: str = "",
             in_progress: Sequence[InProgress] = ()) -> str:
    """The table of one experiment (under the settings its runs share), and a legend that explains its cells
    (with how far its unfinished runs got: `in_progress`)."""
    versus = HEADER[3] if reference == BASELINE else f"Top-1 vs {reference} %p (95% CI)"  # the seed's name, or
    header = HEADER[:3] + [versus] + HEADER[4:]
    lines = [f"### {title}", "", *([settings, ""] if settings else []), "| " + " | ".join(header) + " |",
             "|" + " ---------- |" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(arms, reference)]
    note = (f"Top-1/Top-5: mean ± sd over seeds. {header[3].split(' %p')[0]}: mean of the per-seed differences to "
            f"{reference} (same seed = same shared init and training images), with a 95% Student-t confidence "
            "interval.")
    compared = [arm for arm in arms.values() if arm.delta_p_holm is not None]
    if compared:
        note += (f" *: not chance at the 5% level over the whole table (paired t-test, p Holm-adjusted over the "
                 f"{len(compared)} {'arm' if len(compared) == 1 else 'arms'} compared to {reference}; an interval "
                 "alone is at 95% for its arm).")
    note += detectable_text(arms, reference)
    if any(arm.delta and len(arm.delta) < len(arm.seeds) for arm in arms.values()):
        note += (f" (N pairs): the difference is over the seeds that {reference} finished too, fewer than the arm's "
                 "own.")
    if any(arm.unfinished_seeds for arm in arms.values()):
        note += (" Not finished: asked for (ablation.json) without a result yet: still running, or stopped (the "
                 "same ablate.py command continues it).")
        if in_progress:
            note += f" Started: {', '.join(run.describe() for run in in_progress)}."
    return "\n".join(lines + ["", note, ""])


CSV_HEADER = ["squeeze", "seeds", "top1_mean", "top1_sd", "top5_mean", "top5_sd", "delta_top1_mean", "delta_ci_low",
              "delta_ci_high", "delta_seeds", "delta_p", "delta_p_holm", "reference", "parameters",
              "train_images_per_s", "failed_seeds", "unfinished_seeds", "arch", "experiment"]


def code_note(runs: List[dict]) -> str:
    """A paragraph under a table whose runs were trained by several versions of the code (provenance.py), each
    with its runs; '' when one version trained them all (runs that recorded none are not counted)."""
    versions: Dict[str, List[str]] = {}
    for run in runs:
        version = run_version(run)
        if version is not None:
            versions.setdefault(version, []).append(f"{run['squeeze']} s{run['seed']}")
    if len(versions) < 2:
        return ""
    listed = "; ".join(f"{version}: {', '.join(names[:4])}{', …' if len(names) > 4 else ''} ({len(names)} run"
                       f"{'' if len(names) == 1 else 's'})"
                       for version, names in sorted(versions.items(), key=lambda item: -len(item[1])))
    return (f"\nCode: these runs were trained by {len(versions)} versions of the code ({listed}; +digest: uncommitted "
            "changes, 'then': a run resumed by other code). A change between them that moves results reads as a "
            "difference between arms: to compare them, train every arm with one version (another --runs-root).\n")


def csv_text(tables: List[Tuple[Experiment, Dict[str, ArmSummary]]], reference: str = BASELINE) -> str:
    """One CSV for every table: a row per arm, the arm its delta_* columns compare with, its experiment in the
    last two columns."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_HEADER)
    for experiment, arms in tables:
        for arm in arms.values():
            interval = paired_interval(arm.delta) or ("", "")
            writer.writerow([arm.squeeze, " ".join(map(str, arm.seeds)),
                             _number(mean, arm.top1), _number(stdev, arm.top1, 2), _number(mean, arm.top5),
                             _number(stdev, arm.top5, 2), _number(mean, arm.delta), *interval,
                             " ".join(map(str, arm.delta_seeds)), _blank(arm.delta_p), _blank(arm.delta_p_holm),
                             reference, arm.parameters or "",
                             _number(mean, arm.images_per_s), " ".join(map(str, arm.failed_seeds)),
                             " ".join(map(str, arm.unfinished_seeds)),
                             experiment.arch, experiment.label])
    return buffer.getvalue()


def _number(function, values, minimum: int = 1):
    return function(values) if len(values) >= minimum else ""


def _blank(value: Optional[float]):
    return "" if value is None else value


@dataclass(frozen=True)
class Report:
    text: str  # the markdown tables
    files: List[Path]  # what was written


def write_report(roots, reference: str = BASELINE, out: Optional[Path] = None) -> Report:
    """Write report.md, report.csv and, where runs finished, top1.png, curves.png and (with a run of `reference`
    to pair with) delta.png under `out` (default: the runs root). `roots` is a runs root or several, whose runs
    are pooled (runs of other settings get tables of their own, as in one root)."""
    roots = [roots] if isinstance(roots, Path) else list(roots)
    for root in roots:
        if not root.is_dir():
            raise UserError(f"{root} {'is a file' if root.exists() else 'does not exist'}; give the folder that "
                            "holds the run directories (ablate.py's --runs-root, e.g. runs/ablate-demo)")
    given_twice = next((root for index, root in enumerate(roots) if root.resolve() in
                        [other.resolve() for other in roots[:index]]), None)
    if given_twice is not None:
        raise UserError(f"{given_twice} is given twice; give each runs root once")
    if len(roots) > 1 and out is None:
        raise UserError(f"{len(roots)} runs roots are pooled into one report: say where it goes with --out DIR")
    runs, unreadable, manifests = [], [], []
    started: List[InProgress] = []
    for root in roots:
        found, notes = read_runs(root)
        manifests.append(read_manifest(root))
        check_root(root, found, manifests[-1], notes)
        started += read_in_progress(root, {run["run_dir"] for run in found})
        runs, unreadable = runs + found, unreadable + notes
    manifest = merge_manifests(manifests)
    out = out or roots[0]
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder for the report")
    out.mkdir(parents=True, exist_ok=True)
    arms_here = set(manifest.get("squeezes", [])) | {run["squeeze"] for run in runs}
    if reference != BASELINE and reference not in arms_here:  # (a table without baseline says so in its cells)
        raise UserError(f"--versus {reference}: {' and '.join(map(str, roots))} holds no run of that arm; choose one "
                        f"of {', '.join(arm_order(arms_here))}")
    experiments, copies = group_experiments(runs)
    if not experiments:  # asked for, nothing finished: the table of missing arms
        experiments = [Experiment(manifest.get("arch", "runs"), {})]
    sections, tables, files = [], [], [out / "report.md", out / "report.csv"]
    source = " + ".join(root.name for root in roots)
    for number, experiment in enumerate(experiments, 1):
        arms = summarize(experiment.runs, manifest, reference)
        title = f"{experiment.arch} ({source})" + (f": {experiment.label}" if experiment.label else "")
        unfinished = [(name, seed) for name, arm in arms.items() for seed in arm.unfinished_seeds]
        sections.append(markdown(arms, title, reference, settings_text(experiment.settings, manifest.get("recipe")),
                                 in_progress_of(experiment, started, unfinished)) + code_note(experiment.runs))
        tables.append((experiment, arms))
        if experiment.runs:
            suffix = "" if len(experiments) == 1 else f"_{number}"
            files += [out / f"top1{suffix}.png", out / f"curves{suffix}.png"]
            save_png(top1_figure(arms, title), files[-2])
            save_png(curves_figure(experiment.runs, title, arm_order({run["squeeze"] for run in experiment.runs})),
                     files[-1])
            differences = delta_figure(arms, title, reference)
            if differences is not None:
                files.append(out / f"delta{suffix}.png")
                save_png(differences, files[-1])
    text = "\n".join(sections + [f"Note: {note}" for note in unreadable + copies])
    write_text_atomic(out / "report.md", text)
    write_text_atomic(out / "report.csv", csv_text(tables, reference))
    return Report(text, files)


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs_roots", type=Path, nargs="+", metavar="runs_root",
                        help="folder whose subfolders are run directories; several are pooled (with --out)")
    parser.add_argument("--out", type=Path, help="where the report goes (default: the runs root)")
    parser.add_argument("--versus", default=BASELINE, help="the arm every difference is to (default baseline: "
                        "does SE help; gap: does the squeeze matter, against SENet's own)")
    args = parser.parse_args(argv)
    try:
        report = write_report(args.runs_roots, args.versus, args.out)
    except UserError as error:
        return report_user_error("report.py", error)
    print(report.text)
    print(f"written: {', '.join(str(path) for path in report.files)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
