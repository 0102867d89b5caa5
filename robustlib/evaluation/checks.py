"""Sanity checks of an adversarial evaluation (Carlini et al. 2019, "On evaluating adversarial
robustness", sec. 5 checklist). Each check raises ``SanityCheckError`` naming the check and what
went wrong, and returns a small dict of the numbers it looked at when it passes.

An attack here is any callable ``attack(model, x, y, threat, **budget) -> AttackResult`` (e.g.
``robustlib.attacks.pgd``, whose budget keywords are ``steps`` and ``restarts``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import pandas as pd
import torch
from torch import nn

from robustlib.attacks.common import AttackResult, eval_mode
from robustlib.evaluation import schema
from robustlib.evaluation.accuracy import predict
from robustlib.evaluation.suite import CURVE_FGSM, CURVE_PGD, FGSM_LINF, LINF, PGD, PGD_LINF, AttackSuite
from robustlib.threat import NORMS, ThreatModel

logger = logging.getLogger(__name__)

AttackFn = Callable[..., AttackResult]


class SanityCheckError(AssertionError):
    """An evaluation sanity check failed; ``check`` names it."""

    def __init__(self, check: str, message: str) -> None:
        super().__init__(f"sanity check '{check}' failed: {message}")
        self.check, self.message = check, message

    def __reduce__(self):  # picklable, so that it crosses from a worker process unchanged
        return self.__class__, (self.check, self.message)


def robust_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor) -> float:
    """Fraction of examples classified correctly both clean and at ``x_adv`` (fresh eval-mode forward)."""
    with eval_mode(model):
        ok = (predict(model, x) == y) & (predict(model, x_adv) == y)
    return float(ok.float().mean())


def check_points(x: torch.Tensor, x_adv: torch.Tensor, threat: ThreatModel, name: str = "attack",
                 tol: float = 1e-6) -> dict[str, Any]:
    """Every adversarial point is finite, in [0, 1] and inside the threat ball around its clean point."""
    if x_adv.shape != x.shape:
        raise SanityCheckError("points", f"{name} returned shape {tuple(x_adv.shape)} for inputs {tuple(x.shape)}")
    finite = torch.isfinite(x_adv).flatten(1).all(1)
    if not bool(finite.all()):
        bad = (~finite).nonzero().flatten()
        raise SanityCheckError("points", f"{name} returned {len(bad)} non-finite points "
                               f"(first: example {int(bad[0])})")
    in_box = ((x_adv >= -tol) & (x_adv <= 1 + tol)).flatten(1).all(1)
    if not bool(in_box.all()):
        bad = (~in_box).nonzero().flatten()
        raise SanityCheckError("points", f"{name} returned {len(bad)} points outside [0, 1] "
                               f"(first: example {int(bad[0])}, "
                               f"range [{float(x_adv.min()):.4g}, {float(x_adv.max()):.4g}])")
    norms = threat.norm_of(x_adv - x)
    outside = norms > threat.eps * (1 + 1e-5) + tol
    if bool(outside.any()):
        bad = outside.nonzero().flatten()
        raise SanityCheckError("points", f"{name} returned {len(bad)} points outside the {threat.norm} ball "
                               f"of radius "
                               f"{threat.eps} (largest norm {float(norms.max()):.6g}, first: example {int(bad[0])})")
    return {"max_norm": float(norms.max()) if len(norms) else 0.0}


def check_flags_agree(model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor, robust: torch.Tensor | Sequence[bool],
                      clean_correct: torch.Tensor | Sequence[bool] | None = None,
                      name: str = "attack") -> dict[str, Any]:
    """The stored per-example ``robust`` flags agree with a fresh eval-mode forward on the adversarial
    points: an example may only be "robust" if the model still classifies ``x_adv`` correctly (and
    ``clean_correct``, if given), and every correct prediction on a clean-correct example is robust."""
    robust = torch.as_tensor(robust, dtype=torch.bool)
    with eval_mode(model):
        fresh = (predict(model, x_adv) == y).cpu()
    if clean_correct is not None:
        fresh &= torch.as_tensor(clean_correct, dtype=torch.bool)
    disagree = (fresh != robust).nonzero().flatten()
    if len(disagree):
        claimed = int((robust & ~fresh).sum())
        raise SanityCheckError("flags", f"{name}: {len(disagree)} stored robust flags disagree with a fresh eval-mode "
                               f"forward ({claimed} claimed robust but misclassified; "
                               f"first: example {int(disagree[0])})")
    return {"robust_acc": float(robust.float().mean()) if len(robust) else float("nan")}


def check_monotone_in_eps(curve: pd.DataFrame, tol: float = 0.0) -> dict[str, Any]:
    """Robust accuracy is non-increasing in eps for every (norm, attack) of a tidy curve
    (columns norm, eps, attack, robust_acc); ``tol`` is an allowed increase (fraction)."""
    by = [schema.NORM, schema.ATTACK]
    for (norm, attack), grp in curve.groupby(by):
        grp = grp.sort_values(schema.EPS)
        inc = grp[schema.ROBUST_ACC].diff() > tol
        if bool(inc.any()):
            i = int(inc.to_numpy().nonzero()[0][0])
            e0, e1 = grp[schema.EPS].iloc[i - 1], grp[schema.EPS].iloc[i]
            a0, a1 = grp[schema.ROBUST_ACC].iloc[i - 1], grp[schema.ROBUST_ACC].iloc[i]
            raise SanityCheckError("monotone_eps", f"{attack} ({norm}): robust accuracy rises from {a0:.4f} "
                                   f"at eps={e0} to {a1:.4f} at eps={e1}")
    return {"groups": int(curve.groupby(by).ngroups)}


def check_large_eps(attack: AttackFn, model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
                    num_classes: int, tol: float = 0.05, **budget: Any) -> dict[str, Any]:
    """At a very large eps (e.g. 1.0 for L-inf, where any image is reachable) robust accuracy is at
    most chance level ``1 / num_classes`` plus ``tol``."""
    x_adv = attack(model, x, y, threat, **budget).points
    check_points(x, x_adv, threat, "large-eps attack")
    acc = robust_accuracy(model, x, y, x_adv)
    if acc > 1.0 / num_classes + tol:
        raise SanityCheckError("large_eps", f"robust accuracy {acc:.4f} at eps={threat.eps} ({threat.norm}) is "
                               f"above chance {1.0 / num_classes:.4f} + {tol}: the attack is not unbounded-strong")
    return {"robust_acc": acc, "eps": threat.eps}


def check_budget_converged(attack: AttackFn, model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
                           steps: int, restarts: int, tol: float = 0.005, seed: int = 0,
                           reported: torch.Tensor | Sequence[bool] | None = None) -> dict[str, Any]:
    """Doubling ``steps`` or ``restarts`` changes robust accuracy by at most ``tol`` (0.005 = 0.5 points).

    With ``reported`` (the per-example robust flags of the reported worst case over all attacks of
    this threat model, for the first ``len(reported)`` examples of ``x``), a larger change is the
    attack's own non-convergence, not an overstated result, as long as every example the doubled
    budget breaks among those is already broken in ``reported``: then it is returned as
    ``unconverged`` (a message) instead of raised. Any example the doubled budget breaks and the
    reported worst case keeps fails the check."""
    def run(s: int, r: int) -> torch.Tensor:
        x_adv = attack(model, x, y, threat, steps=s, restarts=r,
                       generator=torch.Generator(device=x.device).manual_seed(seed)).points
        check_points(x, x_adv, threat, f"attack with steps={s}, restarts={r}")
        with eval_mode(model):
            return ((predict(model, x) == y) & (predict(model, x_adv) == y)).cpu()

    flags = {"base": run(steps, restarts), "double_steps": run(2 * steps, restarts),
             "double_restarts": run(steps, 2 * restarts)}
    out: dict[str, Any] = {k: float(v.float().mean()) for k, v in flags.items()}
    out["unconverged"] = None
    for key in ("double_steps", "double_restarts"):
        if abs(out[key] - out["base"]) <= tol + 1e-6:  # float32 accuracies: one example in 200 is 0.005 +- 6e-8
            continue
        msg = (f"{key.replace('_', ' ')} changes robust accuracy from {out['base']:.4f} to {out[key]:.4f} "
               f"(more than {tol}): the attack has not converged")
        if reported is None:
            raise SanityCheckError("budget", msg)
        rep = torch.as_tensor(reported, dtype=torch.bool).cpu()
        missed = (rep & ~flags[key][:len(rep)]).nonzero().flatten()
        if len(missed):
            raise SanityCheckError("budget", f"{msg}, and it breaks {len(missed)} of the {len(rep)} reported "
                                   f"examples that the reported worst case keeps (first: example "
                                   f"{int(missed[0])}): the reported robust accuracy is overstated")
        out["unconverged"] = (f"{msg}; every example it breaks among the {len(rep)} reported ones is broken in "
                              f"the reported worst case")
        logger.warning("%s", out["unconverged"])
    return out


def check_pgd_below_fgsm(pgd_attack: AttackFn, fgsm_attack: AttackFn, model: nn.Module, x: torch.Tensor,
                         y: torch.Tensor, threat: ThreatModel, tol: float = 0.0, **budget: Any) -> dict[str, Any]:
    """An iterative attack is at least as strong as a single step: robust accuracy under PGD is at
    most FGSM's (+ ``tol``)."""
    x_pgd = pgd_attack(model, x, y, threat, **budget).points
    x_fgsm = fgsm_attack(model, x, y, threat).points
    check_points(x, x_pgd, threat, "PGD")
    check_points(x, x_fgsm, threat, "FGSM")
    a_pgd, a_fgsm = robust_accuracy(model, x, y, x_pgd), robust_accuracy(model, x, y, x_fgsm)
    if a_pgd > a_fgsm + tol:
        raise SanityCheckError("pgd_vs_fgsm", f"PGD robust accuracy {a_pgd:.4f} exceeds FGSM's {a_fgsm:.4f} "
                               f"at eps={threat.eps} ({threat.norm})")
    return {"pgd": a_pgd, "fgsm": a_fgsm}


