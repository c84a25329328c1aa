"""Compile every fused SE-tail kernel variant for an NVIDIA GPU target, on a machine without one.

    python scripts/compile_kernels.py              # sm90 (H100/H200); about 200 s on 2 cores
    python scripts/compile_kernels.py --quick      # CI's subset: each kernel's switches in pairs (~20 s)
    python scripts/compile_kernels.py --arch 80    # A100

The CPU tests run the kernels interpreted (TRITON_INTERPRET=1), which skips Triton's compiler: a kernel can
pass them and still fail to compile for a GPU (e.g. a loop-carried variable changing type). Device time is
scarce, so run this before a GPU check. Each variant is compiled as se_launch launches it (tiles, warps), and
ptxas's report gives its registers per thread: a variant a training step runs that spills registers to memory
fails too, beyond a few bytes (the small kernels' steps in se_launch were chosen by it; `spill_allowance` says
which others may). So does a variant that needs more shared memory than one block of the target may have:
ptxas accepts it and the launch fails (the excitation's gradient at 128 hidden units in steps of 256 channels
asked an H200 for 288 KB of its 227).
A launch also specialises the kernel on its arguments (SPECIALIZATIONS), which changes the code ptxas gets;
each variant is compiled as launched at SE-ResNet's shapes and without hints (--quick: the first only).
Exit 1 names the variants that did not compile, spilled or do not fit.
"""
import argparse
import contextlib
import inspect
import io
import itertools
import os
import re
import sys
from concurrent.futures import ProcessPoolExecutor

if os.environ.get("TRITON_INTERPRET") == "1":
    sys.exit("compile_kernels.py: unset TRITON_INTERPRET (the interpreter does not compile kernels)")

from pipeline.gc_freeze import imports_frozen  # noqa: E402

with imports_frozen(as_a_script=__name__ == "__main__"):  # seconds of its start and exit (gc_freeze.py)
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from pipeline.kernels import layout, se_backward, se_forward, se_launch

FLOAT_SCALARS = {"corr_count", "eps", "std_eps", "momentum", "identity_eps", "identity_momentum"}
FP32_POINTERS = {"work", "grad_work", "stats", "running_mean", "running_var", "identity_work", "identity_grad_work",
                 "identity_running_mean", "identity_running_var"}
BIG_TENSORS = {"z_ptr", "identity_ptr", "out_ptr", "grad_ptr", "dz_ptr", "d_identity_ptr", "random_ptr",
               "d_norm_input_ptr"}


# Triton specialises each launch on its arguments: a pointer 16-byte aligned, or an integer that is a multiple
# of 16, gets a divisibility hint (vector loads, fewer address instructions), and ptxas then chooses registers
# for different code (at 8 warps it took 80 or 128 with the hints and spilled where it took up to 255 without).
# "aligned": every pointer and B, C, HW, H multiples of 16, as SE-ResNet-50 at 192 px and batch 256 launches
# layers 1-3 (torch's allocations and the workspaces' areas are aligned); "plain": no hint, as odd shapes do
# (a 6x6 map, ResNet-18's 4 or 8 hidden units, a last batch of 100). Mixes of the two lie in between.
SPECIALIZATIONS = ("aligned", "plain")
HINTED_INTEGERS = {"B", "C", "HW", "H"}


def divisibility_hints(types: dict, specialization: str) -> dict:
    """ASTSource's attrs for the arguments a launch of this `specialization` gives a divisibility hint."""
    if specialization == "plain":
        return {}
    return {(index,): [["tt.divisibility", 16]] for index, (name, kind) in enumerate(types.items())
            if kind.startswith("*") or name in HINTED_INTEGERS}


def signature(kernel, constexprs: dict) -> dict:
    """Triton types of a kernel's parameters: big tensors bf16 (the training dtype), small buffers fp32."""
    types = {}
    for name in inspect.signature(kernel.fn).parameters:
        if name in constexprs:
            types[name] = "constexpr"
        elif name in BIG_TENSORS:
            types[name] = "*bf16"
        elif name.endswith("batches_tracked"):
            types[name] = "*i64"
        elif name.endswith("_ptr") or name in FP32_POINTERS:
            types[name] = "*fp32"
        elif name in FLOAT_SCALARS:
            types[name] = "fp32"
        else:
            types[name] = "i32"
    return types


