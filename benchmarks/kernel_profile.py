"""Where a step's device time goes: time per kernel from torch.profiler, and kernels grouped by who wrote them.

A model that is slower than its peer either keeps the GPU busy longer (then the groups say whose kernels
cost more: convolutions and matmuls, inductor's generated code, the fused SE kernels' activation passes or
their small latency-bound kernels, copies) or leaves it idle between kernels (host-bound: busy time below
step time). On a machine without a GPU the same tables list CPU time per aten op, so the code path is
checked where device time is not spent.
"""
import re
from collections import defaultdict

import torch

GROUPS = ("conv/matmul", "inductor", "SE passes", "SE small", "copy/fill", "other")
# the fused SE kernels that stream activations (memory-bound); the others (finalize, excitation) do microseconds
# of work on (B, C) rows, bound by their latency: a step losing time there needs fewer or shorter chains
SE_PASS_KERNELS = frozenset({"z_stats_kernel", "apply_kernel", "grad_reduce_kernel", "grad_apply_kernel"})
# (fft: the FFT convolutions cuDNN's autotuner may pick, named without "cudnn")
_CONV_OR_MATMUL = re.compile(r"conv|gemm|xmma|cutlass|cudnn|cublas|dgrad|wgrad|fprop|implicit|winograd|fft|"
                             r"addmm|aten::mm|aten::bmm", re.IGNORECASE)
_COPY = re.compile(r"memcpy|memset|copy|fill", re.IGNORECASE)


def _se_kernel_names() -> frozenset:
    try:
        from pipeline.kernels import se_backward, se_forward
    except ImportError:  # no triton: no fused kernel can have run
        return frozenset()
    return frozenset(name for module in (se_forward, se_backward) for name in vars(module) if name.endswith("_kernel"))


def group_of(kernel: str, se_kernels: frozenset) -> str:
    """The group of a kernel name (GROUPS): the fused SE kernels by their Triton names (activation passes
    apart from the small kernels), inductor's by its `triton_` prefix, vendor convolutions and matmuls by
    their library's naming."""
    if kernel in se_kernels:
        return "SE passes" if kernel in SE_PASS_KERNELS else "SE small"
    if kernel.startswith("triton_"):
        return "inductor"
    if _CONV_OR_MATMUL.search(kernel):
        return "conv/matmul"
    if _COPY.search(kernel):
        return "copy/fill"
    return "other"


def kernel_times(work, calls: int = 1) -> dict:
    """Microseconds per call of `work` for each kernel it runs (CPU: each aten op's own CPU time)."""
    from torch.profiler import ProfilerActivity, profile
    cuda = torch.cuda.is_available()
    with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as profiler:
        for _ in range(calls):
            work()
        if cuda:
            torch.cuda.synchronize()
    times = {}
    for event in profiler.key_averages():
        spent = event.device_time_total if cuda else event.self_cpu_time_total
        if spent > 0:
            times[event.key] = spent / calls
    return times


def group_times(times: dict) -> dict:
    """Microseconds per group (every group present, in GROUPS order)."""
    se_kernels = _se_kernel_names()
    grouped = defaultdict(float)
    for kernel, spent in times.items():
        grouped[group_of(kernel, se_kernels)] += spent
    return {group: grouped[group] for group in GROUPS}


def print_kernel_times(times: dict, label: str, top: int = 12) -> None:
    print(f"-- kernels of {label} ({'GPU' if torch.cuda.is_available() else 'CPU'} microseconds)")
    for kernel, spent in sorted(times.items(), key=lambda item: -item[1])[:top]:
        print(f"   {spent:9.1f}  {kernel[:90]}")
