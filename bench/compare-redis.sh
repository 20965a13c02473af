#!/usr/bin/env bash
# kvstash side by side with Redis, the store a user would otherwise pick for shared KV
# chunks (docs/bench.md, "Redis comparison"). Starts redis-server (no persistence) and
# kvstashd on free loopback ports, stores the same chunks in each, runs the same
# kvstash-bench workloads against kvstash over gRPC, kvstash over shm and Redis, and writes
# a markdown report (and the raw JSON of every run beside it). Builds nothing.
#
# Usage: bench/compare-redis.sh [BUILD_DIR]      (default: $BUILD_DIR or build/)
# Environment (defaults in brackets):
#   DURATION [3]       measured seconds per run        WARMUP [0.5]   unmeasured seconds first
#   KEYS [16]          distinct chunks stored          BASELINE_DURATION [1]  TCP baseline, s/direction
#   MODEL [llama-3-8b] geometry (T=256: 32 MiB fp16)   CODEC [xquant] kvstash codec preset
#   LOADS ["1x1 1x2"]  connections x inflight          WORKLOADS ["put get mixed"]
#   SYSTEMS ["grpc shm redis"]  (also: grpc-fp16 = kvstash over gRPC storing raw fp16)
#   OUT [bench/results/redis.md]  RAW [OUT with .md → -runs.jsonl]
#   KVSTASHD_ARGS ["--gpu off --host-capacity 4GiB"]  REDIS_SERVER [redis-server]
#   COMMIT [the repository's HEAD, marked when the tree has changes]: what the binaries were built from
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "${1:-${BUILD_DIR:-$repo/build}}" && pwd)
bench_bin=$build/client/bench/kvstash-bench
kvstashd_bin=$build/server/kvstashd
redis_bin=${REDIS_SERVER:-redis-server}
DURATION=${DURATION:-3}
WARMUP=${WARMUP:-0.5}
KEYS=${KEYS:-16}
BASELINE_DURATION=${BASELINE_DURATION:-1}
MODEL=${MODEL:-llama-3-8b}
CODEC=${CODEC:-xquant}
LOADS=${LOADS:-"1x1 1x2"}
WORKLOADS=${WORKLOADS:-"put get mixed"}
SYSTEMS=${SYSTEMS:-"grpc shm redis"}
OUT=${OUT:-$repo/bench/results/redis.md}
RAW=${RAW:-${OUT%.md}-runs.jsonl}
KVSTASHD_ARGS=${KVSTASHD_ARGS:-"--gpu off --host-capacity 4GiB"}

for b in "$bench_bin" "$kvstashd_bin"; do
  [ -x "$b" ] || { echo "compare-redis: $b not built (ninja -C $build kvstash-bench kvstashd)" >&2; exit 2; }
done
command -v "$redis_bin" >/dev/null || { echo "compare-redis: no $redis_bin (scripts/install-deps.sh)" >&2; exit 2; }
command -v redis-cli >/dev/null || { echo "compare-redis: no redis-cli (package redis-tools)" >&2; exit 2; }
command -v python3 >/dev/null || { echo "compare-redis: python3 writes the report" >&2; exit 2; }

