#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite, all markers included (net, chain, slow).
# Extra arguments go to pytest, e.g. `scripts/test.sh -k codec -x`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# shellcheck disable=SC1091
. "${SORAP2P_VENV:-.venv}/bin/activate"
exec python -m pytest -p no:cacheprovider "$@"
