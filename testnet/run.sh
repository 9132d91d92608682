#!/usr/bin/env bash
# The local testnet. (F1: starts a bootstrap node on 127.0.0.1 and runs until Ctrl-C.)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
. .venv/bin/activate
exec python -m testnet "$@"
