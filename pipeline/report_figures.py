"""The report's figures: top-1 per arm, each arm's paired difference to the reference arm, validation curves; PNG
files written whole (matplotlib's Agg backend: files only, never a window)."""
import io
from pathlib import Path
from statistics import mean, stdev
from typing import Any, Dict, List, Sequence

import matplotlib

from pipeline.atomic import write_bytes_atomic
from pipeline.paired_stats import SIGNIFICANT, paired_interval

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
from matplotlib.ticker import MaxNLocator  # noqa: E402

# `arms`: {arm name: report.ArmSummary}, in the table's order (not imported: report imports this module)


def top1_figure(arms: Dict[str, Any], title: str):
    """Bars of each arm's mean top-1 with its sd, and a dot per seed."""
    present = [arm for arm in arms.values() if arm.top1]
    figure, axis = plt.subplots(figsize=(max(5.0, 1.1 * len(arms) + 2), 4))
    axis.bar([a.squeeze for a in present], [mean(a.top1) for a in present],
             yerr=[stdev(a.top1) if len(a.top1) > 1 else 0 for a in present], capsize=4, color="#4c72b0")
    for arm in present:
        axis.scatter([arm.squeeze] * len(arm.top1), arm.top1, color="black", s=10, zorder=3)
    low = min(min(a.top1) for a in present)
    axis.set_ylim(max(0, low - 5), min(100, max(max(a.top1) for a in present) + 3))
    axis.set_ylabel("val top-1 (%)")
    _set_title(figure, axis, f"{title}\nmean ± sd over seeds (dots: single seeds)")
    return figure


def delta_figure(arms: Dict[str, Any], title: str, reference: str):
    """Each arm's paired difference to the arm `reference` with its 95% interval and a dot per seed, against a line
    at 0: the question the ablation asks, read at a glance; a star where its Holm-adjusted p is under 5%. None
    where no arm has a run of the reference to pair with."""
    compared = [arm for arm in arms.values() if arm.squeeze != reference and arm.delta]
    if not compared:
        return None
    figure, axis = plt.subplots(figsize=(7, max(2.5, 0.45 * len(compared) + 1.6)))
    for row, arm in enumerate(compared):
        center, interval = mean(arm.delta), paired_interval(arm.delta)
        errors = [[center - interval[0]], [interval[1] - center]] if interval else None
        axis.errorbar(center, row, xerr=errors, fmt="o", color="#4c72b0", capsize=4)
        axis.scatter(arm.delta, [row] * len(arm.delta), color="black", s=10, zorder=3)
    axis.axvline(0, color="grey", linestyle="--", linewidth=1)
    starred = [arm.squeeze + ("*" if arm.delta_p_holm is not None and arm.delta_p_holm < SIGNIFICANT else "")
               for arm in compared]
    axis.set_yticks(range(len(compared)), starred)
    axis.set_ylim(len(compared) - 0.5, -0.5)  # the table's order, top to bottom
    axis.set_xlabel(f"top-1 difference to {reference} (%p), paired by seed")
    _set_title(figure, axis, f"{title}\nmean difference, 95% interval (dots: single seeds; *: Holm p < 0.05)")
    return figure


def curves_figure(runs: List[dict], title: str, order: Sequence[str]):
    """Validation top-1 per epoch, a line per run coloured by arm (arms in `order`); a point per epoch is marked,
    so a run of one epoch (or one logged point) shows."""
    figure, axis = plt.subplots(figsize=(7, 4))
    order = list(order)
    colours = {name: plt.cm.tab10(i % 10) for i, name in enumerate(order)}
    labelled, epochs = set(), set()
    for run in sorted(runs, key=lambda r: (order.index(r["squeeze"]), r["seed"])):
        points = [(line["epoch"], line["val_top1"]) for line in run["log"] if "val_top1" in line]
        if points:
            label = None if run["squeeze"] in labelled else run["squeeze"]
            labelled.add(run["squeeze"])
            epochs.update(epoch for epoch, _ in points)
            axis.plot(*zip(*points), color=colours[run["squeeze"]], label=label, alpha=0.8, marker="o",
                      markersize=3)
    if epochs:  # epochs are whole: ticks at 0.96, 0.98, ... around a run of one
        axis.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    axis.set_xlabel("epoch")
    axis.set_ylabel("val top-1 (%)")
    if labelled:  # no run with a readable log: no legend (matplotlib warns of an empty one)
        axis.legend(fontsize=8)
    _set_title(figure, axis, f"{title}\nvalidation curves (one line per seed)")
    return figure


def _set_title(figure, axis, title: str) -> None:
    """A title wrapped to the figure's width (a long one was cut at the image's edge), then a tight layout."""
    axis.set_title(title, fontsize=10, wrap=True)
    figure.tight_layout()


def save_png(figure, path: Path) -> None:
    """Written whole or not at all, and the figure closed."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    plt.close(figure)
    write_bytes_atomic(path, buffer.getvalue())
