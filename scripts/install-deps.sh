#!/usr/bin/env bash
# Installs everything kvstash needs to build and test, from Debian 12 packages only.
# Idempotent: safe to run again; does nothing when all packages are present.
set -euo pipefail

pkgs=(
  build-essential cmake pkg-config ninja-build git
  libgrpc++-dev libgrpc-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libabsl-dev libspdlog-dev libfmt-dev libgtest-dev libgmock-dev libbenchmark-dev
  libxxhash-dev libcli11-dev libtomlplusplus-dev nlohmann-json3-dev
  python3 python3-numpy
  # metrics endpoint (server/metrics) and the operators' tests (tests/operators)
  prometheus-cpp-dev libcivetweb-dev prometheus python3-yaml
  # kvstash-bench --transport redis and bench/compare-redis.sh (the Redis comparison)
  libhiredis-dev redis-server
  # scripts/fuzz.sh and scripts/test-sanitizers.sh: clang, libFuzzer and the sanitizer
  # runtimes (libclang-rt-14-dev), llvm-symbolizer for their stack traces (llvm-14)
  clang-14 libclang-rt-14-dev llvm-14
)
# systemd-analyze verifies deploy/systemd/kvstashd.service; only pull in systemd for it
# when the host has no systemd-analyze at all.
command -v systemd-analyze >/dev/null 2>&1 || pkgs+=(systemd)

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#pkgs[@]} packages present"
  exit 0
fi
echo "install-deps: installing ${missing[*]}"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
