"""The training run, top to bottom: config -> world -> data -> model -> optimizer -> epochs -> result.

Entry point: `pipeline/train.py` (run it directly or with torchrun). Only rank 0 writes; a run directory
holding a checkpoint is resumed after its last finished epoch.
"""
import argparse
import contextlib
import functools
import json
import socket
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from pipeline import checkpoint as ckpt
from pipeline.atomic import remove_stale_temporaries, write_text_atomic
from pipeline.acceleration import (choose_precision, compile_mode_used, maybe_compile, to_channels_last,
                                   tune_convolutions, wrap_ddp)
from pipeline.clock import clock_time
from pipeline.config import ConfigError, describe, parse_overrides, resolution_settings, resolve, settings_help
from pipeline.cpu_convolution import use_gemm_weight_gradients
from pipeline.cpu_memory import available_bytes, check_cpu_memory, memory_bytes
from pipeline.data import DeviceAugment, ramp_shortfall, resolution_at, set_epoch, set_train_resolution
from pipeline.distributed import (World, all_reduce_sum, barrier, broadcast_buffers, close_world, from_main,
                                  gather_to_main, init_world)
from pipeline.engine import NonFiniteLossError, evaluate, train_one_epoch
from pipeline.errors import UserError, report_user_error
from pipeline.kernels import KernelUnavailableError, resolve_se_kernel
from pipeline.kernels.layout import SQUEEZE_MODES
from pipeline.models import build_model
from pipeline.optim import build_sgd_for
from pipeline.provenance import check_same_code, code_version, other_code_note
from pipeline.resume import finished_already, make_run_dir, restore, resume_state
from pipeline.run_data import (build_data, build_val_data, check_batch_fits, check_data, check_val_data,
                                data_identities, loader_workers, page_cache_note, upscaling_notes)
from pipeline.run_dir import (CHECKPOINT_NAME, CONFIG_NAME, DATA_KEYS, DATA_NAME, FINAL_WEIGHTS_NAME, LOG_NAME,
                              RESULT_NAME, RunLock, run_name)
from pipeline.run_room import check_run_room
from pipeline.schedule import lr_factor, lr_shortfall, scaled_lr
from pipeline.squeeze import BASELINE, check_squeeze_name
from pipeline.termination import report_stop, sigterm_as_ctrl_c

MODEL_KEYS = tuple(f"model.{name}" for name in ckpt.MODEL_SETTING_NAMES)


def parse_command_line(argv: List[str]):
    parser = argparse.ArgumentParser(  # no abbreviations: what argparse does not know goes to the settings parser
        prog="train.py", allow_abbrev=False, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train (or evaluate) an SE-ResNet on FFCV betons. Any setting: --section.key=value.",
        epilog="settings (defaults <- --cfg recipe <- command line):\n" + settings_help())
    parser.add_argument("--cfg", type=Path, help="recipe YAML, e.g. recipes/rn50_88ep.yaml")
    parser.add_argument("--squeeze", help="shortcut for --model.squeeze")
    parser.add_argument("--arch", help="shortcut for --model.arch")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run directory's run (automatic when it holds a checkpoint)")
    parser.add_argument("--eval-only", action="store_true", help="evaluate --weights on the val set and exit")
    parser.add_argument("--weights", type=Path, help="final.pt or checkpoint.pt, for --eval-only only")
    args, rest = parser.parse_known_args(argv)
    overrides = parse_overrides(rest)  # {key: (value, source)}: what the command line itself set
    if args.squeeze is not None:
        overrides["model.squeeze"] = (check_squeeze_name(args.squeeze, "--squeeze"), "--squeeze")
    if args.arch is not None:
        overrides["model.arch"] = (args.arch, "--arch")
    if args.eval_only and args.weights is None:
        raise ConfigError("--eval-only needs --weights PATH (a final.pt or checkpoint.pt)")
    if args.weights is not None and not args.eval_only:
        raise ConfigError("--weights are read by --eval-only alone; a run starts from scratch, or resumes from its "
                          "run directory's checkpoint (--logging.run_dir)")
    if args.weights is not None and args.weights.is_dir():  # a run directory: it was called "does not exist"
        held = [name for name in (FINAL_WEIGHTS_NAME, CHECKPOINT_NAME) if (args.weights / name).is_file()]
        raise ConfigError(f"--weights {args.weights} is a directory; give a weights file" +
                          (f", e.g. {args.weights / held[0]}" if held else " (a final.pt or checkpoint.pt)"))
    if args.weights is not None and not args.weights.is_file():
        raise ConfigError(f"--weights {args.weights} does not exist")
    return args, resolve(args.cfg, overrides), overrides