def check_undefended(attack: AttackFn, model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
                     max_acc: float = 0.02, **budget: Any) -> dict[str, Any]:
    """An undefended (plainly trained) model is driven to about 0% robust accuracy at the standard eps."""
    x_adv = attack(model, x, y, threat, **budget).points
    check_points(x, x_adv, threat, "attack on the undefended model")
    acc = robust_accuracy(model, x, y, x_adv)
    if acc > max_acc:
        raise SanityCheckError("undefended", f"an undefended model keeps {acc:.4f} robust accuracy at eps={threat.eps} "
                               f"({threat.norm}); expected <= {max_acc}: the attack is too weak")
    return {"robust_acc": acc}


def check_positive_controls(table: pd.DataFrame, max_acc: dict[str, float], run: str) -> dict[str, Any]:
    """Positive controls: on the undefended run, each named attack must bring accuracy (clean and not
    broken by that attack, from the stage's per-example ``robust_<attack>`` column) to at most
    ``max_acc[attack]``; an attack that should have run but has no column fails too (perceptual-advex
    reports 0-1% for undefended CIFAR-10 models; an attack that cannot fool one is broken)."""
    out: dict[str, Any] = {}
    for attack, limit in max_acc.items():
        col = schema.robust(attack)
        if col not in table:
            reason = table.attrs.get("not_applicable", {}).get(attack)
            if reason:  # e.g. ReColorAdv on grayscale data: nothing to control
                out[attack] = {"not_applicable": reason}
                continue
            raise SanityCheckError("positive_control", f"{run}: no results for {attack}, which has a positive "
                                   f"control (attack.sanity.perceptual_max_acc)")
        acc = float(table[col].mean())
        out[attack] = {"acc": acc, "max_acc": float(limit)}
        if acc > float(limit) + 1e-12:
            raise SanityCheckError("positive_control", f"{run}: undefended accuracy under {attack} is {acc:.4f} "
                                   f"> {float(limit):.4f}: the attack fails to fool an undefended model")
    return out


