"""Copy dvc.lock to reports/<profile>/dvc.lock, keeping only the active pipeline's stages that the lock records.

DVC keeps the entries of stages that left dvc.yaml (another profile's runs, an older layout); the copy names
what this profile's committed results came from. Stages not run yet (e.g. a sweep in progress) have no entry.
Run by scripts/repro.sh once the pipeline is up to date, and by hand after `dvc commit` of a profile's finished
stages: `.venv/bin/dvc stage list --name-only | python scripts/lock_to_profile.py`.
"""

import shutil
import sys

import yaml
from ruamel.yaml import YAML  # round trip: the entries kept stay byte for byte as DVC wrote them

names = set(sys.stdin.read().split())
rt = YAML()
with open("dvc.lock") as f:
    lock = rt.load(f)
for stage in [k for k in lock["stages"] if k not in names]:
    del lock["stages"][stage]
with open("dvc.lock", "w") as f:
    rt.dump(lock, f)
profile = yaml.safe_load(open("params.yaml"))["base"]["profile"]
shutil.copyfile("dvc.lock", f"reports/{profile}/dvc.lock")
print(f"dvc.lock ({len(lock['stages'])} stages) copied to reports/{profile}/dvc.lock")
