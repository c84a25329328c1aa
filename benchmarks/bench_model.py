"""Training-step throughput and peak memory of every squeeze arm against torchvision (and timm) peers.

    python benchmarks/bench_model.py                       # GPU: resnet50, 192 px, batch 256, eager + compiled
    python benchmarks/bench_model.py --arch resnet18 --modes eager --se-kernel triton
    python benchmarks/bench_model.py --res 160,192,224 --compiled-arms all --max-compiled 99

One step = forward + backward + SGD step on random data in channels_last with bf16 autocast (fp32 on CPU),
timed after warm-up with the device synchronised; in eager mode every model is timed `--rounds` times in turn
(median), so that the GPU's clocks drifting over the run favour no model. Peers run in the same process:
torchvision's resnetNN, and timm's seresnetNN where timm is installed. Every SE arm runs once per `--se-kernel` implementation
(torch ops and/or the fused Triton kernels). A cold torch.compile of a ResNet-50 step takes about a minute,
so compiled mode measures only `--compiled-arms`, at most `--max-compiled` models per resolution (torchvision
first). Without a GPU it runs a small CPU configuration.
"""
import argparse
import contextlib
import gc
import json
import statistics
import time
from pathlib import Path
from typing import List, Optional

from pipeline.gc_freeze import imports_frozen

with imports_frozen(as_a_script=__name__ == "__main__"):  # as train.py runs (pipeline/gc_freeze.py)
    import torch
    import torch.nn.functional as F
    import torchvision
    import compile_cache  # siblings: benchmarks run as scripts
    from cli import at_least, names_from, resolutions
    from kernel_profile import GROUPS, group_times, kernel_times, print_kernel_times

    from pipeline.acceleration import Stopwatch, maybe_compile, tune_convolutions
    from pipeline.config import COMPILE_MODES, resolve
    from pipeline.kernels import SE_KERNELS
    from pipeline.models import ARCHITECTURES, build_model
    from pipeline.optim import build_sgd_for
    from pipeline.squeeze import squeeze_names


TRAINING_DEFAULTS = resolve(None, {})  # the declared settings, before any recipe


def peers(arch: str, with_timm: bool) -> dict:
    found = {f"torchvision {arch}": lambda: getattr(torchvision.models, arch)()}
    try:
        import timm
        if with_timm:
            found[f"timm se{arch}"] = lambda: timm.create_model(f"se{arch}")
    except ImportError:
        pass
    return found


def candidates(args, mode: str) -> dict:
    """name -> model factory for one mode: the peers, then every arm x implementation (capped when compiled)."""
    compiled = mode != "eager"
    arms = squeeze_names() if args.arms == "all" else args.arms.split(",")
    if compiled and args.compiled_arms != "all":
        arms = [arm for arm in arms if arm in args.compiled_arms.split(",")]
    models = dict(peers(args.arch, with_timm=not compiled or args.compiled_arms == "all"))
    for arm in arms:
        for kernel in ([None] if arm == "baseline" else args.se_kernel.split(",")):
            name = arm if kernel is None else f"{arm} [{kernel}]"
            models[name] = lambda arm=arm, kernel=kernel: build_model(args.arch, arm, se_kernel=kernel or "auto")
    if compiled and len(models) > args.max_compiled:
        print(f"{mode}: measuring {args.max_compiled} of {len(models)} models (--max-compiled); "
              f"left out: {', '.join(list(models)[args.max_compiled:])}")
        models = dict(list(models.items())[:args.max_compiled])
    return models


