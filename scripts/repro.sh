#!/usr/bin/env bash
# The main job: set up (if needed), then `dvc repro` on the active profile (params.yaml). Results go
# to reports/<profile>/; when the whole pipeline is up to date afterwards, dvc.lock is copied there
# too (reports/<profile>/dvc.lock: every stage's params and dependency hashes for that profile).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
cd "$ROOT"
python -m robustlib.pipeline check
dvc repro "$@"
profile=$(python -c "import yaml; print(yaml.safe_load(open('params.yaml'))['base']['profile'])")
if dvc status -q >/dev/null 2>&1; then  # exit status 0: every stage up to date
  # DVC never drops a lock entry whose stage left dvc.yaml (another profile's run, an older layout):
  # keep only this pipeline's stages, so the lock names what this profile's results came from
  dvc stage list --name-only | python -c '
import sys
from ruamel.yaml import YAML  # round trip: the entries kept stay byte for byte as DVC wrote them
names, yaml = set(sys.stdin.read().split()), YAML()
with open("dvc.lock") as f:
    lock = yaml.load(f)
for stage in [k for k in lock["stages"] if k not in names]:
    del lock["stages"][stage]
with open("dvc.lock", "w") as f:
    yaml.dump(lock, f)'
  dvc status -q  # the pruned lock must still match every stage
  cp dvc.lock "reports/$profile/dvc.lock"
  echo "pipeline up to date: dvc.lock copied to reports/$profile/dvc.lock"
fi
