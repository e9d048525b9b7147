#!/usr/bin/env bash
# One device call comparing the engine step of this tree with an older commit's (bench/RESULTS.md,
# "Engine step"): builds both _core modules (sm_90) side by side, runs the engine's GPU tests on this
# tree, then bench_step_profile.py and the W1 throughput benchmark of both, alternating.
#
#   git archive REV | (mkdir -p .before && tar -x -C .before)     # here; .before is git-ignored
#   bash bench/gpu_step_compare.sh .before [tests,profile,throughput,llama,llama-fp8,latency]   # there, carrying .before
#
# TESTS: the test files `tests` runs (default tests/test_models_gpu.py); THROUGHPUT_SIDES: the W1 runs
# of `throughput` (default "before after after-sync").
# `latency` needs the server's wheels: carry .whl too (bench/gpu_wheels.sh makes it).
# Results go to $OUT (or results/step_compare). Each package is a copy under /tmp (python/pagedcore
# plus its module), so nothing is written into either tree's python/.
set -uo pipefail
cd "$(dirname "$0")/.."
BEFORE=${1:?usage: gpu_step_compare.sh BEFORE_TREE [parts]}
PARTS=${2:-tests,profile,throughput,llama}
OUT_DIR=${OUT:-results/step_compare}
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
pybind11_dir=$(python3 -m pybind11 --cmakedir)

build() {  # build tree, build folder, package folder
  cmake -S "$1" -B "$2" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 -DPAGEDCORE_BUILD_PYTHON=ON \
    -DPAGEDCORE_BUILD_TESTS=OFF -DPAGEDCORE_BUILD_BENCH=OFF -Dpybind11_DIR="$pybind11_dir" \
    -DPython_EXECUTABLE="$(command -v python3)" >/dev/null && cmake --build "$2" --target _core -j 8 >/dev/null \
    && rm -rf "$3" && mkdir -p "$3" && cp -r "$1/python/pagedcore" "$3/" && cp "$2"/_core*.so "$3/pagedcore/"
}
time (build . build/gpu-after /tmp/pc-after & build "$BEFORE" build/gpu-before /tmp/pc-before & wait)
ls /tmp/pc-after/pagedcore/_core*.so /tmp/pc-before/pagedcore/_core*.so || exit 1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
has() { [[ ",$PARTS," == *",$1,"* ]]; }

if has tests; then
  PYTHONPATH=/tmp/pc-after:$PWD/tests:${PYTHONPATH:-} timeout ${TESTS_TIMEOUT:-240} python3 -m pytest -q -p no:cacheprovider ${TESTS:-tests/test_models_gpu.py} \
    > "$OUT_DIR/pytest.txt" 2>&1; tail -2 "$OUT_DIR/pytest.txt"; grep -E "^(FAILED|E  )" "$OUT_DIR/pytest.txt" | head -10
fi
if has profile; then
  for side in before after; do
    tree=.; [ $side = before ] && tree=$BEFORE
    PYTHONPATH=/tmp/pc-$side:${PYTHONPATH:-} timeout 150 python3 "$tree/bench/bench_step_profile.py" --json "$OUT_DIR/profile_$side.json" \
      --label $side 2>&1 | grep -v "^\[pagedcore\]" | tail -12
  done
fi
if has throughput; then
  for side in ${THROUGHPUT_SIDES:-before after after-sync}; do
    package=/tmp/pc-${side%-sync}; flags=""; [ $side = after-sync ] && flags=--no-async-scheduling
    echo "== W1 Qwen3-0.6B shape: $side"
    PYTHONPATH=$package:${PYTHONPATH:-} timeout 150 python3 -m pagedcore.cli bench throughput --preset gpu --engine pagedcore \
      --repeats 1 --peer-subset 256 $flags --out "$OUT_DIR/w1_$side" 2>&1 | grep -v "^\[" | tail -6
  done
fi
if has llama; then
  for side in before after; do
    echo "== W1 Llama-3-8B shape: $side"
    PYTHONPATH=/tmp/pc-$side:${PYTHONPATH:-} timeout 140 python3 -m pagedcore.cli bench throughput --preset gpu-llama3-8b \
      --engine pagedcore --repeats 1 --peer-subset 256 --out "$OUT_DIR/llama_$side" 2>&1 | grep -v "^\[" | tail -6
  done
fi
if has llama-fp8; then  # FP8 weights (issue 18): the same workload with --quantization fp8
  for side in before after; do
    echo "== W1 Llama-3-8B shape, FP8 weights: $side"
    PYTHONPATH=/tmp/pc-$side:${PYTHONPATH:-} timeout 140 python3 -m pagedcore.cli bench throughput --preset gpu-llama3-8b \
      --engine pagedcore --repeats 1 --peer-subset 256 --quantization fp8 --out "$OUT_DIR/llama_fp8_$side" 2>&1 | grep -v "^\[" | tail -6
  done
fi
if has latency; then
  # LATENCY_ROUNDS alternating before / after runs (the figures move between runs of the same code).
  for round in $(seq "${LATENCY_ROUNDS:-1}"); do
    for side in before after; do
      echo "== online latency (bench latency --preset gpu): $side, round $round"
      PYTHONPATH=/tmp/pc-$side:${PYTHONPATH:-} timeout 120 python3 -m pagedcore.cli bench latency --preset gpu \
        --out "$OUT_DIR/latency_${side}_$round" 2>&1 | grep -v "^\[" | tail -6
    done
  done
fi
