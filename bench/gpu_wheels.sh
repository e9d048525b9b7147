#!/usr/bin/env bash
# Downloads (here, where pip reaches an index) the wheels bench/gpu_suite.sh installs on the GPU
# machine (Python 3.12, no internet): the build tools for the in-tree _core build and the server's
# packages for `bench latency`, and xgrammar for the structured-output GPU test (installed --no-deps:
# triton, its other requirement, comes with the machine's torch). The folder .whl/ is git-ignored;
# carry it in the device call.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .whl \
  scikit_build_core==1.1.2 pybind11==3.1.0 fastapi==0.165.0 uvicorn==0.54.0 prometheus_client==0.26.0 pydantic==2.13.4
python3 -m pip download -q --only-binary=:all: --no-deps --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 -d .whl xgrammar==0.2.9 apache-tvm-ffi==0.1.15.post2
ls .whl
