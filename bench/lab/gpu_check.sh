#!/usr/bin/env bash
# One device call: build, GPU tests (kernels incl. sampling, models), the W4 benchmarks (native and peers) and a compute-sanitizer
# pass (carry .whl). Run from the repository root on the GPU machine; results go to $OUT. The tests and
# benchmarks import a package copy under /tmp (python/pagedcore plus the built module), so nothing
# is written into python/.
set -uo pipefail
OUT=${OUT:-results/gpu_check}
mkdir -p "$OUT"
cmake -S . -B build/gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 -DPAGEDCORE_BUILD_PYTHON=ON \
  -DPAGEDCORE_BUILD_TESTS=OFF -Dpybind11_DIR="$(python3 -m pybind11 --cmakedir)" -DPython_EXECUTABLE="$(command -v python3)" \
  > "$OUT/cmake.txt" 2>&1 && cmake --build build/gpu --target _core bench_paged > "$OUT/build.txt" 2>&1 || tail -30 "$OUT/build.txt"
PACKAGE=/tmp/pagedcore-gpu-check  # the package copy: $PACKAGE/pagedcore
rm -rf "$PACKAGE" && mkdir -p "$PACKAGE" && cp -r python/pagedcore "$PACKAGE/" && cp build/gpu/_core*.so "$PACKAGE/pagedcore/"
export PYTHONPATH=$PACKAGE:$PWD/tests
# The structured-output GPU test needs xgrammar: carry .whl (bench/gpu_wheels.sh) and it is installed here.
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=$PYTHONPATH:/tmp/site
fi
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv,noheader
python3 -m pytest -q -p no:cacheprovider tests/test_kernels_attention.py tests/test_kernels_cache.py \
  tests/test_kernels_sampling.py tests/test_models_gpu.py \
  > "$OUT/pytest.txt" 2>&1; tail -2 "$OUT/pytest.txt"; grep -E "^(FAILED|E  )" "$OUT/pytest.txt" | head -10
./build/gpu/bench_paged attention --reps 30 | tee "$OUT/bench_paged.txt" | tail -7
python3 bench/bench_attention_peers.py --reps 30 --json "$OUT/peers.json" 2>&1 | tail -7
timeout 300 compute-sanitizer --tool memcheck --print-limit 5 python3 -m pytest -q -p no:cacheprovider \
  tests/test_kernels_attention.py tests/test_kernels_cache.py tests/test_kernels_sampling.py \
  -k "cuda and (split or hostile or mixed or every_head_size or write or swap or copy or reference or masks or ties)" 2>&1 | tail -3
timeout 150 compute-sanitizer --tool racecheck --print-limit 5 python3 -m pytest -q -p no:cacheprovider \
  tests/test_kernels_attention.py -k "cuda and bf16 and ((many_sequences and 128) or split_kv)" 2>&1 | tail -2
