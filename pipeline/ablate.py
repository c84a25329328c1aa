"""Run every squeeze arm for every seed, scheduled over the GPUs, then print the seed-style report.

    python pipeline/ablate.py --cfg recipes/rn18_16ep.yaml --squeeze all --seeds 3 --gpus 0,1,2,3,4,5,6,7
    python pipeline/ablate.py --cfg recipes/rn50_88ep.yaml --squeeze baseline,gap,gmp --gpus-per-run all

Each run is `pipeline/train.py` in its own process (torchrun when it spans several GPUs), in
RUNS_ROOT/<arch>-<squeeze>-<recipe>-s<seed>/. Finished runs are skipped, interrupted ones resume from their
checkpoint, a failed run is retried once (not one that exits with a user error) and then reported as failed.
`--gpus` numbers the GPUs as torch does in this process, after any CUDA_VISIBLE_DEVICES (SLURM sets it to the
job's GPUs). Extra `--section.key=value` settings go to every run.
"""
import argparse
import collections
import dataclasses
import functools
import heapq
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from pipeline.gc_freeze import imports_frozen

with imports_frozen(as_a_script=__name__ == "__main__"):  # seconds of its start and exit (gc_freeze.py)
    from pipeline.ablation_inputs import check_same_data, freeze_settings
    from pipeline.atomic import write_text_atomic
    from pipeline.clock import clock_time
    from pipeline.config import MAX_SEED, ConfigError, parse_overrides, resolve
    from pipeline.cores import core_ranges, quota_cores, share_cores
    from pipeline.errors import USAGE_EXIT, UserError, report_user_error
    from pipeline.processes import die_with_parent, wait_for_an_exit
    from pipeline.provenance import code_version, finished_by_other_code_note
    from pipeline.report import write_report
    from pipeline.report_runs import MANIFEST_NAME
    from pipeline.resume import make_run_dir
    from pipeline.run_data import check_data, data_identities
    from pipeline.run_dir import TRAIN_LOG_NAME, RunDirError, RunLock, is_finished, read_result, run_name
    from pipeline.run_room import check_ablation_room
    from pipeline.squeeze import check_squeeze_name, squeeze_names
    from pipeline.termination import report_stop, sigterm_as_ctrl_c

TRAIN_SCRIPT = Path(__file__).resolve().parent / "train.py"
RETRIES = 1
# settings the runner gives each run, and the option that sets them: as a shared --section.key=value they came
# after the runner's own and won (every seed trained --training.seed=5; every arm in one --logging.run_dir)
PER_RUN_KEYS = {"model.squeeze": "--squeeze", "training.seed": "--seeds and --first-seed",
                "logging.run_dir": "--runs-root", "logging.runs_root": "--runs-root"}


@dataclass(frozen=True)
class Job:
    squeeze: str
    seed: int
    run_dir: Path


@dataclass(frozen=True)
class Slot:
    """The GPUs one run gets, as its CUDA_VISIBLE_DEVICES entries (empty: the CPU), and the CPU cores it may run
    on (empty: this process's)."""
    devices: Tuple[str, ...] = ()
    cores: Tuple[int, ...] = ()

    @property
    def name(self) -> str:
        """'0,1' for its GPUs, 'cpu' without any."""
        return ",".join(self.devices) or "cpu"

    def describe(self) -> str:
        return self.name + (f" (cores {core_ranges(self.cores)})" if self.cores else "")


def plan_jobs(squeezes: Sequence[str], seeds: Sequence[int], root: Path, arch: str, recipe: str) -> List[Job]:
    """Seed-major order: every arm of seed 0 first, so a partial ablation already holds complete pairs."""
    return [Job(squeeze, seed, root / run_name(arch, squeeze, recipe, seed)) for seed in seeds for squeeze in squeezes]


def make_slots(gpus: Sequence[str], gpus_per_run: Optional[int]) -> List[Slot]:
    """One slot per group of `gpus_per_run` GPUs (None: all in one group); no GPUs: one CPU slot."""
    if not gpus:
        if gpus_per_run not in (None, 1):
            raise ConfigError(f"--gpus-per-run {gpus_per_run} asks for GPUs, but the runs have none (this process "
                              "sees no GPU, or --gpus none): they would train on the CPU; drop --gpus-per-run to "
                              "train there")
        return [Slot()]
    size = len(gpus) if gpus_per_run is None else gpus_per_run
    if size < 1 or len(gpus) % size:
        raise ConfigError(f"--gpus-per-run {size} does not divide the {len(gpus)} GPUs in --gpus")
    return [Slot(tuple(gpus[start:start + size])) for start in range(0, len(gpus), size)]