def evaluation_sanity_checks(model: nn.Module, xs: torch.Tensor, ys: torch.Tensor, curve: pd.DataFrame,
                             table: pd.DataFrame, run: str, suite: AttackSuite, num_classes: int,
                             index: Sequence[int] | None = None) -> dict[str, Any]:
    """The attack stage's Carlini et al. (2019) checks on one run, with the suite's PGD and settings
    (``suite.sanity``): attacks re-run on the examples ``xs``, ``ys``, test indices ``index`` (a prefix of
    the same test order as the table's, shorter or longer; the budget check compares with the reported
    worst case on their common prefix), the curve and table checks on the stage's results; any failure
    raises ``SanityCheckError``. PGD that has not converged at the standard eps (doubling its budget
    breaks more examples) fails only where the reported L-inf worst case (FGSM, PGD, AutoAttack,
    transfer) missed an example; otherwise it is recorded as ``budget_linf.unconverged`` (Table 1's
    PGD_unconverged). PGD weaker than FGSM (on the curves or at the standard eps) is gradient masking,
    not a broken PGD (tested against torchattacks' iterates): it is recorded as ``pgd_weaker_than_fgsm``
    (Table 1's PGD_below_FGSM); the reported L-inf worst case takes FGSM per example. On the undefended
    run, PGD must drive it to about 0% and each perceptual attack below its positive control."""
    sp, pgd = suite.sanity, suite[PGD_LINF]
    steps, restarts = pgd.budget["steps"], pgd.budget["restarts"]
    out = _curve_checks(curve, run)
    weaker = _pgd_weaker_on_curve(curve)
    for norm in NORMS:
        out[f"large_eps_{norm}"] = check_large_eps(suite[PGD[norm]].attack, model, xs, ys,
                                                   ThreatModel(norm, sp.large_eps[norm]), num_classes, steps=steps,
                                                   restarts=1)
    common = min(len(table), len(xs))  # both are prefixes of the split's evaluation order; either may be longer
    if index is not None and list(table[schema.INDEX][:common]) != [int(i) for i in index[:common]]:
        raise ValueError("the sanity examples and the attacked examples must be prefixes of the same test order")
    reported = schema.flags(table, schema.worst(LINF))[:common]
    out[f"budget_{LINF}"] = check_budget_converged(pgd.attack, model, xs, ys, pgd.threat, steps, restarts,
                                                   tol=sp.budget_tol, seed=suite.seed, reported=reported)
    points = {name: float(table[schema.robust(name)].mean()) for name in (PGD_LINF, FGSM_LINF)}
    out["pgd_vs_fgsm_points"] = points
    if points[PGD_LINF] > points[FGSM_LINF]:
        weaker.append(f"{LINF} eps={pgd.threat.eps:g}: PGD {points[PGD_LINF]:.4f} > "
                      f"FGSM {points[FGSM_LINF]:.4f} (attacked examples)")
    out["pgd_weaker_than_fgsm"] = weaker or None  # reported linf_worst includes FGSM per example
    for msg in weaker:
        logger.warning("%s: PGD weaker than FGSM at %s: a sign of gradient masking", run, msg)
    if run == sp.undefended_run:
        out["undefended"] = check_undefended(pgd.attack, model, xs, ys, pgd.threat, max_acc=sp.undefended_max_acc,
                                             steps=steps, restarts=restarts)
    out["columns"] = schema.attacks_in(table)
    if run == sp.undefended_run:  # positive controls of the perceptual attacks
        out["perceptual_controls"] = check_positive_controls(table, sp.perceptual_max_acc or {}, run)
    return out


