"""Shared fixtures: tests run on CPU with small tensors and a fixed thread count."""

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True, scope="session")
def _torch_threads():
    torch.set_num_threads(int(os.environ.get("ROBUSTLIB_TEST_THREADS", "2")))


@pytest.fixture
def root() -> Path:
    return ROOT
