"""The attack stage: every attack on one named run, per-example worst case, curves, sanity checks.

Outputs (``robustlib.pipeline.paths``): per-example results (test index, clean correct, robust under each
attack, worst case per threat model), robustness curves (robust accuracy vs eps, PGD and FGSM, with
the AutoAttack points at the standard eps overlaid), and a metrics file (accuracies, which attacks
were not applicable and why, the sanity checks' numbers). A failing sanity check fails the stage.
"""

from __future__ import annotations

import logging
import time
from functools import partial
from typing import Any

import torch

from robustlib.attacks import autoattack, fgsm, pgd, transfer
from robustlib.attacks.perceptual import NEEDS_LPIPS, PERCEPTUAL_ATTACKS, THREAT_OF
from robustlib.data.datasets import Split, dataset_info
from robustlib.evaluation import checks, schema
from robustlib.evaluation.worst_case import evaluate_attacks, robustness_curves
from robustlib.pipeline import paths
from robustlib.pipeline.io import load_model, read_json, write_json
from robustlib.pipeline.parallel import Background
from robustlib.pipeline.params import all_runs, has_run
from robustlib.stages.common import StageEnv, setup, test_examples
from robustlib.threat import ThreatModel

logger = logging.getLogger(__name__)


def run(run: str, params_file: str = "params.yaml", output_root: str = ".") -> dict[str, Any]:
    """Attack named run ``run``; write per-example results, curves and metrics; return the metrics."""
    env = setup(params_file, output_root, f"attack@{run}")
    ap = env.params["attack"]
    if not has_run(env.params, run):
        raise ValueError(f"unknown run {run!r}; runs: {all_runs(env.params)}")
    t_start = time.perf_counter()
    model = load_model(paths.model_path(env.out, run)).to(env.device)
    x, y, idx = test_examples(env, run, int(ap["n_test"]))
    x, y = x.to(env.device), y.to(env.device)
    seed = int(env.params["base"]["seed"])
    info = dataset_info(Split.load(paths.split_path(env.out, run)).dataset)
    linf, l2 = ThreatModel("linf", float(ap["linf_eps"])), ThreatModel("l2", float(ap["l2_eps"]))
    steps, restarts, bs = int(ap["pgd_steps"]), int(ap["pgd_restarts"]), int(ap["batch_size"])
    aa = partial(autoattack, version=ap["autoattack_version"], seed=seed, batch_size=bs,
                 square_escalation=int(ap["square_escalation"]), square_queries=int(ap["square_queries"]))

    def gen() -> torch.Generator:
        return torch.Generator(device=x.device).manual_seed(seed)

    attacks = {
        "fgsm_linf": partial(fgsm, threat=linf),
        "pgd_linf": partial(pgd, threat=linf, steps=steps, restarts=restarts, generator=gen(), batch_size=bs),
        "aa_linf": partial(aa, threat=linf),
        "pgd_l2": partial(pgd, threat=l2, steps=steps, restarts=restarts, generator=gen(), batch_size=bs),
        "aa_l2": partial(aa, threat=l2),
    }
    threats = {"fgsm_linf": linf, "pgd_linf": linf, "aa_linf": linf, "pgd_l2": l2, "aa_l2": l2}
    source = ap.get("transfer_from")
    if source and source != run:
        src_model = load_model(paths.model_path(env.out, source)).to(env.device)
        attacks["transfer_linf"] = partial(transfer, src_model, threat=linf, steps=steps, restarts=restarts,
                                           generator=gen(), batch_size=bs)
        threats["transfer_linf"] = linf
    lpips_net, lpips_info = None, None
    for name, eps in (ap.get("perceptual") or {}).items():
        if name not in PERCEPTUAL_ATTACKS:
            raise ValueError(f"attack.perceptual: unknown attack {name!r}; known: {sorted(PERCEPTUAL_ATTACKS)}")
        kwargs = {"eps": float(eps)}
        if name in NEEDS_LPIPS:
            if lpips_net is None:
                lpips_net, lpips_info = _lpips_network(env)
            kwargs["lpips_net"] = lpips_net
        attacks[name] = partial(PERCEPTUAL_ATTACKS[name], **kwargs)
    group = {**{a: t.norm for a, t in threats.items()}, **{a: THREAT_OF[a] for a in attacks if a not in threats}}

    processes = int(ap["processes"]) if x.device.type == "cpu" else 1
    n_curve = int(ap["curve_n"])
    grids = {n: ap[f"curve_{n}_eps"] for n in ("linf", "l2")}
    curves = Background(robustness_curves, model, x[:n_curve], y[:n_curve], grids, steps, restarts, seed, bs,
                        enabled=processes > 1)  # alongside the attacks
    table = evaluate_attacks(model, x, y, attacks, index=idx, threats=threats, groups=group, batch_size=bs,
                             seed=seed, processes=processes)  # worst case per threat model, over its attacks
    schema.save_results(table, paths.attack_results_path(env.out, run))
    not_applicable = dict(table.attrs.get("not_applicable", {}))
    seconds = dict(table.attrs.get("seconds", {}))
    t_curve = time.perf_counter()
    curve = curves.result()
    for norm, threat in (("linf", linf), ("l2", l2)):  # AutoAttack points at the standard eps (all n examples)
        curve.loc[len(curve)] = [norm, threat.eps, "autoattack", float(table[schema.robust(f"aa_{norm}")].mean())]
    curve_path = paths.attack_curve_path(env.out, run)
    curve_path.parent.mkdir(parents=True, exist_ok=True)
    curve.to_csv(curve_path, index=False, float_format="%.6g")

    seconds["curves_after_attacks"] = round(time.perf_counter() - t_curve, 2)  # run alongside when processes > 1
    t_sanity = time.perf_counter()
    xs, ys, sidx = test_examples(env, run, int(ap["sanity"]["n"]))  # may exceed n_test: the budget check's
    sanity = checks.evaluation_sanity_checks(model, xs.to(env.device), ys.to(env.device), curve, table, run,
                                             env.params, info.num_classes, seed,
                                             index=sidx)  # 0.5-point tolerance needs >= 200 examples
    if run == ap["sanity"].get("undefended_run"):  # positive controls of the perceptual attacks
        sanity["perceptual_controls"] = checks.check_positive_controls(
            table, ap["sanity"].get("perceptual_max_acc") or {}, run)
    seconds["sanity"] = round(time.perf_counter() - t_sanity, 2)
    metrics = {
        "run": run,
        "n": len(idx),
        "linf_eps": linf.eps,
        "l2_eps": l2.eps,
        **schema.accuracies(table),
        "perceptual_budgets": {k: float(v) for k, v in (ap.get("perceptual") or {}).items()},
        "lpips_network": lpips_info,
        "not_applicable": not_applicable,
        "sanity": sanity,
        "autoattack": {"version": ap["autoattack_version"], "square_queries": int(ap["square_queries"]),
                       "square_escalation": int(ap["square_escalation"]),
                       **{n: table.attrs["info"].get(f"aa_{n}", {}) for n in ("linf", "l2")}},
        "seconds": seconds,
        "minutes": round((time.perf_counter() - t_start) / 60, 3),
    }
    write_json(metrics, paths.attack_metrics_path(env.out, run))
    return metrics


def _lpips_network(env: StageEnv):
    """The fixed LPIPS network trained by the lpips stage, and its identity for the results."""
    path = paths.lpips_model_path(env.out)
    if not path.exists():
        raise FileNotFoundError(f"the NPTM attacks need the LPIPS network at {path}: run the lpips stage first "
                                f"(`dvc repro lpips`)")
    info = read_json(paths.lpips_metrics_path(env.out))
    return load_model(path).to(env.device), {k: info[k] for k in ("model", "sha256", "test_acc", "epochs")}
