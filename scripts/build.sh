#!/usr/bin/env bash
# Configures and builds kvstash into ${BUILD_DIR:-build}. Extra arguments go to cmake.
# CUDA is enabled automatically when nvcc is found (-DKVSTASH_CUDA=OFF to skip it).
set -euo pipefail
cd "$(dirname "$0")/.."
build=${BUILD_DIR:-build}
gen=()
command -v ninja >/dev/null && gen=(-G Ninja)
if [ ! -f "$build/CMakeCache.txt" ]; then
  cmake -S . -B "$build" "${gen[@]}" -DCMAKE_BUILD_TYPE="${BUILD_TYPE:-RelWithDebInfo}" "$@"
elif [ $# -gt 0 ]; then
  cmake "$build" "$@"
fi
cmake --build "$build" -j "${JOBS:-$(nproc)}"