tmp=$(mktemp -d /tmp/kvstash-compare-redis.XXXXXX)
started=$(date -u '+%Y-%m-%d %H:%M UTC')
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
redis_pid="" kvstashd_pid=""
cleanup() {
  for pid in $redis_pid $kvstashd_pid; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in $redis_pid $kvstashd_pid; do
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

# redis-server: loopback only, no RDB snapshots, no AOF, nothing written to disk.
redis_port=$(free_port)
"$redis_bin" --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
  --dir "$tmp" --logfile "$tmp/redis.log" --daemonize no &
redis_pid=$!
for _ in $(seq 100); do
  [ "$(redis-cli -p "$redis_port" ping 2>/dev/null)" = PONG ] && break
  kill -0 "$redis_pid" 2>/dev/null || { cat "$tmp/redis.log" >&2; exit 1; }
  sleep 0.1
done
redis_addr=127.0.0.1:$redis_port
redis_version=$("$redis_bin" --version | sed 's/.*v=\([^ ]*\).*malloc=\([^ ]*\).*/\1 (\2)/')

# kvstashd: port 0, the ready file gives the address.
# shellcheck disable=SC2086
"$kvstashd_bin" --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 --ready-file "$tmp/ready" \
  --log-level warn $KVSTASHD_ARGS >"$tmp/kvstashd.log" 2>&1 &
kvstashd_pid=$!
for _ in $(seq 300); do
  [ -s "$tmp/ready" ] && break
  kill -0 "$kvstashd_pid" 2>/dev/null || { cat "$tmp/kvstashd.log" >&2; exit 1; }
  sleep 0.1
done
kvstash_addr=$(head -n1 "$tmp/ready")
echo "compare-redis: redis $redis_addr (pid $redis_pid), kvstashd $kvstash_addr (pid $kvstashd_pid)" >&2

: >"$tmp/runs.jsonl"
: >"$tmp/commands.txt"
# run LABEL KIND ARGS...: one kvstash-bench run; its JSON goes to runs.jsonl with the label.
run() {
  local label=$1 kind=$2
  shift 2
  local addr=$kvstash_addr
  [ "$kind" = redis ] && addr=$redis_addr
  local cmd=("$bench_bin" --addr "$addr" --transport "$kind" --model "$MODEL" --keys "$KEYS" "$@" --json)
  echo "kvstash-bench ${cmd[*]:1}" | sed "s#$build/##" >>"$tmp/commands.txt"
  echo "compare-redis: $label: ${cmd[*]:1}" >&2
  local out rc=0
  out=$("${cmd[@]}" 2>>"$tmp/bench.stderr") || rc=$?
  [ -n "$out" ] || out='{"ok":false}'
  printf '{"label":"%s","rc":%d,"report":%s}\n' "$label" "$rc" "$out" >>"$tmp/runs.jsonl"
}

# 1. Memory on fresh servers: store KEYS chunks once (kept), then read what each server
#    reports (kvstash Stats used_bytes, Redis used_memory) and the process RSS growth.
#    The first run of step 2 uses the same keys and deletes them at its end.
kv_rss0=$(rss_kib "$kvstashd_pid")
run "memory grpc" grpc -w put --count "$KEYS" --codec "$CODEC" --keep
kv_rss1=$(rss_kib "$kvstashd_pid")
rd_rss0=$(rss_kib "$redis_pid")
run "memory redis" redis -w put --count "$KEYS" --keep
rd_rss1=$(rss_kib "$redis_pid")
rd_used_rss=$(redis-cli -p "$redis_port" info memory | tr -d '\r' | awk -F: '$1=="used_memory_rss"{print $2}')
printf '{"label":"rss","kvstashd_kib":[%s,%s],"redis_kib":[%s,%s],"redis_used_memory_rss":%s}\n' \
  "$kv_rss0" "$kv_rss1" "$rd_rss0" "$rd_rss1" "${rd_used_rss:-null}" >>"$tmp/runs.jsonl"

# 2. The matrix: every system x workload x load, the same flags but the transport.
for wl in $WORKLOADS; do
  for load in $LOADS; do
    c=${load%x*} i=${load#*x}
    for sys in $SYSTEMS; do
      common=(-w "$wl" -c "$c" -i "$i" -d "$DURATION" --warmup "$WARMUP"
              --baseline tcp --baseline-duration "$BASELINE_DURATION")
      case $sys in
        grpc|shm) run "$sys $wl $load" "$sys" "${common[@]}" --codec "$CODEC" ;;
        grpc-fp16) run "$sys $wl $load" grpc "${common[@]}" --codec fp16 ;;
        redis) run "$sys $wl $load" redis "${common[@]}" ;;
        *) echo "compare-redis: unknown system $sys" >&2; exit 2 ;;
      esac
    done
  done
done

