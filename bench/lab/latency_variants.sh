#!/usr/bin/env bash
# Online latency of one build under engine-thread variants, alternating (issue 14's ITL question):
#   overlapped       the default server
#   sync             --no-async-scheduling
#   VARIANT-swi      VARIANT with sys.setswitchinterval(0.0005) in every process (a sitecustomize on
#                    PYTHONPATH): do GIL handoffs between the engine thread and the asyncio thread
#                    explain the extra ITL?
# usage (GPU machine, package built): PACKAGE=/tmp/pc bash bench/lab/latency_variants.sh [ROUNDS] [VARIANTS] [RATES]
set -uo pipefail
cd "$(dirname "$0")/../.."
PACKAGE=${PACKAGE:?the folder holding the built pagedcore package}
OUT_DIR=${OUT:-results/latency_variants}
mkdir -p "$OUT_DIR" /tmp/switch-interval
echo "import sys; sys.setswitchinterval(0.0005)" > /tmp/switch-interval/sitecustomize.py
for round in $(seq "${1:-1}"); do
  for variant in ${2:-overlapped sync overlapped-swi sync-swi}; do
    path=$PACKAGE:${PYTHONPATH:-}; args=()
    [ "${variant%-swi}" = sync ] && args=(--server-args --no-async-scheduling)
    [ "${variant%-swi}" != "$variant" ] && path=/tmp/switch-interval:$path
    echo "== online latency (bench latency --preset gpu): $variant, round $round"
    PYTHONPATH=$path timeout 150 python3 -m pagedcore.cli bench latency --preset gpu \
      --out "$OUT_DIR/${variant}_$round" ${3:+--rates $3} "${args[@]}" 2>&1 | grep -v "^\[" | tail -6
  done
done
