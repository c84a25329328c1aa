#!/usr/bin/env bash
# One prepared GPU check (for a machine with an NVIDIA GPU, Python, torch, torchvision, numba; ffcv and
# fastargs, terminaltables, assertpy, pytest, scikit-image, psutil, PyYAML and scipy may come as wheels in
# .whl/, built or downloaded for that Python): the GPU tests, then the benchmarks, logs under ${OUT:-gpu_check}.
set -uo pipefail
out=${OUT:-gpu_check}
mkdir -p "$out"
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONPATH=${PYTHONPATH:-$PWD} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$out/gpu.txt"
python3 -m pytest -q tests/test_gpu.py tests/test_models.py 2>&1 | tee "$out/tests.log"
python3 benchmarks/bench_model.py --arch resnet50 2>&1 | tail -40 | tee "$out/bench_model_rn50.log"
python3 benchmarks/bench_model.py --arch resnet18 --res 192 2>&1 | tail -15 | tee "$out/bench_model_rn18.log"
python3 benchmarks/bench_e2e.py 2>&1 | tail -8 | tee "$out/bench_e2e.log"
python3 benchmarks/bench_loader.py --per-class 1280 2>&1 | tail -14 | tee "$out/bench_loader.log"
