#!/usr/bin/env bash
# One device call for the FP8 KV cache (issue 18): build (sm_90), the FP8 kernel and engine tests
# (the kernel tests also on the Ampere kernel path), the model-dtype attention / cache / model tests (the FP8
# kernels share their code), W4 with a bf16 and an FP8 cache side by side, a compute-sanitizer
# memcheck of the FP8 kernel tests; W1 on the Llama-3-8B shape and a short W2 with both caches.
# Parts: tests,ampere,w4,memcheck,llama (or llama-kv: without FP8 weights; llama-w8kv8: FP8 KV, and FP8 weights with it),prefix (default: the first
# four), run in that order. Results in $OUT. PAGEDCORE_PACKAGE=DIR: test and run the package built
# in DIR from this tree instead of building one.
set -uo pipefail
OUT=${OUT:-results/gpu_fp8_kv}
PARTS=${1:-tests,ampere,w4,memcheck}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
has() { [[ ",$PARTS," == *",$1,"* ]]; }
if [ -n "${PAGEDCORE_PACKAGE:-}" ]; then  # a package built from this tree in the same call (e.g. by
  PACKAGE=$PAGEDCORE_PACKAGE               # gpu_step_compare.sh): no second build; w4 needs bench_paged
  has w4 && { echo "w4 needs this script's own build (bench_paged): unset PAGEDCORE_PACKAGE"; exit 1; }
else
  cmake -S . -B build/gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 -DPAGEDCORE_BUILD_PYTHON=ON \
    -DPAGEDCORE_BUILD_TESTS=OFF -Dpybind11_DIR="$(python3 -m pybind11 --cmakedir)" -DPython_EXECUTABLE="$(command -v python3)" \
    > "$OUT/cmake.txt" 2>&1 && cmake --build build/gpu --target _core bench_paged > "$OUT/build.txt" 2>&1 \
    || { tail -30 "$OUT/cmake.txt" "$OUT/build.txt"; exit 1; }  # never test a stale build
  PACKAGE=/tmp/pagedcore-fp8-kv
  rm -rf "$PACKAGE" && mkdir -p "$PACKAGE" && cp -r python/pagedcore "$PACKAGE/" && cp build/gpu/_core*.so "$PACKAGE/pagedcore/"
fi
export PYTHONPATH=$PACKAGE:$PWD/tests
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader
if has tests; then
  timeout 300 python3 -m pytest -q -p no:cacheprovider -s tests/test_kernels_fp8_cache.py tests/test_fp8_kv_cache.py tests/test_fp8.py \
    tests/test_kernels_layers.py -k "fp8 or quantize or FP8" > "$OUT/pytest_fp8.txt" 2>&1
  tail -1 "$OUT/pytest_fp8.txt"; grep -E "^(FAILED|E  )|FP8-KV vs|graphs vs eager" "$OUT/pytest_fp8.txt" | head -24
  if [ -z "${SKIP_MODEL_DTYPE:-}" ]; then  # SKIP_MODEL_DTYPE=1: only FP8 code changed since their last run
    timeout 240 python3 -m pytest -q -p no:cacheprovider tests/test_kernels_attention.py tests/test_kernels_cache.py tests/test_models_gpu.py \
      -k "not structured_outputs" > "$OUT/pytest_model_dtype.txt" 2>&1
    tail -1 "$OUT/pytest_model_dtype.txt"; grep -E "^(FAILED|E  )" "$OUT/pytest_model_dtype.txt" | head -10
  fi
fi
if has ampere; then
  PAGEDCORE_KERNEL_PATH=ampere timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_kernels_fp8_cache.py -k cuda > "$OUT/pytest_ampere.txt" 2>&1
  echo "ampere path: $(tail -1 "$OUT/pytest_ampere.txt")"; grep -E "^(FAILED|E  )" "$OUT/pytest_ampere.txt" | head -10
fi
if has w4; then
  round=0
  for dtype in bf16 fp8 bf16 fp8; do  # alternating, two rounds
    round=$((round + 1))
    ./build/gpu/bench_paged attention --reps 30 --kv-cache-dtype $dtype 2>&1 | tee "$OUT/w4_${round}_$dtype.txt" | tail -7
  done
fi
if has memcheck; then
  timeout 150 compute-sanitizer --tool memcheck --print-limit 5 python3 -m pytest -q -p no:cacheprovider \
    tests/test_kernels_fp8_cache.py \
    -k "cuda and (write or every_finite or (every_head_size and 256))" \
    > "$OUT/memcheck.txt" 2>&1; tail -3 "$OUT/memcheck.txt"
fi
if has llama || has llama-kv || has llama-w8kv8; then  # W1 on the Llama-3-8B shape (same 40 GiB KV budget): bf16,
  variants=("" "--kv-cache-dtype fp8")  # FP8 KV (llama-kv); llama adds FP8 weights, and both; llama-w8kv8 only both
  has llama && variants+=("--quantization fp8" "--quantization fp8 --kv-cache-dtype fp8")
  has llama-w8kv8 && ! has llama && variants+=("--quantization fp8 --kv-cache-dtype fp8")
  for flags in "${variants[@]}"; do
    name=$(echo "bf16 $flags" | tr -s ' -' '_')
    echo "== W1 Llama-3-8B shape: ${flags:-bf16}"
    timeout 120 python3 -m pagedcore.cli bench throughput --preset gpu-llama3-8b --engine pagedcore --repeats 1 \
      --peer-subset 256 $flags --out "$OUT/$name" 2>&1 | grep -v "^\[" | tail -4
  done
fi
if has prefix; then  # W2 (repeated system prompts), a short cut of the preset: bf16 and FP8 KV caches
  for dtype in auto fp8; do
    echo "== W2 prefix, kv cache $dtype"
    timeout 150 python3 -m pagedcore.cli bench prefix --preset gpu --prefix-lens 0 1024 --output-lens 32 --repeats 1 \
      --kv-cache-dtype $dtype --out "$OUT/prefix_$dtype" 2>&1 | grep -v "^\[" | tail -8
  done
fi
