"""Projected wall time of a recipe on N GPUs with C CPU cores, from measured per-GPU and per-core throughput.

    python benchmarks/project.py --cfg recipes/rn50_88ep.yaml --gpus 8 --cores 128
    python benchmarks/project.py --cfg recipes/rn18_16ep.yaml --gpus 1 --cores 16 --model-img-s 20000

Each epoch runs at the slower of the GPUs (model throughput at 192 px, scaled by pixel count to the epoch's
resolution, times the GPU count and a scaling efficiency) and the loader (img/s per core times cores).
Validation: 50,000 images, two forward passes with flip TTA, a forward pass ~1/3 of a training step.
Defaults are the H200 and 16-core figures in benchmarks/RESULTS.md; every assumption is printed.
"""
import argparse
import sys
from pathlib import Path

from cli import at_least, fraction, positive  # a sibling module: benchmarks run as scripts
from pipeline.config import ConfigError, resolution_settings, resolve
from pipeline.data import resolution_at

IMAGENET_TRAIN, IMAGENET_VAL = 1_281_167, 50_000
# per GPU at 192 px, bf16 (REFERENCE §4, H200): plain SE-ResNet-50 gap compiled; timm seresnet18 eager
DEFAULT_MODEL_IMG_S = {"resnet50": 7_496, "resnet18": 13_887}
# this project's loader (ffcv, its numba resize), 500 px / 0.5 / q90, RRC 176: 15,728 img/s on 16 cores of the H200
# machine (`bench_loader.py --quick`, 3.38x torchvision's 4,646; benchmarks/RESULTS.md, 2026-11-27 nineteenth session)
DEFAULT_LOADER_PER_CORE = 983


def project(config: dict, gpus: int, cores: int, model_img_s: float, loader_per_core: float,
            scaling: float) -> list:
    """Per epoch: (epoch, resolution, seconds, bottleneck)."""
    rows = []
    loader = loader_per_core * cores
    for epoch in range(config["training.epochs"]):
        res = resolution_at(epoch, *resolution_settings(config))
        model = model_img_s * (192 / res) ** 2 * gpus * (scaling if gpus > 1 else 1.0)
        train_seconds = IMAGENET_TRAIN / min(model, loader)
        passes = 2 if config["validation.flip_tta"] else 1
        val_model = model_img_s * 3 / passes * (192 / config["resolution.val_res"]) ** 2 * gpus
        val_seconds = IMAGENET_VAL / min(val_model, loader)
        rows.append((epoch + 1, res, train_seconds + val_seconds, "GPU" if model < loader else "loader"))
    return rows


def main(argv) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cfg", type=Path, required=True)
    parser.add_argument("--gpus", type=at_least(1), default=8)
    parser.add_argument("--cores", type=at_least(1), default=128, help="CPU cores feeding the loaders (all nodes)")
    parser.add_argument("--model-img-s", type=positive, help="training img/s of one GPU at 192 px")
    parser.add_argument("--loader-img-s-per-core", type=positive, default=DEFAULT_LOADER_PER_CORE)
    parser.add_argument("--scaling", type=fraction, default=0.95, help="multi-GPU efficiency (DDP all-reduce)")
    args = parser.parse_args(argv)
    try:
        config = resolve(args.cfg, {})
    except ConfigError as error:
        parser.error(str(error))
    arch = config["model.arch"]
    model_img_s = args.model_img_s or DEFAULT_MODEL_IMG_S.get(arch, DEFAULT_MODEL_IMG_S["resnet50"])
    measured = "given" if args.model_img_s else (
        "measured" if arch in DEFAULT_MODEL_IMG_S else f"resnet50's: none measured for {arch}; pass --model-img-s")
    rows = project(config, args.gpus, args.cores, model_img_s, args.loader_img_s_per_core, args.scaling)
    total = sum(seconds for _, _, seconds, _ in rows)
    print(f"{args.cfg.name}: {config['model.arch']} {config['training.epochs']} epochs on {args.gpus} GPU(s) "
          f"and {args.cores} cores")
    print("assumptions:")
    print(f"  model: {model_img_s:,.0f} img/s per GPU at 192 px ({measured}), cost ∝ pixels, {args.scaling:.0%} "
          "multi-GPU efficiency")
    print(f"  loader: {args.loader_img_s_per_core:,.0f} img/s per core = {args.loader_img_s_per_core * args.cores:,.0f}"
          " img/s, independent of resolution (decode dominates)")
    print(f"  ImageNet: {IMAGENET_TRAIN:,} train + {IMAGENET_VAL:,} val images per epoch; no checkpoint or "
          "start-up cost")
    for resolution in sorted({res for _, res, _, _ in rows}):
        epochs = [row for row in rows if row[1] == resolution]
        print(f"  {len(epochs):3d} epochs at {resolution} px: {epochs[0][2]:6.1f} s each, bound by {epochs[0][3]}")
    print(f"projected wall time: {total / 60:.1f} min ({total / 3600:.2f} h)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