# 3. The report.
{
  echo "device=$(lscpu | sed -n 's/^Model name: *//p' | head -n1), $(nproc) cores, $(free -g | awk '/^Mem:/ {print $2}') GiB RAM, kernel $(uname -r)"
  echo "date=$started"
  echo "load=$load_before"
  echo "load_after=$(cut -d' ' -f1-3 /proc/loadavg)"
  echo "commit=${COMMIT:-$(git -C "$repo" rev-parse --short=12 HEAD)$(git -C "$repo" diff --quiet HEAD -- 2>/dev/null || echo ' (with uncommitted changes)')}"
  echo "redis=$redis_version"
  echo "kvstashd_args=--listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 --log-level warn $KVSTASHD_ARGS"
  echo "redis_args=--port PORT --bind 127.0.0.1 --save '' --appendonly no"
  echo "settings=DURATION=$DURATION WARMUP=$WARMUP KEYS=$KEYS BASELINE_DURATION=$BASELINE_DURATION MODEL=$MODEL CODEC=$CODEC"
  echo "codec=$CODEC"
  echo "keys=$KEYS"
} >"$tmp/meta.txt"
cp "$tmp/runs.jsonl" "$RAW"
python3 - "$tmp/meta.txt" "$tmp/commands.txt" "$tmp/runs.jsonl" "$OUT" "$(basename "$RAW")" <<'PY'
import json, sys

meta_path, commands_path, runs_path, out_path, raw_name = sys.argv[1:6]
meta = dict(line.rstrip("\n").split("=", 1) for line in open(meta_path))
commands = [line.rstrip("\n") for line in open(commands_path)]
runs, rss = {}, None
for line in open(runs_path):
    r = json.loads(line)
    if r["label"] == "rss":
        rss = r
    else:
        runs[r["label"]] = r

NAMES = {"grpc": "kvstash gRPC", "shm": "kvstash shm", "redis": "Redis",
         "grpc-fp16": "kvstash gRPC, fp16 codec"}

def fmt(v, digits=3):
    return "–" if v is None else f"{v:.{digits}f}"

def pct(a, b):
    return "–" if not a or not b else f"{100 * a / b:.0f} %"

def ratio(a, b):
    return "–" if not a or not b else f"{a / b:.2f}×"

rows, errors = [], []
matrix = [k for k in runs if not k.startswith("memory")]
for label in matrix:
    sys_, wl, load = label.split(" ")
    rep = runs[label]["report"]
    if not rep.get("ok", False) or runs[label]["rc"] != 0:
        errors.append(f"`{label}`: exit {runs[label]['rc']}, "
                      f"{rep.get('code', '')} {rep.get('message', '')} errors={rep.get('error_count')}")
    base = rep.get("baseline", {})
    for op in ("put", "get"):
        o = rep.get("ops", {}).get(op)
        if not o:
            continue
        tcp = base.get("upload" if op == "put" else "download", {}).get("gbps")
        redis = runs.get(f"redis {wl} {load}", {}).get("report", {}).get("ops", {}).get(op, {})
        mem = rep.get("server_memory", {}).get("bytes_per_token")
        rows.append((wl, op, load, sys_, o["ops_per_s"], o["logical_gbps"], o["latency_ms"]["p50"],
                     o["latency_ms"]["p99"], pct(o["logical_gbps"], tcp),
                     "" if sys_ == "redis" else ratio(o["logical_gbps"], redis.get("logical_gbps")),
                     "–" if mem is None else f"{mem:,.0f}", tcp))

out = []
w = out.append
w("# kvstash vs Redis: the same KV chunks, side by side")
w("")
w("The peer a user would otherwise pick for a shared KV store is Redis: Debian's `redis-server`,")
w("started by `bench/compare-redis.sh` on loopback without persistence, holding each chunk as one")
w("string of raw 16-bit K/V (`SET`/`GET`, one socket per request in flight, hiredis). kvstash holds")
w(f"the same chunks encoded with `{meta['codec']}`, reached over gRPC or over a shared-memory region (shm).")
if any(k.startswith("grpc-fp16 ") for k in runs):
    w("\"kvstash gRPC, fp16 codec\" stores the raw 16-bit bytes, as Redis does: the same bytes on both")
    w("sides, so it compares the two servers and wire paths without the codec's savings.")