# Shared memory one block may have (opt-in, which Triton's launcher asks for), by compute capability x 10: CUDA
# programming guide, "Technical Specifications per Compute Capability".
SHARED_MEMORY_PER_BLOCK = {70: 96 * 1024, 75: 64 * 1024, 80: 163 * 1024, 86: 99 * 1024, 87: 163 * 1024,
                           89: 99 * 1024, 90: 227 * 1024, 100: 227 * 1024, 120: 99 * 1024}


# the widths se_launch has steps for (SE-ResNet-18/50 at reduction 16), and one wider (reduction < 16): its
# fallback steps must compile but may spill
MEASURED_WIDTHS = tuple(sorted(se_launch.SMALL_KERNEL_STEPS))
PADDED_HIDDEN = (*MEASURED_WIDTHS, 2 * MEASURED_WIDTHS[-1])


def product(space: dict) -> list:
    """Every setting of `space` (name -> values), as {name: value} dicts."""
    return [dict(zip(space, values)) for values in itertools.product(*space.values())]


def pairwise(space: dict) -> list:
    """Settings of `space` (name -> values) in which every value of a switch, and every pair of two switches'
    values, occurs at least once: a greedy cover of the product, in its order. A compile failure comes from one
    switch's code path or from two meeting (a variable one switch gives another type that another switch uses),
    so --quick compiles each kernel's pairs instead of its whole product (backward_finalize: 7 of 24)."""
    names = list(space)
    settings = product(space)

    def covers(setting):  # its switches' values, alone and in pairs
        return {tuple((name, setting[name]) for name in group) for size in (1, 2)
                for group in itertools.combinations(names, size)}

    uncovered = set().union(*map(covers, settings))
    chosen = []
    while uncovered:
        best = max(settings, key=lambda setting: len(covers(setting) & uncovered))
        chosen.append(best)
        uncovered -= covers(best)
    return sorted(chosen, key=settings.index)


def _settings(space: dict, quick: bool) -> list:
    """Every setting of `space`, or (quick) its pairwise cover."""
    return pairwise(space) if quick else product(space)