def default_run_dir(config: Dict[str, Any], recipe: Optional[Path]) -> Path:
    name = run_name(config["model.arch"], config["model.squeeze"], recipe.stem if recipe else "defaults",
                    config["training.seed"])
    return Path(config["logging.runs_root"]) / name


def rank_seed(config: Dict[str, Any], world: World) -> int:
    """The seed of what differs per rank (flips, the `random` squeeze) but not per arm."""
    return config["training.seed"] * 1009 + world.rank + 1


def build_network(config: Dict[str, Any], num_classes: int, world: World) -> torch.nn.Module:
    """The same seed gives every arm the same shared-layer init; the SE layers use their own stream. `auto` is
    resolved here, where the compile mode is known (inside a traced graph it is not)."""
    torch.manual_seed(config["training.seed"])
    used = se_kernel_used(config, world)
    model = build_model(config["model.arch"], config["model.squeeze"], config["model.reduction"], num_classes,
                        config["model.zero_init_last"], config["model.blurpool"], se_seed=config["training.seed"],
                        se_kernel=config["model.se_kernel"] if used == "none" else used)
    torch.manual_seed(rank_seed(config, world))  # `random` differs per rank
    return to_channels_last(model.to(world.device), config["training.channels_last"])


def time_to_finish(history: List[Dict[str, Any]], epochs: int, resolution_args: List[int],
                   one_off_seconds: float = 0.0) -> Optional[float]:
    """Seconds the epochs left take at the pace of the last one, each scaled by its pixels (progressive resizing:
    an epoch at 192 px takes about (192/160)^2 = 1.44 of one at 160 px), less what the last one spent once
    (`one_off_seconds`: torch.compile's compilation in its first step, which a GPU recipe's first epoch spends
    a minute of: the first estimate a run printed was up to twice the time it took). None when none is left."""
    if len(history) >= epochs:
        return None
    last = history[-1]
    took = last["wall_time"] - (history[-2]["wall_time"] if len(history) > 1 else 0.0) - one_off_seconds
    return sum(took * (resolution_at(epoch, *resolution_args) / last["resolution"]) ** 2
               for epoch in range(len(history), epochs))


def epoch_line(epoch: int, resolution: int, metrics: Dict[str, float], elapsed: float, to_go: Optional[float],
               compiled: bool) -> str:
    text = (f"epoch {epoch + 1}: res {resolution} lr {metrics['lr']:.4g} loss {metrics['train_loss']:.4f} "
            f"{metrics['train_images_per_s']:.0f} img/s")
    if compiled and metrics["first_step_seconds"] > 1:
        text += f" (first step incl. torch.compile: {metrics['first_step_seconds']:.1f} s)"
    if "val_top1" in metrics:
        text += f" | val top-1 {metrics['val_top1']:.2f} top-5 {metrics['val_top5']:.2f}"
    return text + f" | {clock_time(elapsed)}" + (f", ≈ {clock_time(to_go)} to go" if to_go is not None else "")


def lr_schedule(config: Dict[str, Any], peak_lr: float, iterations: int) -> Callable[[int, int], float]:
    """lr at (epoch, step within epoch), evaluated per iteration."""
    def lr_at(epoch: int, step: int) -> float:
        return peak_lr * lr_factor(config["lr.schedule"], epoch + step / iterations, config["training.epochs"],
                                   config["lr.warmup_epochs"], config["lr.milestones"], config["lr.gamma"])
    return lr_at


