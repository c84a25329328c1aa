# SsENet-FFCV. `make demo` trains every squeeze arm on the sample set; `make test` runs the test suite.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup test demo bench wheel clean

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/install_system_deps.sh
	bash scripts/install_system_deps.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

# tests in parallel (pytest-xdist): most of them wait on a subprocess, so two workers halve the time on 2 cores;
# at most 4, since each worker holds its own torch and its own tiny betons
test: setup
	$(PY) -m pytest -q -n auto --maxprocesses 4

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache

# every squeeze arm on the real-photo sample set (CPU: a few minutes), then the seed-style table
demo: setup data/sample/train.beton
	$(PY) pipeline/ablate.py --cfg recipes/demo.yaml --squeeze all --seeds 1 --runs-root runs/demo

data/sample/train.beton: | setup
	$(PY) dataset_prep/write_imagenet.py

# benchmarks: each prints a table and, last, a JSON line of ratios against a peer measured in the same run
bench: setup
	$(PY) benchmarks/bench_write.py
	$(PY) benchmarks/bench_cpu_convolution.py
	$(PY) benchmarks/bench_loader.py
	$(PY) benchmarks/bench_model.py
	$(PY) benchmarks/bench_e2e.py
	$(PY) benchmarks/project.py --cfg recipes/rn50_88ep.yaml --gpus 8 --cores 128

# a self-contained manylinux ffcv wheel for GPU nodes without root or apt (WHEEL_PYTHON: the target interpreter)
WHEEL_PYTHON ?= $(PYTHON)
wheel:
	bash scripts/build_ffcv_wheel.sh $(WHEEL_PYTHON) wheelhouse
