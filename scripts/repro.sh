#!/usr/bin/env bash
# The main job: set up (if needed), then `dvc repro` on the active profile (params.yaml).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
cd "$ROOT"
python -m robustlib.params check
dvc repro "$@"