def variants(quick: bool = False):
    """(kernel, constexprs, warps) as se_launch launches them: every squeeze mode, every autotuner tile of the big
    kernels, the small kernels at every excitation width with the steps se_launch takes for it, each kernel with
    and without a folded downsample BN, in every combination. `quick` (the CI's check): the squeezes with the
    most code (avgmax: extremes; fca: filter; random: neither), the first tile, the narrowest and widest
    excitation, and of those each kernel's pairwise cover (`pairwise`)."""
    small = dict(BLOCK_C=se_launch.FINALIZE_BLOCK_C)
    warps = se_launch.SMALL_KERNEL_WARPS
    modes = (layout.AVGMAX, layout.FCA, layout.RANDOM) if quick else tuple(range(len(layout.SQUEEZE_MODES)))
    widths = (MEASURED_WIDTHS[0], MEASURED_WIDTHS[-1]) if quick else PADDED_HIDDEN
    first = slice(0, 1) if quick else slice(None)
    both = (False, True)

    def squeeze(mode: int) -> dict:
        return dict(EXTREMES=layout.uses_extremes(mode), FILTER=layout.uses_filter(mode))

    for kernel, tiles, folds in ((se_forward.z_stats_kernel, se_launch.REDUCE_TILES, (None,)),
                                 (se_backward.grad_apply_kernel, se_launch.ELEMENTWISE_TILES, both)):
        for s in _settings(dict(mode=modes, tile=tiles[first], fold=folds), quick):
            blocks, tile_warps = _blocks(s["tile"])
            yield kernel, dict(**squeeze(s["mode"]), **_fold(s["fold"]), **blocks), tile_warps
    for s in _settings(dict(mode=modes, training=both, fold=both), quick):
        yield se_forward.forward_finalize_kernel, dict(
            TRAINING=s["training"], UPDATE=s["training"], MODE=s["mode"], IDENTITY_NORM=s["fold"],
            BLOCK_B=se_launch.FORWARD_FINALIZE_BLOCK_B, **small), warps
    for s in _settings(dict(mode=modes, training=both, fold=both, padded=widths), quick):
        block_b, _ = se_launch.small_kernel_steps(s["padded"])
        yield se_backward.backward_finalize_kernel, dict(TRAINING=s["training"], MODE=s["mode"],
                                                         IDENTITY_NORM=s["fold"], H_PAD=s["padded"],
                                                         BLOCK_B=block_b, **small), warps
    for padded in widths:
        _, excite_step = se_launch.small_kernel_steps(padded)
        yield se_forward.excite_kernel, dict(H_PAD=padded, BLOCK_B=se_launch.EXCITE_BLOCK_B, BLOCK_K=excite_step), warps
        yield se_backward.excite_grad_kernel, dict(H_PAD=padded, BLOCK_B=se_launch.EXCITE_BLOCK_B,
                                                   BLOCK_K=excite_step), warps
    for s in _settings(dict(tile=se_launch.ELEMENTWISE_TILES[first], fold=both), quick):
        blocks, tile_warps = _blocks(s["tile"])
        yield se_forward.apply_kernel, dict(IDENTITY_NORM=s["fold"], **blocks), tile_warps
    # grad_reduce: the custom op's (premasked) and eager's, counting ties at the extreme (gmp, avgmax) or not
    for s in _settings(dict(tile=se_launch.REDUCE_TILES[first], fold=both, premasked=both, extremes=both), quick):
        blocks, tile_warps = _blocks(s["tile"])
        yield se_backward.grad_reduce_kernel, dict(IDENTITY_NORM=s["fold"], PREMASKED=s["premasked"],
                                                   EXTREMES=s["extremes"], **blocks), tile_warps


def _blocks(tile: tuple) -> tuple:
    """An autotuner tile (BLOCK_HW, BLOCK_C, warps) as (constexprs, warps)."""
    block_hw, block_c, warps = tile
    return dict(BLOCK_HW=block_hw, BLOCK_C=block_c), warps


def _fold(fold) -> dict:
    """The IDENTITY_NORM switch of a kernel that has one (None: it has none)."""
    return {} if fold is None else {"IDENTITY_NORM": fold}


def jobs(quick: bool = False) -> list:
    """(variant number, specialization) of every compilation: each variant as launched at SE-ResNet's shapes, and
    without hints unless `quick`."""
    specializations = SPECIALIZATIONS[:1] if quick else SPECIALIZATIONS
    return [(index, specialization) for index in range(len(list(variants(quick))))
            for specialization in specializations]


def compile_variant(index: int, specialization: str, arch: int, quick: bool) -> tuple:
    """compile_one of variant `index` and its spill_allowance (by number: a pool of processes compiles them in
    parallel)."""
    kernel, constexprs, warps = list(variants(quick))[index]
    label, registers, spills, shared, error = compile_one(kernel, constexprs, warps, arch, specialization)
    return label, registers, spills, shared, error, spill_allowance(constexprs, spills)


# Bytes per thread a variant a training step runs may spill. ptxas picks its register budget by its own
# heuristics, and how it does depends on the launch's hints: the same kernel took 108 registers and spilled
# nothing with one set of hints, 128 and spilled 36 bytes with another, and narrower steps spilled where wider
# ones did not. A few bytes are a few L1-resident loads per thread; the check is there for the hundreds (536
# bytes per thread in ResNet-50 layer4's excitation at the first steps, which made it fail).
SPILL_TOLERANCE = 64


