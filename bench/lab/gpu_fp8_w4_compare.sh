#!/usr/bin/env bash
# One device call comparing the FP8-cache decode kernel of two trees on W4: both built (sm_90) side
# by side, both tested (tests/test_kernels_fp8_cache.py's CUDA cases on the Hopper and the Ampere
# paths), then `bench_paged attention` alternating bf16 (this tree), FP8 (before), FP8 (this tree),
# two rounds.
#   git archive REV | (mkdir -p .before && tar -x -C .before)   # here; carry .before
#   bash bench/lab/gpu_fp8_w4_compare.sh .before                # there
set -uo pipefail
BEFORE=${1:?usage: gpu_fp8_w4_compare.sh BEFORE_TREE}
OUT_DIR=${OUT:-results/fp8_w4_compare}
mkdir -p "$OUT_DIR"
pybind11_dir=$(python3 -m pybind11 --cmakedir)
build() {  # tree, build folder, package folder
  cmake -S "$1" -B "$2" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 -DPAGEDCORE_BUILD_PYTHON=ON \
    -DPAGEDCORE_BUILD_TESTS=OFF -Dpybind11_DIR="$pybind11_dir" -DPython_EXECUTABLE="$(command -v python3)" >/dev/null \
    && cmake --build "$2" --target _core bench_paged -j 8 > "$2.log" 2>&1 \
    && rm -rf "$3" && mkdir -p "$3" && cp -r "$1/python/pagedcore" "$3/" && cp "$2"/_core*.so "$3/pagedcore/"
}
rm -rf /tmp/pc-after /tmp/pc-before  # a failed build must not leave an older package or binary to measure
time (build . build/gpu-after /tmp/pc-after & build "$BEFORE" build/gpu-before /tmp/pc-before & wait)
for side in after before; do
  ls /tmp/pc-$side/pagedcore/_core*.so >/dev/null 2>&1 || { echo "the $side build failed:"; tail -30 build/gpu-$side.log; exit 1; }
done
grep -q kv-cache-dtype "$BEFORE/bench/bench_paged.cpp" || { echo "$BEFORE's bench_paged has no --kv-cache-dtype"; exit 1; }
for side in ${SIDES_TESTED:-before after}; do  # SIDES_TESTED=after: the before tree's tests ran already
  tree=.; [ $side = before ] && tree=$BEFORE
  for path in auto ampere; do
    echo "$side, kernel path $path: $(PAGEDCORE_KERNEL_PATH=$path PYTHONPATH=/tmp/pc-$side:$tree/tests timeout 100 \
      python3 -m pytest -q -p no:cacheprovider "$tree/tests/test_kernels_fp8_cache.py" -k cuda 2>&1 | tail -1)"
  done
done
for round in 1 2; do
  for run in "after bf16" "before fp8" "after fp8"; do
    set -- $run
    echo "== round $round: $1, $2 cache"
    ./build/gpu-$1/bench_paged attention --reps 30 --kv-cache-dtype "$2" 2>&1 | tee "$OUT_DIR/w4_${round}_$1_$2.txt" | tail -7
  done
done
