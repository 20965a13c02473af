#!/usr/bin/env bash
# The Python client benchmark on the lent GPU machine (bench/results/python-client.md).
#   BUNDLE=.gpu OUT=/tmp/out bash bench/python/run-gpu.sh
# BUNDLE holds kvstashd, prefix_get_bench and kvstash-bench (shared/device/bundle.sh).
set -uo pipefail
cd "$(dirname "$0")/../.."
B="${BUNDLE:-.gpu}"
OUT="${OUT:-/tmp/kvstash-bench-out}"
mkdir -p "$OUT"
J="$OUT/python-client-runs.jsonl"
start() {  # NAME ARGS... -> address in $ADDR
  local name=$1; shift
  "$B/run" kvstashd --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 --ready-file "/tmp/$name.ready" \
    --host-capacity 24GiB --fidelity-probe-every 0 --log-level warn "$@" > "$OUT/$name.log" 2>&1 &
  for _ in $(seq 300); do [ -s "/tmp/$name.ready" ] && break; sleep 0.1; done
  ADDR=$(cat "/tmp/$name.ready")
}
start gputier --gpu-capacity 16GiB; GPU_ADDR=$ADDR
start hosttier --gpu-capacity 64KiB --gpu-streams 16 --worker-threads 32; HOST_ADDR=$ADDR
for codec in xquant fp16; do
  for tier in gpu host; do
    addr=$GPU_ADDR; [ $tier = host ] && addr=$HOST_ADDR
    python3 bench/python/client_bench.py --addr "$addr" --codec $codec --label "$tier-tier" | tee -a "$J"
    "$B/run" prefix_get_bench --addr "$addr" --codec $codec --namespace "cpp-$tier-$codec" \
      | sed "s/^{/{\"label\":\"$tier-tier\",/" | tee -a "$J"
  done
done
python3 bench/python/client_bench.py --addr "$GPU_ADDR" --shm --label shm-gpu-codec | tee -a "$J"
for w in put get; do
  "$B/run" kvstash-bench --addr "$GPU_ADDR" --transport shm -w $w --count 30 --keys 4 --payloads 2 \
    --json -n cpp-shm-$w | sed "s/^{/{\"label\":\"cpp-shm-$w\",/" | tee -a "$J"
done
kill %1 %2 2>/dev/null; wait
