"""The SE block tail alone, per ResNet-50 stage: fused kernels vs the torch ops vs the plain BN + add + ReLU.

    python benchmarks/bench_se_tail.py                 # GPU: rn50 stage shapes at 192 px, batch 256, bf16
    python benchmarks/bench_se_tail.py --squeezes gap,gmp --batch 128 --res 224

One measurement = forward + backward of relu(SE(BN(z)) + identity) on channels_last bf16 tensors of a stage's
shape (median of CUDA-event timings after warm-up). The peer is torchvision's tail relu(BN(z) + identity) in
the same run; `GB/s` counts the bytes the fused tail moves (z read 4 times, identity once, out written and read
once, dout read once, d_identity written and read once, dz written once: 11 passes). `host ms` is the
CPU time of issuing one forward + backward without waiting for the GPU: where it exceeds the GPU time, the
tail is bound by launches, not by memory. Per stage, the first block's tail (identity = the downsample conv's
output) with that BN folded into the kernels against the BN in torch before them. Last, where a gap tail's
host time goes: autograd and the module, the kernels' launcher, Triton's launches.
"""
import argparse
import json
import sys
import time
from typing import List, Optional
from unittest import mock

from pipeline.gc_freeze import imports_frozen

with imports_frozen(as_a_script=__name__ == "__main__"):  # as train.py runs (pipeline/gc_freeze.py)
    import torch
    from torch import nn

    from cli import at_least, names_from  # siblings: benchmarks run as scripts
    from kernel_profile import kernel_times, print_kernel_times
    from pipeline.kernels.layout import SQUEEZE_MODES
    from pipeline.models import SqueezeExcite
    from pipeline.squeeze import STD_EPS, squeeze_names

STAGES = {"layer1": (256, 4), "layer2": (512, 8), "layer3": (1024, 16), "layer4": (2048, 32)}  # channels, stride
TAIL_PASSES = 11


def median_ms(work, repeats: int) -> float:
    for _ in range(3):
        work()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        work()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def host_ms(work, repeats: int) -> float:
    """CPU time to issue one call (the launches are queued, not waited for): the host cost of a tail."""
    work()
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(repeats):
        work()
    elapsed = time.perf_counter() - started
    torch.cuda.synchronize()
    return 1000 * elapsed / repeats


def tail_step(tail, z, identity, grad):
    def work():
        z.grad = identity.grad = None
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = tail(z, identity)
        out.backward(grad)
    return work


def copy_bandwidth(tensor) -> float:
    """GB/s of a device-to-device copy (bytes read + written): the memory ceiling of this GPU, measured."""
    target = torch.empty_like(tensor)
    milliseconds = median_ms(lambda: target.copy_(tensor), 20)
    return 2 * tensor.numel() * tensor.element_size() / milliseconds / 1e6


def print_tail_kernels(work, label: str) -> None:
    """GPU time per kernel of one call of `work`, to see which kernel a tail spends on."""
    print_kernel_times(kernel_times(work), f"one {label}")


def time_downsample_fold(se, bn, z, identity, grad, repeats: int, stage: str) -> dict:
    """A stage's first block, whose identity is the downsample conv's output: the fused tail with that BN
    folded in against the BN in torch feeding the fused tail (what a model without the fold runs)."""
    identity_bn = nn.BatchNorm2d(z.shape[1]).cuda()
    se.set_kernel("triton")
    folded = median_ms(tail_step(lambda a, b: se.tail(a, bn, b, identity_bn), z, identity, grad), repeats)
    separate = median_ms(tail_step(lambda a, b: se.tail(a, bn, identity_bn(b)), z, identity, grad), repeats)
    print(f"{stage:7s} downsample block, {se.squeeze_name}: BN folded {folded:.3f} ms, BN in torch {separate:.3f} ms "
          f"(folded {separate / folded:.2f}x faster)")
    return {"squeeze": se.squeeze_name, "folded_ms": folded, "separate_ms": separate}


