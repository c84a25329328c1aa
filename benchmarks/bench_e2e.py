"""End to end: the real FFCV loader feeding a real training step, next to the loader alone and the model alone.

    python benchmarks/bench_e2e.py                  # GPU: se_resnet50 gap at 192 px, batch 256, bf16
    python benchmarks/bench_e2e.py --arch resnet18 --squeeze gmp --res 160 --compile max-autotune

All three are measured in the same run on the same beton (the real-photo benchmark set, written with the
ImageNet storage settings). Target: end to end >= 0.9 x min(loader alone, model alone).
"""
import argparse
import json
from pathlib import Path
from typing import List, Optional

from pipeline.gc_freeze import imports_frozen

with imports_frozen(as_a_script=__name__ == "__main__"):  # as train.py runs (pipeline/gc_freeze.py)
    import torch
    import torch.nn.functional as F
    from cli import at_least, names_from  # a sibling module: benchmarks run as scripts

    from dataset_prep.beton import WriteSettings, write_beton
    from dataset_prep.sample_set import photo_set_files
    from pipeline.acceleration import (Stopwatch, choose_precision, compile_mode_used, maybe_compile,
                                      tune_convolutions)
    from pipeline.config import COMPILE_MODES, resolve
    from pipeline.cores import usable_cores
    from pipeline.cpu_convolution import use_gemm_weight_gradients
    from pipeline.data import DeviceAugment, LoaderSettings, train_loader
    from pipeline.models import ARCHITECTURES, build_model
    from pipeline.optim import build_sgd_for
    from pipeline.squeeze import squeeze_names


def timed(batches, device, steps: int, warmup: int, work) -> float:
    """Images/s of `work(images, labels)` over `steps` batches after `warmup` batches (cycling the loader)."""
    done, images, watch = 0, 0, None
    while done < warmup + steps:
        for batch in batches():
            if done == warmup:
                watch = Stopwatch(device)
            work(*batch)
            done += 1
            images += batch[0].shape[0] if done > warmup else 0
            if done == warmup + steps:
                break
    return images / watch.elapsed()


def parse_arguments(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """The command line, checked before anything runs (the device check's commands are tested here)."""
    gpu = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="resnet50" if gpu else "resnet18", choices=list(ARCHITECTURES))
    parser.add_argument("--squeeze", default="gap", choices=squeeze_names())
    parser.add_argument("--res", type=at_least(16), default=192 if gpu else 64)
    parser.add_argument("--batch", type=at_least(1), default=256 if gpu else 32)
    parser.add_argument("--steps", type=at_least(1), default=200 if gpu else 10)
    parser.add_argument("--warmup", type=at_least(0), default=20 if gpu else 3)
    parser.add_argument("--workers", type=at_least(1), default=usable_cores())
    parser.add_argument("--compile", default="none", type=names_from(COMPILE_MODES),
                        help="torch.compile mode for the model, auto (as training.compile) or none")
    parser.add_argument("--per-class", type=at_least(1), default=1280 if gpu else 100, help="photos per class (10)")
    parser.add_argument("--data", type=Path, default=Path("data/bench_photos"))
    return parser.parse_args(argv)


def main() -> None:
    gpu = torch.cuda.is_available()
    args = parse_arguments()
    device = torch.device("cuda" if gpu else "cpu")
    tune_convolutions(device)  # as training does
    files = photo_set_files(args.data, args.per_class, seed=7)
    beton = args.data / f"train_{args.per_class}.beton"
    if not beton.exists():
        write_beton(files, [str(i) for i in range(10)], beton, WriteSettings(workers=args.workers), "bench", 0)
    loader = train_loader(str(beton), LoaderSettings(args.batch, args.workers, True, 3, 0), args.res, device, False)
    augment = DeviceAugment(flip=True).to(device)
    precision = choose_precision("auto", device)
    model = build_model(args.arch, args.squeeze, num_classes=10).to(device).to(memory_format=torch.channels_last)
    use_gemm_weight_gradients(model, device)  # as training does
    network = maybe_compile(model, compile_mode_used(args.compile, device, distributed=False))
    optimizer = build_sgd_for(model, 0.01, resolve(None, {}))  # training's, with the declared defaults

    def train_step(images, labels):
        images, labels = augment(images), labels.view(-1)  # the loader gives (B, 1) labels, as in the engine
        with precision.autocast():
            loss = F.cross_entropy(network(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    resident = next(iter(loader))
    results = {
        "loader_img_s": timed(lambda: loader, device, args.steps, args.warmup, lambda images, labels: augment(images)),
        "model_img_s": timed(lambda: [resident] * (args.steps + args.warmup), device, args.steps, args.warmup,
                             train_step),
        "e2e_img_s": timed(lambda: loader, device, args.steps, args.warmup, train_step),
    }
    results["e2e_vs_min"] = results["e2e_img_s"] / min(results["loader_img_s"], results["model_img_s"])
    name = torch.cuda.get_device_name() if gpu else f"CPU ({torch.get_num_threads()} threads)"
    print(f"\nse_{args.arch} {args.squeeze}, {args.res} px, batch {args.batch}, {precision.name}, "
          f"compile {args.compile}, {args.workers} loader threads, {name}")
    for key in ("loader_img_s", "model_img_s", "e2e_img_s"):
        print(f"  {key[:-6]:7s} {results[key]:9.0f} img/s")
    print(f"  end to end / min(loader, model) = {results['e2e_vs_min']:.2f} (target >= 0.9)")
    print(json.dumps({key: round(value, 3) for key, value in results.items()}
                     | {"device": name, "cudnn_benchmark": torch.backends.cudnn.benchmark}))


if __name__ == "__main__":
    main()
