"""Weight sweeps of the paper's regularizers: a profile's ``sweeps`` section, its cells, the selection rule and
the check that the runs added after the selection carry it.

Jin & Rinard's appendix A chose gamma_H / gamma_S by a grid search on PGD accuracy; eq. 17 (the Hamming term)
is garbled, and its readings differ by ~10^-3..10^3 in size (``robustlib.regularizers.manifold.READINGS``), so a
verdict on the method needs the weight space searched, not one point. A sweep is declared in a profile::

    sweeps:
      verify:                               # the sweep's name (cells are named <sweep>_h<gamma_H>_s<gamma_S>)
        base_run: hamming_stability_verify  # cells copy this run's training (train defaults + runs.<base_run>)
        gamma_h: 9000.0                     # the paper's point; the factors multiply it
        gamma_s: 0.4
        gamma_h_factors: [1.0, 0.1, 0.01, 0.001]
        gamma_s_factors: [1.0, 0.1, 0.01]
        grid: product                       # product: every pair; diagonal: both weights scaled together
        train: {stop_on_collapse: 5}        # run options set for every cell (over the base run's)
        eval: {n_val: 1000, n_test: 0, eps: 0.0313725, steps: 20, restarts: 10}   # clean + PGD (selection: val)
        references: [rs_loss, pgd_at]       # runs of the profile whose attack metrics the report shows beside
        readings: [sum_sq_over_m, mean_of_sq]   # other readings of eq. 17, trained at ``readings_at``
        readings_at: null                   # the best grid cell's factors, once selected: {gamma_h: f, gamma_s: f}
        seeds: [0, 1, 2]                    # the selected setting is trained with these seeds ...
        seeded_runs: []                     # ... as these regular runs (added to ``runs`` after the selection)
        autoattack: null                    # or {n_test: 500}: AutoAttack (standard) on the selected cell

``python -m robustlib.pipeline use <profile>`` expands every sweep into ``sweep_cells`` (``expand``): one entry
per cell, which the ``sweep_train`` / ``sweep_eval`` stages run ``foreach``. Cells are NOT runs: adding them
touches no ``runs`` entry, so no committed stage of the profile turns stale. Sweeps are not inherited through
``extends``: each profile declares its own.

Selection (``select``): the eligible cell (trained, not collapsed) with the best validation PGD accuracy; ties
go to the better clean validation accuracy, then to the earlier cell in expansion order (the factors as listed,
the paper's point first; grid cells before reading cells). The readings are tried at the best GRID cell
(``readings_at`` must name it: ``check_readings_at``); the selected setting (weights and reading) is then the
best of all cells, and ``check_seeded_runs`` fails when the profile's ``seeded_runs`` do not carry it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from robustlib.pipeline.errors import ParamsError

logger = logging.getLogger(__name__)

# robustlib.regularizers.manifold.DEFAULT_READING (tests/test_sweep.py checks they agree): named here, not imported,
# so that params.py, which every stage imports, does not import the regularizers. Reading names are checked when
# the cells' objectives are built (the Hamming term names the allowed readings).
DEFAULT_READING = "mean_sq"

SPEC_KEYS = {"base_run", "gamma_h", "gamma_s", "gamma_h_factors", "gamma_s_factors", "grid", "train", "eval",
             "references", "readings", "readings_at", "seeds", "seeded_runs", "autoattack"}
REQUIRED_KEYS = ("base_run", "gamma_h", "gamma_s", "gamma_h_factors", "gamma_s_factors", "eval")
EVAL_KEYS = {"n_val", "n_test", "eps", "steps", "restarts"}
AUTOATTACK_KEYS = {"n_test", "version"}
GRIDS = ("product", "diagonal")
CELL_KEYS = ("sweep", "base_run", "gamma_h_factor", "gamma_s_factor", "reading", "train")
CONFIG_FIELDS_FREE = ("seed", "stop_on_collapse", "diagnostics")  # may differ between a cell and a seeded run


# ---------------------------------------------------------------------------------------------
# Expansion
# ---------------------------------------------------------------------------------------------
def _round(x: float) -> float:
    """12 significant digits: 0.4 * 0.1 is 0.04, not 0.04000000000000001."""
    return float(f"{float(x):.12g}")


def _tag(x: float) -> str:
    """A number in a cell name: no exponent, '.' as 'p' (DVC reads '.' in a params key as nesting)."""
    s = f"{_round(x):.12f}".rstrip("0").rstrip(".")
    return s.replace(".", "p").replace("-", "m")


def cell_name(sweep: str, gamma_h: float, gamma_s: float, reading: str = DEFAULT_READING) -> str:
    """``<sweep>_h<gamma_H>_s<gamma_S>`` (absolute starting weights), with ``_<reading>`` unless the default."""
    name = f"{sweep}_h{_tag(gamma_h)}_s{_tag(gamma_s)}"
    return name if reading == DEFAULT_READING else f"{name}_{reading}"


def _pairs(spec: Mapping[str, Any]) -> list[tuple[float, float]]:
    fh, fs = list(spec["gamma_h_factors"]), list(spec["gamma_s_factors"])
    if spec.get("grid", "product") == "diagonal":
        return list(zip(fh, fs, strict=True))
    return [(a, b) for a in fh for b in fs]


def _cell(sweep: str, spec: Mapping[str, Any], fh: float, fs: float, reading: str) -> tuple[str, dict[str, Any]]:
    gh, gs = _round(spec["gamma_h"] * fh), _round(spec["gamma_s"] * fs)
    hamming: dict[str, Any] = {"weight": gh}
    if reading != DEFAULT_READING:  # named only when not the default: the report's objective shows it then
        hamming["reading"] = reading
    train = {**dict(spec.get("train") or {}), "objective": {"hamming": hamming, "stability": {"weight": gs}}}
    return cell_name(sweep, gh, gs, reading), {
        "sweep": sweep, "base_run": spec["base_run"], "gamma_h_factor": float(fh), "gamma_s_factor": float(fs),
        "reading": reading, "train": train}


def expand(params: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Every cell of every sweep of ``params["sweeps"]``, in order: per sweep, the grid (``gamma_h_factors``
    outer, ``gamma_s_factors`` inner; or their pairs for ``grid: diagonal``), then the ``readings`` at
    ``readings_at``. Each cell: its sweep, base run, factors, reading and ``train`` -- the run options laid over
    ``runs.<base_run>`` (the objective's weights, and the reading when it is not the default)."""
    cells: dict[str, dict[str, Any]] = {}
    for sweep, spec in (params.get("sweeps") or {}).items():
        check_spec(sweep, spec)
        todo = [(fh, fs, DEFAULT_READING) for fh, fs in _pairs(spec)]
        at = spec.get("readings_at")
        if at:
            todo += [(at["gamma_h"], at["gamma_s"], r) for r in spec.get("readings") or []]
        for fh, fs, reading in todo:
            name, cell = _cell(sweep, spec, fh, fs, reading)
            if name in cells:
                raise ParamsError(f"sweeps.{sweep}: two cells are both named {name!r} (repeated factors?)")
            cells[name] = cell
    return cells


