"""The verify stage: IBP certified accuracy and (for spectral-norm runs) Lipschitz certificates for
every run; complete MILP verification (Tjeng et al. 2019) for the runs listed in
``verify.milp_runs``, cheapest first (attack counterexamples, then bounds, then the MILP), with the
numerical tolerance of ``robustlib.bounds.tolerance.margin_tolerance`` and the solver ``verify.solver``.

What a reader of the paper's Table 2 needs, per MILP run and eps, on the same examples: verified,
PGD-robust, AutoAttack-robust (worst case with PGD; AutoAttack at that eps on the PGD-robust examples
that are not verified; at the attack stage's L-inf eps its per-example results are reused) and clean
accuracy; seconds per example (median, p90); timeouts; unstable ReLUs;
and the gap between PGD-robust and verified split into its causes (timeouts, other unknowns such as a
margin within the tolerance, and counterexamples PGD missed).

Resuming: the verifier saves its results per shard of ``verify.shard_size`` examples under
``runs/<run>/verify_shards/`` (``paths.verify_shard_dir``, not a DVC output), so a stage killed
mid-way redoes only the unfinished shards; the folder is deleted when the stage completes.

Consistency checks fail the stage: no verified example is misclassified or broken by PGD or
AutoAttack at its eps (or by any attack at the attack stage's L-inf eps), and verified <= PGD-robust,
verified <= AutoAttack-robust <= clean.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from robustlib.attacks.gradient import pgd
from robustlib.bounds.intervals import ibp_certified
from robustlib.bounds.lipschitz import lipschitz_certified_radius, lipschitz_upper_bound
from robustlib.evaluation import schema
from robustlib.evaluation.checks import SanityCheckError
from robustlib.evaluation.suite import AA_LINF, autoattack_in
from robustlib.evaluation.worst_case import evaluate_attacks
from robustlib.pipeline import paths
from robustlib.pipeline.io import load_model, write_json
from robustlib.pipeline.parallel import Background
from robustlib.pipeline.params import all_runs, has_run
from robustlib.stages.common import setup, test_examples
from robustlib.threat import ThreatModel
from robustlib.verification.cascade import summarize
from robustlib.verification.shards import verify
from robustlib.verification.solvers import solver_settings

logger = logging.getLogger(__name__)


def run(run: str, params_file: str = "params.yaml", output_root: str = ".") -> dict[str, Any]:
    """Certify / verify named run ``run``; write per-example verdicts and metrics; return the metrics."""
    env = setup(params_file, output_root, f"verify@{run}")
    vp, ap = env.params["verify"], env.params["attack"]
    if not has_run(env.params, run):
        raise ValueError(f"unknown run {run!r}; runs: {all_runs(env.params)}")
    t0 = time.perf_counter()
    model = load_model(paths.model_path(env.out, run))
    x, y, idx = test_examples(env, run, int(vp["n_test"]))
    seed = int(env.params["base"]["seed"])
    attack_table = schema.load_results(paths.attack_results_path(env.out, run)).set_index(schema.INDEX)
    solver, atol, rtol = str(vp["solver"]), float(vp["margin_atol"]), float(vp["margin_rtol"])
    f32 = bool(vp["margin_float32"])
    l2_eps = float(ap["l2_eps"])  # declared for every run (dvc.yaml): the Lipschitz certificate of spectral-norm runs
    with torch.no_grad():
        clean = model(x).argmax(1) == y
    metrics: dict[str, Any] = {"run": run, "n": len(idx), "clean_acc": float(clean.float().mean()), "eps": {},
                               "margin_tolerance": _tolerance_record(atol, rtol, f32)}
    if run in vp["milp_runs"]:
        metrics["solver"] = solver_settings(solver)
        metrics["time_limit"] = float(vp["time_limit"])
    shard_root = paths.verify_shard_dir(env.out, run)
    rows = []
    for eps in [float(e) for e in vp["eps"]]:
        entry: dict[str, Any] = {"ibp_certified_acc": float(ibp_certified(
            model, x, y, eps, margin_atol=atol, margin_rtol=rtol, margin_float32=f32).float().mean())}
        if run in vp["milp_runs"]:
            rows += _verify_complete(entry, run, eps, model, x, y, idx, clean, vp, ap, attack_table, seed,
                                     shard_root / f"eps_{eps:g}")
        metrics["eps"][str(eps)] = entry
    if model.arch.get("spectral_norm"):  # the checkpoint's architecture record (robustlib.models.build_model)
        metrics["lipschitz_l2"] = _lipschitz_record(model, x, y, clean, l2_eps)
    table = pd.DataFrame(rows, columns=schema.VERIFY_COLUMNS)
    schema.save_verify_results(table, paths.verify_results_path(env.out, run))
    metrics["minutes"] = round((time.perf_counter() - t0) / 60, 3)
    write_json(metrics, paths.verify_metrics_path(env.out, run))
    shutil.rmtree(shard_root, ignore_errors=True)  # the stage is complete: nothing to resume
    return metrics


def _tolerance_record(atol: float, rtol: float, f32: bool) -> dict[str, Any]:
    """The metrics' record of the numerical margin tolerance."""
    return {"atol": atol, "rtol": rtol, "float32": f32,
            "definition": "atol + rtol * max|logit bound|" + (" + 2 * float32 error bound" if f32 else "")
                          + " (robustlib.bounds.margin_tolerance)"}


