#!/usr/bin/env bash
# The test command: set up (if needed), then run the whole test suite, the smoke pipeline included.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
cd "$ROOT"
python -m pytest "$@"