class CollectorClock:
    """While entered: the seconds Python's garbage collector ran and its full (generation-2) collections. A step
    near host-bound slows by what else the host does, and a full collection walks every live object (a process
    that compiled Triton's kernels holds more): it tells such a pause from the step's own host time."""

    def __init__(self):
        self.seconds, self.full_collections, self._started = 0.0, 0, 0.0

    def _observe(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        self.seconds += time.perf_counter() - self._started
        self.full_collections += info["generation"] == 2

    def __enter__(self) -> "CollectorClock":
        gc.callbacks.append(self._observe)
        return self

    def __exit__(self, *exception) -> None:
        gc.callbacks.remove(self._observe)


class Trainee:
    """One model's training step (training's SGD) on fixed random data (channels_last; bf16 autocast on a GPU), kept
    between rounds."""

    def __init__(self, make_model, device: torch.device, batch: int, res: int, compile_mode: str):
        self.device, self.batch = device, batch
        self.model = make_model().to(device).to(memory_format=torch.channels_last).train()
        # training's optimizer with the declared defaults: weight decay on conv and linear weights only
        self.optimizer = build_sgd_for(self.model, 0.01, TRAINING_DEFAULTS)
        if compile_mode != "eager":
            torch._dynamo.reset()  # each model compiles afresh, within dynamo's recompile limit
            # as training compiles: static shapes, fca's filters built before tracing
            self.model = maybe_compile(self.model, "default" if compile_mode == "compiled" else compile_mode)
        self.images = torch.randn(batch, 3, res, res, device=device).contiguous(memory_format=torch.channels_last)
        self.labels = torch.randint(0, 1000, (batch,), device=device)
        self.autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda"
                         else contextlib.nullcontext())
        self.collector, self.timed_steps = CollectorClock(), 0

    def step(self) -> None:
        with self.autocast:
            loss = F.cross_entropy(self.model(self.images), self.labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def throughput(self, steps: int) -> float:
        """Images per second over `steps` steps, the device synchronised at both ends. A full collection first:
        what a warm-up that compiled or autotuned (this model's or another's) left makes one due, which a
        training run pays once in thousands of steps and a few timed steps must not (an H200 timed one, 225 ms,
        in SE-ResNet-18 gapXstd's first round)."""
        gc.collect()
        watch = Stopwatch(self.device)
        with self.collector:
            for _ in range(steps):
                self.step()
            speed = self.batch * steps / watch.elapsed()
        self.timed_steps += steps
        return speed

    def collector_figures(self) -> tuple:
        """(the garbage collector's milliseconds per timed step, its full collections), over every round so far."""
        return 1000 * self.collector.seconds / max(self.timed_steps, 1), self.collector.full_collections


def first_round(make_model, device, batch: int, res: int, steps: int, warmup: int, compile_mode: str,
                profile_steps: int = 0):
    """(trainee, images/s, peak memory GB of this model's training or None, compile+warm-up seconds, time per
    kernel per step in us or None); the kernels are profiled over `profile_steps` more steps after the timed
    ones. Memory counts from what was allocated before the model was built, so models kept for later rounds
    do not count."""
    cuda = device.type == "cuda"
    before = torch.cuda.memory_allocated() if cuda else 0
    trainee = Trainee(make_model, device, batch, res, compile_mode)
    watch = Stopwatch(device)
    for _ in range(warmup):
        trainee.step()
    warmup_seconds = watch.elapsed()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    speed = trainee.throughput(steps)
    memory = (torch.cuda.max_memory_allocated() - before) / 1e9 if cuda else None
    kernels = kernel_times(trainee.step, profile_steps) if profile_steps else None
    return trainee, speed, memory, warmup_seconds, kernels


def measure_in_rounds(models: dict, args, device, mode: str, res: int, profiled: dict) -> dict:
    """name -> (median images/s, peak memory GB or None, warm-up s, (garbage collector ms per timed step, its full
    collections), spread between rounds, rounds). Eager models are kept and timed again in turn, `args.rounds`
    times in all; compiled ones once (one compile at a time). Profiled kernel times go to `profiled` under (mode,
    res, name)."""
    rounds = args.rounds if mode == "eager" else 1
    firsts, speeds, kept, collected = {}, {}, {}, {}
    for name, make in models.items():
        trainee, speed, memory, warm, kernels = first_round(make, device, args.batch, res, args.steps, args.warmup,
                                                            mode, args.profile_steps)
        firsts[name], speeds[name] = (memory, warm), [speed]
        collected[name] = trainee.collector_figures()
        print(f"  {mode} {res} {name}: {speed:.1f} img/s", flush=True)
        if kernels:
            profiled[mode, res, name] = speed, kernels
        if args.compile_cache and mode != "eager":  # after each model: a run cut off at its cap keeps the others
            print("  " + compile_cache.save(args.compile_cache), flush=True)
        if rounds > 1:
            kept[name] = trainee
        del trainee
        if device.type == "cuda":
            torch.cuda.empty_cache()
    for round_index in range(2, rounds + 1):
        for name, trainee in kept.items():
            trainee.step()  # untimed: the model has been idle
            speeds[name].append(trainee.throughput(args.steps))
            collected[name] = trainee.collector_figures()
        print(f"  {mode} {res} round {round_index} of {rounds}: "
              + ", ".join(f"{name} {runs[-1]:.0f}" for name, runs in speeds.items()), flush=True)
    kept.clear()
    return {name: (statistics.median(runs), *firsts[name], collected[name],
                   (max(runs) - min(runs)) / statistics.median(runs), len(runs)) for name, runs in speeds.items()}


def print_profiles(profiled: dict, batch: int) -> dict:
    """Per model: step time against the device's busy time, split by kernel group (kernel_profile.GROUPS); the
    same as a JSON-able dict. Busy below step time means the device waited on the host."""
    print(f"\n{'mode':9s} {'res':>4s} {'model':28s} {'step ms':>8s} {'busy ms':>8s} "
          + " ".join(f"{group:>11s}" for group in GROUPS))
    table = {}
    for (mode, res, name), (speed, kernels) in profiled.items():
        groups = {group: spent / 1000 for group, spent in group_times(kernels).items()}
        step_ms, busy_ms = 1000 * batch / speed, sum(groups.values())
        print(f"{mode:9s} {res:4d} {name:28s} {step_ms:8.2f} {busy_ms:8.2f} "
              + " ".join(f"{groups[group]:11.2f}" for group in GROUPS))
        table[f"{mode}@{res}/{name}"] = {"step_ms": round(step_ms, 3), "busy_ms": round(busy_ms, 3),
                                         **{group: round(spent, 3) for group, spent in groups.items()}}
    for (mode, res, name), (_, kernels) in profiled.items():
        print_kernel_times(kernels, f"one {mode} {res} {name} step", top=10)
    return table


def parse_arguments(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """The command line, checked before anything runs (the device check's commands are tested here)."""
    gpu = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    arms = names_from(squeeze_names(), allow_all=True)
    parser.add_argument("--arch", default="resnet50" if gpu else "resnet18", choices=list(ARCHITECTURES))
    parser.add_argument("--arms", default="all", type=arms, help="comma list of squeeze arms, or all")
    parser.add_argument("--se-kernel", default="torch,triton" if gpu else "torch", type=names_from(SE_KERNELS),
                        help="comma list of SE implementations to measure: torch, triton, closed-form, auto")
    parser.add_argument("--res", default="192" if gpu else "64", type=resolutions, help="comma list, px")
    parser.add_argument("--batch", type=at_least(1), default=256 if gpu else 16)
    parser.add_argument("--steps", type=at_least(1), default=30 if gpu else 3)
    parser.add_argument("--warmup", type=at_least(0), default=8 if gpu else 1)
    modes = ["eager", "compiled", *(mode for mode in COMPILE_MODES if mode not in ("none", "auto"))]
    parser.add_argument("--modes", default="eager,compiled" if gpu else "eager", type=names_from(modes),
                        help="eager, compiled (default mode) or any torch.compile mode name")
    parser.add_argument("--compiled-arms", default="gap,gmp,fca", type=arms, help="arms measured compiled, or all")
    parser.add_argument("--max-compiled", type=at_least(1), default=4,
                        help="compiled models per resolution, peers first")
    parser.add_argument("--rounds", type=at_least(1), default=3 if gpu else 1,
                        help="eager: time every model this many times in turn (median), so that a drift of the "
                             "GPU's clocks over the run does not favour the models measured first")
    parser.add_argument("--profile-steps", type=at_least(0), default=0,
                        help="after timing, profile this many steps per model: busy time by kernel group")
    parser.add_argument("--compile-cache", type=Path,
                        help="a file of torch.compile's artifacts: loaded first where it exists, rewritten after "
                             "each compiled model (compile_cache.py: a later run on a bare machine of the same GPU, "
                             "torch and code compiles from it)")
    return parser.parse_args(argv)


# Rounds further apart than this are not one steady speed: seen on an H200 for the fused kernels' eager rows
# (13-28% in ResNet-18, near host-bound) while torchvision and the torch ops' rows stayed within 5%.
NOISY_SPREAD = 0.10


def spread_warning(rows: list) -> Optional[str]:
    """A line naming the rows whose rounds are more than NOISY_SPREAD apart (None when none is): a median of
    such rounds can differ from a rerun's by more than the gaps between rows."""
    noisy = [f"{mode} {res} {name} ({spread:.0%})" for mode, res, name, *_, spread in rows if spread > NOISY_SPREAD]
    if not noisy:
        return None
    return (f"rounds more than {NOISY_SPREAD:.0%} apart: {', '.join(noisy)}; a model near host-bound shows the "
            "host's jitter (--profile-steps: busy time below step time); rerun before comparing these rows")


def main() -> None:
    gpu = torch.cuda.is_available()
    args = parse_arguments()
    device = torch.device("cuda" if gpu else "cpu")
    tune_convolutions(device)  # as training does: cuDNN's algorithms, timed once per shape, for every model
    if args.compile_cache:
        print(compile_cache.load(args.compile_cache), flush=True)
    reference_name = f"torchvision {args.arch}"
    rows, ratios, profiled = [], {}, {}
    for mode in args.modes.split(","):
        models = candidates(args, mode)
        for res in map(int, args.res.split(",")):
            measured = measure_in_rounds(models, args, device, mode, res, profiled)
            reference_speed, reference_memory, *_ = measured[reference_name]
            key = f"{mode}@{res}"
            ratios[key] = {}
            for name, (speed, memory, warm, (collector, full_collections), spread, rounds) in measured.items():
                ratio = speed / reference_speed
                memory_ratio = memory / reference_memory if memory else None
                ratios[key][name] = {"img_s": round(speed, 1), "ratio_vs_torchvision": round(ratio, 3),
                                     "memory_gb": round(memory, 2) if memory else None,
                                     "memory_ratio_vs_torchvision": round(memory_ratio, 3) if memory_ratio else None,
                                     "warmup_s": round(warm, 1), "gc_ms_per_step": round(collector, 3),
                                     "gc_full_collections": full_collections, "rounds": rounds,
                                     "round_spread": round(spread, 3)}
                rows.append((mode, res, name, speed, ratio, memory, memory_ratio, warm, collector, spread))
    device_name = torch.cuda.get_device_name() if gpu else f"CPU ({torch.get_num_threads()} threads)"
    print(f"\n{args.arch}, batch {args.batch}, {device_name}, {'bf16' if gpu else 'fp32'}, channels_last")
    print(f"{'mode':9s} {'res':>4s} {'model':28s} {'img/s':>8s} {'spread':>6s} {'x tv':>6s} {'mem GB':>7s} "
          f"{'x tv':>6s} {'warm-up s':>9s} {'gc ms':>6s}")
    for mode, res, name, speed, ratio, memory, memory_ratio, warm, collector, spread in rows:
        memory_text = f"{memory:7.2f} {memory_ratio:6.2f}" if memory else f"{'-':>7s} {'-':>6s}"
        print(f"{mode:9s} {res:4d} {name:28s} {speed:8.1f} {spread:6.1%} {ratio:6.2f} {memory_text} {warm:9.1f} "
              f"{collector:6.2f}")
    print("img/s: the median of the rounds; spread: (fastest - slowest round) / median; gc ms: Python's garbage "
          "collector per timed step")
    warning = spread_warning(rows)
    if warning:
        print(warning)
    summary = {"device": device_name, "arch": args.arch, "batch": args.batch,
               "cudnn_benchmark": torch.backends.cudnn.benchmark, "results": ratios}
    if profiled:
        summary["profiles"] = print_profiles(profiled, args.batch)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
