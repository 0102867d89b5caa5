"""The pipeline's independent stages on several workers of Dask distributed (``scripts/repro_parallel.sh``).

``python -m robustlib.scaleout`` runs the stale stages of the active profile's dvc.yaml as Dask tasks (one
per stage, upstream stages' futures as dependencies; verify stages' MILP example shards as tasks of their
own), on a local cluster or Slurm jobs (dask-jobqueue), and records each finished stage with DVC's own
calls in the order a sequential ``dvc repro`` would, so dvc.lock ends as ``dvc repro`` leaves it.

No stage imports this package and no dvc.yaml dependency names it (``tests/test_scaleout.py`` checks):
changing it never makes a committed result stale. Modules: ``config`` (scaleout.yaml), ``dag`` (the
stages from DVC), ``tasks`` (what a worker runs), ``shards`` (verify shards), ``cluster`` (Dask
clusters), ``runner`` (submission and commits), ``simulate`` (critical-path schedule of k workers).
"""
