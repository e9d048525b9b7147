#!/usr/bin/env bash
# Runs every test: the GoogleTest suite through ctest, then pytest. Fails if any fails or if
# either runner finds no test. Run scripts/setup.sh first.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

echo "[test] C++: configure + build (CPU; CUDA kernels are tested through pytest on a GPU)"
cmake -S . -B build/cpp -G Ninja -DPAGEDCORE_BUILD_TESTS=ON -DPAGEDCORE_ENABLE_CUDA=OFF \
  -DPAGEDCORE_BUILD_PYTHON=OFF >/dev/null
cmake --build build/cpp
echo "[test] ctest"
ctest --test-dir build/cpp --output-on-failure --no-tests=error -j 2

echo "[test] pytest"
# pytest exits 5 when it collects no test; set -e turns that (and any failure) into a failed run.
$PY -m pytest tests -q "$@"
