#!/usr/bin/env bash
# Idempotent set-up of everything sorap2p needs on a fresh machine:
#   - a Python virtual environment in .venv with torch==2.13.0 (CPU) and sorap2p[dev];
#   - npm packages of contracts/ (solc, OpenZeppelin, anvil) and interop/ (Helia, @ipld/car);
#   - Debian's chromium (the dashboard's headless browser test), when missing.
# Re-running it only installs what changed (stamps keyed by the hash of each manifest).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=${SORAP2P_VENV:-$ROOT/.venv}
PY=${PYTHON:-python3}

log() { printf '[setup] %s\n' "$*" >&2; }
stamp_ok() { [ -f "$1" ] && [ "$(cat "$1")" = "$2" ]; }

if [ ! -x "$VENV/bin/python" ]; then
  log "creating virtual environment $VENV"
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"

if ! python -c 'import torch, sys; sys.exit(0 if torch.__version__.startswith("2.13.0") else 1)' 2>/dev/null; then
  log "installing torch==2.13.0 (CPU build)"
  pip install -q torch==2.13.0
fi

want=$(cat pyproject.toml | sha256sum | cut -d' ' -f1)
if ! stamp_ok "$VENV/.sorap2p-stamp" "$want" || ! python -c 'import sorap2p' 2>/dev/null; then
  log "installing sorap2p[dev]"
  pip install -q -e '.[dev]'
  echo "$want" > "$VENV/.sorap2p-stamp"
fi

for dir in contracts interop; do
  if [ -f "$dir/package-lock.json" ]; then
    want=$(cat "$dir/package.json" "$dir/package-lock.json" | sha256sum | cut -d' ' -f1)
    if ! stamp_ok "$dir/node_modules/.sorap2p-stamp" "$want"; then
      if ! command -v npm >/dev/null 2>&1; then
        log "npm not found: installing Node.js from Debian's packages"
        apt-get update -qq && apt-get install -y -qq nodejs npm >/dev/null
      fi
      log "installing npm packages of $dir/"
      (cd "$dir" && npm ci --ignore-scripts --legacy-peer-deps --no-audit --no-fund --loglevel=error)
      echo "$want" > "$dir/node_modules/.sorap2p-stamp"
    fi
  fi
done
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing chromium (Debian package) for the dashboard's browser test"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    log "chromium missing (needs root and apt-get): the dashboard's browser test will skip"
  fi
fi
log "ready: $VENV"
