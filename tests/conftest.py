"""Shared fixtures: tests run on CPU with small tensors and a fixed thread count."""

import os
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