def _verify_complete(entry: dict[str, Any], run: str, eps: float, model, x: torch.Tensor, y: torch.Tensor,
                     idx: list[int], clean: torch.Tensor, vp: dict, ap: dict, attack_table: pd.DataFrame, seed: int,
                     shard_dir: Path) -> list[dict[str, Any]]:
    """PGD, the verifier's cascade (shards under ``shard_dir``) and AutoAttack at L-inf ``eps``, checked for
    consistency; their metrics are added to ``entry``. Returns the per-example rows of the verify table."""
    solver, atol, rtol = str(vp["solver"]), float(vp["margin_atol"]), float(vp["margin_rtol"])
    f32 = bool(vp["margin_float32"])
    x_adv = pgd(model, x, y, ThreatModel("linf", eps), steps=int(vp["pgd_steps"]),
                restarts=int(vp["pgd_restarts"]), generator=torch.Generator().manual_seed(seed)).points
    with torch.no_grad():
        pgd_ok = clean & (model(x_adv).argmax(1) == y)
    t_milp = time.perf_counter()
    results = verify(model, x, y, eps, "linf", time_limit=float(vp["time_limit"]),
                     processes=int(vp["processes"]), counterexamples=x_adv, bounds=vp["bounds"],
                     solver=solver, margin_atol=atol, margin_rtol=rtol, margin_float32=f32, seed=seed,
                     progress=False, shard_dir=shard_dir, shard_size=int(vp["shard_size"]))
    entry["verify_minutes"] = round((time.perf_counter() - t_milp) / 60, 3)
    verified = torch.tensor([r.verdict == "verified" for r in results])
    aa_ok, entry["aa_source"], entry["aa_seconds"], entry["aa_attacked"] = _autoattack_robust(
        model, x, y, idx, eps, ap, attack_table, seed, pgd_ok, verified)
    entry["pgd_acc"] = float(pgd_ok.float().mean())
    entry["aa_acc"] = float(aa_ok.float().mean())
    entry.update(summarize(results))
    entry["gap"] = verification_gap(results, pgd_ok)
    rows = _verify_rows(idx, eps, results, pgd_ok, aa_ok)
    _check_consistency(run, eps, results, idx, clean, pgd_ok, aa_ok, attack_table, float(ap["linf_eps"]))
    return rows


def _verify_rows(idx: list[int], eps: float, results, pgd_ok: torch.Tensor, aa_ok: torch.Tensor) -> list[dict]:
    """The verify table's rows (``schema.VERIFY_COLUMNS``) of the examples ``idx`` at ``eps``."""
    return [{schema.INDEX: i, schema.EPS: eps, schema.VERIFY_VERDICT: r.verdict, schema.VERIFY_METHOD: r.method,
             schema.VERIFY_REASON: r.reason, schema.VERIFY_SECONDS: round(r.seconds, 4),
             schema.VERIFY_MARGIN: r.margin, schema.VERIFY_TOL: r.tol, schema.VERIFY_UNSTABLE: r.unstable,
             schema.VERIFY_STABLE: r.stable, schema.VERIFY_PGD_ROBUST: p_ok, schema.VERIFY_AA_ROBUST: a_ok,
             schema.VERIFY_DETAIL: r.detail}
            for i, r, p_ok, a_ok in zip(idx, results, pgd_ok.tolist(), aa_ok.tolist(), strict=True)]


def _lipschitz_record(model, x: torch.Tensor, y: torch.Tensor, clean: torch.Tensor, l2_eps: float) -> dict[str, Any]:
    """The metrics' record of the Lipschitz certificates (spectral-norm runs): the L2 Lipschitz bound, the
    certified accuracy at the attack stage's L2 eps and the median certified radius."""
    L = lipschitz_upper_bound(model, "l2")
    with torch.no_grad():
        radius = lipschitz_certified_radius(model(x), y, L)
    return {"L": L, "certified_acc_at_l2_eps": float((clean & (radius > l2_eps)).float().mean()),
            "median_radius": float(radius.median())}