def _curve_checks(curve: pd.DataFrame, run: str) -> dict[str, Any]:
    """PGD alone at each eps: a rise with eps is recorded (gradient masking), the nested curve is reported."""
    out: dict[str, Any] = {}
    try:
        out["monotone_in_eps"] = check_monotone_in_eps(curve[curve[schema.ATTACK] == CURVE_PGD])
        out["pgd_nonmonotone"] = None
    except SanityCheckError as err:
        logger.warning("%s: %s; the curve reports pgd_nested (worst case over nested balls)", run, err.message)
        out["pgd_nonmonotone"] = err.message
    return out


def _pgd_weaker_on_curve(curve: pd.DataFrame) -> list[str]:
    """Where PGD is weaker than FGSM on the curves: gradient masking (the PGD code itself is tested against
    torchattacks)."""
    weaker = []
    for norm in NORMS:
        c = curve[(curve[schema.NORM] == norm) & curve[schema.ATTACK].isin([CURVE_PGD, CURVE_FGSM])]
        for eps, grp in c.groupby(schema.EPS):
            accs = dict(zip(grp[schema.ATTACK], grp[schema.ROBUST_ACC], strict=False))
            if CURVE_PGD in accs and CURVE_FGSM in accs and accs[CURVE_PGD] > accs[CURVE_FGSM] + 1e-9:
                weaker.append(f"{norm} eps={eps:g}: PGD {accs[CURVE_PGD]:.4f} > FGSM {accs[CURVE_FGSM]:.4f} (curve)")
    return weaker
