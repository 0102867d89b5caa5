#!/usr/bin/env bash
# Run the smoke profile's `dvc repro` in a scratch copy of a checkout and print the sha256 of every
# result file it writes (metrics, tables, per-example CSVs, curves, figures), for byte-for-byte
# comparisons across a refactor:
#   bash scripts/smoke_digest.sh [CHECKOUT] > before.sha256     # CHECKOUT defaults to this one
# Files that legitimately differ between two checkouts are left out: provenance.json (commit hash),
# executed notebooks (timings), dvc.lock (dependency hashes), dvclive (wall-clock), and every metrics
# key holding seconds or minutes (the JSON is compared with those keys removed).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
src="$(cd "${1:-$here}" && pwd)"
source "$here/scripts/bootstrap.sh" >/dev/null
ws="$(mktemp -d)/ws"
mkdir -p "$ws"
(cd "$src" && git ls-files -z --cached --others --exclude-standard) | while IFS= read -r -d '' f; do
  case "$f" in reports/*|runs/*|checkpoints/*|dvc.lock) continue ;; esac
  [ -f "$src/$f" ] && { mkdir -p "$ws/$(dirname "$f")"; cp -p "$src/$f" "$ws/$f"; }
done
cd "$ws"
git init -q && git add -A && git -c user.name=d -c user.email=d@d commit -qm copy
export PYTHONPATH="$ws"  # the copy's robustlib, not the editable install's
python -m robustlib.pipeline use smoke >/dev/null 2>&1 || python -m robustlib.params use smoke >/dev/null  # after / before the move
dvc repro -q >&2
out=reports/smoke
find "$out" -type f \( -name '*.csv' -o -name '*.json' -o -name '*.md' -o -name '*.png' \) \
     ! -name provenance.json ! -path '*/dvclive/*' ! -path '*/executed/*' | LC_ALL=C sort | while read -r f; do
  if [[ "$f" == *.json ]]; then
    h=$(python - "$f" <<'PY'
import hashlib, json, sys
def strip(o):
    if isinstance(o, dict):
        return {k: strip(v) for k, v in o.items() if k not in ("seconds", "minutes") and not k.endswith(("_seconds", "_minutes", "_s"))}
    return [strip(v) for v in o] if isinstance(o, list) else o
print(hashlib.sha256(json.dumps(strip(json.load(open(sys.argv[1]))), sort_keys=True).encode()).hexdigest())
PY
)
  else
    h=$(sha256sum "$f" | cut -d' ' -f1)
  fi
  echo "$h  ${f#$out/}"
done
echo "workspace: $ws" >&2
