"""CPU training steps with torch's convolutions against the small maps' GEMM weight gradients, in the same run.

    python benchmarks/bench_cpu_convolution.py                     # SE-ResNet-18 gap, 32 px (the demo's), batch 64
    python benchmarks/bench_cpu_convolution.py --res 32,64 --arch resnet50 --batch 16

Both models are one SE-ResNet; one has its convolutions switched as training switches them on the CPU
(pipeline/cpu_convolution.py). Steps are bench_model.py's (forward + backward + SGD, fp32, channels_last), timed
in rounds in turn (median). Last, a JSON line of the switched model's speed over the other's per resolution.
"""
import argparse
import json
from typing import List, Optional

from pipeline.gc_freeze import imports_frozen

with imports_frozen(as_a_script=__name__ == "__main__"):  # as train.py runs (pipeline/gc_freeze.py)
    import torch
    from bench_model import measure_in_rounds  # siblings: benchmarks run as scripts
    from cli import at_least, names_from, resolutions

    from pipeline.cpu_convolution import use_gemm_weight_gradients
    from pipeline.models import ARCHITECTURES, build_model
    from pipeline.squeeze import squeeze_names

CPU = torch.device("cpu")
TORCH, GEMM = "torch convolutions", "GEMM weight gradients"


def parse_arguments(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="resnet18", choices=list(ARCHITECTURES))
    parser.add_argument("--squeeze", default="gap", type=names_from(squeeze_names()))
    parser.add_argument("--res", default="32", type=resolutions, help="comma list, px")
    parser.add_argument("--batch", type=at_least(1), default=64)
    parser.add_argument("--steps", type=at_least(1), default=3)
    parser.add_argument("--warmup", type=at_least(0), default=1)
    parser.add_argument("--rounds", type=at_least(1), default=3, help="each model timed this many times in turn")
    parser.set_defaults(profile_steps=0, compile_cache=None)  # what bench_model's rounds read
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> dict:
    args = parse_arguments(argv)
    models = {TORCH: lambda: build_model(args.arch, args.squeeze),
              GEMM: lambda: switched(build_model(args.arch, args.squeeze))}
    ratios = {}
    print(f"{args.arch} {args.squeeze}, batch {args.batch}, CPU ({torch.get_num_threads()} threads), fp32, "
          "channels_last")
    for res in map(int, args.res.split(",")):
        measured = measure_in_rounds(models, args, CPU, "eager", res, {})
        torch_speed, gemm_speed = measured[TORCH][0], measured[GEMM][0]
        ratios[str(res)] = round(gemm_speed / torch_speed, 3)
        print(f"{res:4d} px: {TORCH} {torch_speed:.1f} img/s, {GEMM} {gemm_speed:.1f} img/s: "
              f"{ratios[str(res)]:.2f}x", flush=True)
    summary = {"arch": args.arch, "squeeze": args.squeeze, "batch": args.batch, "threads": torch.get_num_threads(),
               "gemm_vs_torch": ratios}
    print(json.dumps(summary))
    return summary


def switched(model: torch.nn.Module) -> torch.nn.Module:
    use_gemm_weight_gradients(model, CPU)
    return model


if __name__ == "__main__":
    main()
