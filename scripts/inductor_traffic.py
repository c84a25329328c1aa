"""Kernels and bytes of the code torch.compile generates for one SE tail on a GPU, on a machine without one.

    python scripts/inductor_traffic.py                          # every squeeze, ResNet-50 layer1 at 192 px
    python scripts/inductor_traffic.py --squeezes gap,gmp --stage layer3 --batch 128
    python scripts/inductor_traffic.py --squeezes gmp --downsample      # a stage's first block
    python scripts/inductor_traffic.py --squeezes gap,gmp --network     # a whole ResNet-50 step (~50 s a model)
    python scripts/inductor_traffic.py --squeezes gap,gmp --instructions    # and SASS per element (~25 s a tail)

One SE tail, forward + backward (relu(SE(BN(z)) + identity), bf16 autocast, channels_last), compiled by
inductor for each implementation that inductor generates the kernels of: torchvision's plain tail
relu(BN(z) + identity) as the peer, the torch reference ops (`torch`) and the fused algorithm in torch ops
(`closed-form`). The Triton kernels are custom ops, extern to inductor, and not counted here. Inductor's
scheduler and Triton code generator run as they would for a CUDA device (its `triton` backend for CPU
tensors); nothing is compiled for or run on a device: each generated kernel's source is kept, with the bytes
inductor's own estimate says it moves (`kernel_num_gb`). At the memory ceiling a compiled tail's GPU time
follows its bytes; each kernel also costs a launch (a few microseconds, less in a CUDA graph).

With --instructions each pass over the big tensors is also compiled for sm90 with Triton's ptxas and counted in
SASS instructions per element and per byte (generated_instructions.py): a pass issuing more per byte than the GPU
issues per byte of bandwidth (H100 SXM ~8.8, H200 ~6.2) is bound by its arithmetic, whatever its bytes.

The reference's measured default-mode compile on an H200 followed this count: gap 0.85x torchvision,
gmp and std 0.66x (benchmarks/RESULTS.md). Bytes say nothing about the convolutions, which every arm shares.
"""
import argparse
import contextlib
import functools
import io
import json
import math
import os
import sys
from pathlib import Path
from typing import Dict, Tuple

import torch
import torch._functorch.config as functorch_config
import torch._inductor.config as inductor_config
import torch.utils._triton as triton_utils
import torchvision
from torch import nn
from torch._inductor import async_compile

from pipeline.acceleration import build_per_size_tensors
from pipeline.models import SqueezeExcite, build_model
from pipeline.squeeze import MultiSpectralSqueeze, squeeze_names

# channels and spatial stride of ResNet-50's stages (the SE tails are at the bottleneck's output width)
STAGES = {"layer1": (256, 4), "layer2": (512, 8), "layer3": (1024, 16), "layer4": (2048, 32)}
PLAIN = "plain BN + add + ReLU"


class CodegenOnly(RuntimeError):
    """Raised where the compiled tail would launch its first kernel: the code is generated, nothing runs."""


class _NotRun:
    def run(self, *args, **kwargs):
        raise CodegenOnly("kernels are generated here, not run")


def generate_for_gpu() -> Dict[Tuple[str, str], str]:
    """Make inductor generate Triton code for CPU tensors as for a GPU, forward and backward at the first call,
    and keep each kernel's source in the returned dict instead of compiling it, under (the generated module,
    the kernel's name): a module may be loaded more than once, and inductor may start compiling a kernel while
    it generates the module; each kernel the module defines counts once."""
    generated = {}
    inductor_package = os.path.dirname(torch._inductor.__file__)
    inductor_config.cpu_backend = "triton"
    inductor_config.benchmark_kernel = True  # puts inductor's byte estimate into each kernel's metadata
    inductor_config.fx_graph_cache = False  # a cached graph would skip code generation
    functorch_config.force_non_lazy_backward_lowering = True  # the backward at the first call, not at .backward
    triton_utils.triton_hash_with_backend = lambda: "no-device"  # asks the driver for its target otherwise

    def keep(self, kernel_name, source_code, *args, **kwargs):
        module = sys._getframe(1).f_globals.get("__file__", "")
        if not module.startswith(inductor_package):  # the generated module defining the kernel, loaded
            generated[module, kernel_name] = source_code
        return _NotRun()

    async_compile.AsyncCompile.triton = keep
    return generated


