#!/usr/bin/env bash
# The GPU proof of the architecture support (issue 12), on an H200 in one or two device calls:
# the CUDA kernel tests and the GPU engine tests through both kernel paths, the W4 table of each,
# and compute-sanitizer memcheck on the Ampere path.
#
#   bash bench/gpu_arch_check.sh [build|test|bench|sanitize|all]...   (default: all)
#
# Three builds of pagedcore._core + bench_paged, each in its own package copy under /tmp (nothing is
# written into python/):
#   sm90   CMAKE_CUDA_ARCHITECTURES=90: the Hopper path where it applies
#   ampere the same build run with PAGEDCORE_KERNEL_PATH=ampere: every launch takes the cp.async path
#   ptx80  CMAKE_CUDA_ARCHITECTURES=80-virtual: only compute_80 PTX, JIT-compiled by the driver at
#          load, i.e. exactly the code an A100 runs (the H200 cannot run sm_80 machine code)
# Logs go to $OUT (or results/gpu_arch).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${OUT:-results/gpu_arch}
mkdir -p "$OUT_DIR"
STEPS=${*:-all}
TESTS="tests/test_kernels_attention.py tests/test_kernels_cache.py tests/test_cuda_devices.py tests/test_models_gpu.py"
export PYTHONUNBUFFERED=1

build_one() {  # name, architectures
  local dir=build/gpu-$1
  cmake -S . -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES="$2" \
    -DPAGEDCORE_BUILD_PYTHON=ON -DPAGEDCORE_BUILD_TESTS=OFF -Dpybind11_DIR="$(python3 -m pybind11 --cmakedir)" \
    -DPython_EXECUTABLE="$(command -v python3)" >/dev/null && cmake --build "$dir" --target _core bench_paged
}

# A package copy with the built module: /tmp/pagedcore-NAME/pagedcore.
package() {
  rm -rf "/tmp/pagedcore-$1" && mkdir -p "/tmp/pagedcore-$1" && cp -r python/pagedcore "/tmp/pagedcore-$1/" &&
    cp build/gpu-"$1"/_core*.so "/tmp/pagedcore-$1/pagedcore/"
}

# run_as NAME BUILD COMMAND...: COMMAND with that build's package and kernel path (and its
# architecture list in PAGEDCORE_CUDA_ARCHS, which tells the tests it is not the default build).
run_as() {
  local name=$1 build=$2
  shift 2
  local path=auto archs=90
  [ "$name" = ampere ] && path=ampere
  [ "$build" = ptx80 ] && archs=80-virtual
  PAGEDCORE_KERNEL_PATH=$path PAGEDCORE_CUDA_ARCHS=$archs PYTHONPATH="/tmp/pagedcore-$build:$PWD/tests" "$@"
}

for step in $STEPS; do
  case $step in
    build|all)
      nvidia-smi --query-gpu=name,compute_cap,driver_version --format=csv,noheader | tee "$OUT_DIR/device.txt"
      { time (build_one sm90 90 & build_one ptx80 80-virtual & wait); } > "$OUT_DIR/build.txt" 2>&1  # as run_as
      package sm90 && package ptx80 || { tail -40 "$OUT_DIR/build.txt"; exit 1; }
      ;;&
    test|all)
      for run in sm90:sm90 ampere:sm90 ptx80:ptx80; do
        name=${run%%:*}
        run_as "$name" "${run##*:}" timeout 420 python3 -m pytest -q -p no:cacheprovider -n 4 $TESTS \
          > "$OUT_DIR/pytest_$name.txt" 2>&1
        echo "[$name] $(tail -1 "$OUT_DIR/pytest_$name.txt")"
        grep -E "^(FAILED|ERROR)" "$OUT_DIR/pytest_$name.txt" | head -5
      done
      ;;&
    bench|all)
      for run in sm90:sm90 ampere:sm90 ptx80:ptx80; do
        name=${run%%:*}
        echo "[$name] bench_paged attention"
        run_as "$name" "${run##*:}" ./build/gpu-"${run##*:}"/bench_paged attention --reps 30 \
          > "$OUT_DIR/w4_$name.txt" 2>&1
        tail -8 "$OUT_DIR/w4_$name.txt"
      done
      ;;&
    sanitize|all)
      echo "[ampere] compute-sanitizer memcheck"
      run_as ampere sm90 timeout 300 compute-sanitizer --tool memcheck --print-limit 5 python3 -m pytest -q \
        -p no:cacheprovider tests/test_kernels_attention.py tests/test_kernels_cache.py \
        -k "(cuda and bf16 and (split or hostile or mixed or every_head_size or many_sequences)) or (cuda and (write or swap or copy))" \
        > "$OUT_DIR/memcheck_ampere.txt" 2>&1
      tail -3 "$OUT_DIR/memcheck_ampere.txt"
      ;;
  esac
done
