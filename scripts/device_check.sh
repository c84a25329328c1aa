#!/usr/bin/env bash
# The prepared GPU check, sized for a 15-minute device lease: each step has a time cap and logs as it goes.
#   scripts/device_check.sh                 # every step: about 29 minutes on one H200 with 16 cores
#   scripts/device_check.sh kernels tail model50 model18 compiled50    # about 7.5 minutes: one device call
#   scripts/device_check.sh kernels model50 compiled50                 # about 6.5 minutes: the kernel tests on
#       CUDA, the eager table (every arm, torch ops and kernels) and default-mode gap (kernels, torch ops,
#       closed form): the issue's table but the other compiled arms, and what decides `auto` under DDP
#   scripts/device_check.sh graphs50 e2e loader gputests               # about 8.5 minutes
#   scripts/device_check.sh kernels tail kernels50 kernels18           # the kernels only (no torch-op rows; ~10 min)
#   scripts/device_check.sh graphs50a graphs50b                        # every other arm with CUDA graphs (~8 min)
#   scripts/device_check.sh model50 model18 graphs50gap                # about 8 minutes: the eager tables (every arm,
#       torch ops and kernels) and gap with CUDA graphs (kernels only), against torchvision in each run
#   scripts/device_check.sh graphs50all                                # the same in one process, torchvision
#       compiled once (~7 min, one device call; each model's graphs are freed before the next is compiled)
#   scripts/device_check.sh compiled50 compiled50a                     # default-mode compile (what DDP runs): kernels,
#       the torch ops and the closed form for gap; the kernels against the closed form for gmp and std, in one run
#       (in two runs gmp's kernels were 0.76 and its closed form 0.69), each profiled: where their time goes
#       against torchvision's (inductor moves the same bytes for every squeeze's closed form) (~10 min: two calls)
#   scripts/device_check.sh compiled50all                              # every arm but gap in default-mode compile with
#       the closed form, torchvision compiled once (~8 min, one device call; 487 s on an H200)
#   scripts/device_check.sh compiled50b                                # the other arms in default-mode compile with
#       the closed form (what `auto` runs there): with compiled50 and compiled50a, every arm of the issue's table
#   scripts/device_check.sh kernels tail graphs50                      # after a kernel change (~8.5 min): tests,
#       kernel times (and the downsample BN folded vs not), gap with CUDA graphs (kernels, torch ops, closed
#       form) against torchvision profiled (busy time per kernel group). The first step compiles the kernels
#       (Triton's disk cache then serves the later steps while the machine stays warm).
# Needs an NVIDIA GPU with torch, torchvision, numba, pytest, timm, scikit-image, psutil, PyYAML and scipy;
# ffcv, fastargs, terminaltables and assertpy may come as wheels in .whl/ (README, "Running on GPUs").
# Logs: ${OUT:-gpu_check}/check.log (everything) and results.jsonl (each benchmark's JSON line).
# Compiled steps (bench_model.py compiled or reduce-overhead) also leave STEP.compile_cache.gz there: torch.compile's
# artifacts (benchmarks/compile_cache.py). Copied into .compile_cache/ here and carried to the next lease
# (`carry: [".whl", ".compile_cache"]`), the same step on the same GPU, torch and code loads them instead of
# compiling from scratch (46-77 s per ResNet-50 model on an H200 cold).
# STOP_ON_FAIL=1 ends the check at the first failed step (e.g. kernels that do not compile on this GPU).
set -uo pipefail
out=${OUT:-gpu_check}
mkdir -p "$out"
if compgen -G ".whl/*.whl" >/dev/null; then  # installed once per machine, found on every call
    [ -d /tmp/site/ffcv ] || python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD PYTHONUNBUFFERED=1
compile_caches=.compile_cache  # carried from here: what the last lease's compiled steps left in $OUT

# step name -> seconds allowed, then the command (kernels: fixed tiles, SSENET_AUTOTUNE=0, and 4 pytest workers that
# compile in parallel, to spare compile time; every tile the autotuner may pick is checked by
# test_every_autotuned_tile_gives_the_same_result)
declare -A cap=([kernels]=160 [tail]=100 [model50]=240 [model18]=150 [kernels50]=280 [kernels18]=150 [compiled50]=260 [compiled50a]=340 [compiled50b]=320 [compiled50all]=560
                [graphs50]=320 [graphs50gap]=200 [graphs50a]=240 [graphs50b]=240 [graphs50all]=540 [e2e]=80 [loader]=180 [gputests]=280 [gputrain]=150)
