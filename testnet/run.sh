#!/usr/bin/env bash
# The local testnet: anvil + contracts + bootstrap, aggregator, validators and trainers as
# separate processes on 127.0.0.1, running real federated rounds (see python -m testnet --help).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
. .venv/bin/activate
exec python -m testnet "$@"