def spill_allowance(constexprs: dict, spills: int):
    """Why `spills` bytes in this variant do not fail the check (None: they do): a few bytes anywhere, and any
    number in an excitation wider than se_launch has steps for (reduction < 16), which takes fallback steps
    that no SE-ResNet with reduction 16 runs."""
    if constexprs.get("H_PAD", MEASURED_WIDTHS[0]) not in MEASURED_WIDTHS:
        return "an excitation wider than se_launch has steps for"
    if spills <= SPILL_TOLERANCE:
        return f"at most {SPILL_TOLERANCE} bytes"
    return None


def build(kernel, constexprs: dict, warps: int, arch: int, specialization: str = "aligned"):
    """Triton's compiled kernel of one variant, compiled afresh (Triton prints ptxas's log on stdout)."""
    types = signature(kernel, constexprs)
    return compile_typed(kernel, types, constexprs, divisibility_hints(types, specialization), warps, arch)


def compile_typed(kernel, types: dict, constexprs: dict, hints: dict, warps: int, arch: int):
    """`kernel` compiled afresh for sm`arch` with its parameters' Triton `types` (in order), `constexprs` by name
    and a launch's divisibility `hints` (Triton prints ptxas's log on stdout)."""
    triton.knobs.nvidia.dump_ptxas_log = True  # registers and spills per kernel
    triton.knobs.compilation.always_compile = True  # a cached kernel has no ptxas log
    names = list(types)
    source = ASTSource(kernel, types, constexprs={(names.index(name),): value for name, value in constexprs.items()},
                       attrs=hints)
    return triton.compile(source, target=GPUTarget("cuda", arch, 32), options={"num_warps": warps})


def compile_one(kernel, constexprs: dict, warps: int, arch: int, specialization: str = "aligned") -> tuple:
    """(label, registers per thread, bytes of spill stores, bytes of shared memory per block, error or None) of one
    fresh compilation."""
    label = f"{kernel.fn.__name__} {constexprs} warps={warps} {specialization}"
    report = io.StringIO()
    try:
        with contextlib.redirect_stdout(report):  # where Triton prints ptxas's log
            compiled = build(kernel, constexprs, warps, arch, specialization)
    except Exception as error:  # noqa: BLE001 - every failure is reported, then the exit code says so
        return label, 0, 0, 0, str(error).strip().splitlines()[-1]
    log = report.getvalue()
    registers, spills = re.search(r"Used (\d+) registers", log), re.search(r"(\d+) bytes spill stores", log)
    return (label, int(registers.group(1)) if registers else -1, int(spills.group(1)) if spills else 0,
            compiled.metadata.shared, None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, default=90, choices=sorted(SHARED_MEMORY_PER_BLOCK),
                        help="CUDA compute capability x 10 (90: Hopper)")
    parser.add_argument("--quick", action="store_true",
                        help="each kernel's switches in pairs, the first tile (~20 s on 2 cores)")
    args = parser.parse_args()
    failed = []
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        numbers, specializations = zip(*jobs(args.quick))
        count = len(numbers)
        results = pool.map(compile_variant, numbers, specializations, [args.arch] * count, [args.quick] * count)
        for label, registers, spills, shared, error, allowance in results:
            if error:
                failed.append(label)
                print(f"FAILED {label}: {error}")
            elif shared > SHARED_MEMORY_PER_BLOCK[args.arch]:
                failed.append(label)
                print(f"SHARED {label}: {shared} bytes of shared memory per block, over sm{args.arch}'s "
                      f"{SHARED_MEMORY_PER_BLOCK[args.arch]}")
            elif spills and allowance:
                print(f"ok     {label}: {registers} registers, {shared} bytes shared, {spills} bytes spilled "
                      f"(allowed: {allowance})")
            elif spills:
                failed.append(label)
                print(f"SPILLS {label}: {spills} bytes of registers spilled to memory ({registers} registers)")
            else:
                print(f"ok     {label}: {registers} registers, {shared} bytes shared")
    if failed:
        print(f"compile_kernels.py: {len(failed)} kernel variant(s) do not compile for sm{args.arch}, spill "
              "registers or need more shared memory than a block has", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
