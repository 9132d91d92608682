#!/usr/bin/env bash
# The long fuzz run (kept out of CI's default run): every hypothesis property test of the
# suite (decoders, gossip validators, parsers) with SORAP2P_FUZZ_FACTOR (default 10) times
# more examples each and no deadlines; other tests are deselected. Extra arguments go to
# pytest, e.g. `scripts/fuzz.sh tests/fuzz -x` or `SORAP2P_FUZZ_FACTOR=100 scripts/fuzz.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck disable=SC1091
. "${SORAP2P_VENV:-.venv}/bin/activate"
export HYPOTHESIS_PROFILE=long
exec python -m pytest -p no:cacheprovider -q -m "not slow" "${@:-tests}"