def average_over_ranks(metrics: Dict[str, float], world: World) -> None:
    """Train loss averaged and img/s summed over ranks, in place."""
    summed = all_reduce_sum(torch.tensor([metrics["train_loss"], metrics["train_images_per_s"]],
                                         dtype=torch.float64, device=world.device)).tolist()
    metrics["train_loss"], metrics["train_images_per_s"] = summed[0] / world.world_size, summed[1]


def train(config: Dict[str, Any], run_dir: Path, world: World, metadata: Tuple[dict, dict],
          data: Dict[str, str]) -> Dict[str, Any]:
    """Train (resuming what `run_dir` holds) on the betons `metadata` describes and `data` identifies."""
    epochs = config["training.epochs"]
    resolution_args = resolution_settings(config)
    train_data, val_data, num_classes = build_data(config, world, resolution_at(0, *resolution_args), metadata)
    model = build_network(config, num_classes, world)
    parameters = sum(p.numel() for p in model.parameters())
    precision = choose_precision(config["training.precision"], world.device)
    global_batch = config["training.batch_size"] * world.world_size
    peak_lr = scaled_lr(config["lr.lr"], global_batch)
    optimizer = build_sgd_for(model, peak_lr, config)
    scaler = precision.grad_scaler()
    history, first_epoch = [], 0
    state = from_main(world, lambda: resume_state(run_dir, config, world, data))
    if state is not None:
        history, first_epoch = restore(state, model, optimizer, scaler, world.rank)
        if world.is_main:
            print(f"resuming {run_dir} after epoch {first_epoch} of {epochs}")
            note = other_code_note(history[-1].get("code"), code_version())
            if note:
                print(f"note: {note}")
    tune_convolutions(world.device)
    use_gemm_weight_gradients(model, world.device)
    compile_mode = compile_used(config, world)
    if world.is_main and world.distributed and compile_mode == "reduce-overhead":
        print("training.compile=reduce-overhead under DDP: CUDA graphs are reported to be skipped there, with a "
              "large slowdown (BatchNorm's running statistics, pytorch/pytorch#139207); 'auto' picks default under "
              "DDP", flush=True)
    network = maybe_compile(wrap_ddp(model, world.device, world.distributed), compile_mode)
    channels_last = config["training.channels_last"]
    train_augment = DeviceAugment(True, rank_seed(config, world), channels_last).to(world.device)
    val_augment = DeviceAugment(False, channels_last=channels_last).to(world.device)
    lr_at = lr_schedule(config, peak_lr, len(train_data))
    started = time.time() - (history[-1]["wall_time"] if history else 0)
    compiled_at = set()  # the resolutions this process compiled the training step for
    for epoch in range(first_epoch, epochs):
        resolution = resolution_at(epoch, *resolution_args)
        set_train_resolution(train_data, resolution)
        set_epoch(train_data, epoch)  # a resumed run takes up the orders and crops where it stopped
        train_augment.set_epoch(epoch)
        metrics = train_one_epoch(network, train_data, train_augment, optimizer, scaler, precision,
                                  config["training.label_smoothing"], functools.partial(lr_at, epoch), epoch,
                                  world.device, world.is_main and config["logging.progress"])
        average_over_ranks(metrics, world)
        if (epoch + 1) % config["validation.every"] == 0 or epoch + 1 == epochs:
            broadcast_buffers(model)
            try:
                metrics.update(evaluate(ckpt.unwrap(network), val_data, val_augment, precision,
                                        config["validation.flip_tta"], world.device))
            except torch.cuda.OutOfMemoryError:
                raise ValidationOutOfMemoryError(epoch) from None
        history.append({"epoch": epoch + 1, "resolution": resolution, **metrics, "wall_time": time.time() - started,
                        "code": code_version()})
        rng = gather_to_main(world, ckpt.rng_states())
        compiling = compile_mode != "none" and resolution not in compiled_at
        compiled_at.add(resolution)
        if world.is_main:
            write_text_atomic(run_dir / LOG_NAME, "".join(json.dumps(line) + "\n" for line in history))
            ckpt.save_checkpoint(run_dir / CHECKPOINT_NAME, network, optimizer, scaler, epoch, config, history,
                                 world.world_size, rng)
            to_go = time_to_finish(history, epochs, resolution_args, metrics["first_step_seconds"] if compiling else 0)
            print(epoch_line(epoch, resolution, metrics, history[-1]["wall_time"], to_go, compile_mode != "none"),
                  flush=True)
        barrier()
    result = summarize(config, history, parameters, world, global_batch, precision.name) | {"data": data}
    if world.is_main:
        ckpt.save_final_weights(run_dir / FINAL_WEIGHTS_NAME, network, model_settings(config, num_classes))
        write_text_atomic(run_dir / RESULT_NAME, json.dumps(result, indent=1) + "\n")
    return result


