"""Carlini et al. (2019) sanity checks: each one fails on a planted broken attack (zero steps, no
projection, NaN points, false robustness claims, a capped eps, a step too small to converge) and
passes on the real PGD. Also the per-example evaluation table of ``robustlib.evaluation.worst_case``."""

from __future__ import annotations

from functools import partial

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from robustlib.attacks.common import AttackResult, NotApplicable
from robustlib.attacks.gradient import fgsm, pgd
from robustlib.attacks.perceptual.recoloradv import recoloradv
from robustlib.data.datasets import load_split
from robustlib.evaluation import checks
from robustlib.evaluation.checks import SanityCheckError
from robustlib.evaluation.curves import robustness_curve
from robustlib.evaluation.schema import load_results, robust, save_results
from robustlib.evaluation.suite import FGSM_LINF, LINF, PGD_LINF, attack_suite
from robustlib.evaluation.worst_case import evaluate_attacks
from robustlib.models import build_model
from robustlib.pipeline.params import load as load_params
from robustlib.threat import ThreatModel

torch.set_num_threads(1)
STD = ThreatModel("linf", 0.3)  # the standard MNIST eps


@pytest.fixture(scope="module")
def net():
    """An undefended SmallCNN trained briefly on 1,000 MNIST images, and 64 test points."""
    train = load_split("mnist", train=True, root="data")
    x, y = train.images(torch.arange(1000)), train.labels(torch.arange(1000))
    torch.manual_seed(0)
    model = build_model("smallcnn", mean=(0.1307,), std=(0.3081,), width=32)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(3):
        for i in range(0, 1000, 50):
            opt.zero_grad()
            F.cross_entropy(model(x[i:i + 50]), y[i:i + 50]).backward()
            opt.step()
    test = load_split("mnist", train=False, root="data")
    return model.eval(), test.images(torch.arange(48)), test.labels(torch.arange(48))


def real(model, x, y, threat, steps=10, restarts=1, generator=None):
    return pgd(model, x, y, threat, steps=steps, restarts=restarts,
               generator=generator or torch.Generator().manual_seed(0))


# planted broken attacks --------------------------------------------------------------------------
def zero_steps(model, x, y, threat, **kw):
    return real(model, x, y, threat, **{**kw, "steps": 0})


def no_projection(model, x, y, threat, **kw):
    return AttackResult((x + 2 * threat.eps * (torch.rand_like(x) - 0.5).sign()).clamp(0, 1))


def returns_nan(model, x, y, threat, **kw):
    out = real(model, x, y, threat, **kw).points
    out[3] = float("nan")
    return AttackResult(out)


def capped_eps(model, x, y, threat, **kw):
    return real(model, x, y, threat.with_eps(min(threat.eps, 0.05)), **kw)


def shrinking_eps(model, x, y, threat, **kw):
    return real(model, x, y, threat if threat.eps <= 0.1 else threat.with_eps(threat.eps / 10), **kw)


def tiny_step(model, x, y, threat, steps=20, restarts=1, generator=None):
    return pgd(model, x, y, threat, steps=steps, restarts=restarts, step_size=threat.eps / 20, generator=generator)


# ------------------------------------------------------------------------------------------------
def test_points_check(net):
    model, x, y = net
    checks.check_points(x, real(model, x, y, STD).points, STD)
    with pytest.raises(SanityCheckError, match="outside the linf ball"):
        checks.check_points(x, no_projection(model, x, y, STD).points, STD)
    with pytest.raises(SanityCheckError, match="non-finite"):
        checks.check_points(x, returns_nan(model, x, y, STD).points, STD)
    with pytest.raises(SanityCheckError, match=r"outside \[0, 1\]"):
        checks.check_points(x, x + 0.01, ThreatModel("linf", 0.1))


