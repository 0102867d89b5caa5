"""The one schema of robustlib's results tables: their column names, and how they are written and read.
Every module that writes or reads these tables takes their names from here (the attack names they are
built from come from ``robustlib.evaluation.suite``).

- Per-example attack results (attack stage, ``reports/<profile>/attack/<run>.csv``), one row per attacked
  test example: ``index`` (test index), ``clean_correct``, ``robust_<attack>`` (clean-correct and the
  attack failed, from a fresh eval-mode forward on its points), ``worst_<threat>`` (clean-correct and
  every attack of that threat model failed: the per-example worst case) and ``robust_all`` (every attack
  failed). Its accuracies (the attack stage's metrics) are ``<attack>_acc``, ``worst_<threat>_acc`` and
  ``clean_acc``.
- Robustness curves (attack stage, ``curves/attack/<run>.csv``): ``norm``, ``eps``, ``attack`` (the
  curves' attack names, ``suite.CURVE_*``), ``robust_acc``.
- The training summary (report stage, ``tables/train_summary.csv``): one row per run.
- The report's tables (ablations, laplacian and report stages, ``tables/``): percentages are
  ``<quantity>_%`` (``percent``), the paper's Tables 1 and 2 analogues head theirs as the paper does.
- At the end, kept apart: the verification per-example table (verify stage, ``verify/<run>.csv``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import pandas as pd
import torch

from robustlib.evaluation.suite import (
    AA_L2,
    AA_LINF,
    JPEG,
    L2,
    LINF,
    NPTM,
    PERCEPTUAL_GROUP,
    PGD_LINF,
    RECOLORADV,
    STADV,
)
from robustlib.pipeline.io import atomic_write

# === per-example attack results ========================================================================
INDEX, CLEAN, ALL = "index", "clean_correct", "robust_all"
_ROBUST, _WORST, _PERCENT = "robust_", "worst_", "_%"
CLEAN_ACC = "clean_acc"
"""The metrics key of clean accuracy (and the train stage's)."""


def robust(attack: str) -> str:
    """The column of ``attack``'s per-example robustness."""
    return _ROBUST + attack


def worst(threat: str) -> str:
    """The column of the per-example worst case over the attacks of threat model ``threat``."""
    return _WORST + threat


def acc_key(attack: str) -> str:
    """The metrics key of ``attack``'s accuracy."""
    return f"{attack}_acc"


def eps_key(norm: str) -> str:
    """The attack metrics' key of the standard eps of ``norm``."""
    return f"{norm}_eps"


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
    out = {CLEAN_ACC: float(table[CLEAN].mean())}
    out.update({acc_key(a): float(table[robust(a)].mean()) for a in attacks_in(table)})
    out.update({acc_key(c): float(table[c].mean()) for c in table if c.startswith(_WORST)})
    return out


def save_results(table: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write a per-example table as CSV (atomically)."""
    atomic_write(path, lambda p: table.to_csv(p, index=False))


def _existing(path: str | os.PathLike, stage: str) -> Path:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"missing {path}: run the {stage} stage first (`dvc repro`)")
    return path


def load_results(path: str | os.PathLike) -> pd.DataFrame:
    """Read a per-example table written by ``save_results`` (boolean columns restored)."""
    table = pd.read_csv(_existing(path, "attack"))
    for col in table.columns:
        if col == CLEAN or col.startswith(_ROBUST) or col.startswith(_WORST):
            table[col] = table[col].astype(bool)
    return table


# === robustness curves =================================================================================
NORM, EPS, ATTACK, ROBUST_ACC = "norm", "eps", "attack", "robust_acc"
CURVE_COLUMNS = [NORM, EPS, ATTACK, ROBUST_ACC]


def curve_row(norm: str, eps: float, attack: str, robust_acc: float) -> dict:
    """One point of a robustness curve."""
    return {NORM: norm, EPS: eps, ATTACK: attack, ROBUST_ACC: robust_acc}


def curve_table(rows: list[dict]) -> pd.DataFrame:
    """A robustness curve from its points (``curve_row``)."""
    return pd.DataFrame(rows, columns=CURVE_COLUMNS)


def save_curve(curve: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write a robustness curve as CSV (6 significant digits; atomically)."""
    atomic_write(path, lambda p: curve.to_csv(p, index=False, float_format="%.6g"))


def load_curve(path: str | os.PathLike) -> pd.DataFrame:
    """Read a robustness curve written by ``save_curve``."""
    return pd.read_csv(_existing(path, "attack"))


# === the training summary (tables/train_summary.csv, robustlib.reporting.tables.training_table) =========
# (The train stage's learning curves, curves/train/<run>.csv, are its own: robustlib.reporting.plots reads
# their epoch column, without this module, so that the train notebook's figure needs no evaluation code.)
RUN, MODEL, OBJECTIVE, EPOCHS, N_TRAIN, N_TEST = "run", "model", "objective", "epochs", "n_train", "n_test"
TRAIN_MINUTES, AT_CHANCE, DIVERGED_AT = "train_minutes", "at_chance", "diverged_at"
NOT_DIVERGED = "-"
"""``diverged_at`` of a run whose training never diverged."""


def percent(quantity: str) -> str:
    """The report column of ``quantity`` in percent: ``<quantity>_%``."""
    return quantity + _PERCENT


def quantity(column: str) -> str:
    """What a percent column (``percent``) measures: its name without ``_%``."""
    return column.removesuffix(_PERCENT)


CLEAN_ACC_PCT = percent(CLEAN_ACC)

# === the report's tables (robustlib.reporting) =========================================================
N = "n"
# the ablations and laplacian tables (robustlib.reporting.tables.run_summary): accuracies in percent
CLEAN_PCT = percent("clean")
PGD_LINF_PCT, AA_LINF_PCT, AA_L2_PCT = percent(PGD_LINF), percent(AA_LINF), percent(AA_L2)
WORST_LINF_PCT = percent(worst(LINF))
SUMMARY_OUTCOMES = {PGD_LINF_PCT: robust(PGD_LINF), AA_LINF_PCT: robust(AA_LINF), WORST_LINF_PCT: worst(LINF),
                    AA_L2_PCT: robust(AA_L2)}
"""``run_summary``'s attack columns (in order) and the per-example column each averages."""
GAMMA_H, GAMMA_S = "gamma_H", "gamma_S"  # the sweep's regularization strengths
REGULARIZER = "regularizer"  # Table 4: sparse or dense

# Table 1 analog (robustlib.reporting.tables.attack_table): percentages headed as the paper heads them
TABLE_CLEAN = "clean"  # Tables 1 and 2
LINF_AA, L2_AA, LINF_WORST = f"{LINF}_AA", f"{L2}_AA", f"{LINF}_worst"
SPATIAL, RECOLOR, JPEG_COLUMN, NPTM_COLUMN = "spatial", "recolor", "JPEG", "NPTM"
PERCEPTUAL_COLUMNS = tuple((column, group, tuple(a for a, g in PERCEPTUAL_GROUP.items() if g == group))
                           for column, group in ((SPATIAL, STADV), (RECOLOR, RECOLORADV), (JPEG_COLUMN, JPEG),
                                                 (NPTM_COLUMN, NPTM)))
"""Table 1's perceptual columns: (column, threat model, its attacks) -- Laidlaw et al. 2021's threat models."""
AA_SQUARE_FLAG, AA_ESCAPE_HITS, AA_UNRESOLVED = "AA_square_flag", "AA_escape_hits", "AA_unresolved"
PGD_NONMONOTONE, PGD_UNCONVERGED, PGD_BELOW_FGSM = "PGD_nonmonotone", "PGD_unconverged", "PGD_below_FGSM"
REPORT_OUTCOMES = {CLEAN_PCT: CLEAN, **SUMMARY_OUTCOMES, LINF_AA: robust(AA_LINF), LINF_WORST: worst(LINF),
                   L2_AA: robust(AA_L2), **{column: worst(group) for column, group, _ in PERCEPTUAL_COLUMNS}}
"""The per-example attack-results column each report column (``run_summary``, ``attack_table``) averages."""

# Table 2 analog (robustlib.reporting.tables.verification_table)
T2_PGD, T2_AUTOATTACK, T2_VERIFIED, T2_IBP = "pgd", "autoattack", "verified", "ibp_certified"
T2_PGD_MINUS_VERIFIED = "pgd_minus_verified"
T2_GAPS = {"timeout": "gap_timeout", "unknown_other": "gap_unknown_other", "falsified": "gap_falsified"}
"""The verify stage's gap causes (its metrics' ``gap``) -> their columns."""
T2_UNKNOWN, T2_TIMEOUTS, T2_MEDIAN_S, T2_P90_S = "unknown", "timeouts", "median_s", "p90_s"
T2_UNSTABLE_MEDIAN, T2_SOLVER = "unstable_median", "solver"

# the perceptual settings and certified tables
PS_ATTACK, PS_BUDGET, PS_CONTROL_MAX = "attack", "budget", percent("control_max")


def undefended_acc(run: str) -> str:
    """The perceptual settings' column of the undefended run's accuracy under each attack."""
    return percent(f"{run}_acc")


def ibp_certified_at(eps: str) -> str:
    """The certified table's column of IBP-certified accuracy at ``eps`` (as the verify metrics key it)."""
    return f"{percent('ibp_certified')}@{eps}"


LIPSCHITZ_L, LIPSCHITZ_CERTIFIED_L2_PCT = "lipschitz_L", percent(f"lipschitz_certified_{L2}")

# the benchmark table (benchmarks/results/objectives.json)
BENCH_MS_PER_STEP, BENCH_X_PLAIN = "ms_per_step", "x_plain"

# Appendix B (the laplacian stage's neighbour_stats.json)
NN_MEAN, NN_MEDIAN, NN_P10 = "mean", "median", "p10"

# the comparison with the paper (robustlib.reporting.paper.compare; tables/paper_comparison.csv)
PAPER_ROW, METRIC, PAPER_VALUE, OURS, OURS_MINUS_PAPER, VERDICT = ("paper_row", "metric", "paper", "ours",
                                                                   "ours_minus_paper", "verdict")
PAPER_TABLE = "table"


# === the verification per-example table (verify stage; reports/<profile>/verify/<run>.csv) =============
# One row per verified example and eps (the runs of verify.milp_runs). Kept apart, at the end: the verify
# stage and robustlib.verification write it.
VERIFY_VERDICT, VERIFY_METHOD, VERIFY_REASON, VERIFY_SECONDS = "verdict", "method", "reason", "seconds"
VERIFY_MARGIN, VERIFY_TOL, VERIFY_UNSTABLE, VERIFY_STABLE = "margin", "tol", "unstable", "stable"
VERIFY_PGD_ROBUST, VERIFY_AA_ROBUST, VERIFY_DETAIL = "pgd_robust", "aa_robust", "detail"
VERIFY_COLUMNS = [INDEX, EPS, VERIFY_VERDICT, VERIFY_METHOD, VERIFY_REASON, VERIFY_SECONDS, VERIFY_MARGIN, VERIFY_TOL,
                  VERIFY_UNSTABLE, VERIFY_STABLE, VERIFY_PGD_ROBUST, VERIFY_AA_ROBUST, VERIFY_DETAIL]
VERIFIED = "verified"
"""The verdict of an example proven robust (``robustlib.verification.milp.VERDICTS``)."""


def save_verify_results(table: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write a verification per-example table as CSV (6 significant digits; atomically)."""
    atomic_write(path, lambda p: table.to_csv(p, index=False, float_format="%.6g"))


def load_verify_results(path: str | os.PathLike) -> pd.DataFrame:
    """Read a verification per-example table written by ``save_verify_results``."""
    return pd.read_csv(_existing(path, "verify"))


def verified_at(table: pd.DataFrame, eps: float) -> pd.Series:
    """Per example (indexed by test index): verified at ``eps``; empty when the table has no rows there."""
    at = table[(table[EPS] - eps).abs() < 1e-9]
    return (at[VERIFY_VERDICT] == VERIFIED).set_axis(at[INDEX])


# === the gallery table (gallery stage; reports/<profile>/tables/gallery.csv) ===============================
# One row per run, test image and attack (GALLERY_CLEAN first): the true label, the attack's budget, whether the
# image was attacked (it was classified correctly), the prediction on the point the attack returned, whether it
# is the label, the perturbation's L-inf and L2 norms, and why the attack does not apply (then no prediction).
GALLERY_CLEAN = "clean"
"""The ``attack`` value of a clean image's row."""
LABEL, BUDGET, ATTACKED, PREDICTION, CORRECT = "label", "budget", "attacked", "prediction", "correct"
DELTA_LINF, DELTA_L2, NOT_APPLICABLE = "delta_linf", "delta_l2", "not_applicable"
GALLERY_COLUMNS = [RUN, INDEX, LABEL, ATTACK, BUDGET, ATTACKED, PREDICTION, CORRECT, DELTA_LINF, DELTA_L2,
                   NOT_APPLICABLE]


def typed_gallery(table: pd.DataFrame) -> pd.DataFrame:
    """The gallery table with integers and booleans that may be missing (n/a, the clean row) as pandas' nullable
    types, the reasons as strings (also when none is given, which CSV would read back as numbers)."""
    return table.astype({PREDICTION: "Int64", ATTACKED: "boolean", CORRECT: "boolean", NOT_APPLICABLE: "str"})


def save_gallery(table: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write the gallery table as CSV (6 significant digits; atomically)."""
    atomic_write(path, lambda p: table.to_csv(p, index=False, float_format="%.6g"))


def load_gallery(path: str | os.PathLike) -> pd.DataFrame:
    """Read a table written by ``save_gallery`` (types restored)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"missing {path}: run the gallery stage first (`dvc repro gallery`)")
    return typed_gallery(pd.read_csv(path))
