#!/usr/bin/env bash
# The active profile's pipeline on several Dask workers (robustlib.scaleout; worker settings: scaleout.yaml):
#   bash scripts/repro_parallel.sh              # the profile's workers, on this machine
#   bash scripts/repro_parallel.sh -j 4         # 4 local workers
#   bash scripts/repro_parallel.sh --slurm      # workers as Slurm jobs (dask-jobqueue SLURMCluster)
#   bash scripts/repro_parallel.sh --address tcp://host:8786   # an existing Dask scheduler
# Stale stages run as Dask tasks in DAG order; each is recorded with DVC's own calls in `dvc repro`'s
# order, so dvc.lock ends as a sequential `dvc repro` leaves it. Then, as scripts/repro.sh does, a
# (no-op) `dvc repro` confirms nothing is left and the pruned lock is copied to reports/<profile>/.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
cd "$ROOT"
python -m robustlib.pipeline check
python -m robustlib.scaleout "$@"
if ! dvc status -q; then
  dvc status
  echo "error: stages are still stale after the parallel run" >&2
  exit 1
fi
bash "$ROOT/scripts/repro.sh"