def test_flags_check(net):
    model, x, y = net
    adv = real(model, x, y, ThreatModel("linf", 0.1)).points
    with torch.no_grad():
        clean = model(x).argmax(1) == y
        honest = clean & (model(adv).argmax(1) == y)
    checks.check_flags_agree(model, adv, y, honest, clean)
    with pytest.raises(SanityCheckError, match="claimed robust"):
        checks.check_flags_agree(model, adv, y, torch.ones_like(honest), clean)  # claims robustness falsely
    # flags from a train-mode forward of a model with dropout disagree with the eval-mode forward
    drop = torch.nn.Sequential(model, torch.nn.Dropout(0.9)).train()
    torch.manual_seed(0)
    with torch.no_grad():
        train_flags = drop(adv).argmax(1) == y
    with pytest.raises(SanityCheckError, match="disagree"):
        checks.check_flags_agree(drop, adv, y, train_flags)
    assert drop.training


def _curve(attack, model, x, y, grid):
    return pd.DataFrame([{"norm": "linf", "eps": e, "attack": "a",
                          "robust_acc": checks.robust_accuracy(model, x, y,
                                                               attack(model, x, y, ThreatModel("linf", e)).points)}
                         for e in grid])


def test_monotone_check(net):
    model, x, y = net
    grid = [0.0, 0.1, 0.3]
    checks.check_monotone_in_eps(robustness_curve(model, x, y, "linf", grid, steps=5, restarts=1))
    with pytest.raises(SanityCheckError, match="rises"):
        checks.check_monotone_in_eps(_curve(shrinking_eps, model, x, y, grid))


def test_large_eps_check(net):
    model, x, y = net
    out = checks.check_large_eps(real, model, x, y, ThreatModel("linf", 1.0), num_classes=10)
    assert out["robust_acc"] <= 0.15
    with pytest.raises(SanityCheckError, match="chance"):
        checks.check_large_eps(capped_eps, model, x, y, ThreatModel("linf", 1.0), num_classes=10)


def test_budget_check(net):
    model, x, y = net
    checks.check_budget_converged(real, model, x, y, STD, steps=10, restarts=1)
    with pytest.raises(SanityCheckError, match="not converged"):
        checks.check_budget_converged(tiny_step, model, x[:32], y[:32], STD, steps=5, restarts=1)
    # Non-convergence with a reported worst case: a flag when every example the doubled budget breaks
    # is already broken in the report, a failure when the report kept one of them.
    out = checks.check_budget_converged(tiny_step, model, x[:32], y[:32], STD, steps=5, restarts=1,
                                        reported=torch.zeros(16, dtype=torch.bool))
    assert out["unconverged"] and "not converged" in out["unconverged"]
    with pytest.raises(SanityCheckError, match="overstated"):
        checks.check_budget_converged(tiny_step, model, x[:32], y[:32], STD, steps=5, restarts=1,
                                      reported=torch.ones(16, dtype=torch.bool))
    assert checks.check_budget_converged(real, model, x, y, STD, steps=10, restarts=1,
                                         reported=torch.ones(8, dtype=torch.bool))["unconverged"] is None


def test_pgd_vs_fgsm_check(net):
    model, x, y = net
    checks.check_pgd_below_fgsm(real, fgsm, model, x, y, ThreatModel("linf", 0.1))
    with pytest.raises(SanityCheckError, match="exceeds FGSM"):
        checks.check_pgd_below_fgsm(zero_steps, fgsm, model, x, y, ThreatModel("linf", 0.1))


def test_undefended_check(net):
    model, x, y = net
    checks.check_undefended(real, model, x, y, STD)
    with pytest.raises(SanityCheckError, match="too weak"):
        checks.check_undefended(zero_steps, model, x, y, STD)
    with pytest.raises(SanityCheckError, match="outside"):  # points are validated first
        checks.check_undefended(no_projection, model, x, y, STD)


