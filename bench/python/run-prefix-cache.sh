#!/usr/bin/env bash
# Time to first token with the transformers prefix cache, on the lent GPU machine
# (bench/results/prefix-cache.md).   BUNDLE=.gpu OUT=/tmp/out bash bench/python/run-prefix-cache.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
B="${BUNDLE:-.gpu}"
OUT="${OUT:-/tmp/kvstash-bench-out}"
mkdir -p "$OUT"
start() {  # NAME ARGS... -> address in $ADDR
  local name=$1; shift
  rm -f "/tmp/$name.ready"
  "$B/run" kvstashd --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 --ready-file "/tmp/$name.ready" \
    --host-capacity 24GiB --fidelity-probe-every 0 --log-level warn "$@" > "$OUT/$name.log" 2>&1 &
  for _ in $(seq 300); do [ -s "/tmp/$name.ready" ] && break; sleep 0.1; done
  ADDR=$(cat "/tmp/$name.ready")
}
start ttft-gputier --gpu-capacity 16GiB; GPU_ADDR=$ADDR
start ttft-hosttier --gpu-capacity 64KiB --gpu-streams 16 --worker-threads 32; HOST_ADDR=$ADDR
python3 bench/python/prefix_cache_bench.py --gpu-addr "$GPU_ADDR" --host-addr "$HOST_ADDR" --out "$OUT" "$@"
kill %1 %2 2>/dev/null; wait