def pin_cores(slots: List[Slot]) -> List[Slot]:
    """Runs side by side get disjoint blocks of the cores (share_cores), so that each one's loader threads
    (its share of its affinity) add up to the node's cores, or to a cgroup quota's CPUs, instead of eight times
    them."""
    if len(slots) < 2:
        return slots
    blocks = share_cores(len(slots), allowed=quota_cores())
    return [dataclasses.replace(slot, cores=cores) for slot, cores in zip(slots, blocks)]


def enter_slot(cores: Tuple[int, ...]) -> None:
    """In a run's process before it starts: die with the runner, and run on the slot's cores."""
    die_with_parent()
    if cores:
        os.sched_setaffinity(0, cores)


def job_settings(job: Job, cfg: Path, overrides: List[str]) -> List[str]:
    """train.py's settings for one run: the recipe, the shared overrides, and the job's arm, seed and folder."""
    return ["--cfg", str(cfg), "--squeeze", job.squeeze, f"--training.seed={job.seed}",
            f"--logging.run_dir={job.run_dir}", *overrides]


def command_for(job: Job, slot: Slot, cfg: Path, overrides: List[str]) -> Tuple[List[str], Dict[str, str]]:
    settings = job_settings(job, cfg, overrides)
    env = dict(os.environ)
    if slot.devices:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(slot.devices)
    if len(slot.devices) > 1:  # --standalone picks a free rendezvous port, so groups never collide
        return [sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc_per_node={len(slot.devices)}", str(TRAIN_SCRIPT), *settings], env
    return [sys.executable, str(TRAIN_SCRIPT), *settings], env


def check_shared_settings(overrides: Dict[str, Tuple[object, str]]) -> None:
    """Refuse a shared setting that the runner sets per run."""
    for key, (_, source) in overrides.items():
        if key in PER_RUN_KEYS:
            raise ConfigError(f"{source}: ablate.py sets {key} for each run; use {PER_RUN_KEYS[key]}")


def runs_to_do(jobs: Sequence[Job], cfg: Path, overrides: List[str],
               data: Dict[str, str]) -> List[Tuple[Job, Dict[str, object]]]:
    """The jobs not finished yet (on the betons `data` identifies), each with the settings train.py resolves for
    it. A folder that holds a run with other settings, or is in use, is refused before anything starts: skipping
    it would report the old run's numbers under the new settings."""
    remedy = "pass another --runs-root for these settings, or delete that directory"
    shared, todo = parse_overrides(overrides), []
    for job in jobs:
        config = resolve(cfg, shared | {"model.squeeze": (job.squeeze, "--squeeze"),
                                        "training.seed": (job.seed, "--seeds")})
        lock = RunLock(job.run_dir)
        if job.run_dir.is_dir() and lock.is_held():
            raise RunDirError(f"{job.run_dir} is in use by {lock.holder()}; wait for it to end "
                              "(or stop it) before running this ablation")
        if not is_finished(job.run_dir, config, remedy, data):
            todo.append((job, config))
    return todo


def launch_on_the_same_data(job: Job, slot: Slot, settings: Path, config: Dict[str, object],
                            data: Dict[str, str]) -> subprocess.Popen:
    """Start one run of the ablation, once its betons are checked (check_same_data)."""
    check_same_data(config, data)
    return launch_process(job, slot, settings, [])


def launch_process(job: Job, slot: Slot, cfg: Path, overrides: List[str]) -> subprocess.Popen:
    """Start one run, which dies with this runner however it ends; output goes to RUN_DIR/train.log."""
    job.run_dir.mkdir(parents=True, exist_ok=True)
    command, env = command_for(job, slot, cfg, overrides)
    log = open(job.run_dir / TRAIN_LOG_NAME, "a")
    log.write(f"\n$ {' '.join(command)}\n")
    log.flush()
    return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            preexec_fn=functools.partial(enter_slot, slot.cores))