def host_breakdown(z, identity, grad, repeats: int) -> dict:
    """Host µs of one gap tail, forward + backward: through the module and autograd, through se_launch called
    directly (its launches direct, as training runs them, and through Triton's run), and through se_launch with
    Triton's launches stubbed out (its Python and allocations only). The differences are autograd's and the
    module's share, and the cost of the eight launches each way (pipeline/kernels/direct_launch.py)."""
    import triton  # here, not at the top: without a GPU (or triton) the script says so and exits first

    from pipeline.kernels import direct_launch, se_launch
    se = SqueezeExcite(z.shape[1], "gap", kernel="triton").to(z.device)
    bn = nn.BatchNorm2d(z.shape[1]).to(z.device)
    weights = (bn.weight, bn.bias, bn.running_mean, bn.running_var, se.excite[0].weight, se.excite[2].weight)
    z, identity = z.detach(), identity.detach()

    def direct():
        out, work = se_launch.forward(z, identity, *weights, None, None, None, SQUEEZE_MODES["gap"], True, bn.eps,
                                      STD_EPS)
        se_launch.backward(grad, out, z, work, bn.weight, bn.bias, *weights[4:], None, None, None, None,
                           SQUEEZE_MODES["gap"], True, STD_EPS)

    module = 1000 * host_ms(tail_step(lambda a, b: se.tail(a, bn, b), z.clone().requires_grad_(),
                                      identity.clone().requires_grad_(), grad), repeats)
    launcher = 1000 * host_ms(direct, repeats)
    with mock.patch.object(direct_launch, "ENABLED", False):
        through_triton = 1000 * host_ms(direct, repeats)
        with mock.patch.object(triton.runtime.jit.JITFunction, "run", lambda *args, **kwargs: None):
            python = 1000 * host_ms(direct, repeats)
    launches, triton_launches = launcher - python, through_triton - python
    print(f"host us per gap tail, forward + backward: module and autograd {module:.0f}, se_launch {launcher:.0f} "
          f"({through_triton:.0f} through Triton's run), se_launch with launches stubbed {python:.0f}; so 8 launches "
          f"{launches:.0f} ({launches / 8:.0f} each; {triton_launches / 8:.0f} through Triton's run), autograd and "
          f"the module {module - launcher:.0f}")
    return {"module_us": module, "se_launch_us": launcher, "through_triton_us": through_triton, "python_us": python,
            "per_launch_us": launches / 8, "per_triton_launch_us": triton_launches / 8}


def parse_arguments(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """The command line, checked before anything runs (the device check's commands are tested here)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    squeezes = squeeze_names(include_baseline=False)
    parser.add_argument("--squeezes", default=",".join(squeezes), type=names_from(squeezes))
    parser.add_argument("--batch", type=at_least(1), default=256)
    parser.add_argument("--res", type=at_least(32), default=192)
    parser.add_argument("--repeats", type=at_least(1), default=20)
    parser.add_argument("--profile", default="layer1,layer4", type=names_from([*STAGES, "none"]),
                        help="stages whose kernels are listed, comma-separated (or none)")
    return parser.parse_args(argv)


def main() -> None:
    args = parse_arguments()
    if not torch.cuda.is_available():
        print("bench_se_tail.py: needs a CUDA GPU (the fused kernels' speed is a GPU figure)", file=sys.stderr)
        sys.exit(2)
    results, profiled = {}, args.profile.split(",")
    print(f"{'stage':7s} {'squeeze':8s} {'torch ms':>9s} {'fused ms':>9s} {'plain ms':>9s} {'fused/plain':>11s} "
          f"{'fused GB/s':>10s} {'host fused/plain ms':>19s}")
    for stage, (channels, stride) in STAGES.items():
        side = args.res // stride
        shape = (args.batch, channels, side, side)
        make = lambda: torch.randn(shape, device="cuda", dtype=torch.bfloat16).contiguous(  # noqa: E731
            memory_format=torch.channels_last)
        z, identity, grad = make().requires_grad_(), make().requires_grad_(), make()
        bn = nn.BatchNorm2d(channels).cuda()
        plain_step = tail_step(lambda a, b: torch.relu(bn(a) + b), z, identity, grad)
        plain, plain_host = median_ms(plain_step, args.repeats), host_ms(plain_step, args.repeats)
        for squeeze in args.squeezes.split(","):
            se = SqueezeExcite(channels, squeeze).cuda()
            timings = {}
            for kernel in ("torch", "triton"):
                se.set_kernel(kernel)
                timings[kernel] = median_ms(tail_step(lambda a, b: se.tail(a, bn, b), z, identity, grad),
                                            args.repeats)
            fused_host = host_ms(tail_step(lambda a, b: se.tail(a, bn, b), z, identity, grad), args.repeats)
            bandwidth = TAIL_PASSES * z.numel() * z.element_size() / timings["triton"] / 1e6
            results[f"{stage}/{squeeze}"] = {"torch_ms": timings["torch"], "triton_ms": timings["triton"],
                                             "plain_ms": plain, "triton_gb_s": round(bandwidth),
                                             "triton_host_ms": round(fused_host, 3),
                                             "plain_host_ms": round(plain_host, 3)}
            print(f"{stage:7s} {squeeze:8s} {timings['torch']:9.3f} {timings['triton']:9.3f} {plain:9.3f} "
                  f"{timings['triton'] / plain:11.2f} {bandwidth:10.0f} {fused_host:9.3f}/{plain_host:.3f}")
            if stage in profiled:
                print_tail_kernels(tail_step(lambda a, b: se.tail(a, bn, b), z, identity, grad),
                                   f"{stage} {squeeze} fused tail")
        results[f"{stage}/downsample"] = time_downsample_fold(se, bn, z, identity, grad, args.repeats, stage)
        if stage in profiled:
            print_tail_kernels(tail_step(lambda a, b: torch.relu(bn(a) + b), z, identity, grad), f"{stage} plain tail")
            print(f"copy ceiling: {copy_bandwidth(z.detach()):.0f} GB/s")
    results["host"] = host_breakdown(z, identity, grad, args.repeats)
    print(json.dumps({"device": torch.cuda.get_device_name(), "batch": args.batch, "res": args.res,
                      "results": results}))


if __name__ == "__main__":
    main()
