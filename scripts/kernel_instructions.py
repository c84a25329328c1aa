"""SASS instructions per element of the fused SE tail's four big kernels, on a machine without a GPU.

    python scripts/kernel_instructions.py            # sm90, about 15 s on 2 cores

Those kernels are meant to run at the memory ceiling, which holds while a kernel issues fewer instructions per
byte it moves than the GPU issues per byte of bandwidth: on an H100 SXM about 29.6e12 thread instructions/s
(132 SMs x 128 lanes x 1.75 GHz) over 3.35e12 B/s, 8.8 per byte; on an H200 (4.8e12 B/s) 6.2. This counts
the SASS that ptxas makes for a launch at SE-ResNet's shapes (compile_kernels' "aligned" hints), disassembled
by the nvdisasm that ships with Triton: the loop over H*W of a reduction, the whole kernel of an elementwise
pass (one tile per program, so its per-channel set-up is counted too), divided by the elements a thread
handles in it. A ratio near or above the GPU's says the kernel is bound by its arithmetic, not its bytes.
"""
import argparse
import contextlib
import io
import os
import re
import subprocess
import sys
import tempfile

from pipeline.gc_freeze import imports_frozen

with imports_frozen(as_a_script=__name__ == "__main__"):  # seconds of its start and exit (gc_freeze.py)
    import compile_kernels  # first: it refuses TRITON_INTERPRET before triton is imported
    import triton

    from pipeline.kernels import se_backward, se_forward, se_launch

NVDISASM = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "nvdisasm")
INSTRUCTION = re.compile(r"/\*[0-9a-f]+\*/\s+(.+?)\s*;")
LABEL = re.compile(r"^\s*(\.L_x_\d+):")
BRANCH = re.compile(r"\bBRA\b.*?(\.L_x_\d+)")


def _reduction(name, kernel, bytes_per_element, **switches):
    return name, kernel, switches, se_launch.REDUCE_TILES[0], bytes_per_element, True


def _elementwise(name, kernel, bytes_per_element, **switches):
    return name, kernel, switches, se_launch.ELEMENTWISE_TILES[0], bytes_per_element, False


# (label, kernel, switches, first autotuner tile, bf16 bytes moved per element, loops over H*W)
VARIANTS = (
    _reduction("z_stats gap/std/random", se_forward.z_stats_kernel, 2, EXTREMES=False, FILTER=False),
    _reduction("z_stats gmp/avgmax", se_forward.z_stats_kernel, 2, EXTREMES=True, FILTER=False),
    _reduction("z_stats fca", se_forward.z_stats_kernel, 2, EXTREMES=False, FILTER=True),
    _reduction("grad_reduce eager", se_backward.grad_reduce_kernel, 8, IDENTITY_NORM=False, PREMASKED=False,
               EXTREMES=False),
    _reduction("grad_reduce compiled", se_backward.grad_reduce_kernel, 4, IDENTITY_NORM=False, PREMASKED=True,
               EXTREMES=False),
    _reduction("grad_reduce compiled gmp/avgmax (counts ties)", se_backward.grad_reduce_kernel, 4,
               IDENTITY_NORM=False, PREMASKED=True, EXTREMES=True),
    _reduction("grad_reduce eager, BN folded", se_backward.grad_reduce_kernel, 10, IDENTITY_NORM=True,
               PREMASKED=False, EXTREMES=False),
    _elementwise("apply", se_forward.apply_kernel, 6, IDENTITY_NORM=False),
    _elementwise("apply, BN folded", se_forward.apply_kernel, 6, IDENTITY_NORM=True),
    _elementwise("grad_apply gap", se_backward.grad_apply_kernel, 6, EXTREMES=False, FILTER=False,
                 IDENTITY_NORM=False),
    _elementwise("grad_apply gmp/avgmax", se_backward.grad_apply_kernel, 6, EXTREMES=True, FILTER=False,
                 IDENTITY_NORM=False),
    _elementwise("grad_apply, BN folded", se_backward.grad_apply_kernel, 10, EXTREMES=False, FILTER=False,
                 IDENTITY_NORM=True),
)


def sass(kernel, constexprs: dict, warps: int, arch: int) -> tuple:
    """The variant's SASS as (labels -> instruction index, instruction texts)."""
    with contextlib.redirect_stdout(io.StringIO()):  # ptxas's log
        compiled = compile_kernels.build(kernel, constexprs, warps, arch)
    return disassemble(compiled)


def disassemble(compiled) -> tuple:
    """A compiled Triton kernel's SASS as (labels -> instruction index, instruction texts)."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
        cubin.write(compiled.asm["cubin"])
        cubin.flush()
        listing = subprocess.run([NVDISASM, "-c", cubin.name], capture_output=True, text=True, check=True).stdout
    labels, instructions = {}, []
    for line in listing.splitlines():
        label, instruction = LABEL.match(line), INSTRUCTION.search(line)
        if label:
            labels[label.group(1)] = len(instructions)
        elif instruction:
            instructions.append(instruction.group(1))
    return labels, instructions


def issued(instructions: list) -> list:
    """The instructions a thread issues once through straight-line code (NOPs are padding)."""
    return [text for text in instructions if text != "NOP"]


def hot_loop(labels: dict, instructions: list) -> list:
    """The longest loop body: from a label to a branch back to it."""
    loops = []
    for index, text in enumerate(instructions):
        branch = BRANCH.search(text)
        start = labels.get(branch.group(1)) if branch else None
        if start is not None and start <= index:
            loops.append(instructions[start:index + 1])
    return max(loops, key=len)


def per_element(kernel, switches: dict, tile: tuple, looped: bool, arch: int) -> float:
    """SASS instructions per element of a variant launched with `tile` (BLOCK_HW, BLOCK_C, warps)."""
    block_hw, block_c, warps = tile
    labels, instructions = sass(kernel, dict(switches, BLOCK_HW=block_hw, BLOCK_C=block_c), warps, arch)
    counted = hot_loop(labels, instructions) if looped else issued(instructions)
    return len(counted) / (block_hw * block_c / (32 * warps))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, default=90, help="CUDA compute capability x 10 (90: Hopper)")
    args = parser.parse_args()
    print(f"{'kernel (first tile, as launched at SE-ResNet shapes)':54s} {'instr/element':>13s} "
          f"{'bytes/element':>13s} {'instr/byte':>10s}")
    for name, kernel, switches, tile, moved, looped in VARIANTS:
        count = per_element(kernel, switches, tile, looped, args.arch)
        print(f"{name:54s} {count:13.1f} {moved:13d} {count / moved:10.1f}")
    print("memory-bound while instr/byte stays below ~8.8 on an H100 SXM, ~6.2 on an H200 (docstring)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