def recipe_shortfalls(config: Dict[str, Any]) -> List[str]:
    """What of the recipe's resolution ramp and lr schedule the run ends before (a recipe shortened with
    --training.epochs): said at the start, not refused."""
    epochs = config["training.epochs"]
    notes = [ramp_shortfall(epochs, *resolution_settings(config)),
             lr_shortfall(config["lr.schedule"], epochs, config["lr.warmup_epochs"], config["lr.milestones"])]
    return [note for note in notes if note]


def model_settings(config: Dict[str, Any], num_classes: int) -> Dict[str, Any]:
    """What final.pt records of its model (num_classes as trained, not 0 = from the data)."""
    return {name: config[key] for name, key in zip(ckpt.MODEL_SETTING_NAMES, MODEL_KEYS)} | {
        "num_classes": num_classes}


def summarize(config, history, parameters, world, global_batch, precision) -> Dict[str, Any]:
    evaluated = [line for line in history if "val_top1" in line]
    speeds = [line["train_images_per_s"] for line in history[1:]] or [history[0]["train_images_per_s"]]
    return {
        "arch": config["model.arch"], "squeeze": config["model.squeeze"], "seed": config["training.seed"],
        "epochs": config["training.epochs"], "finished_epochs": len(history), "parameters": parameters,
        "top1": evaluated[-1]["val_top1"], "top5": evaluated[-1]["val_top5"], "val_loss": evaluated[-1]["val_loss"],
        "best_top1": max(line["val_top1"] for line in evaluated),
        "train_images_per_s": sum(speeds) / len(speeds),  # first epoch excluded: it pays JIT compilation
        "se_kernel": config["model.se_kernel"], "se_kernel_used": se_kernel_used(config, world),
        "compile": config["training.compile"],
        "compile_used": compile_used(config, world),
        "wall_time": history[-1]["wall_time"], "world_size": world.world_size, "global_batch": global_batch,
        "precision": precision, "device": str(world.device.type), "config": config,
        "code": list(dict.fromkeys(line.get("code") for line in history)),  # more than one: resumed by other code
    }


def compile_used(config: Dict[str, Any], world: World) -> str:
    """The torch.compile mode training runs in ('none': eager), training.compile's `auto` resolved."""
    return compile_mode_used(config["training.compile"], world.device, world.distributed)


def se_kernel_used(config: Dict[str, Any], world: World) -> str:
    """What ran the SE tails in training: triton, torch, closed-form, or none for the baseline. A registered
    squeeze with no fused form runs the torch ops under `auto` (SqueezeExcite.tail)."""
    if config["model.squeeze"] == BASELINE:
        return "none"
    if config["model.squeeze"] not in SQUEEZE_MODES and config["model.se_kernel"] == "auto":
        return "torch"
    try:
        return resolve_se_kernel(config["model.se_kernel"], world.device, config["training.channels_last"],
                                 compile_used(config, world))
    except KernelUnavailableError as error:
        raise ConfigError(f"{error} (from model.se_kernel)") from None


def weights_model_config(config: Dict[str, Any], weights: Path, recorded: Optional[Dict[str, Any]],
                         explicit: Dict[str, Tuple[Any, str]]) -> Dict[str, Any]:
    """`config` with the model the weights record; a model setting the command line gives that disagrees
    with them is refused."""
    if recorded is None:  # weights written before final.pt recorded its model: trust the settings
        return config
    for name, key in zip(ckpt.MODEL_SETTING_NAMES, MODEL_KEYS):
        if key in explicit and name in recorded and explicit[key][0] != recorded[name]:
            raise ConfigError(f"--weights {weights} hold a {recorded['arch']} '{recorded['squeeze']}' model with "
                              f"{name}={recorded[name]!r}, not {explicit[key][0]!r} (from {explicit[key][1]}); "
                              f"drop {explicit[key][1]} to evaluate them as they are")
    return config | {key: recorded[name] for name, key in zip(ckpt.MODEL_SETTING_NAMES, MODEL_KEYS)
                     if name in recorded}