# --- robustness tables ----------------------------------------------------------------------------
def test_evaluate_attacks_worst_case_table(net, tmp_path):
    model, x, y = net
    attacks = {"fgsm": partial(fgsm, threat=ThreatModel("linf", 0.1)),
               "pgd": partial(pgd, threat=ThreatModel("linf", 0.1), steps=10),
               "recoloradv": recoloradv}
    pts: dict = {}
    table = evaluate_attacks(model, x, y, attacks, index=range(100, 148),
                             threats={"fgsm": ThreatModel("linf", 0.1), "pgd": ThreatModel("linf", 0.1)}, points=pts)
    assert list(table.columns) == ["index", "clean_correct", "robust_fgsm", "robust_pgd", "robust_all"]
    assert "3-channel" in table.attrs["not_applicable"]["recoloradv"]
    with torch.no_grad():
        clean = (model(x).argmax(1) == y).numpy()
        ok = {k: (model(v).argmax(1) == y).numpy() for k, v in pts.items()}
    assert (table["clean_correct"] == clean).all()
    assert (table["robust_all"] == (clean & ok["fgsm"] & ok["pgd"])).all()
    assert table["robust_pgd"].mean() < table["clean_correct"].mean()
    save_results(table, tmp_path / "r.csv")
    pd.testing.assert_frame_equal(load_results(tmp_path / "r.csv"), table, check_like=True)
    with pytest.raises(SanityCheckError):
        evaluate_attacks(model, x, y, {"broken": partial(no_projection, threat=ThreatModel("linf", 0.1))},
                         threats={"broken": ThreatModel("linf", 0.1)})
    with pytest.raises(NotApplicable):
        recoloradv(model, x, y)


def _global_rng_attack(model, x, y, eps):
    """Uses the global RNG (as LPA does without a generator) and reports through ``info``."""
    return AttackResult((x + eps * torch.randn(x.shape).sign()).clamp(0, 1), {"calls": 1, "flow": x})


def _raises_check(model, x, y):
    from robustlib.attacks.common import AttackCheckError

    raise AttackCheckError("zero_gradients", "planted")


def test_evaluate_attacks_in_worker_processes_matches_one_process(net):
    model, x, y = net
    threat = ThreatModel("linf", 0.1)

    def attacks():
        return {"pgd": partial(pgd, threat=threat, steps=5, restarts=2, generator=torch.Generator().manual_seed(3)),
                "noise": partial(_global_rng_attack, eps=0.3), "fgsm": partial(fgsm, threat=threat),
                "recoloradv": recoloradv}

    pts1: dict = {}
    pts2: dict = {}
    t1 = evaluate_attacks(model, x, y, attacks(), points=pts1, seed=7)
    before = torch.random.get_rng_state()
    t2 = evaluate_attacks(model, x, y, attacks(), points=pts2, seed=7, processes=2)
    assert torch.equal(before, torch.random.get_rng_state())  # the caller's RNG is untouched
    pd.testing.assert_frame_equal(t1, t2)
    assert t1.attrs["not_applicable"] == t2.attrs["not_applicable"]
    assert set(t2.attrs["seconds"]) == {"pgd", "noise", "fgsm"}
    for k in pts1:
        assert torch.equal(pts1[k], pts2[k]), k
    # the scalars of the worker's AttackResult.info reach the caller (tensors stay with the points)
    assert t1.attrs["info"]["noise"] == t2.attrs["info"]["noise"] == {"calls": 1}
    # an evaluation check raised in a worker reaches the caller as itself
    from robustlib.attacks.common import AttackCheckError

    with pytest.raises(AttackCheckError) as err:
        evaluate_attacks(model, x, y, {"fgsm": partial(fgsm, threat=threat), "bad": _raises_check}, processes=2)
    assert err.value.flag == "zero_gradients"
    with pytest.raises(ValueError, match="processes"):
        evaluate_attacks(model, x, y, {"fgsm": partial(fgsm, threat=threat)}, processes=0)


