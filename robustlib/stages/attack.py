"""The attack stage: every attack of the suite (``robustlib.evaluation.suite``) on one named run,
per-example worst case, curves, sanity checks.

Outputs (``robustlib.pipeline.paths``): per-example results (test index, clean correct, robust under each
attack, worst case per threat model), robustness curves (robust accuracy vs eps, PGD and FGSM, with
the AutoAttack points at the standard eps overlaid), and a metrics file (accuracies, which attacks
were not applicable and why, the sanity checks' numbers). A failing sanity check fails the stage.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import pandas as pd
import torch
from torch import nn

from robustlib.data.datasets import Split, dataset_info
from robustlib.evaluation import checks, schema
from robustlib.evaluation.curves import add_autoattack_points, robustness_curves
from robustlib.evaluation.suite import AUTOATTACK, LINF, AttackSuite, attack_suite, needs_lpips, transfer_source
from robustlib.evaluation.worst_case import evaluate_attacks
from robustlib.pipeline import paths
from robustlib.pipeline.io import load_model, read_json, write_json
from robustlib.pipeline.parallel import Background
from robustlib.pipeline.params import all_runs, has_run
from robustlib.stages.common import StageEnv, setup, test_examples
from robustlib.threat import NORMS

logger = logging.getLogger(__name__)


def run(run: str, params_file: str = "params.yaml", output_root: str = ".") -> dict[str, Any]:
    """Attack named run ``run``; write per-example results, curves and metrics; return the metrics."""
    env = setup(params_file, output_root, f"attack@{run}")
    if not has_run(env.params, run):
        raise ValueError(f"unknown run {run!r}; runs: {all_runs(env.params)}")
    t_start = time.perf_counter()
    ap, seed = env.params["attack"], int(env.params["base"]["seed"])
    model = load_model(paths.model_path(env.out, run)).to(env.device)
    x, y, idx = test_examples(env, run, int(ap["n_test"]))
    x, y = x.to(env.device), y.to(env.device)
    source = transfer_source(ap, run)  # models in this order: loading one draws from the global RNG
    source_model = load_model(paths.model_path(env.out, source)).to(env.device) if source else None
    lpips_net, lpips_info = _lpips_network(env) if needs_lpips(ap) else (None, None)
    suite = attack_suite(ap, seed, x.device, transfer_source=source_model, lpips_net=lpips_net)
    table, curve, seconds = _evaluate(env, run, model, x, y, idx, suite)
    t_sanity = time.perf_counter()
    sanity = _sanity_checks(env, run, model, suite, curve, table)
    seconds["sanity"] = round(time.perf_counter() - t_sanity, 2)
    metrics = {"run": run, "n": len(idx), **_settings(suite), **schema.accuracies(table), "lpips_network": lpips_info,
               "not_applicable": dict(table.attrs.get("not_applicable", {})), "sanity": sanity, "seconds": seconds,
               "minutes": round((time.perf_counter() - t_start) / 60, 3)}
    metrics["autoattack"].update({norm: table.attrs["info"].get(AUTOATTACK[norm], {}) for norm in NORMS})
    write_json(metrics, paths.attack_metrics_path(env.out, run))
    return metrics


def _evaluate(env: StageEnv, run: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, idx: list[int],
              suite: AttackSuite) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, float]]:
    """Every attack of the suite (worst case per threat model, over its attacks) with the curves computed
    alongside; both written. Returns the per-example table, the curves and the seconds spent."""
    processes = suite.processes_on(x.device)
    curves = Background(robustness_curves, model, x, y, suite.curve, enabled=processes > 1)  # alongside
    table = evaluate_attacks(model, x, y, suite.callables(), index=idx, threats=suite.threats(), groups=suite.groups(),
                             batch_size=suite.batch_size, seed=suite.seed, processes=processes)
    schema.save_results(table, paths.attack_results_path(env.out, run))
    seconds = dict(table.attrs.get("seconds", {}))
    t_curve = time.perf_counter()
    curve = curves.result()
    add_autoattack_points(curve, table, suite)  # AutoAttack at the standard eps (all n examples)
    schema.save_curve(curve, paths.attack_curve_path(env.out, run))
    seconds["curves_after_attacks"] = round(time.perf_counter() - t_curve, 2)  # run alongside when processes > 1
    return table, curve, seconds


def _sanity_checks(env: StageEnv, run: str, model: nn.Module, suite: AttackSuite, curve: pd.DataFrame,
                   table: pd.DataFrame) -> dict[str, Any]:
    """``checks.evaluation_sanity_checks`` on the first ``attack.sanity.n`` test examples (may exceed
    n_test: the budget check's 0.5-point tolerance needs >= 200 examples)."""
    num_classes = dataset_info(Split.load(paths.split_path(env.out, run)).dataset).num_classes
    xs, ys, sidx = test_examples(env, run, suite.sanity.n)
    return checks.evaluation_sanity_checks(model, xs.to(env.device), ys.to(env.device), curve, table, run, suite,
                                           num_classes, index=sidx)


def _settings(suite: AttackSuite) -> dict[str, Any]:
    """The metrics' record of the suite's budgets: the standard eps, the perceptual budgets, AutoAttack's."""
    aa = suite[AUTOATTACK[LINF]].budget  # the same settings at L2
    return {**{schema.eps_key(norm): suite.threat(norm).eps for norm in NORMS},
            "perceptual_budgets": suite.perceptual_budgets(),
            "autoattack": {k: aa[k] for k in ("version", "square_queries", "square_escalation")}}


def _lpips_network(env: StageEnv):
    """The fixed LPIPS network trained by the lpips stage, and its identity for the results."""
    path = paths.lpips_model_path(env.out)
    if not path.exists():
        raise FileNotFoundError(f"the NPTM attacks need the LPIPS network at {path}: run the lpips stage first "
                                f"(`dvc repro lpips`)")
    info = read_json(paths.lpips_metrics_path(env.out))
    return load_model(path).to(env.device), {k: info[k] for k in ("model", "sha256", "test_acc", "epochs")}