w("Same tool (`kvstash-bench`), same payloads, same keys, same concurrency, one run after the other")
w("on the same machine. Generated by `bench/compare-redis.sh`; raw JSON of every run: "
  f"`{raw_name}`.")
w("")
w(f"**Machine:** {meta['device']}; load average {meta['load']} before the runs, "
  f"{meta['load_after']} after. Client, servers and the TCP baseline all share these cores.  ")
w(f"**Date:** {meta['date']}. **Build:** `{meta['commit']}`, redis-server {meta['redis']}.  ")
w(f"**Settings:** {meta['settings']}.")
w("")
w("## Throughput and latency")
w("")
w("GB/s are logical (16-bit payload) bytes per second, 10⁹ B/s; latency per call in ms, nearest")
w("rank. \"of TCP\" is the op's GB/s over the loopback TCP baseline measured in the same run (upload")
w("for put, download for get, same payload, same number of streams): the physical limit of moving")
w("these bytes over a socket here. \"vs Redis\" is kvstash's GB/s over Redis's for the same op and")
w("load. B/token is the server's memory after the run ÷ (chunks stored × tokens per chunk): kvstash")
w("`Stats.used_bytes`, Redis `used_memory`.")
w("")
w("| workload | op | C×I | system | ops/s | GB/s | p50 ms | p99 ms | of TCP | vs Redis | B/token |")
w("|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
for (wl, op, load, s, ops, gbps, p50, p99, of_tcp, vs, mem, _tcp) in rows:
    name = NAMES.get(s, s)
    w(f"| {wl} | {op} | {load} | {name} | {ops:.1f} | {gbps:.3f} | {p50:.1f} | {p99:.1f} | "
      f"{of_tcp} | {vs or '–'} | {mem} |")
w("")
tcps = {}
for r in rows:
    if r[11]:
        tcps.setdefault((r[1], r[2]), []).append(r[11])
if tcps:
    w("Loopback TCP baseline, GB/s (min–max over the runs above): " + "; ".join(
        f"{'upload' if op == 'put' else 'download'} {load} {min(v):.2f}–{max(v):.2f}"
        for (op, load), v in sorted(tcps.items())) + ".")
    w("")

w("## Memory per cached token")
w("")
w(f"Fresh servers, {meta['keys']} chunks stored once (`-w put --count KEYS --keep`); "
  "what each server reports, and the growth of its process's resident memory (VmRSS) over the same step.")
w("")
w("| system | chunks | tokens | server-reported bytes | B/token | RSS growth | RSS B/token | raw 16-bit B/token |")
w("|---|---:|---:|---:|---:|---:|---:|---:|")
for key, name, pid_key, what in (("memory grpc", f"kvstash ({meta['codec']})", "kvstashd_kib", "Stats.used_bytes"),
                                 ("memory redis", "Redis (raw)", "redis_kib", "used_memory")):
    r = runs.get(key, {}).get("report", {})
    m = r.get("server_memory")
    if not m:
        w(f"| {name} | – | – | – | – | – | – | – |")
        continue
    rss_growth = None
    if rss:
        a, b = rss[pid_key]
        rss_growth = (b - a) * 1024
    tokens = m["tokens_stored"]
    w(f"| {name} | {m['keys_stored']} | {tokens} | {m['after_bytes']:,} ({what}) | {m['bytes_per_token']:,.0f} | "
      f"{'–' if rss_growth is None else f'{rss_growth / 2**20:,.1f} MiB'} | "
      f"{'–' if rss_growth is None or not tokens else f'{rss_growth / tokens:,.0f}'} | {m['raw_bytes_per_token']:,} |")
w("")
if errors:
    w("**Runs with errors or a non-zero exit:** " + "; ".join(errors))
    w("")
w("## Commands")
w("")
w("```")
w(f"redis-server {meta['redis_args']}")
w(f"kvstashd {meta['kvstashd_args']}")
for c in commands:
    w(c)
w("```")
open(out_path, "w").write("\n".join(out) + "\n")
PY
echo "compare-redis: wrote $OUT and $RAW" >&2
