#!/usr/bin/env bash
set -u
G=${BUNDLE:-$(cd "$(dirname "$0")" && pwd)}
source <(sed -n '/^start()/,/^}/p;/^B()/,/^}/p' "$(dirname "$0")/cuda-ipc-bench.sh")
mkdir -p $OUT/bench
start host16 7472 --gpu-capacity 64KiB --gpu-streams 16 --worker-threads 32
B restore16-1x1 7472 --transport cuda-ipc -w get --count 400
B restore16-2x8 7472 --transport cuda-ipc -w get -c 2 -i 8 --count 2000
B restore16-4x8 7472 --transport cuda-ipc -w get -c 4 -i 8 --count 3000
B restore16-4x16 7472 --transport cuda-ipc -w get -c 4 -i 16 --count 4000
kill %1; wait