def evaluate_weights(config: Dict[str, Any], weights: Path, world: World,
                     explicit: Dict[str, Tuple[Any, str]]) -> Dict[str, Any]:
    state, recorded = ckpt.load_weights(weights)
    config = weights_model_config(config, weights, recorded, explicit)
    val_meta, num_classes = check_val_data(config, weights)
    for note in upscaling_notes(config, {"data.val_dataset": val_meta}) if world.is_main else []:
        print(f"note: {note}", flush=True)
    val_data = build_val_data(config, world, val_meta, loader_workers(config, world))
    model = build_network(config, num_classes, world)
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        lines = str(error).splitlines()
        first = (lines[1] if len(lines) > 1 else lines[0]).strip()
        first = first if len(first) <= 160 else first[:157] + "..."  # a key list can run to thousands of characters
        raise ConfigError(f"--weights {weights} do not fit a {config['model.arch']} '{config['model.squeeze']}' "
                          f"model with {num_classes} classes ({first}); pass the settings they were trained "
                          "with") from None
    precision = choose_precision(config["training.precision"], world.device)
    augment = DeviceAugment(False, channels_last=config["training.channels_last"]).to(world.device)
    return evaluate(model, val_data, augment, precision, config["validation.flip_tta"], world.device)


def check_memory_fits(config: Dict[str, Any], num_classes: int, world: World) -> None:
    """On the CPU, a run that cannot fit in memory is refused before it starts (cpu_memory.py); a GPU's
    out-of-memory error is caught where it happens."""
    if world.device.type != "cpu":
        return
    with torch.random.fork_rng(devices=[]):  # the probe's draws leave training's random streams as they were
        model = build_network(config, num_classes, world)
        check_cpu_memory(model, config["training.batch_size"], config["resolution.max_res"],
                         choose_precision(config["training.precision"], world.device), world.local_world_size,
                         available_bytes())


def run_in_directory(config: Dict[str, Any], run_dir: Path, world: World, resume_required: bool) -> None:
    """Train in `run_dir` under its lock: resume what is there, skip it when finished, refuse another run."""
    metadata = check_data(config)  # before anything is created
    check_batch_fits(config, metadata[0], world)
    data = data_identities(metadata)
    if from_main(world, lambda: finished_already(run_dir, config, resume_required, data)):
        if world.is_main:
            print(f"{run_dir} already finished: {(run_dir / RESULT_NAME).read_text()}")
        return
    check_memory_fits(config, len(metadata[0]["classes"]), world)  # a finished run needs no probe model
    versions = gather_to_main(world, (socket.gethostname(), code_version()))
    from_main(world, lambda: check_same_code(versions))
    from_main(world, lambda: check_run_room(config, len(metadata[0]["classes"]), run_dir))  # rank 0 writes
    if world.is_main:
        make_run_dir(run_dir)
    with RunLock(run_dir) if world.is_main else contextlib.nullcontext():
        if world.is_main:
            removed = remove_stale_temporaries(run_dir)
            if removed:
                print(f"removed {len(removed)} temporary file(s) left by dead processes: "
                      f"{', '.join(path.name for path in removed)}")
            write_text_atomic(run_dir / CONFIG_NAME, describe(config))
            write_text_atomic(run_dir / DATA_NAME, json.dumps(data, indent=1) + "\n")
            code = f"\ncode {code_version()} (pipeline/provenance.py)" if code_version() else ""
            print(f"run directory {run_dir}\n{describe(config)}\n{world.describe()}{code}", flush=True)
            notes = (recipe_shortfalls(config) + upscaling_notes(config, dict(zip(DATA_KEYS, metadata)))
                     + [page_cache_note(config, memory_bytes())])
            for note in filter(None, notes):
                print(f"note: {note}", flush=True)
        barrier()
        result = train(config, run_dir, world, metadata, data)
    if world.is_main:
        print(json.dumps(result))


