"""The named attack suite (robustlib.evaluation.suite): built from the params, it names exactly the attacks
the attack stage evaluated before it existed (the committed results' columns, written by the old code),
each with the params' threat and budget, and calls each attack as the stage's own partials did."""

import json
from functools import partial

import pandas as pd
import pytest
import torch

from robustlib.attacks.autoattack import autoattack
from robustlib.attacks.gradient import fgsm, pgd, transfer
from robustlib.evaluation import schema
from robustlib.evaluation import suite as S
from robustlib.models import build_model
from robustlib.pipeline.params import load
from robustlib.stages.common import ReadLog
from robustlib.threat import ThreatModel


@pytest.fixture
def smoke_attack(root):
    """The smoke profile's attack params (extending the default profile's, whose results are committed)."""
    return load(root / "profiles" / "smoke.yaml")["attack"]


def _committed(root):
    """Per run of the committed default results: the per-example table's columns and the attack metrics."""
    for csv in sorted((root / "reports" / "default" / "attack").glob("*.csv")):
        metrics = json.loads((root / "reports" / "default" / "metrics" / "attack" / f"{csv.stem}.json").read_text())
        yield csv.stem, list(pd.read_csv(csv, nrows=0).columns), metrics


def test_the_suite_names_the_attacks_the_stage_evaluated_before(root, smoke_attack):
    runs = list(_committed(root))
    assert len(runs) >= 8
    for run, columns, metrics in runs:
        source = S.transfer_source(smoke_attack, run)
        suite = S.attack_suite(smoke_attack, 0, transfer_source=build_model("smallcnn") if source else None)
        ran = [a for a in suite.names if a not in metrics["not_applicable"]]  # ReColorAdv: n/a on MNIST
        assert [schema.robust(a) for a in ran] == [c for c in columns if c.startswith("robust_") and c != schema.ALL]
        table = pd.DataFrame(columns=[schema.CLEAN, *map(schema.robust, ran)])
        schema.add_worst_cases(table, suite.groups())
        assert list(table.columns) == columns[1:-1], run  # worst_<threat> in the committed order
        assert set(metrics["sanity"]["columns"]) == set(ran)
        assert (S.TRANSFER_LINF in suite) == (run != smoke_attack["transfer_from"])


def test_each_attack_has_the_params_threat_and_budget(smoke_attack):
    ap = smoke_attack
    suite = S.attack_suite(ap, 7, transfer_source=build_model("smallcnn"))
    linf, l2 = ThreatModel("linf", ap["linf_eps"]), ThreatModel("l2", ap["l2_eps"])
    ball = {"steps": ap["pgd_steps"], "restarts": ap["pgd_restarts"], "batch_size": ap["batch_size"]}
    aa = {"version": ap["autoattack_version"], "seed": 7, "batch_size": ap["batch_size"],
          "square_escalation": ap["square_escalation"], "square_queries": ap["square_queries"]}
    expected = {S.FGSM_LINF: (fgsm, linf, {}, S.LINF), S.PGD_LINF: (pgd, linf, ball, S.LINF),
                S.AA_LINF: (autoattack, linf, aa, S.LINF), S.PGD_L2: (pgd, l2, ball, S.L2),
                S.AA_L2: (autoattack, l2, aa, S.L2), S.TRANSFER_LINF: (transfer, linf, ball, S.LINF)}
    expected.update({name: (S.PERCEPTUAL[name], None, {"eps": eps}, S.PERCEPTUAL_GROUP[name])
                     for name, eps in ap["perceptual"].items()})
    assert suite.names == list(expected)
    for a in suite:
        attack, threat, budget, group = expected[a.name]
        assert (a.attack, a.threat, dict(a.budget), a.group) == (attack, threat, budget, group), a.name
        bound = {k: v for k, v in a.bound.keywords.items() if k not in ("generator", "lpips_net")}
        assert bound == ({"threat": threat} if threat else {}) | budget, a.name  # what the call receives
    assert suite.threat("linf") == linf and suite.threat("l2") == l2
    assert suite.perceptual_budgets() == {k: float(v) for k, v in ap["perceptual"].items()}
    assert (suite.n_test, suite.batch_size, suite.processes, suite.seed) == (
        ap["n_test"], ap["batch_size"], ap["processes"], 7)
    assert suite.curve == S.CurveSettings(ap["curve_n"], {"linf": ap["curve_linf_eps"], "l2": ap["curve_l2_eps"]},
                                          ap["pgd_steps"], ap["pgd_restarts"], 7, ap["batch_size"])
    sp = ap["sanity"]
    assert suite.sanity == S.SanitySettings(sp["n"], sp["large_eps"], sp["budget_tol"], sp["undefended_run"],
                                            sp["undefended_max_acc"], sp["perceptual_max_acc"])
    assert S.needs_lpips(ap) and S.transfer_source(ap, "standard") is None
    assert S.transfer_source(ap, "pgd_at") == ap["transfer_from"] == "standard"
    with pytest.raises(ValueError, match="unknown attack"):
        S.attack_suite({**ap, "perceptual": {"nope": 0.1}}, 0)


def test_each_pgd_draws_from_its_own_generator_seeded_with_the_base_seed(smoke_attack):
    """The stage's PGD attacks (and the transfer attack) each got a fresh generator seeded with base.seed:
    the suite's give the same points as that partial, whatever ran before."""
    torch.manual_seed(0)
    model = build_model("smallcnn", width=8).eval()
    x, y = torch.rand(6, 1, 28, 28), torch.randint(0, 10, (6,))
    ap = {**smoke_attack, "linf_eps": 0.1, "pgd_steps": 3, "pgd_restarts": 2, "batch_size": 4}
    suite = S.attack_suite(ap, 5, transfer_source=model)
    gens = [suite[n].bound.keywords["generator"] for n in (S.PGD_LINF, S.PGD_L2, S.TRANSFER_LINF)]
    assert len({id(g) for g in gens}) == 3
    suite[S.PGD_L2](model, x, y)  # another attack first: no effect on pgd_linf's draws
    old = partial(pgd, threat=ThreatModel("linf", 0.1), steps=3, restarts=2, batch_size=4,
                  generator=torch.Generator().manual_seed(5))
    assert torch.equal(suite[S.PGD_LINF](model, x, y).points, old(model, x, y).points)


def test_the_verify_stage_autoattack_reads_only_its_settings(tmp_path, smoke_attack):
    """The verify stage declares attack.{batch_size, autoattack_version, square_queries, square_escalation}:
    its AutoAttack (``autoattack_in``) reads those and nothing else of the attack params."""
    log = tmp_path / "reads.jsonl"
    params = ReadLog({"attack": dict(smoke_attack)}, "verify@r", log)
    aa = S.autoattack_in(params["attack"], 3, ThreatModel("linf", 0.05))
    assert (aa.name, aa.group, aa.threat) == (S.AA_LINF, S.LINF, ThreatModel("linf", 0.05))
    read = {json.loads(line)["path"] for line in log.read_text().splitlines()}
    assert read == {"attack.batch_size", "attack.autoattack_version", "attack.square_queries",
                    "attack.square_escalation"}


def test_curve_attacks_are_named_as_the_curve_table_names_them():
    threat = ThreatModel("l2", 1.0)
    assert list(S.curve_attacks(threat, 3, 1)) == [S.CURVE_PGD, S.CURVE_FGSM]
    attacks = S.curve_attacks(threat, 3, 1, with_fgsm=False, autoattack_version="standard")
    assert list(attacks) == [S.CURVE_PGD, S.CURVE_AUTOATTACK]
    assert all(a.threat == threat for a in attacks.values())