def cells_of(params: Mapping[str, Any], sweep: str) -> list[str]:
    """The names of sweep ``sweep``'s cells, in expansion order."""
    return [name for name, cell in params["sweep_cells"].items() if cell["sweep"] == sweep]


# ---------------------------------------------------------------------------------------------
# Validation (called by params.validate)
# ---------------------------------------------------------------------------------------------
def _number(v: Any, positive: bool = True) -> bool:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    return ok and (v > 0 if positive else v >= 0)


def _integer(v: Any, lo: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= lo


def check_spec(sweep: str, spec: Any) -> None:
    """The structure and values of one sweep's spec (not the names it refers to)."""
    where = f"sweeps.{sweep}"
    if not isinstance(spec, Mapping):
        raise ParamsError(f"{where} must be a mapping, got {type(spec).__name__}")
    if "." in sweep or "@" in sweep or not sweep:
        raise ParamsError(f"{where}: a sweep name may not be empty or hold '.' or '@'")
    bad = sorted(set(spec) - SPEC_KEYS)
    if bad:
        raise ParamsError(f"{where}: unknown key(s) {bad}; known: {sorted(SPEC_KEYS)}")
    missing = [k for k in REQUIRED_KEYS if k not in spec]
    if missing:
        raise ParamsError(f"{where}: missing {missing}")
    for k in ("gamma_h", "gamma_s"):
        if not _number(spec[k]):
            raise ParamsError(f"{where}.{k} must be a number > 0, got {spec[k]!r}")
    for k in ("gamma_h_factors", "gamma_s_factors"):
        v = spec[k]
        if not (isinstance(v, list) and v and all(_number(f) for f in v)) or len(set(v)) != len(v):
            raise ParamsError(f"{where}.{k} must be a non-empty list of distinct numbers > 0, got {v!r}")
    grid = spec.get("grid", "product")
    if grid not in GRIDS:
        raise ParamsError(f"{where}.grid must be one of {list(GRIDS)}, got {grid!r}")
    if grid == "diagonal" and len(spec["gamma_h_factors"]) != len(spec["gamma_s_factors"]):
        raise ParamsError(f"{where}: grid diagonal needs as many gamma_h_factors as gamma_s_factors")
    train = spec.get("train") or {}
    if not isinstance(train, Mapping) or "objective" in train:
        raise ParamsError(f"{where}.train: run options for every cell (a mapping, without objective: the sweep "
                            f"sets the weights), got {train!r}")
    _check_eval(where, spec["eval"])
    readings = spec.get("readings") or []
    if not isinstance(readings, list) or any(not isinstance(r, str) or r == DEFAULT_READING for r in readings) \
            or len(set(readings)) != len(readings):
        raise ParamsError(f"{where}.readings must be distinct readings of eq. 17 other than the default "
                            f"{DEFAULT_READING!r} (robustlib.regularizers.manifold.READINGS); got {readings!r}")
    at = spec.get("readings_at")
    if at is not None:
        if not (isinstance(at, Mapping) and set(at) == {"gamma_h", "gamma_s"}):
            raise ParamsError(f"{where}.readings_at must be null or {{gamma_h: <factor>, gamma_s: <factor>}}, "
                                f"got {at!r}")
        if (at["gamma_h"], at["gamma_s"]) not in _pairs(spec):
            raise ParamsError(f"{where}.readings_at {dict(at)} is not a cell of the grid")
    seeds = spec.get("seeds") or []
    if not (isinstance(seeds, list) and all(_integer(s, 0) for s in seeds)) or len(set(seeds)) != len(seeds):
        raise ParamsError(f"{where}.seeds must be a list of distinct integers >= 0, got {seeds!r}")
    for k in ("references", "seeded_runs"):
        v = spec.get(k) or []
        if not (isinstance(v, list) and all(isinstance(r, str) for r in v)):
            raise ParamsError(f"{where}.{k} must be a list of run names, got {v!r}")
    aa = spec.get("autoattack")
    if aa is not None:
        if not isinstance(aa, Mapping) or set(aa) - AUTOATTACK_KEYS or not _integer(aa.get("n_test"), 1):
            raise ParamsError(f"{where}.autoattack must be null or {{n_test: <int >= 1>, version: ...}}, "
                                f"got {aa!r}")


def _check_eval(where: str, ev: Any) -> None:
    if not isinstance(ev, Mapping) or set(ev) != EVAL_KEYS:
        raise ParamsError(f"{where}.eval must have exactly the keys {sorted(EVAL_KEYS)}, got {ev!r}")
    if not _integer(ev["n_val"], 1) or not _integer(ev["n_test"], 0):
        raise ParamsError(f"{where}.eval: n_val must be an integer >= 1 and n_test >= 0, got {dict(ev)}")
    if not (_number(ev["eps"]) and ev["eps"] <= 1):
        raise ParamsError(f"{where}.eval.eps must be an L-inf radius in (0, 1], got {ev['eps']!r}")
    if not (_integer(ev["steps"], 1) and _integer(ev["restarts"], 1)):
        raise ParamsError(f"{where}.eval: steps and restarts must be integers >= 1, got {dict(ev)}")


# ---------------------------------------------------------------------------------------------
# Selection and the checks on what is added after it
# ---------------------------------------------------------------------------------------------
def eligible(row: Mapping[str, Any]) -> bool:
    """A cell can be selected when it trained (did not diverge in its first epoch) and did not collapse."""
    return bool(row.get("trained", True)) and row.get("collapsed_epoch") is None


def best(rows: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The selection rule of the module docstring over ``rows`` (in expansion order; each with ``val_pgd_acc``,
    ``val_clean_acc``, ``collapsed_epoch``, ``trained``): the eligible row with the best validation PGD accuracy,
    ties to the better clean accuracy, then to the earlier row; None when no row is eligible."""
    ranked = [(-float(r["val_pgd_acc"]), -float(r["val_clean_acc"]), i) for i, r in enumerate(rows) if eligible(r)]
    return rows[min(ranked)[2]] if ranked else None


def check_readings_at(spec: Mapping[str, Any], best_grid: Mapping[str, Any] | None) -> str | None:
    """None if the sweep's ``readings_at`` is unset or names the best grid cell, else what is wrong."""
    at = spec.get("readings_at")
    if not at:
        return None
    if best_grid is None:
        return "readings_at is set but no grid cell is eligible (all collapsed or diverged)"
    if (at["gamma_h"], at["gamma_s"]) != (best_grid["gamma_h_factor"], best_grid["gamma_s_factor"]):
        return (f"readings_at {{gamma_h: {at['gamma_h']}, gamma_s: {at['gamma_s']}}} is not the best grid cell "
                f"{best_grid['cell']} (gamma_h factor {best_grid['gamma_h_factor']}, gamma_s factor "
                f"{best_grid['gamma_s_factor']}): set it so and rerun")
    return None


def _comparable(cfg) -> dict[str, Any]:
    rec = cfg.record()
    for k in CONFIG_FIELDS_FREE:
        rec.pop(k, None)
    objective = {}
    for name, term in rec["objective"].items():
        term = dict(term) if isinstance(term, Mapping) else {"weight": term}
        term["weight"] = _round(term.get("weight", 1.0))
        if name == "hamming" and term.get("reading", DEFAULT_READING) == DEFAULT_READING:
            term.pop("reading", None)
        objective[name] = term
    rec["objective"] = objective
    return rec


def check_seeded_runs(params: Mapping[str, Any], sweep: str, selected_cell: str | None,
                      config_of: Callable[[str], Any]) -> list[str]:
    """Problems with the profile's ``seeded_runs`` of ``sweep`` against the selected cell: each must be the cell's
    training exactly (weights, reading, schedule, model, ...) but for its seed (and the cell-only options
    ``stop_on_collapse``, ``diagnostics``), and together they must have the sweep's ``seeds``. ``config_of(name)``
    is the ``TrainConfig`` of a run or cell (``robustlib.pipeline.params.config_of``)."""
    spec = params["sweeps"][sweep]
    names = list(spec.get("seeded_runs") or [])
    if not names:
        return []
    if selected_cell is None:
        return [f"sweeps.{sweep}.seeded_runs {names} are set but no cell was selected"]
    want = _comparable(config_of(selected_cell))
    problems, seeds = [], []
    for run in names:
        cfg = config_of(run)
        seeds.append(cfg.seed)
        got = _comparable(cfg)
        diff = sorted(k for k in set(want) | set(got) if want.get(k) != got.get(k))
        if diff:
            detail = "; ".join(f"{k}: run {got.get(k)!r}, selected {want.get(k)!r}" for k in diff)
            problems.append(f"seeded run {run!r} does not carry the selected setting {selected_cell!r}: {detail}")
    if sorted(seeds) != sorted(spec.get("seeds") or []):
        problems.append(f"seeded runs {names} have seeds {sorted(seeds)}; sweeps.{sweep}.seeds is "
                        f"{sorted(spec.get('seeds') or [])}")
    return problems


# ---------------------------------------------------------------------------------------------
# Where the sweep stages write (under the profile's output root, like robustlib.pipeline.paths)
# ---------------------------------------------------------------------------------------------
def sweep_dir(root: Path, sweep: str) -> Path:
    return Path(root) / "sweep" / sweep


def cell_train_metrics_path(root: Path, sweep: str, cell: str) -> Path:
    return sweep_dir(root, sweep) / "train" / f"{cell}.json"


def cell_curve_path(root: Path, sweep: str, cell: str) -> Path:
    """The cell's per-epoch history (learning curve and probe diagnostics)."""
    return sweep_dir(root, sweep) / "curves" / f"{cell}.csv"


def cell_dvclive_dir(root: Path, cell: str) -> Path:
    return Path(root) / "dvclive" / "sweep" / cell


def cell_eval_path(root: Path, sweep: str, cell: str) -> Path:
    """Clean and PGD accuracy of the cell (validation, and test when asked)."""
    return sweep_dir(root, sweep) / "eval" / f"{cell}.json"


def selection_path(root: Path, sweep: str) -> Path:
    return sweep_dir(root, sweep) / "selection.json"


def summary_path(root: Path, sweep: str) -> Path:
    """What the report's sweep section is made of (under metrics/, which the report stage depends on)."""
    return Path(root) / "metrics" / "sweep" / f"{sweep}.json"


def table_stem(root: Path, sweep: str) -> Path:
    return Path(root) / "tables" / f"sweep_{sweep}"


def accuracy_figure_path(root: Path, sweep: str) -> Path:
    return Path(root) / "figures" / f"sweep_{sweep}_accuracy.png"


def diagnostics_figure_path(root: Path, sweep: str) -> Path:
    return Path(root) / "figures" / f"sweep_{sweep}_diagnostics.png"
