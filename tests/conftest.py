"""Shared fixtures: tests run on CPU with small tensors and a fixed thread count."""

import os
import shutil
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
    tests/test_pipeline_smoke.py fills it right after its `dvc repro`; the scale-out tests compare their
    parallel runs with it (and run their own `dvc repro` where that test did not run first)."""
    return tmp_path_factory.mktemp("smoke_reference")


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