class ValidationOutOfMemoryError(Exception):
    """The val pass of a training run (0-based `epoch`) ran out of GPU memory: the val batch is to blame."""

    def __init__(self, epoch: int):
        super().__init__(epoch)
        self.epoch = epoch


def out_of_memory(config: Dict[str, Any], world: World, evaluating: bool,
                  in_training: Optional[ValidationOutOfMemoryError] = None) -> UserError:
    """A batch too large for this GPU (a recipe from a bigger one), in one line that says what to change: it was
    CUDA's traceback. Whatever finished stays: the checkpoint of the last finished epoch. A training run's val
    pass (`in_training`) was said to be the training batch's fault: it is the val batch's, which a run may resume
    with another value of."""
    device, where = world.device, str(world.device)
    if device.type == "cuda":
        where = f"{torch.cuda.get_device_name(device)}, {torch.cuda.mem_get_info(device)[1] / 2**30:.0f} GiB"
    if in_training is not None:
        return UserError(f"out of GPU memory ({where}) validating epoch {in_training.epoch + 1} at "
                         f"validation.batch_size {config['validation.batch_size']}: run the same command with a "
                         f"lower --validation.batch_size (epoch {in_training.epoch + 1} is trained again; the epochs "
                         "before it are kept)")
    if evaluating:
        return UserError(f"out of GPU memory ({where}) at validation.batch_size {config['validation.batch_size']}: "
                         "lower --validation.batch_size")
    advice = "lower --training.batch_size (a new run: the lr follows the global batch)"
    if compile_used(config, world) == "reduce-overhead":
        advice += (", or pass --training.compile=default (CUDA graphs keep a memory pool of their own; a run may "
                   "resume with it)")
    return UserError(f"out of GPU memory ({where}) at training.batch_size {config['training.batch_size']} per GPU, "
                     f"up to {config['resolution.max_res']} px: {advice}")


@sigterm_as_ctrl_c()
def main(argv: List[str]) -> int:
    try:
        args, config, explicit = parse_command_line(argv)
        code_version()  # taken now, the code this process imported: an edit made while it trains is not it
        world = init_world(config["dist.backend"], config["dist.timeout_min"])
        compile_used(config, world)  # settings that cannot run here fail before the run directory exists
        se_kernel_used(config, world)
        choose_precision(config["training.precision"], world.device)
        if args.eval_only:
            try:
                metrics = evaluate_weights(config, args.weights, world, explicit)
            except KeyboardInterrupt as interrupt:
                return report_stop("train.py", interrupt, "--eval-only writes no file, so nothing is lost",
                                   world.is_main)
            if world.is_main:
                print(f"{args.weights}: val top-1 {metrics['val_top1']:.2f} top-5 {metrics['val_top5']:.2f} "
                      f"on {metrics['val_images']} images")
                print(json.dumps(metrics))
            return 0
        run_dir = Path(config["logging.run_dir"]) if config["logging.run_dir"] else default_run_dir(config, args.cfg)
        try:
            run_in_directory(config, run_dir, world, args.resume)
        except KeyboardInterrupt as interrupt:  # Ctrl-C, SIGTERM: what is kept, not where the interpreter was
            return report_stop("train.py", interrupt, f"the epochs finished so far are kept in {run_dir}: the same "
                               "command resumes after the last of them", world.is_main)  # torchrun stops every rank
        return 0
    except KeyboardInterrupt as interrupt:  # before either started: in init_world, which waits for every process
        return report_stop("train.py", interrupt, "training had not started: nothing was written")
    except UserError as error:
        return report_user_error("train.py", error)
    except torch.cuda.OutOfMemoryError:
        return report_user_error("train.py", out_of_memory(config, world, args.eval_only))
    except ValidationOutOfMemoryError as error:
        return report_user_error("train.py", out_of_memory(config, world, False, error))
    except NonFiniteLossError as error:
        print(f"train.py: {error}", file=sys.stderr)
        return 1
    finally:
        close_world()
