#!/usr/bin/env bash
# The GPU run of the Python benchmarks (bench/RESULTS.md, issue 7), made for one ~9-minute call
# of the lent H200 / H100 machine (no internet, no matplotlib there):
#
#   bash bench/gpu_suite.sh            # build (if needed), then memory, throughput, prefix, latency
#   bash bench/gpu_suite.sh build      # only the build (a separate call keeps the benchmarks' budget)
#   bash bench/gpu_suite.sh run        # only the benchmarks (pagedcore must import with CUDA)
#   bash bench/gpu_suite.sh run prefix # one benchmark (or several, comma-separated), e.g. in a second call
#
# Carry `.whl` (made here with bench/gpu_wheels.sh: scikit-build-core, pybind11, fastapi, uvicorn,
# pydantic, prometheus_client and their needs). JSON and logs go to $OUT (or results/gpu); make
# the plots afterwards on a machine with matplotlib: python -m pagedcore.bench.plots <json>...
# Each benchmark has its own time limit, so one that overruns still leaves the others their turn.
set -uo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-all}
ONLY=${2:-memory,throughput,prefix,latency}
OUT_DIR=${OUT:-results/gpu}
mkdir -p "$OUT_DIR"
LOG="$OUT_DIR/gpu_suite.log"
export PYTHONUNBUFFERED=1 PAGEDCORE_CUDA_ARCHS=${PAGEDCORE_CUDA_ARCHS:-90}

if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi

have_cuda_pagedcore() {
  python3 -c "import sys, pagedcore; sys.exit(0 if pagedcore.built_with_cuda() else 1)" 2>/dev/null
}

# The package the benchmarks import: a copy of python/pagedcore under /tmp plus the module built
# into build/gpu-py (when there is one yet), so nothing is written into python/. build/ is
# git-ignored, so on a warm machine an earlier call's module is still there; the copy is made
# afresh from the current tree each call.
PACKAGE=/tmp/pagedcore-gpu-suite
package() {
  rm -rf "$PACKAGE" && mkdir -p "$PACKAGE" && cp -r python/pagedcore "$PACKAGE/" || return 1
  if ls build/gpu-py/_core*.so >/dev/null 2>&1; then cp build/gpu-py/_core*.so "$PACKAGE/pagedcore/"; fi
}

build() {
  # Build of the _core module (sm_90) in build/gpu-py, no pip; package() then puts it in the copy.
  local pybind11_dir
  pybind11_dir=$(python3 -c "import pybind11; print(pybind11.get_cmake_dir())") || return 1
  cmake -S . -B build/gpu-py -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 \
    -DPAGEDCORE_BUILD_PYTHON=ON -DPAGEDCORE_BUILD_BENCH=OFF -DPAGEDCORE_BUILD_TESTS=OFF \
    -Dpybind11_DIR="$pybind11_dir" -DPython_EXECUTABLE="$(command -v python3)" >/dev/null \
    && cmake --build build/gpu-py --target _core \
    && package
}

package || { echo "[gpu_suite] cannot copy python/pagedcore to $PACKAGE" | tee -a "$LOG"; exit 1; }
export PYTHONPATH=$PACKAGE${PYTHONPATH:+:$PYTHONPATH}
if [ "$MODE" != run ] && ! have_cuda_pagedcore; then
  echo "[gpu_suite] building pagedcore._core with CUDA (sm_90)" | tee -a "$LOG"
  time build 2>&1 | tee -a "$LOG" || { echo "[gpu_suite] build failed" | tee -a "$LOG"; exit 1; }
fi
[ "$MODE" = build ] && exit 0
have_cuda_pagedcore || { echo "[gpu_suite] pagedcore does not import with CUDA; run: bash bench/gpu_suite.sh build"; exit 1; }

nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.mem --format=csv | tee -a "$LOG"
step() {  # step SECONDS NAME ARGS...: one benchmark under its own limit; the suite goes on if it fails
  local limit=$1 name=$2; shift 2
  case ",$ONLY," in *",$name,"*) ;; *) return 0 ;; esac
  echo "[gpu_suite] $(date -u +%H:%M:%S) $name (limit ${limit}s): pagedcore bench $name $*" | tee -a "$LOG"
  timeout "$limit" python3 -m pagedcore.cli bench "$name" --out "$OUT_DIR" "$@" 2>&1 | grep -v '^\[pagedcore\] KV' | tee -a "$LOG"
  echo "[gpu_suite] $name exit ${PIPESTATUS[0]}" | tee -a "$LOG"
}
step 40 memory --preset gpu
step 220 throughput --preset gpu --engine pagedcore hf hf-cb --peer-subset 32
step 165 prefix --preset gpu --repeats 1 --time-budget 120
step 110 latency --preset gpu
cp /tmp/pagedcore-bench-serve-*.log "$OUT_DIR/" 2>/dev/null
echo "[gpu_suite] done $(date -u +%H:%M:%S)" | tee -a "$LOG"