def verification_gap(results, pgd_ok: torch.Tensor) -> dict[str, int]:
    """Why PGD-robust examples are not verified: counts of the PGD-robust, not verified examples that
    timed out, stayed unknown for another reason (e.g. a margin within the numerical tolerance), or
    were falsified (a replayed counterexample that PGD missed)."""
    gap = {"pgd_robust_not_verified": 0, "timeout": 0, "unknown_other": 0, "falsified": 0}
    for r, ok in zip(results, pgd_ok.tolist(), strict=True):
        if not ok or r.verdict == "verified":
            continue
        gap["pgd_robust_not_verified"] += 1
        if r.verdict == "falsified":
            gap["falsified"] += 1
        elif r.reason == "timeout":
            gap["timeout"] += 1
        else:
            gap["unknown_other"] += 1
    return gap


def _autoattack_robust(model, x, y, idx, eps: float, ap: dict, attack_table: pd.DataFrame, seed: int,
                       pgd_ok: torch.Tensor, verified: torch.Tensor) -> tuple[torch.Tensor, str, float, int]:
    """Per example, robust under AutoAttack (the attack stage's settings) at L-inf ``eps``, worst case with
    PGD (DESIGN convention 8): clean-correct, not broken by PGD, and AutoAttack failed. At the attack
    stage's L-inf eps its per-example AutoAttack results are reused. Elsewhere AutoAttack runs only on
    the PGD-robust examples that are not verified (a verified example is proven robust: no attack can
    succeed), in one forked worker with one torch thread (several threads on a busy small machine made
    it 6x slower). Returns the flags, their source, the seconds spent and the examples attacked."""
    if abs(eps - float(ap["linf_eps"])) < 1e-12 and set(idx) <= set(attack_table.index):
        ok = torch.tensor(attack_table.loc[list(idx), schema.robust(AA_LINF)].to_numpy(dtype=bool))
        return pgd_ok & ok, "attack stage", 0.0, 0
    todo = (pgd_ok & ~verified).nonzero().flatten()
    ok = pgd_ok.clone()
    if len(todo) == 0:
        return ok, "verify stage", 0.0, 0
    threat = ThreatModel("linf", eps)
    aa = autoattack_in(ap, seed, threat)  # the attack stage's AutoAttack (robustlib.evaluation.suite), at eps
    t0 = time.perf_counter()
    table = Background(evaluate_attacks, model, x[todo], y[todo], {aa.name: aa}, index=[idx[i] for i in todo],
                       threats={aa.name: threat}, batch_size=int(ap["batch_size"]),
                       seed=seed).result()
    ok[todo] = schema.flags(table, schema.robust(aa.name))
    return ok, "verify stage", round(time.perf_counter() - t0, 2), len(todo)


def _check_consistency(run, eps, results, idx, clean, pgd_ok, aa_ok, attack_table, attack_eps) -> None:
    verified = torch.tensor([r.verdict == "verified" for r in results])
    if bool((verified & ~clean).any()):
        raise SanityCheckError("verify_consistency", f"{run}: an example misclassified clean is reported verified")
    for name, ok in (("PGD", pgd_ok), ("AutoAttack", aa_ok)):
        broken = [i for i, v, o in zip(idx, verified.tolist(), ok.tolist(), strict=True) if v and not o]
        if broken:
            raise SanityCheckError("verify_consistency", f"{run}: examples {broken[:5]} are verified and also "
                                   f"broken by {name} at eps={eps}")
    frac, aa, cl = (float(t.float().mean()) for t in (verified, aa_ok, clean))
    if not (frac <= aa + 1e-9 <= cl + 2e-9):
        raise SanityCheckError("verify_consistency", f"{run}: on these {len(idx)} examples need verified "
                               f"{frac:.4f} <= AutoAttack robust {aa:.4f} <= clean {cl:.4f} at eps={eps}")
    if abs(eps - attack_eps) < 1e-12 and set(idx) <= set(attack_table.index):
        broken = ~attack_table.loc[list(idx), schema.worst("linf")].to_numpy()
        both = [i for i, v, b in zip(idx, verified.tolist(), broken, strict=True) if v and b]
        if both:
            raise SanityCheckError("verify_consistency", f"{run}: examples {both[:5]} are verified and also broken "
                                   f"by an attack at eps={eps}")