def kernel_gigabytes(source: str) -> float:
    """Inductor's estimate of the bytes one kernel moves, from its metadata."""
    marker = "'kernel_num_gb': "
    at = source.find(marker)
    if at < 0:
        raise RuntimeError("inductor's generated kernel carries no 'kernel_num_gb' (has its metadata changed?)")
    return float(source[at + len(marker):].split(",", 1)[0])


def tail_function(implementation: str, squeeze: str, z: torch.Tensor, downsample: bool):
    """The tail to compile: (z, identity) -> out; with `downsample` the identity is a downsample conv's output,
    which goes through its BN first (a stage's first block)."""
    bn, identity_bn = nn.BatchNorm2d(z.shape[1]), nn.BatchNorm2d(z.shape[1]) if downsample else None
    if implementation == PLAIN:
        return lambda z, identity: torch.relu(bn(z) + (identity_bn(identity) if downsample else identity))
    se = SqueezeExcite(z.shape[1], squeeze, kernel=implementation)
    if isinstance(se.squeeze, MultiSpectralSqueeze):
        se.squeeze.kernel_filters(z)  # built and cached at the first step of training: not a kernel of every step
    return lambda z, identity: se.tail(z, bn, identity, identity_bn)


def traffic(generated: dict, implementation: str, squeeze: str, shape: tuple, downsample: bool) -> Tuple[int, float]:
    """(kernel launches, GB) of one tail's compiled forward + backward."""
    z, identity = (torch.randn(shape, dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
                   .requires_grad_() for _ in range(2))
    tail = tail_function(implementation, squeeze, z, downsample)

    def step(z, identity):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return tail(z, identity)

    return compiled_traffic(generated, step, (z, identity), f"{implementation} {squeeze}")


def network_traffic(generated: dict, implementation: str, squeeze: str, batch: int, res: int) -> Tuple[int, float]:
    """(kernel launches, GB) of a whole ResNet-50 training step's compiled forward + backward (the
    convolutions are extern kernels, not counted): torchvision's for PLAIN, else SE-ResNet-50's."""
    torch.manual_seed(0)
    model = torchvision.models.resnet50() if implementation == PLAIN else build_model(
        "resnet50", squeeze, se_kernel=implementation)
    model = model.to(memory_format=torch.channels_last).train()
    images = torch.randn(batch, 3, res, res).contiguous(memory_format=torch.channels_last)
    build_per_size_tensors(model, images)  # fca's filters, built before tracing as in training

    def step(images):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return model(images).float().logsumexp(1).mean()

    return compiled_traffic(generated, step, (images,), f"{implementation} {squeeze}")


def compiled_traffic(generated: dict, step, inputs: tuple, label: str) -> Tuple[int, float]:
    """(kernel launches, GB) of the forward and backward modules inductor generates for `step` in one graph."""
    torch._dynamo.reset()
    generated.clear()
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # benchmark_kernel prints each module's path
            torch.compile(step, fullgraph=True)(*inputs)
    except CodegenOnly:
        pass
    modules = {module for module, _ in generated}
    if len(modules) != 2:
        raise RuntimeError(f"{label}: expected a forward and a backward module, got {sorted(modules)}")
    return launches(generated)


def launches(generated: Dict[Tuple[str, str], str]) -> Tuple[int, float]:
    """(kernel launches, GB) of the generated modules. Inductor defines a kernel once where nodes share its source
    (the same reduction over two tensors of one shape) and launches it for each: its launches are counted in the
    module's wrapper code, which follows the kernels' definitions."""
    count, gigabytes = 0, 0.0
    for (module, name), source in generated.items():
        code = Path(module).read_text()
        marker = "async_compile.wait(globals())"
        if marker not in code:
            raise RuntimeError(f"{module}: no '{marker}' line before its wrapper code (has inductor's output changed?)")
        calls = code[code.rindex(marker):].count(f"{name}.run(")
        count += calls
        gigabytes += calls * kernel_gigabytes(source)
    return count, gigabytes


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--squeezes", default=",".join(squeeze_names(include_baseline=False)))
    parser.add_argument("--implementations", default="torch,closed-form")
    parser.add_argument("--stage", choices=STAGES, default="layer1")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--res", type=int, default=192)
    parser.add_argument("--downsample", action="store_true",
                        help="a stage's first block: the identity is the downsample conv's output, through its BN")
    parser.add_argument("--network", action="store_true",
                        help="a whole ResNet-50 training step against torchvision's (about 50 s per model)")
    parser.add_argument("--instructions", action="store_true",
                        help="also each big kernel's SASS instructions per element and per byte, compiled for sm90 "
                             "(generated_instructions.py; not with --network)")
    args = parser.parse_args(argv)
    if args.instructions and args.network:
        parser.error("--instructions counts one tail's kernels; leave out --network")
    generated = generate_for_gpu()
    if args.network:
        measure = functools.partial(network_traffic, generated, batch=args.batch, res=args.res)
        peer = "torchvision resnet50"
        print(f"a ResNet-50 training step, forward + backward, batch {args.batch} at {args.res} px, bf16 "
              "channels_last: inductor's Triton code for a GPU (convolutions not counted)")
    else:
        channels, stride = STAGES[args.stage]
        shape = (args.batch, channels, args.res // stride, args.res // stride)
        measure = functools.partial(traffic, generated, shape=shape, downsample=args.downsample)
        peer = PLAIN
        block = "a stage's first block (downsample BN)" if args.downsample else "a block"
        print(f"the SE tail of {block}, forward + backward, {args.stage} {'x'.join(map(str, shape))} bf16 "
              "channels_last: inductor's Triton code for a GPU")
    print(f"{'implementation':22s} {'squeeze':8s} {'kernels':>7s} {'GB':>7s} {'x peer':>7s}")
    plain_kernels, plain_gb = measure(PLAIN, "")
    print(f"{peer:22s} {'-':8s} {plain_kernels:7d} {plain_gb:7.3f} {1:7.2f}", flush=True)
    count = instruction_counter(generated, math.prod(shape)) if args.instructions else None
    instructions = {PLAIN: count()} if count else {}
    rows: Dict[str, Dict[str, list]] = {}
    for implementation in args.implementations.split(","):
        for squeeze in args.squeezes.split(","):
            kernels, gigabytes = measure(implementation, squeeze)
            rows.setdefault(implementation, {})[squeeze] = [kernels, round(gigabytes, 3)]
            print(f"{implementation:22s} {squeeze:8s} {kernels:7d} {gigabytes:7.3f} {gigabytes / plain_gb:7.2f}",
                  flush=True)
            if count:
                instructions[f"{implementation} {squeeze}"] = count()
    scope = "network" if args.network else {"stage": args.stage, "downsample": args.downsample}
    summary = {"scope": scope, "batch": args.batch, "res": args.res, "plain": [plain_kernels, round(plain_gb, 3)],
               "tails": rows}
    if count:
        summary["instructions"] = instructions
    print(json.dumps(summary))
    return 0


# the passes over the big tensors; the (B, C) steps move a few MB each
BIG_KERNEL_SHARE = 0.05


def instruction_counter(generated: dict, elements: int):
    """A function that prints and returns, for the tail measured last, each kernel moving at least BIG_KERNEL_SHARE
    of its bytes: [kind, GB, SASS instructions per element, per byte, launch] (generated_instructions.py),
    `elements` being the big tensors' size."""
    import generated_instructions  # compiles with Triton's ptxas: only when asked

    def count() -> list:
        sizes = {name: kernel_gigabytes(source) for (_, name), source in generated.items()}
        rows = []
        for (_, name), source in sorted(generated.items(), key=lambda item: -sizes[item[0][1]]):
            if sizes[name] < BIG_KERNEL_SHARE * sum(sizes.values()):
                continue
            per_element, launch = generated_instructions.fewest_instructions(source, name)
            per_byte = per_element * elements / (sizes[name] * 1e9)
            kind = generated_instructions.launch_metadata(source)[0]
            print(f"    {kind:20s} {sizes[name]:6.3f} GB {per_element:6.1f} instr/element {per_byte:5.1f} instr/byte"
                  f"  ({launch})", flush=True)
            rows.append([kind, round(sizes[name], 3), round(per_element, 1), round(per_byte, 2), launch])
        return rows

    return count


if __name__ == "__main__":
    if os.environ.get("TRITON_INTERPRET") == "1":
        sys.exit("inductor_traffic.py: unset TRITON_INTERPRET (it generates code for a GPU, it runs none)")
    sys.exit(main())
