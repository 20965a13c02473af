#!/usr/bin/env bash
# One command: installs dependencies, builds, and starts kvstashd in the foreground with
# the embedded default configuration (1 GiB host pool, CPU codec unless a GPU is present),
# serving gRPC on 127.0.0.1:7450. Extra arguments go to kvstashd (see kvstashd --help).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
BUILD_TYPE=${BUILD_TYPE:-Release} bash scripts/build.sh
exec "${BUILD_DIR:-build}/server/kvstashd" "$@"
