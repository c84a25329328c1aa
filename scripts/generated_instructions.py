"""SASS instructions per element of the kernels inductor generates, compiled for a GPU on a machine without one.

Used by `inductor_traffic.py --instructions`. Inductor writes each kernel as Triton source under an autotuning
decorator that holds its launch metadata; here the kernel is compiled for sm90 by Triton's own ptxas with each
launch configuration inductor would time on such a GPU (reductions: its heuristics' configurations for a
132-SM Hopper; pointwise passes: tiles of 512 and 1024 elements), and counted as kernel_instructions.py counts
the fused kernels: a reduction's loop over H*W, a pointwise pass's whole kernel, per element. The fewest over
the configurations is reported, the one autotuning would most likely keep. At the memory ceiling a pass issues
fewer instructions per byte than the GPU issues per byte of bandwidth (H100 SXM ~8.8, H200 ~6.2).
"""
import ast
import contextlib
import importlib.util
import io
import tempfile
from pathlib import Path

from torch._inductor.heuristics.registry import get_codegen_heuristic
from torch._inductor.runtime.hints import DeviceProperties, ReductionHint

import compile_kernels  # first: it refuses TRITON_INTERPRET before triton is imported
import kernel_instructions

# what inductor's heuristics see on an H100/H200 (sm90: 132 SMs, 64K registers and 2048 threads per SM)
HOPPER = DeviceProperties(type="cuda", index=0, multi_processor_count=132, cc=90, major=9,
                          regs_per_multiprocessor=65536, max_threads_per_multi_processor=2048,
                          max_threads_per_block=1024, warp_size=32)
POINTWISE_LAUNCHES = ((dict(XBLOCK=1024), 4), (dict(XBLOCK=512), 4), (dict(XBLOCK=1024), 8))
# a persistent reduction holds all its positions at once (few of them: a late stage's 6 x 6 maps), no loop
KINDS = ("pointwise", "reduction", "persistent_reduction")


def launch_metadata(source: str) -> tuple:
    """(kind, keyword arguments) of the autotuning decorator over a generated kernel: one of KINDS, with its
    size_hints, triton_meta and inductor_meta (and a reduction's reduction_hint)."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name.startswith("triton_"):
            for decorator in node.decorator_list:
                if isinstance(decorator, ast.Call) and getattr(decorator.func, "attr", "") in KINDS:
                    names = {"ReductionHint": ReductionHint, "DeviceProperties": DeviceProperties, "set": set}
                    arguments = {keyword.arg: eval(compile(ast.Expression(keyword.value), "<meta>", "eval"), names)
                                 for keyword in decorator.keywords if keyword.arg != "filename"}
                    return decorator.func.attr, arguments
    raise RuntimeError(f"no decorator of {', '.join(KINDS)} over the generated kernel (has inductor's output "
                       "changed?)")


def jit_function(source: str, name: str, folder: Path):
    """The generated kernel as a plain Triton JITFunction: its module's imports and its body under @triton.jit,
    written to `folder` and imported (Triton reads a kernel's source from its file)."""
    header = source[:source.index("@triton_heuristics.")].replace("triton_helpers.set_driver_to_cpu()", "")
    body = source[source.index("@triton.jit"):source.index("\ndef get_args")]
    path = folder / f"{name}.py"
    path.write_text(header + "\n" + body + "\n")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, name)


def launches(kind: str, metadata: dict) -> list:
    """(constexprs, warps) of each launch configuration inductor would time on HOPPER."""
    if kind == "pointwise":
        return list(POINTWISE_LAUNCHES)
    triton_meta = dict(metadata["triton_meta"], device=HOPPER)
    heuristics = get_codegen_heuristic("reduction", "cuda")
    if kind == "persistent_reduction":
        configurations = heuristics.get_persistent_configs(
            size_hints=metadata["size_hints"], reduction_hint=metadata.get("reduction_hint", False),
            inductor_meta=metadata["inductor_meta"], triton_meta=triton_meta)
    else:
        configurations = heuristics.get_configs(
            size_hints=metadata["size_hints"], inductor_meta=metadata["inductor_meta"], triton_meta=triton_meta)
    unique = {(tuple(sorted(config.kwargs.items())), config.num_warps) for config in configurations}
    return [(dict(constexprs), warps) for constexprs, warps in sorted(unique)]


def compile_for_gpu(function, triton_meta: dict, constexprs: dict, warps: int, arch: int):
    """The kernel compiled for sm`arch` as a launch specialises it (inductor's divisibility hints)."""
    hints = triton_meta["configs"][0] if triton_meta.get("configs") else {}
    with contextlib.redirect_stdout(io.StringIO()):  # ptxas's log
        return compile_kernels.compile_typed(function, dict(triton_meta["signature"]), constexprs, hints, warps, arch)


def per_element(listing: tuple, constexprs: dict, warps: int, reduced: int) -> float:
    """SASS instructions per element of one compiled launch: a reduction's loop over its `reduced` positions
    (XBLOCK x R0_BLOCK elements an iteration), or the whole kernel where there is no loop (a pointwise pass; a
    reduction whose fixed trip count the compiler unrolled), over the elements each thread handles there."""
    labels, instructions = listing
    threads = 32 * warps
    loop = kernel_instructions.hot_loop(labels, instructions) if reduced > 1 else []
    if len(loop) > 2:  # not the branch-to-itself that pads the end of every kernel
        return len(loop) / (constexprs["XBLOCK"] * constexprs["R0_BLOCK"] / threads)
    return len(kernel_instructions.issued(instructions)) / (constexprs["XBLOCK"] * reduced / threads)


def fewest_instructions(source: str, name: str, arch: int = 90) -> tuple:
    """(SASS instructions per element, its launch as text) of a generated kernel: the fewest over its launches."""
    kind, metadata = launch_metadata(source)
    reduced = 1
    if kind != "pointwise":  # positions reduced over, which the kernel's body states (size_hints rounds it up)
        reduced = int(source.split("r0_numel = ", 1)[1].split("\n", 1)[0])
    counts = []
    with tempfile.TemporaryDirectory() as folder:
        function = jit_function(source, name, Path(folder))
        for constexprs, warps in launches(kind, metadata):
            compiled = compile_for_gpu(function, metadata["triton_meta"], constexprs, warps, arch)
            label = " ".join(f"{key}={value}" for key, value in constexprs.items()) + f" warps={warps}"
            counts.append((per_element(kernel_instructions.disassemble(compiled), constexprs, warps, reduced),
                           label))
    return min(counts)