def run_schedule(jobs: Sequence[Job], slots: Sequence[Slot], launch: Callable[[Job, Slot], subprocess.Popen],
                 report: Callable[[str], None] = print, poll_seconds: float = 1.0,
                 took: Sequence[float] = ()) -> Dict[str, list]:
    """Keep every slot busy until all jobs ran; returns {'done': [...], 'failed': [...], 'unstarted': [...],
    'stopped_by': [...]}. `took`: the durations of runs of this ablation that finished before (a pace to go by
    from the first run that ends). A launch that raises a UserError (the betons were written again, say) starts
    no more runs: the ones running end as they would, the rest are 'unstarted', and 'stopped_by' holds the error."""
    queue = collections.deque((job, 0) for job in jobs)
    running: Dict[int, Tuple[Job, int, subprocess.Popen, float]] = {}
    outcome: Dict[str, list] = {"done": [], "failed": [], "unstarted": [], "stopped_by": []}
    try:
        _schedule(queue, running, outcome, slots, launch, report, poll_seconds, list(took))
    finally:  # an exception or Ctrl-C in the runner stops its runs too (kill -9: the parent-death signal)
        for _, _, process, _ in running.values():
            process.terminate()
        for _, _, process, _ in running.values():
            process.wait()
    return outcome


def _schedule(queue, running, outcome, slots, launch, report, poll_seconds, took) -> None:
    total = len(queue)  # took: the durations of the runs done (this ablation's, before too)
    while queue or running:
        for index, slot in enumerate(slots):
            if index not in running and queue:
                job, attempt = queue[0]
                try:
                    process = launch(job, slot)
                except UserError as error:
                    outcome["unstarted"], outcome["stopped_by"] = [job for job, _ in queue], [error]
                    queue.clear()
                    report(f"not starting the {len(outcome['unstarted'])} run(s) left: {error}"
                           + ("; the runs in progress go on" if running else ""))
                    break
                queue.popleft()
                running[index] = (job, attempt, process, time.monotonic())
                report(f"[{slot.name}] start {job.run_dir.name}" + (f" (retry {attempt})" if attempt else ""))
        for index in list(running):
            job, attempt, process, started = running[index]
            status = process.poll()
            if status is None:
                continue
            del running[index]
            now = time.monotonic()
            if status == 0:
                took.append(now - started)
            count = len(outcome["done"]) + len(outcome["failed"]) + 1
            to_go = time_to_go(took, [began for _, _, _, began in running.values()], len(queue), len(slots), now)
            ended = f"({count} of {total} ended" + (
                f"; ≈ {clock_time(to_go)} to go at this pace)" if to_go is not None else ")")
            if status == 0:
                outcome["done"].append(job)
                report(f"done {job.run_dir.name} in {clock_time(took[-1])}{top1_text(job.run_dir)} {ended}")
            elif attempt < RETRIES and status != USAGE_EXIT:
                queue.appendleft((job, attempt + 1))
                report(f"failed {job.run_dir.name} (exit {status}); retrying, log: {job.run_dir / TRAIN_LOG_NAME}")
            else:
                outcome["failed"].append(job)
                log = job.run_dir / TRAIN_LOG_NAME
                if status == USAGE_EXIT:
                    report(f"FAILED {job.run_dir.name} (a user error, not retried): {user_error(log)}; log: {log} "
                           f"{ended}")
                else:
                    report(f"FAILED {job.run_dir.name} (exit {status}, twice); log: {log} {ended}")
        if running:
            wait_for_an_exit([process for _, _, process, _ in running.values()], poll_seconds)


def time_to_go(took: Sequence[float], running_since: Sequence[float], queued: int, slots: int,
               now: float) -> Optional[float]:
    """Seconds until the last run ends, if every run takes as long as the mean of those done (`took`; None before
    one is, or when none is left): what is left of the running ones, then the queued ones on whichever slot
    frees first. Arms differ in cost and resumed runs are shorter, so it is an estimate; over a days-long ablation
    it says which day."""
    if not took or not (queued or running_since):
        return None
    each = sum(took) / len(took)
    free = [max(each - (now - since), 0.0) for since in running_since] + [0.0] * (slots - len(running_since))
    heapq.heapify(free)
    for _ in range(queued):
        heapq.heapreplace(free, free[0] + each)
    return max(free)


def top1_text(run_dir: Path) -> str:
    """': top-1 NN.NN' from a finished run's result.json, or nothing where it cannot be read."""
    top1 = (read_result(run_dir) or {}).get("top1")
    return f": top-1 {top1:.2f}" if isinstance(top1, (int, float)) and not isinstance(top1, bool) else ""


def user_error(log: Path) -> str:
    """What train.py said of a user error: the last `train.py: error:` line of its log, without the prefix."""
    prefix = "train.py: error: "
    try:
        said = [line for line in log.read_text(errors="replace").splitlines() if line.startswith(prefix)]
    except OSError:
        said = []
    return said[-1][len(prefix):] if said else "see the log"