declare -A command=(
    [kernels]="env SSENET_AUTOTUNE=0 python3 -m pytest -q -n 4 --maxfail=3 tests/test_se_kernels.py"
    [tail]="python3 benchmarks/bench_se_tail.py --squeezes gap,gmp,fca,random --profile layer1,layer4"
    [model50]="python3 benchmarks/bench_model.py --arch resnet50 --modes eager"
    [model18]="python3 benchmarks/bench_model.py --arch resnet18 --modes eager --steps 40"
    [kernels50]="python3 benchmarks/bench_model.py --arch resnet50 --modes eager --se-kernel triton --rounds 2 --profile-steps 2"
    [kernels18]="python3 benchmarks/bench_model.py --arch resnet18 --modes eager --steps 40 --se-kernel triton --rounds 2"
    [compiled50]="python3 benchmarks/bench_model.py --arch resnet50 --modes compiled --compiled-arms gap --se-kernel triton,torch,closed-form --max-compiled 4"
    [compiled50a]="python3 benchmarks/bench_model.py --arch resnet50 --modes compiled --compiled-arms gmp,std --se-kernel closed-form,triton --max-compiled 5 --profile-steps 2"
    [compiled50b]="python3 benchmarks/bench_model.py --arch resnet50 --modes compiled --compiled-arms gapXstd,avgmax,fca,random --se-kernel closed-form --max-compiled 5"
    [compiled50all]="python3 benchmarks/bench_model.py --arch resnet50 --modes compiled --compiled-arms gmp,std,gapXstd,avgmax,fca,random --se-kernel closed-form --max-compiled 7"
    [graphs50]="python3 benchmarks/bench_model.py --arch resnet50 --modes reduce-overhead --compiled-arms gap --se-kernel triton,torch,closed-form --max-compiled 4 --profile-steps 3"
    [graphs50gap]="python3 benchmarks/bench_model.py --arch resnet50 --modes reduce-overhead --compiled-arms gap --se-kernel triton --max-compiled 2"
    [graphs50a]="python3 benchmarks/bench_model.py --arch resnet50 --modes reduce-overhead --compiled-arms gmp,std,gapXstd --se-kernel triton --max-compiled 4"
    [graphs50all]="python3 benchmarks/bench_model.py --arch resnet50 --modes reduce-overhead --compiled-arms gmp,std,gapXstd,avgmax,fca,random --se-kernel triton --max-compiled 7"
    [graphs50b]="python3 benchmarks/bench_model.py --arch resnet50 --modes reduce-overhead --compiled-arms avgmax,fca,random --se-kernel triton --max-compiled 4"
    [e2e]="python3 benchmarks/bench_e2e.py --steps 150"
    [loader]="python3 benchmarks/bench_loader.py --quick --per-class 1280 --epochs 2 --time-limit 60"
    [gputests]="python3 -m pytest -q tests/test_gpu.py"
    [gputrain]="python3 -m pytest -q tests/test_gpu.py -k training_run"
)
order=(kernels tail model50 model18 compiled50 compiled50a compiled50b graphs50 graphs50a graphs50b e2e loader gputests)  # gputrain: in gputests
steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=("${order[@]}")

nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm --format=csv 2>&1 | tee -a "$out/check.log"
for step in "${steps[@]}"; do
    [ -n "${command[$step]:-}" ] || { echo "unknown step '$step'; steps: ${order[*]}" >&2; exit 2; }
    echo "=== $step (cap ${cap[$step]} s): ${command[$step]}" | tee -a "$out/check.log"
    started=$SECONDS
    cache=()  # a compiled step starts from the artifacts an earlier lease compiled, and leaves its own in $out
    if [[ ${command[$step]} == *bench_model.py*--modes\ compiled* || ${command[$step]} == *bench_model.py*--modes\ reduce-overhead* ]]; then
        [ -f "$compile_caches/$step.compile_cache.gz" ] && cp "$compile_caches/$step.compile_cache.gz" "$out/"
        cache=(--compile-cache "$out/$step.compile_cache.gz")
    fi
    timeout "${cap[$step]}" ${command[$step]} "${cache[@]}" > "$out/$step.tmp" 2>&1
    status=$?
    tail -c 6000 "$out/$step.tmp" >> "$out/check.log"
    grep '^{' "$out/$step.tmp" | tail -1 | sed "s/^/{\"step\": \"$step\", \"result\": /; s/\$/}/" >> "$out/results.jsonl"
    rm -f "$out/$step.tmp"
    echo "=== $step: exit $status after $((SECONDS - started)) s" | tee -a "$out/check.log"
    if [ "$status" -ne 0 ] && [ "${STOP_ON_FAIL:-0}" = 1 ]; then
        echo "=== stopped after the failed step (STOP_ON_FAIL=1)" | tee -a "$out/check.log"
        exit "$status"
    fi
done
