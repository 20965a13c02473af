#!/usr/bin/env bash
# Run on the GPU machine from a bundle dir holding run and bin/{kvstashd,kvstash-bench}
# (shared/device/bundle.sh); G below is that dir. Writes $OUT/bench/all.jsonl.
# Device benches: cuda-ipc Put/Get vs D2D copy (GPU tier), host-tier restore vs pinned H2D,
# shm with registered regions. JSON per run under $OUT/bench/.
set -u
G=${BUNDLE:-$(cd "$(dirname "$0")" && pwd)}
mkdir -p $OUT/bench
start() {  # name port extra...
  local name=$1 port=$2; shift 2
  rm -f /tmp/$name.ready
  $G/run kvstashd --listen 127.0.0.1:$port --ready-file /tmp/$name.ready --host-capacity 24GiB \
    --metrics-listen 127.0.0.1:0 --log-level warn "$@" > $OUT/bench/$name.log 2>&1 &
  for i in $(seq 1 300); do [ -f /tmp/$name.ready ] && break; sleep 0.2; done
}
B() {  # tag port args...
  local tag=$1 port=$2; shift 2
  echo "== $tag: kvstash-bench --addr 127.0.0.1:$port $*" | tee -a $OUT/bench/commands.txt
  timeout 120 $G/run kvstash-bench --addr 127.0.0.1:$port -m llama-3-8b --codec xquant --keys 64 --payloads 4 --warmup 1 --json "$@" > /tmp/$tag.json 2> /tmp/$tag.err
  local rc=$?
  echo "{\"tag\":\"$tag\",\"rc\":$rc,\"report\":$(cat /tmp/$tag.json)}" >> $OUT/bench/all.jsonl
  tail -c 300 /tmp/$tag.err >> $OUT/bench/errs.txt
  echo "rc=$rc"
}
start gpu 7461 --gpu-capacity 16GiB
start host 7462 --gpu-capacity 64KiB
B ipc-verify-gpu 7461 --transport cuda-ipc -w mixed --count 40 --verify
B ipc-verify-host 7462 --transport cuda-ipc -w get --count 40 --verify
B ipc-put-1x1 7461 --transport cuda-ipc -w put --count 300
B ipc-get-1x1 7461 --transport cuda-ipc -w get --count 500
B ipc-put-1x4 7461 --transport cuda-ipc -w put -i 4 --count 600
B ipc-get-1x4 7461 --transport cuda-ipc -w get -i 4 --count 1000
B restore-1x1 7462 --transport cuda-ipc -w get --count 400
B restore-1x4 7462 --transport cuda-ipc -w get -i 4 --count 800
B restore-2x4 7462 --transport cuda-ipc -w get -c 2 -i 4 --count 1200
B restore-2x8 7462 --transport cuda-ipc -w get -c 2 -i 8 --count 1600
B shm-put-1x1 7461 --transport shm -w put --count 200
B shm-get-1x1 7461 --transport shm -w get --count 300
B shm-put-4x2 7461 --transport shm -w put -c 4 -i 2 --count 400
B shm-get-4x2 7461 --transport shm -w get -c 4 -i 2 --count 600
kill %1 %2; wait