def parse_squeezes(text: str) -> List[str]:
    """--squeeze as arm names. An arm listed twice ran twice into one folder (and twice at once on two GPUs,
    where the second failed on the first's lock); none at all wrote a manifest of no arms."""
    if text == "all":
        return squeeze_names()
    names = [check_squeeze_name(name.strip(), "--squeeze") for name in text.split(",") if name.strip()]
    if not names:
        raise ConfigError(f"--squeeze {text!r}: name at least one arm (a comma list, e.g. baseline,gap), or 'all'")
    twice = next((name for name in names if names.count(name) > 1), None)
    if twice:
        raise ConfigError(f"--squeeze {text}: '{twice}' is listed twice; list each arm once (--seeds repeats them)")
    return names


def visible_gpus() -> List[str]:
    """This process's GPUs in torch's order, as the IDs that select them in a child's CUDA_VISIBLE_DEVICES:
    the entries of its own CUDA_VISIBLE_DEVICES where that is set, else 0, 1, ..."""
    import torch
    count = torch.cuda.device_count()
    if "CUDA_VISIBLE_DEVICES" not in os.environ:
        return [str(index) for index in range(count)]
    return [entry.strip() for entry in os.environ["CUDA_VISIBLE_DEVICES"].split(",")][:count]


def choose_gpus(text: Optional[str], visible: Sequence[str]) -> List[str]:
    """--gpus (indices into `visible`; default all; 'none': the CPU) as the IDs the runs are given. An index
    that is not visible is refused: its run would not find the GPU and would train on the CPU."""
    if text is None:
        return list(visible)
    if text == "none":
        return []
    parts = [part.strip() for part in text.split(",")]
    if not all(part.isdigit() for part in parts):
        raise ConfigError(f"--gpus {text!r}: give GPU indices as a comma list (e.g. 0,1,2,3), or 'none' for the CPU")
    indices = [int(part) for part in parts]
    if len(set(indices)) < len(indices):
        raise ConfigError(f"--gpus {text}: a GPU is listed twice")
    unseen = [index for index in indices if index >= len(visible)]
    if unseen:
        seen = f"{len(visible)} GPU(s), 0-{len(visible) - 1}" if visible else "no GPU"
        raise ConfigError(f"--gpus {text}: there is no GPU {unseen[0]} here (this process sees {seen}, numbered "
                          "after CUDA_VISIBLE_DEVICES); pass visible indices, or --gpus none to run on the CPU")
    return [visible[index] for index in indices]


def parse_command_line(argv: List[str]):
    # no abbreviations: `--seed 3` (training.seed, as train.py has it) would run --seeds 3, seeds 0-2
    parser = argparse.ArgumentParser(
        allow_abbrev=False, description=__doc__.split("\n\n")[0],
        epilog="Any other --section.key=value is passed to every run (see `python pipeline/train.py --help`), except "
               f"those the runner sets per run: {', '.join(PER_RUN_KEYS)}.")
    parser.add_argument("--cfg", type=Path, required=True, help="recipe of every run")
    parser.add_argument("--squeeze", default="all", help="'all' (every registered arm) or a comma list")
    parser.add_argument("--seeds", type=int, default=1, help="number of seeds per arm")
    parser.add_argument("--first-seed", type=int, default=0, help="seeds are first-seed .. first-seed+seeds-1")
    parser.add_argument("--gpus", help="comma list of GPU indices as torch numbers the visible GPUs (default: "
                        "every visible GPU; 'none': CPU)")
    parser.add_argument("--gpus-per-run", default="1", help="GPUs per run: a number or 'all' (torchrun)")
    parser.add_argument("--runs-root", type=Path, help="default: runs/ablate-<recipe>")
    args, rest = parser.parse_known_args(argv)
    for option, value in (("--squeeze", args.squeeze), ("--gpus", args.gpus)):
        if value and value.endswith(",") and rest and not rest[0].startswith("--"):  # `--squeeze gap, gmp`
            raise ConfigError(f"{option} {value} {rest[0]}: a comma list takes no spaces; write {option} "
                              f"{value}{rest[0]}")
    if args.seeds < 1:
        raise ConfigError(f"--seeds {args.seeds}: must be at least 1")
    if not 0 <= args.first_seed <= args.first_seed + args.seeds - 1 <= MAX_SEED:
        raise ConfigError(f"--first-seed {args.first_seed} --seeds {args.seeds}: the seeds must lie in 0..{MAX_SEED}")
    if args.gpus_per_run != "all" and not (args.gpus_per_run.isdigit() and int(args.gpus_per_run) >= 1):
        raise ConfigError(f"--gpus-per-run {args.gpus_per_run!r}: give a number of at least 1, or 'all'")
    return args, rest


