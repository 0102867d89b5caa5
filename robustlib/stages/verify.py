"""The verify stage: IBP certified accuracy and (for spectral-norm runs) Lipschitz certificates for
every run; complete MILP verification (Tjeng et al. 2019) for the runs listed in
``verify.milp_runs``, cheapest first (attack counterexamples, then bounds, then the MILP).

Consistency checks fail the stage: at the attack stage's L-inf eps, verified <= AutoAttack robust
<= clean, and no example is both verified and broken by any attack.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import pandas as pd
import torch

from robustlib import paths
from robustlib.attacks import pgd
from robustlib.bounds import ibp_certified, lipschitz_certified_radius, lipschitz_upper_bound
from robustlib.checks import SanityCheckError
from robustlib.io import atomic_write, load_model, write_json
from robustlib.params import all_runs, run_config
from robustlib.robustness import load_results
from robustlib.stages.attack import test_examples
from robustlib.stages.common import setup
from robustlib.verify import summarize, verify

logger = logging.getLogger(__name__)


def run(run: str, params_file: str = "params.yaml", output_root: str = ".") -> dict[str, Any]:
    """Certify / verify named run ``run``; write per-example verdicts and metrics; return the metrics."""
    env = setup(params_file, output_root)
    vp, ap = env.params["verify"], env.params["attack"]
    if run not in all_runs(env.params):
        raise ValueError(f"unknown run {run!r}; runs: {all_runs(env.params)}")
    t0 = time.perf_counter()
    model = load_model(paths.model_path(env.out, run))
    x, y, idx = test_examples(env, run, int(vp["n_test"]))
    seed = int(env.params["base"]["seed"])
    attack_table = load_results(paths.attack_results_path(env.out, run)).set_index("index")
    with torch.no_grad():
        clean = model(x).argmax(1) == y
    metrics: dict[str, Any] = {"run": run, "n": len(idx), "clean_acc": float(clean.float().mean()), "eps": {}}
    rows = []
    for eps in [float(e) for e in vp["eps"]]:
        entry: dict[str, Any] = {"ibp_certified_acc": float(ibp_certified(model, x, y, eps).float().mean())}
        if run in vp["milp_runs"]:
            x_adv = pgd(model, x, y, eps, "linf", steps=int(vp["pgd_steps"]), restarts=int(vp["pgd_restarts"]),
                        generator=torch.Generator().manual_seed(seed))
            results = verify(model, x, y, eps, "linf", time_limit=float(vp["time_limit"]),
                             processes=int(vp["processes"]), counterexamples=x_adv, bounds=vp["bounds"], seed=seed)
            with torch.no_grad():
                entry["pgd_acc"] = float((clean & (model(x_adv).argmax(1) == y)).float().mean())
            entry.update(summarize(results))
            for i, r in zip(idx, results, strict=True):
                rows.append({"index": i, "eps": eps, "verdict": r.verdict, "method": r.method,
                             "seconds": round(r.seconds, 4), "unstable": r.unstable, "stable": r.stable,
                             "detail": r.detail})
            _check_consistency(run, eps, results, idx, clean, attack_table, float(ap["linf_eps"]), entry["pgd_acc"])
        metrics["eps"][str(eps)] = entry
    if run_config(env.params, run).spectral_norm:
        L = lipschitz_upper_bound(model, "l2")
        with torch.no_grad():
            radius = lipschitz_certified_radius(model(x), y, L)
        metrics["lipschitz_l2"] = {"L": L, "certified_acc_at_l2_eps": float((clean & (radius > float(ap["l2_eps"])))
                                                                             .float().mean()),
                                   "median_radius": float(radius.median())}
    table = pd.DataFrame(rows, columns=["index", "eps", "verdict", "method", "seconds", "unstable", "stable", "detail"])
    atomic_write(paths.verify_results_path(env.out, run), lambda p: table.to_csv(p, index=False))
    metrics["minutes"] = round((time.perf_counter() - t0) / 60, 3)
    write_json(metrics, paths.verify_metrics_path(env.out, run))
    return metrics


def _check_consistency(run, eps, results, idx, clean, attack_table, attack_eps, pgd_acc) -> None:
    verified = torch.tensor([r.verdict == "verified" for r in results])
    if bool((verified & ~clean).any()):
        raise SanityCheckError("verify_consistency", f"{run}: an example misclassified clean is reported verified")
    frac = float(verified.float().mean())
    if frac > pgd_acc + 1e-9:
        raise SanityCheckError("verify_consistency",
                               f"{run}: verified {frac:.4f} > PGD robust {pgd_acc:.4f} at eps={eps}")
    if abs(eps - attack_eps) < 1e-12:
        broken = ~attack_table.loc[list(idx), "worst_linf"].to_numpy()
        both = [i for i, v, b in zip(idx, verified.tolist(), broken, strict=True) if v and b]
        if both:
            raise SanityCheckError("verify_consistency", f"{run}: examples {both[:5]} are verified and also broken "
                                   f"by an attack at eps={eps}")
        sub = attack_table.loc[list(idx)]
        aa, cl = float(sub["robust_aa_linf"].mean()), float(sub["clean_correct"].mean())
        if not (frac <= aa + 1e-9 <= cl + 2e-9):
            raise SanityCheckError("verify_consistency", f"{run}: on these {len(idx)} examples need verified "
                                   f"{frac:.4f} <= AutoAttack robust {aa:.4f} <= clean {cl:.4f}")
