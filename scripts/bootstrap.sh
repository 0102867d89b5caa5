#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment and install robustlib with pinned versions.
# Sourced by scripts/repro.sh and scripts/test.sh; safe to run again (it does nothing when up to date).
#
# Trap handled here: some machines carry a CPU-only torch wheel in a local `find-links` folder that
# pip prefers over the registry's build, and the registry's torchvision does not import against it
# ("operator torchvision::nms does not exist"). We point find-links at an empty folder for our
# install so torch and torchvision come from the same registry, then check that they import.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${ROBUSTLIB_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" - <<'PY' || { echo "robustlib needs Python 3.11 or 3.12 (found: $($PYTHON --version 2>&1))" >&2; exit 1; }
import sys; sys.exit(0 if sys.version_info[:2] in ((3, 11), (3, 12)) else 1)
PY
  echo "[bootstrap] creating virtual environment in $VENV"
  "$PYTHON" -m venv "$VENV"
fi

# the key names this checkout too: the editable install points at $ROOT, so a second checkout (e.g. a git
# worktree) sharing this venv reinstalls it, and running this again here points it back
key="$( { echo "$ROOT"; cat "$ROOT/pyproject.toml" "$ROOT/requirements.lock"; } | sha256sum | cut -d' ' -f1)"
stamp="$VENV/.robustlib-install-key"
if [ "$(cat "$stamp" 2>/dev/null)" != "$key" ]; then
  echo "[bootstrap] installing robustlib and its pinned dependencies (first run: a few minutes)"
  mkdir -p "$VENV/no-local-wheels"
  # An old pip (23.x) backtracks for many minutes over this dependency set; a current one resolves it fast.
  PIP_FIND_LINKS="$VENV/no-local-wheels" "$VENV/bin/python" -m pip install --quiet --upgrade "pip>=25"
  PIP_FIND_LINKS="$VENV/no-local-wheels" "$VENV/bin/python" -m pip install --quiet --progress-bar off \
      -c "$ROOT/requirements.lock" -e "$ROOT[dev,scaleout]"
  # torchattacks (a second PGD implementation, used by tests and the attack benchmark as a reference)
  # pins requests<2.26, which conflicts with jupyterlab; its code never uses requests, so install it
  # without dependencies.
  PIP_FIND_LINKS="$VENV/no-local-wheels" "$VENV/bin/python" -m pip install --quiet --no-deps "torchattacks==3.5.1"
  "$VENV/bin/python" -c "import torch, torchvision; print('[bootstrap] torch', torch.__version__, '| torchvision', torchvision.__version__, '| cuda', torch.cuda.is_available())"
  echo "$key" > "$stamp"
fi

export PATH="$VENV/bin:$PATH"
export VIRTUAL_ENV="$VENV"
# glibc's allocator dominates small-tensor CPU work; these settings made training steps 20-50% faster here.
export MALLOC_MMAP_MAX_="${MALLOC_MMAP_MAX_:-0}"
export MALLOC_TRIM_THRESHOLD_="${MALLOC_TRIM_THRESHOLD_:-100000000000}"