@sigterm_as_ctrl_c()
def main(argv: List[str]) -> int:
    root = None
    try:
        args, rest = parse_command_line(argv)
        squeezes = parse_squeezes(args.squeeze)
        shared = parse_overrides(rest, instead=PER_RUN_KEYS)
        check_shared_settings(shared)
        config = resolve(args.cfg, shared)  # fail now, not in every run
        metadata = check_data(config)
        data = data_identities(metadata)
        gpus = choose_gpus(args.gpus, visible_gpus())
        slots = pin_cores(make_slots(gpus, None if args.gpus_per_run == "all" else int(args.gpus_per_run)))
        root = args.runs_root or Path("runs") / f"ablate-{args.cfg.stem}"
        seeds = list(range(args.first_seed, args.first_seed + args.seeds))
        jobs = plan_jobs(squeezes, seeds, root, config["model.arch"], args.cfg.stem)
        make_run_dir(root, "--runs-root")
        # one runner per root: a second one failed the runs the first was training and wrote them down as failed
        with RunLock(root, "--runs-root"):
            left = runs_to_do(jobs, args.cfg, rest, data)
            check_ablation_room([(config, job.run_dir) for job, config in left], len(metadata[0]["classes"]),
                                len(slots), root)
            todo = [job for job, _ in left]
            manifest = {"recipe": str(args.cfg), "arch": config["model.arch"], "squeezes": squeezes,
                        "seeds": seeds, "overrides": rest, "failed": []}
            write_text_atomic(root / MANIFEST_NAME, json.dumps(manifest, indent=1) + "\n")
            settings = freeze_settings(root, config)
            return run_ablation(jobs, todo, slots, root, manifest, functools.partial(
                launch_on_the_same_data, settings=settings, config=config, data=data))
    except KeyboardInterrupt as interrupt:  # Ctrl-C, SIGTERM: the runs in progress were stopped (run_schedule)
        kept = ("no run had started" if root is None else
                f"the finished runs and epochs are kept in {root}: the same command continues the ablation")
        return report_stop("ablate.py", interrupt, kept)
    except UserError as error:
        return report_user_error("ablate.py", error)


def run_ablation(jobs: Sequence[Job], todo: Sequence[Job], slots: Sequence[Slot], root: Path, manifest: dict,
                 launch: Callable[[Job, Slot], subprocess.Popen]) -> int:
    """Run what is left, record the failures in the manifest, print the report; the exit status."""
    finished = [read_result(job.run_dir) or {} for job in jobs if job not in todo]
    took = [result["wall_time"] for result in finished if isinstance(result.get("wall_time"), (int, float))]
    to_go = time_to_go(took, [], len(todo), len(slots), 0.0)
    print(f"{len(jobs)} runs ({len(jobs) - len(todo)} already finished) on "
          f"{len(slots)} slot(s): {'; '.join(slot.describe() for slot in slots)}"
          + (f"; ≈ {clock_time(to_go)} to go at the pace of those finished" if to_go is not None else ""), flush=True)
    note = finished_by_other_code_note(finished, code_version()) if todo else None
    if note:
        print(f"note: {note}", flush=True)
    started = time.time()
    outcome = run_schedule(todo, slots, launch, took=took)
    manifest["failed"] = [{"squeeze": job.squeeze, "seed": job.seed, "run_dir": str(job.run_dir)}
                          for job in outcome["failed"]]
    write_text_atomic(root / MANIFEST_NAME, json.dumps(manifest, indent=1) + "\n")
    unstarted = f", {len(outcome['unstarted'])} not started" if outcome["unstarted"] else ""
    print(f"\n{len(outcome['done'])} ran, {len(jobs) - len(todo)} skipped, {len(outcome['failed'])} failed{unstarted} "
          f"in {clock_time(time.time() - started)}\n")
    report = write_report(root)
    print(report.text)
    print(f"report: {', '.join(str(path) for path in report.files)}", flush=True)
    if outcome["stopped_by"]:  # the reason the runs left did not start, last
        return report_user_error("ablate.py", outcome["stopped_by"][0])
    return 1 if outcome["failed"] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
