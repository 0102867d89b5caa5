"""Shared fixtures: tests run on CPU with small tensors and a fixed thread count."""

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent

# The Hamming regularizer is compiled by torch.compile in training (robustlib.regularizers.manifold);
# tests use the eager path (no compile time per test process) except the test that checks the compiled
# one against it (test_regularizers.py::test_compiled_hamming_matches_the_eager_paths).
os.environ.setdefault("ROBUSTLIB_COMPILE", "0")


@pytest.fixture(autouse=True, scope="session")
def _torch_threads():
    torch.set_num_threads(int(os.environ.get("ROBUSTLIB_TEST_THREADS", "2")))


@pytest.fixture
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def smoke_reference(tmp_path_factory) -> Path:
    """A folder for the smoke profile's sequential `dvc repro` results (``reports/smoke/`` and ``dvc.lock``):
    ``smoke_runs`` fills it; tests that run parts of the smoke profile elsewhere compare with it where it is
    filled (tests/test_scaleout_slurm.py)."""
    return tmp_path_factory.mktemp("smoke_reference")


@dataclass
class SmokeRuns:
    """The smoke profile run end to end: ``seq`` by `dvc repro` (each stage's params reads logged to
    ``reads_log``), ``par`` by the two-worker scale-out runner (its summary in ``summary``), or None where no
    selected test needs it."""

    seq: Path
    par: Path | None
    reads_log: Path
    summary: Path


OTHER_REPORT = ("reports/other/report.md", "another profile's committed report\n")
"""A file of another profile's results, in the `dvc repro` workspace: it must survive the smoke run."""


@pytest.fixture(scope="session")
def smoke_runs(request, tmp_path_factory, smoke_reference) -> SmokeRuns:
    """The smoke profile through `dvc repro` and, where tests/test_scaleout_smoke.py is selected, through
    ``python -m robustlib.scaleout -j 2`` in a second workspace at the same time (a stage spends most of its
    seconds starting papermill, a kernel and torch on one core, so the two runs share this 2-core machine
    better than they would run one after the other). Both workspaces are fresh git copies of the tracked files
    without results."""
    from robustlib.scaleout.workspace import copy_workspace, tool_env

    base = tmp_path_factory.mktemp("smoke")
    other = base / "seq" / OTHER_REPORT[0]
    other.parent.mkdir(parents=True)
    other.write_text(OTHER_REPORT[1])  # committed with the copy, as another profile's results are
    seq = copy_workspace(ROOT, base / "seq", "smoke")
    runs = SmokeRuns(seq, None, base / "params_reads.jsonl", base / "summary.json")
    subprocess.run([sys.executable, "-m", "robustlib.pipeline", "check"], cwd=seq, env=tool_env(), check=True,
                   capture_output=True)
    commands = [([str(Path(sys.executable).with_name("dvc")), "repro"], seq,
                 tool_env(ROBUSTLIB_PARAMS_LOG=str(runs.reads_log)))]
    if any(item.path.name == "test_scaleout_smoke.py" for item in request.session.items):
        runs.par = copy_workspace(ROOT, base / "par", "smoke")
        commands.append(([sys.executable, "-m", "robustlib.scaleout", "-j", "2", "--summary", str(runs.summary)],
                         runs.par, tool_env()))
    logs = [base / f"run{i}.log" for i in range(len(commands))]
    procs = [subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
             for (cmd, cwd, env), log in zip(commands, logs, strict=True)]
    codes = [p.wait() for p in procs]
    for (cmd, _, _), code, log in zip(commands, codes, logs, strict=True):
        assert code == 0, f"{' '.join(cmd)} failed ({code}):\n{log.read_text()[-6000:]}"
    shutil.copytree(seq / "reports" / "smoke", smoke_reference / "reports" / "smoke")
    shutil.copy2(seq / "dvc.lock", smoke_reference / "dvc.lock")
    return runs


TINY_PROFILE = """extends: smoke
data: {n_train: 400, n_val: 200, n_test: 100}
train: {epochs: 2, batch_size: 50, lr_knots: [[0.0, 1.0], [1.0, 1.0]]}
runs:
  standard:
    objective: {ce: 1.0}
  hamming_stability:
    objective: {ce: 1.0, hamming: {weight: 10.0, alpha: 8.0}, stability: {weight: 0.0025}}
  pgd_at:
    objective: {pgd_at: {weight: 1.0, steps: 3}}
finetunes: {}
verify: {milp_runs: [hamming_stability]}
ablations: {table_runs: [hamming_stability], sweep_runs: [hamming_stability]}
laplacian: {sparse_run: hamming_stability}
"""
"""Tiny runs over the smoke profile, for the tests that run stages end to end (``tiny_workspace``)."""


@pytest.fixture
def tiny_workspace(root, tmp_path, monkeypatch):
    """``make(extra, **profiles)``: a workspace under ``tmp_path / "ws"`` with the repository's profiles and
    dvc.yaml, the profile ``tiny`` (``TINY_PROFILE`` followed by the YAML sections ``extra``) and any further
    ``profiles`` (name -> text, e.g. ``extends: tiny`` and other runs), the last of them (else ``tiny``)
    active, as the working directory, reading the shipped MNIST; returns its folder."""
    from robustlib.pipeline import params as P

    def make(extra: str = "", **profiles: str) -> Path:
        ws = tmp_path / "ws"
        (ws / "profiles").mkdir(parents=True)
        for f in (root / "profiles").glob("*.yaml"):
            shutil.copy(f, ws / "profiles" / f.name)
        for name, text in {"tiny": TINY_PROFILE + extra, **profiles}.items():
            (ws / "profiles" / f"{name}.yaml").write_text(text)
        shutil.copy(root / "dvc.yaml", ws / "dvc.yaml")
        monkeypatch.chdir(ws)
        monkeypatch.setenv("ROBUSTLIB_DATA", str(root / "data"))
        P.use_profile(list(profiles)[-1] if profiles else "tiny", ws)
        return ws

    return make
