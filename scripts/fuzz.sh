#!/usr/bin/env bash
# Builds the libFuzzer harnesses (tests/fuzz, KVSTASH_FUZZ=ON: clang, ASan+UBSan) into their
# own build directory and runs each for a bounded time, starting from the checked-in seed
# corpora (tests/fuzz/corpus/<harness>) and replaying the fixed findings
# (tests/fuzz/repro/<harness>). Fails on any crash, failed oracle, leak, sanitizer report,
# timeout or huge allocation (-malloc_limit_mb, -rss_limit_mb); prints the executions per
# harness. Part of scripts/test.sh (the README's test command).
#   FUZZ_SECONDS     fuzzing time per harness (default 60)
#   FUZZ_TARGETS     harnesses to run (default "request chunk paged config")
#   FUZZ_PARALLEL    harnesses run at once (default: the number of CPUs)
#   FUZZ_BUILD_DIR   build directory (default build-fuzz); new corpus entries accumulate in
#                    $FUZZ_BUILD_DIR/fuzz-corpus, crash inputs go to .../fuzz-artifacts
# Replay one input:  build-fuzz/tests/fuzz/fuzz_<harness> FILE   (tests/fuzz/README.md)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${FUZZ_SECONDS:-60}
targets=${FUZZ_TARGETS:-request chunk paged config}
parallel=${FUZZ_PARALLEL:-$(nproc)}
build=${FUZZ_BUILD_DIR:-build-fuzz}

# Debian 12's clang (scripts/install-deps.sh: clang-14, libclang-rt-14-dev for libFuzzer).
cc=$(command -v clang-14 || command -v clang || true)
cxx=$(command -v clang++-14 || command -v clang++ || true)
if [ -z "$cc" ] || [ -z "$cxx" ]; then
  echo "fuzz: clang not found (bash scripts/install-deps.sh)" >&2
  exit 1
fi
gen=()
command -v ninja >/dev/null && gen=(-G Ninja)
if [ ! -f "$build/CMakeCache.txt" ]; then
  # -O1 without NDEBUG: fast enough to fuzz, with assertions on.
  cmake -S . -B "$build" "${gen[@]}" -DCMAKE_C_COMPILER="$cc" -DCMAKE_CXX_COMPILER="$cxx" \
    -DKVSTASH_CUDA=OFF -DKVSTASH_FUZZ=ON -DKVSTASH_BUILD_BENCH=OFF \
    -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g" \
    -DCMAKE_C_FLAGS_RELWITHDEBINFO="-O1 -g"
fi
bins=()
for t in $targets; do bins+=("fuzz_$t"); done
cmake --build "$build" -j "${JOBS:-$(nproc)}" --target "${bins[@]}"

symbolizer=$(command -v llvm-symbolizer-14 || command -v llvm-symbolizer || true)
[ -n "$symbolizer" ] && export ASAN_SYMBOLIZER_PATH="$symbolizer"
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:detect_stack_use_after_return=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"

logs="$build/fuzz-logs"
mkdir -p "$logs"
run_one() {
  local t=$1
  local corpus="$build/fuzz-corpus/$t" artifacts="$build/fuzz-artifacts/$t"
  mkdir -p "$corpus" "$artifacts"
  local dirs=("$corpus" "tests/fuzz/corpus/$t")
  [ -d "tests/fuzz/repro/$t" ] && dirs+=("tests/fuzz/repro/$t")
  # -timeout: an input that runs 25 s is a finding (a loop or a quadratic path).
  local status=0
  "$build/tests/fuzz/fuzz_$t" -max_total_time="$seconds" -timeout=25 -rss_limit_mb=2048 \
    -malloc_limit_mb=2048 -max_len=65536 -print_final_stats=1 \
    -artifact_prefix="$artifacts/" "${dirs[@]}" >"$logs/$t.log" 2>&1 || status=$?
  echo "$status" >"$logs/$t.rc"
}

running=0
for t in $targets; do
  rm -f "$logs/$t.rc"
  if [ "$running" -ge "$parallel" ]; then
    wait -n || true
    running=$((running - 1))
  fi
  echo "fuzz: $t for ${seconds}s (log: $logs/$t.log)"
  run_one "$t" &
  running=$((running + 1))
done
wait

declare -A rc
for t in $targets; do rc[$t]=$(cat "$logs/$t.rc" 2>/dev/null || echo 255); done
failed=0
printf '\n%-10s %12s %10s %8s  %s\n' harness executions exec/s "new" result
for t in $targets; do
  log="$logs/$t.log"
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  speed=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  added=$(sed -n 's/^stat::new_units_added: *//p' "$log" | tail -1)
  if [ "${rc[$t]}" -eq 0 ]; then
    result=ok
  else
    result="FAILED (exit ${rc[$t]})"
    failed=1
  fi
  printf '%-10s %12s %10s %8s  %s\n' "$t" "${execs:-?}" "${speed:-?}" "${added:-?}" "$result"
done
if [ "$failed" -ne 0 ]; then
  for t in $targets; do
    [ "${rc[$t]}" -eq 0 ] && continue
    echo
    echo "=== fuzz_$t failed; the report (full log $logs/$t.log):"
    grep -v -E '^#[0-9]+\s+(NEW|REDUCE|pulse|INITED)|^INFO:' "$logs/$t.log" | tail -n 80
    echo "=== inputs: $(ls "$build/fuzz-artifacts/$t" | sed "s|^|$build/fuzz-artifacts/$t/|" | tr '\n' ' ')"
  done
  exit 1
fi
echo "fuzz: all harnesses ran ${seconds}s without a finding"