def test_robustness_curve_is_tidy(net):
    model, x, y = net
    curve = robustness_curve(model, x, y, "l2", [0.0, 1.0, 2.0], steps=5, restarts=1)
    assert list(curve.columns) == ["norm", "eps", "attack", "robust_acc"]
    assert set(curve["attack"]) == {"pgd", "fgsm", "pgd_nested"} and (curve["norm"] == "l2").all()
    pgd_rows = curve[curve.attack == "pgd"].sort_values("eps")["robust_acc"].to_numpy()
    nested = curve[curve.attack == "pgd_nested"].sort_values("eps")["robust_acc"].to_numpy()
    assert pgd_rows[0] > pgd_rows[-1]
    # the nested curve is PGD's per-example worst case over the smaller balls: never above PGD, non-increasing
    assert (nested <= pgd_rows + 1e-6).all() and (np.diff(nested) <= 0).all() and abs(nested[0] - pgd_rows[0]) < 1e-6


def test_nested_curve_keeps_points_broken_at_a_smaller_eps(net):
    """An attack that only works at small eps (a masked gradient at large eps): the plain PGD curve rises, the
    nested one does not, and the attack stage's checks record the rise as a flag instead of failing."""
    model, x, y = net
    grid = [0.0, 0.1, 0.3]
    weak = robustness_curve(model, x, y, "linf", grid, steps=5, restarts=1)
    weak.loc[(weak.attack == "pgd") & (weak.eps == 0.3), "robust_acc"] = 1.0  # plant a rise
    with pytest.raises(checks.SanityCheckError, match="rises"):
        checks.check_monotone_in_eps(weak[weak.attack == "pgd"])
    checks.check_monotone_in_eps(weak[weak.attack == "pgd_nested"])
    with pytest.raises(ValueError, match="eps"):
        robustness_curve(model, x, y, "linf", [0.1, -1.0])


def test_masking_signs_are_recorded_not_fatal(net, root):
    """PGD weaker than FGSM (on the curve) and PGD rising with eps are recorded as flags by the attack
    stage's checks; the reported worst case already takes every attack per example."""
    model, x, y = net
    lin = ThreatModel("linf", 0.1)
    table = evaluate_attacks(model, x, y, {FGSM_LINF: partial(fgsm, threat=lin),
                                           PGD_LINF: partial(pgd, threat=lin, steps=5)},
                             groups={FGSM_LINF: LINF, PGD_LINF: LINF})
    curve = pd.DataFrame([("linf", 0.05, "pgd", 0.6), ("linf", 0.05, "fgsm", 0.5), ("linf", 0.1, "pgd", 0.7),
                          ("linf", 0.1, "fgsm", 0.8)], columns=["norm", "eps", "attack", "robust_acc"])
    ap = load_params(root / "profiles" / "smoke.yaml")["attack"]
    suite = attack_suite({**ap, "pgd_steps": 5, "pgd_restarts": 1, "linf_eps": 0.1,
                          "sanity": {**ap["sanity"], "large_eps": {"linf": 1.0, "l2": 30.0}, "budget_tol": 1.0}}, 0)
    out = checks.evaluation_sanity_checks(model, x, y, curve, table, "r", suite, 10, index=range(48))
    assert out["pgd_weaker_than_fgsm"] == ["linf eps=0.05: PGD 0.6000 > FGSM 0.5000 (curve)"]
    assert "rises" in out["pgd_nonmonotone"] and out["budget_linf"]["unconverged"] is None
    assert out["pgd_vs_fgsm_points"] == {PGD_LINF: table[robust(PGD_LINF)].mean(),
                                         FGSM_LINF: table[robust(FGSM_LINF)].mean()}
    # fewer sanity examples than attacked ones (cifar10-cpu: 200 of 1,000): the common prefix is compared
    short = checks.evaluation_sanity_checks(model, x[:20], y[:20], curve, table, "r", suite, 10, index=range(20))
    alone = checks.check_budget_converged(pgd, model, x[:20], y[:20], lin, 5, 1, tol=1.0, seed=0)
    assert short["budget_linf"]["base"] == alone["base"]  # the budget check ran on the 20 sanity examples
    with pytest.raises(ValueError, match="prefixes of the same test order"):
        checks.evaluation_sanity_checks(model, x[:20], y[:20], curve, table, "r", suite, 10, index=range(1, 21))
