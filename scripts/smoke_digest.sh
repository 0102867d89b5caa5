#!/usr/bin/env bash
# Run the smoke profile's `dvc repro` in a scratch copy of a checkout and print a digest of every result
# file it writes, for byte-for-byte comparisons across a refactor:
#   bash scripts/smoke_digest.sh [CHECKOUT] > before.sha256    # CHECKOUT defaults to this one
#   bash scripts/smoke_digest.sh --digest-only reports/smoke     # digest an existing output folder
# Per-example CSVs, curves, tables and figures are hashed as bytes. Left out because they legitimately
# differ between two runs of the same code: provenance.json (commit), executed notebooks and dvclive
# (wall-clock), dvc.lock (dependency hashes). Timings are removed before hashing: JSON keys holding
# seconds or minutes, CSV columns named *minutes*/*seconds*; Markdown and PNG files that show timings
# (train_summary, table1_attacks, report.md, the benchmark table) are hashed as "timed:" lines, which
# are expected to differ.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$here/scripts/bootstrap.sh" >/dev/null
digest() {
  python - "$1" <<'PY'
import hashlib, io, json, sys
from pathlib import Path
import pandas as pd
out = Path(sys.argv[1])
TIMED = ("tables/train_summary.md", "tables/table1_attacks.md", "report.md", "tables/benchmark_objectives.md")
def strip(o):
    if isinstance(o, dict):
        return {k: strip(v) for k, v in o.items() if k not in ("seconds", "minutes")
                and not k.endswith(("_seconds", "_minutes"))}
    return [strip(v) for v in o] if isinstance(o, list) else o
for f in sorted(p for p in out.rglob("*") if p.is_file()):
    rel = f.relative_to(out).as_posix()
    if rel == "provenance.json" or rel == "dvc.lock" or rel.startswith(("executed/", "dvclive/", "runs/")):
        continue
    data, tag = f.read_bytes(), ""
    if f.suffix == ".json":
        data = json.dumps(strip(json.loads(data)), sort_keys=True).encode()
    elif f.suffix == ".csv":
        df = pd.read_csv(io.BytesIO(data))
        timed = [c for c in df.columns if "minutes" in c or "seconds" in c]
        if timed:
            data = df.drop(columns=timed).to_csv(index=False).encode()
    elif rel in TIMED:
        tag = "timed: "
    print(f"{tag}{hashlib.sha256(data).hexdigest()}  {rel}")
PY
}
if [ "${1:-}" = "--digest-only" ]; then digest "$2"; exit 0; fi
src="$(cd "${1:-$here}" && pwd)"
ws="$(mktemp -d)/ws"
mkdir -p "$ws"
(cd "$src" && git ls-files -z --cached --others --exclude-standard) | while IFS= read -r -d '' f; do
  case "$f" in reports/*|runs/*|checkpoints/*|dvc.lock) continue ;; esac
  [ -f "$src/$f" ] && { mkdir -p "$ws/$(dirname "$f")"; cp -p "$src/$f" "$ws/$f"; }
done
cd "$ws"
git init -q && git add -A && git -c user.name=d -c user.email=d@d commit -qm copy
export PYTHONPATH="$ws"  # the copy's robustlib, not the editable install's
python -m robustlib.pipeline use smoke >/dev/null 2>&1 || python -m robustlib.params use smoke >/dev/null  # after/before the move
start=$(date +%s)
dvc repro -q >&2
echo "dvc repro: $(( $(date +%s) - start )) s; workspace: $ws" >&2
digest reports/smoke
