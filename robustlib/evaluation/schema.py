"""The one schema of robustlib's attack results: per-example tables and the accuracies derived from them.

A per-example table (one row per attacked test example) has the columns ``index`` (test index),
``clean_correct``, ``robust_<attack>`` (clean-correct and the attack failed, from a fresh eval-mode
forward on its points), ``worst_<threat>`` (clean-correct and every attack of that threat model failed:
the per-example worst case) and ``robust_all`` (every attack failed). Its accuracies (the attack
stage's metrics) are ``<attack>_acc``, ``worst_<threat>_acc`` and ``clean_acc``. Every module that
writes or reads these names goes through this one.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import pandas as pd
import torch

from robustlib.pipeline.io import atomic_write

INDEX, CLEAN, ALL = "index", "clean_correct", "robust_all"
_ROBUST, _WORST = "robust_", "worst_"


def robust(attack: str) -> str:
    """The column of ``attack``'s per-example robustness."""
    return _ROBUST + attack


def worst(threat: str) -> str:
    """The column of the per-example worst case over the attacks of threat model ``threat``."""
    return _WORST + threat


def acc_key(attack: str) -> str:
    """The metrics key of ``attack``'s accuracy."""
    return f"{attack}_acc"


def worst_acc_key(threat: str) -> str:
    """The metrics key of threat model ``threat``'s per-example worst-case accuracy."""
    return acc_key(worst(threat))


def attacks_in(table: pd.DataFrame) -> list[str]:
    """The attacks with a column in ``table``, in column order."""
    return [c.removeprefix(_ROBUST) for c in table if c.startswith(_ROBUST) and c != ALL]


def flags(table: pd.DataFrame, column: str) -> torch.Tensor:
    """A boolean column as a (writable) tensor."""
    return torch.tensor(table[column].to_numpy(dtype=bool))


def add_worst_cases(table: pd.DataFrame, threat_of: Mapping[str, str]) -> None:
    """Add ``worst_<threat>`` for each threat model of ``threat_of`` (attack -> threat) that has attacks
    in ``table``: clean-correct and every one of them failed."""
    for threat in dict.fromkeys(threat_of.values()):
        cols = [robust(a) for a, t in threat_of.items() if t == threat and robust(a) in table]
        if cols:
            table[worst(threat)] = table[[CLEAN, *cols]].all(axis=1)


def accuracies(table: pd.DataFrame) -> dict[str, float]:
    """The table's accuracies: ``clean_acc``, ``<attack>_acc`` per attack, ``worst_<threat>_acc``."""
    out = {"clean_acc": float(table[CLEAN].mean())}
    out.update({acc_key(a): float(table[robust(a)].mean()) for a in attacks_in(table)})
    out.update({acc_key(c): float(table[c].mean()) for c in table if c.startswith(_WORST)})
    return out


def save_results(table: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write a per-example table as CSV (atomically)."""
    atomic_write(path, lambda p: table.to_csv(p, index=False))


def load_results(path: str | os.PathLike) -> pd.DataFrame:
    """Read a per-example table written by ``save_results`` (boolean columns restored)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"missing {path}: run the attack stage first (`dvc repro`)")
    table = pd.read_csv(path)
    for col in table.columns:
        if col == CLEAN or col.startswith(_ROBUST) or col.startswith(_WORST):
            table[col] = table[col].astype(bool)
    return table
