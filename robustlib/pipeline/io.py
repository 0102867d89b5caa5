"""Checkpoints and metrics files.

``save_model`` stores a model's architecture (name and constructor arguments, ``model.arch``) with its
weights; ``load_model`` rebuilds it and returns it in eval mode, loading with
``torch.load(..., weights_only=True)``. All writes are atomic: a temporary file in the same folder,
then ``os.replace``, so an interrupted run never leaves a half-written file behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustlib.models import build_model


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_path)`` then atomically rename ``tmp_path`` to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_torch(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` through an open file, atomically. Given a path, torch names the zip archive's root
    folder after it (here a random temporary name), so two saves of the same object would differ in bytes
    and in their DVC md5; through a file object the folder is always ``archive``."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            torch.save(obj, f)

    atomic_write(path, write)


def save_model(model: nn.Module, path: str | os.PathLike, extra: dict[str, Any] | None = None) -> None:
    """Save ``model`` (built by ``robustlib.models.build_model``) with its architecture."""
    if not hasattr(model, "arch"):
        raise ValueError("save_model needs a model built by robustlib.models.build_model (no .arch)")
    save_torch({"arch": model.arch, "state_dict": model.state_dict(), "extra": extra or {}}, path)


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the model saved at ``path`` and return it in eval mode."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}: run the train stage first (`dvc repro`)")
    blob = torch.load(path, map_location=map_location, weights_only=True)
    arch = blob["arch"]
    model = build_model(arch["name"], spectral_norm=arch.get("spectral_norm", False), **arch["kwargs"])
    model.load_state_dict(blob["state_dict"])
    return model.eval()


def write_json(obj: Any, path: str | os.PathLike) -> None:
    """Write JSON atomically, keys sorted, so reruns give byte-identical files."""
    atomic_write(path, lambda p: p.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n"))


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"missing {path}: run the stage that writes it first (`dvc repro`)")
    return json.loads(path.read_text())


def file_digest(path: str | os.PathLike, algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes (``algorithm``: any of hashlib's; DVC and torchvision use md5)."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
