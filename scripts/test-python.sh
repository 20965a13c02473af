#!/usr/bin/env bash
# Installs the Python client (client/python) into a fresh venv and runs its tests against
# the kvstashd of ${BUILD_DIR:-build}. Part of scripts/test.sh (the README's test command).
#   KVSTASH_PY_VENV   the venv (default /opt/kvstash-python-venv; recreated each run so the
#                     install from pyproject.toml is what is tested)
#   KVSTASH_PY_TORCH  1 (default): also install torch and transformers (the package's
#                     [transformers] extra, about 3 GB from PyPI: its Linux torch carries CUDA
#                     libraries), so the torch paths and kvstash.transformers run on the CPU
#                     too; 0: without them (those tests skip, saying why)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${KVSTASH_PY_VENV:-/opt/kvstash-python-venv}"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
$SUDO rm -rf "$VENV"
$SUDO /usr/bin/python3 -m venv "$VENV"
export PIP_DISABLE_PIP_VERSION_CHECK=1
extras="test"
[ "${KVSTASH_PY_TORCH:-1}" = 1 ] && extras="test,transformers"
$SUDO "$VENV/bin/python" -m pip install -q --retries 5 --timeout 120 "./client/python[$extras]"
export KVSTASH_DAEMON="${KVSTASH_DAEMON:-$PWD/${BUILD_DIR:-build}/server/kvstashd}"
export KVSTASH_CODEC_CAPI="${KVSTASH_CODEC_CAPI:-$PWD/${BUILD_DIR:-build}/kernels/capi/libkvstash_codec_capi.so}"
# Run from the tests folder, so `import kvstash` is the installed package, not the source.
cd client/python/tests
exec "$VENV/bin/python" -m pytest -p no:cacheprovider -rs "$@"
