"""The check of params.yaml that ``scripts/repro.sh`` runs before any compute.

``params.load`` checks the structure (sections, key names, runs that build); this module checks every
value: types, ranges (budgets are finite numbers in range for their norm), names against their
registries (models, AutoAttack versions, perceptual attacks, bound methods, solvers, runs) and that the
data the profile names is in place. It reports every problem at once, each naming the key and what is
allowed, so a bad value stops the pipeline before hours of training instead of at the first attack
stage. No stage imports this module: its registries may grow without making any stage stale.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from robustlib.attacks.autoattack import VERSIONS as AUTOATTACK_VERSIONS
from robustlib.bounds.intervals import BOUND_METHODS
from robustlib.data.datasets import MissingDataError, check_files, dataset_info
from robustlib.evaluation.suite import PERCEPTUAL_GROUP as PERCEPTUAL_ATTACKS  # attack name -> its threat group
from robustlib.models import MODELS
from robustlib.pipeline.params import ParamsError, all_runs, lpips_config, run_config
from robustlib.verification.solvers import SOLVERS

Check = Callable[[Any], str | None]  # a value -> None if allowed, else what is allowed


def integer(lo: int) -> Check:
    """An integer (not a bool) >= ``lo``."""
    return lambda v: None if isinstance(v, int) and not isinstance(v, bool) and v >= lo else f"an integer >= {lo}"


def real(lo: float, hi: float = math.inf, lo_open: bool = False) -> Check:
    """A finite number in [lo, hi] ((lo, hi] when ``lo_open``)."""
    interval = f"{'(' if lo_open else '['}{lo:g}, {hi:g}]"

    def check(v: Any) -> str | None:
        ok = (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
              and (v > lo if lo_open else v >= lo) and v <= hi)
        return None if ok else f"a finite number in {interval}"
    return check


def one_of(options) -> Check:
    """One of ``options``."""
    options = sorted(options)
    return lambda v: None if v in options else f"one of {options}"


def optional(check: Check) -> Check:
    """``check`` or null."""
    return lambda v: None if v is None else (None if check(v) is None else f"null or {check(v)}")


def list_of(check: Check, min_len: int = 0, max_len: int | None = None) -> Check:
    """A list of ``min_len`` to ``max_len`` (no limit: None) values that each pass ``check``."""
    def run(v: Any) -> str | None:
        if (not isinstance(v, list) or len(v) < min_len or (max_len is not None and len(v) > max_len)
                or any(check(e) is not None for e in v)):
            probe = check(object())
            size = (f"{min_len} or more" if max_len is None else
                    f"exactly {min_len}" if max_len == min_len else f"{min_len} to {max_len}")
            return f"a list of {size} values, each {probe}"
        return None
    return run


def _image_dim(params: Mapping[str, Any]) -> int:
    info = dataset_info(params["data"]["dataset"])
    return info.in_channels * info.image_size ** 2


def _checks(params: Mapping[str, Any]) -> dict[tuple[str, ...], Check]:
    """Every checked key (as a path) and its check; keys absent from params are skipped."""
    runs = all_runs(params)
    run, l2_max = one_of(runs), math.sqrt(_image_dim(params))  # no two images in [0, 1]^d are further apart
    linf, l2 = real(0.0, 1.0, lo_open=True), real(0.0, l2_max, lo_open=True)
    return {
        ("base", "seed"): integer(0), ("base", "threads"): integer(1),
        ("base", "device"): lambda v: None if v in ("auto", "cpu", "cuda") or str(v).startswith("cuda:")
        else "auto, cpu, cuda or cuda:<index>",
        ("data", "n_train"): optional(integer(1)), ("data", "n_val"): integer(0),
        ("data", "n_test"): optional(integer(1)),
        ("attack", "n_test"): integer(1), ("attack", "batch_size"): integer(1), ("attack", "processes"): integer(1),
        ("attack", "linf_eps"): linf, ("attack", "l2_eps"): l2,
        ("attack", "pgd_steps"): integer(1), ("attack", "pgd_restarts"): integer(1),
        ("attack", "autoattack_version"): one_of(AUTOATTACK_VERSIONS),
        ("attack", "square_queries"): integer(1), ("attack", "square_escalation"): integer(0),
        ("attack", "transfer_from"): optional(run), ("attack", "curve_n"): integer(1),
        ("attack", "curve_linf_eps"): list_of(real(0.0, 1.0), 1),
        ("attack", "curve_l2_eps"): list_of(real(0.0, l2_max), 1),
        ("attack", "sanity", "n"): integer(1), ("attack", "sanity", "budget_tol"): real(0.0, 1.0),
        ("attack", "sanity", "large_eps", "linf"): real(0.0, lo_open=True),  # the positive control: a ball that may
        ("attack", "sanity", "large_eps", "l2"): real(0.0, lo_open=True),  # hold the whole image cube
        ("attack", "sanity", "undefended_run"): optional(run),
        ("attack", "sanity", "undefended_max_acc"): real(0.0, 1.0),
        ("verify", "eps"): list_of(linf, 1), ("verify", "milp_runs"): list_of(run),
        ("verify", "pgd_steps"): integer(1), ("verify", "pgd_restarts"): integer(1),
        ("verify", "bounds"): one_of(BOUND_METHODS), ("verify", "solver"): one_of(SOLVERS),
        ("ablations", "table_runs"): list_of(run, 1), ("ablations", "sweep_runs"): list_of(run),
        ("laplacian", "sparse_run"): run, ("laplacian", "dense_run"): optional(run),
        ("laplacian", "fraction"): real(0.0, 1.0, lo_open=True),
        ("gallery", "runs"): list_of(run, 2, 2),  # dvc.yaml's gallery stage names gallery.runs[0] and [1]
        ("gallery", "n"): integer(1),
        ("report", "curve_metrics"): list_of(lambda v: None if isinstance(v, str) else "a string", 1),
    }


def _get(params: Mapping[str, Any], path: tuple[str, ...]) -> tuple[bool, Any]:
    node: Any = params
    for key in path:
        if not isinstance(node, Mapping) or key not in node:
            return False, None
        node = node[key]
    return True, node


def _budget_maps(params: Mapping[str, Any]) -> list[str]:
    """attack.perceptual (attack -> budget) and attack.sanity.perceptual_max_acc (attack -> accuracy)."""
    problems = []
    maps = {("attack", "perceptual"): real(0.0, lo_open=True),
            ("attack", "sanity", "perceptual_max_acc"): real(0.0, 1.0)}
    for path, check in maps.items():
        present, body = _get(params, path)
        if not present or body is None:
            continue
        key = ".".join(path)
        if not isinstance(body, Mapping):
            problems.append(f"{key}: must map perceptual attack names to numbers, got {body!r}")
            continue
        for name, value in body.items():
            if name not in PERCEPTUAL_ATTACKS:
                problems.append(f"{key}.{name}: unknown perceptual attack; known: {sorted(PERCEPTUAL_ATTACKS)}")
            elif check(value) is not None:
                problems.append(f"{key}.{name}: must be {check(value)}, got {value!r}")
    return problems


def _models(params: Mapping[str, Any]) -> list[str]:
    """Every run's (and the LPIPS network's) model exists in ``robustlib.models.MODELS``."""
    problems = []
    configs = [(f"runs.{r}.model", run_config(params, r)) for r in all_runs(params)]
    if "lpips" in params:
        configs.append(("lpips.model", lpips_config(params)))
    for key, cfg in configs:
        if cfg.model.lower() not in MODELS:
            problems.append(f"{key}: unknown model {cfg.model!r}; known: {sorted(MODELS)}")
    return problems


def _data(params: Mapping[str, Any], root: Path) -> list[str]:
    """The dataset's files are in place under base.data_root, and data.path (the stages' data dependency) exists."""
    data_root = root / str(params["base"].get("data_root", "data"))
    try:
        check_files(params["data"]["dataset"], data_root)
    except MissingDataError as err:
        return [f"data: {err}"]
    path = params["data"].get("path")
    if not isinstance(path, str) or not (root / path).exists():
        return [f"data.path: {path!r} does not exist under {root}; it must name the dataset's folder that the "
                f"stages depend on (e.g. data/cifar10 or data/MNIST/raw)"]
    return []


def problems(params: Mapping[str, Any], root: str | Path) -> list[str]:
    """Every problem with the values of ``params`` (already loaded by ``params.load``), each naming its key."""
    found = []
    for path, check in _checks(params).items():
        present, value = _get(params, path)
        if present and check(value) is not None:
            found.append(f"{'.'.join(path)}: must be {check(value)}, got {value!r}")
    return found + _budget_maps(params) + _models(params) + _data(params, Path(root))


def check(params: Mapping[str, Any], root: str | Path) -> None:
    """Raise ``ParamsError`` listing every problem of ``params``; return quietly when there is none."""
    found = problems(params, root)
    if found:
        raise ParamsError(f"{len(found)} problem(s) in the params:\n  " + "\n  ".join(found))
