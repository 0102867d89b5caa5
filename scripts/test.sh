#!/usr/bin/env bash
# The test command: set up (if needed), then run the whole test suite, the smoke pipeline included.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
cd "$ROOT"
set +e
python -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "error: pytest collected no tests (exit 5); the suite must not be empty" >&2
fi
exit "$rc"
