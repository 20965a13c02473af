#!/usr/bin/env bash
# Builds kvstash a second time with AddressSanitizer and UndefinedBehaviorSanitizer (clang,
# CPU only) and runs every non-GPU test under them; the same build checks every
# ABSL_GUARDED_BY / ABSL_EXCLUSIVE_LOCKS_REQUIRED annotation with clang's -Wthread-safety as
# an error. Part of scripts/test.sh (the README's test command).
#
# ThreadSanitizer is not run: Debian's gRPC, protobuf and Abseil are not built with it, so
# their internal synchronization is invisible to it and it reports races inside them
# (TSan needs every library instrumented). The lock annotations are checked statically
# instead, and ASan/UBSan work with uninstrumented libraries (they only miss errors inside
# them).
#
# Excluded tests (ctest labels), and why:
#   gpu       needs a CUDA device and a CUDA build (this build is CPU-only);
#   fidelity  runs the codec as a shared library loaded into Python with ctypes, which
#             cannot load an ASan-instrumented library unless libasan is preloaded into the
#             interpreter (and then reports CPython's own allocations); the regular build
#             runs it;
#   soak      a 2-minute load test; the regular build runs it (scripts/test.sh).
#   SANITIZER_BUILD_DIR  build directory (default build-asan)
#   Extra arguments go to ctest (e.g. -R store_test).
set -euo pipefail
cd "$(dirname "$0")/.."
build=${SANITIZER_BUILD_DIR:-build-asan}
cc=$(command -v clang-14 || command -v clang || true)
cxx=$(command -v clang++-14 || command -v clang++ || true)
if [ -z "$cc" ] || [ -z "$cxx" ]; then
  echo "test-sanitizers: clang not found (bash scripts/install-deps.sh)" >&2
  exit 1
fi
gen=()
command -v ninja >/dev/null && gen=(-G Ninja)
san="-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer"
if [ ! -f "$build/CMakeCache.txt" ]; then
  # -O1 without NDEBUG: assertions on, and fast enough for the integration tests.
  cmake -S . -B "$build" "${gen[@]}" -DCMAKE_C_COMPILER="$cc" -DCMAKE_CXX_COMPILER="$cxx" \
    -DKVSTASH_CUDA=OFF -DKVSTASH_BUILD_BENCH=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g" -DCMAKE_C_FLAGS_RELWITHDEBINFO="-O1 -g" \
    -DCMAKE_CXX_FLAGS="$san -Wthread-safety -Werror=thread-safety" -DCMAKE_C_FLAGS="$san" \
    -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=address,undefined" \
    -DCMAKE_SHARED_LINKER_FLAGS="-fsanitize=address,undefined"
fi
cmake --build "$build" -j "${JOBS:-$(nproc)}"

symbolizer=$(command -v llvm-symbolizer-14 || command -v llvm-symbolizer || true)
[ -n "$symbolizer" ] && export ASAN_SYMBOLIZER_PATH="$symbolizer"
# Every test process and every daemon a test starts inherits these: the first report ends
# the process with an error, and a leak at exit fails it too. handle_sigbus=0: the region
# registry installs its own SIGBUS handler and hands faults outside its mappings to the
# previous disposition; with ASan's handler there instead of the default, such a fault
# ends in an ASan report and exit status 1 rather than death by SIGBUS, which
# RegionGuardDeathTest checks for.
export ASAN_OPTIONS="${ASAN_OPTIONS:-halt_on_error=1:detect_leaks=1:strict_init_order=1:handle_sigbus=0}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}"
ctest --test-dir "$build" --output-on-failure -j "${JOBS:-$(nproc)}" --timeout 900 \
  -LE 'gpu|fidelity|soak' "$@"
