"""Compact per-run summaries of the train, attack and verify stages' metrics, for ``dvc metrics show``.

The stages' own metrics files (``metrics/<kind>/<run>.json``) hold everything (the attack stage's flattens
to about 70 columns: settings, budgets, seconds per attack, sanity-check details), so ``dvc metrics show``
of them is a table no one reads. The report stage writes one small JSON per run and stage kind,
``summary/<kind>/<run>.json``, which dvc.yaml declares as the report's metrics:
``dvc metrics show reports/<profile>/summary/attack`` gives one row per run with a few dozen columns.

Every value is copied from the detailed file (``fields`` names where from, the tests check it), except
a few flags derived as the report's tables derive them (``flags``): a run at chance level or diverged
(train), PGD's gradient-masking signs (attack). Keys are flat; per-eps keys end in ``@<eps>`` with eps as
the paper writes it (``robustlib.reporting.labels.format_eps``: ``verified@8/255`` on CIFAR-10).

The paths are defined here, not in ``robustlib.pipeline.paths`` (which a long run depends on); they
belong there.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from robustlib.evaluation import schema
from robustlib.evaluation.suite import LINF
from robustlib.reporting.labels import format_eps
from robustlib.reporting.tables import diverged_epoch, training_table
from robustlib.threat import NORMS

KINDS = ("train", "attack", "verify")
MAX_KEYS = 40
"""At most this many keys per summary (a readable ``dvc metrics show`` row; the tests check it)."""

Path_ = tuple[str, ...]
"""Where a summary value lies in the detailed metrics file: its keys from the top."""


def summary_dir(root: Path, kind: str) -> Path:
    """The folder of one stage kind's summaries under an output root (dvc.yaml: the report's metrics)."""
    if kind not in KINDS:
        raise ValueError(f"unknown summary kind {kind!r}; kinds: {KINDS}")
    return Path(root) / "summary" / kind


def summary_path(root: Path, kind: str, run: str) -> Path:
    return summary_dir(root, kind) / f"{run}.json"


TRAIN_FIELDS = {"clean_acc": ("clean_acc",), "val_acc": ("val_acc",), "train_minutes": ("train_minutes",),
                "epochs": ("epochs",), "epochs_completed": ("epochs_completed",), "n_test": ("n_test",)}
AA_FLAGS = {"square_stronger": "square_stronger", "escape_hits": "blind_escape_hits", "unresolved": "unresolved"}
"""AutoAttack's checks per threat model (``robustlib.attacks.autoattack``; Table 1's AA_* columns): summary
name -> the attack metrics' key under ``autoattack.<norm>``."""
VERIFY_FIELDS = {"verified": "verified_fraction", "pgd": "pgd_acc", "aa": "aa_acc", "ibp": "ibp_certified_acc",
                 "unknown": "unknown", "median_seconds": "median_seconds"}
"""Per eps: summary name -> the verify metrics' key under ``eps.<eps>`` (those present)."""


def fields(kind: str, metrics: Mapping[str, Any], dataset: str | None = None) -> dict[str, Path_]:
    """Summary key -> where its value lies in ``metrics``, the stage's detailed file (``dataset`` writes the
    verify stage's eps as the paper does)."""
    if kind == "train":
        return {k: p for k, p in TRAIN_FIELDS.items() if p[0] in metrics}
    if kind == "attack":  # clean, every attack and every threat model's worst case, then AutoAttack's checks
        out = {"n": ("n",), "minutes": ("minutes",)}
        out.update({k: (k,) for k in sorted(metrics) if k.endswith("_acc")})
        for norm in NORMS:
            aa = metrics.get("autoattack", {}).get(norm, {})
            out.update({f"aa_{norm}_{name}": ("autoattack", norm, key) for name, key in AA_FLAGS.items() if key in aa})
        return out
    if kind == "verify":
        out = {k: (k,) for k in ("clean_acc", "n", "minutes") if k in metrics}
        for eps, e in metrics.get("eps", {}).items():
            label = format_eps(float(eps), dataset)
            out.update({f"{name}@{label}": ("eps", eps, key) for name, key in VERIFY_FIELDS.items() if key in e})
        return out
    raise ValueError(f"unknown summary kind {kind!r}; kinds: {KINDS}")


def lookup(metrics: Mapping[str, Any], path: Path_) -> Any:
    node: Any = metrics
    for key in path:
        node = node[key]
    return node


def flags(kind: str, metrics: Mapping[str, Any]) -> dict[str, bool | int]:
    """The derived values: train ``at_chance`` (the training table's, ``tables.training_table``) and
    ``diverged`` (with the epoch); attack ``pgd_nonmonotone``, ``pgd_unconverged``, ``pgd_below_fgsm`` (Table 1's
    PGD_* columns)."""
    if kind == "train":
        epoch = diverged_epoch(metrics)
        chance = bool(training_table([metrics])[schema.AT_CHANCE].iloc[0])
        out: dict[str, bool | int] = {"at_chance": chance, "diverged": epoch is not None}
        return out | ({"diverged_epoch": epoch} if epoch is not None else {})
    if kind == "attack":
        sanity = metrics.get("sanity", {})
        return {"pgd_nonmonotone": bool(sanity.get("pgd_nonmonotone")),
                "pgd_unconverged": bool(sanity.get(f"budget_{LINF}", {}).get("unconverged")),
                "pgd_below_fgsm": bool(sanity.get("pgd_weaker_than_fgsm"))}
    return {}


def summary(kind: str, metrics: Mapping[str, Any], dataset: str | None = None) -> dict[str, Any]:
    """One run's summary of stage ``kind`` from its detailed metrics: ``fields``' values, then ``flags``."""
    out = {k: lookup(metrics, p) for k, p in fields(kind, metrics, dataset).items()}
    out.update(flags(kind, metrics))
    if len(out) > MAX_KEYS:
        raise ValueError(f"the {kind} summary of {metrics.get('run')!r} has {len(out)} keys (at most {MAX_KEYS}): "
                         "too many to read as one row of `dvc metrics show`")
    return out


def summaries(train: list[Mapping], attack: list[Mapping], verify: list[Mapping], dataset: str | None = None
              ) -> dict[str, dict[str, dict[str, Any]]]:
    """kind -> run -> summary, from each stage's metrics of every run."""
    by_kind = {"train": train, "attack": attack, "verify": verify}
    return {kind: {m["run"]: summary(kind, m, dataset) for m in ms} for kind, ms in by_kind.items()}

