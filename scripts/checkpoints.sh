#!/usr/bin/env bash
# Keep the active profile's expensive state in git, under checkpoints/, for machines that do not keep
# the DVC cache (.dvc/cache) or the ignored run folders between sittings:
#   - checkpoints/files/: a DVC remote (`checkpoints`, .dvc/config) holding the DVC-cached outputs that
#     dvc.lock names (model.pt, split.json, executed notebooks), content-addressed by their md5;
#   - checkpoints/progress/<profile>/: the state of unfinished stages (each run's resume.pt, the LPIPS
#     network's resume.pt, verify shards), as the last `save` found them.
#
#   bash scripts/checkpoints.sh save      # after a stage finishes or before stopping; then commit checkpoints/
#   bash scripts/checkpoints.sh restore   # on a fresh clone (set-up done): then `dvc repro` skips what the
#                                         # lock and the restored outputs agree on, and resumes the rest
#                                         # (after a profile switch it first takes reports/<profile>/dvc.lock)
# A restored output is used only if its md5 is the one dvc.lock records; a resume.pt only by the same
# training configuration (robustlib.training.loop checks its hash).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PY:-.venv/bin/python}   # the tests point these at their interpreter's environment
DVC=${DVC:-.venv/bin/dvc}
[ -x "$DVC" ] || { echo "no .venv: run 'bash -c \"source scripts/bootstrap.sh\"' first" >&2; exit 2; }
profile=$("$PY" -c "import yaml; print(yaml.safe_load(open('params.yaml'))['base']['profile'])")
runs="reports/$profile/runs"
progress="checkpoints/progress/$profile"

case "${1:-}" in
  save)
    "$DVC" push -r checkpoints
    rm -rf "$progress"
    if [ -d "$runs" ]; then
      (cd "$runs" && find . -type f \( -name resume.pt -o -path '*/verify_shards/*' \)) | while read -r f; do
        mkdir -p "$progress/$(dirname "$f")"
        cp -p "$runs/$f" "$progress/$f"
      done
    fi
    echo "saved: checkpoints/ ($(du -sh checkpoints | cut -f1)); commit it with the results"
    ;;
  restore)
    # after `params use P`, dvc.lock may still be another profile's: P's committed results came with
    # reports/P/dvc.lock, which names the outputs to pull
    lock_profile=$("$PY" -c 'import re, yaml  # the profile whose report stage dvc.lock records
cmd = (yaml.safe_load(open("dvc.lock"))["stages"].get("report") or {}).get("cmd", "")
print(re.search(r"output_root reports/(\S+)", cmd).group(1))' 2>/dev/null || true)
    if [ -f "reports/$profile/dvc.lock" ] && [ "$lock_profile" != "$profile" ]; then
      cp "reports/$profile/dvc.lock" dvc.lock
      echo "dvc.lock was not $profile's: copied reports/$profile/dvc.lock (the lock of its committed results)"
    fi
    # this pipeline's stages only: a pull without targets would also delete from the workspace the DVC
    # outputs of the profile that was active before (they stay in the cache and in checkpoints/). One target
    # per dvc.yaml entry (`train` for every train@<run>): DVC parses dvc.lock once per target, and cifar10-cpu's
    # 58 stage names took 110 s of that against 25 s for its 12 entries.
    "$DVC" pull -r checkpoints --allow-missing $("$DVC" stage list --name-only | sed 's/@.*//' | sort -u)
    if [ -d "$progress" ]; then
      mkdir -p "$runs"
      cp -rpn "$progress/." "$runs/"  # never overwrites newer local state
    fi
    echo "restored what checkpoints/ holds for profile $profile; \`dvc status\` lists what is left to run"
    ;;
  *)
    echo "usage: bash scripts/checkpoints.sh save|restore" >&2
    exit 2
    ;;
esac
