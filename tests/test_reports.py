"""Report tables: a collapsed network is flagged, on either side of the chance threshold."""

from robustlib.reporting.tables import CHANCE_MARGIN, training_table


def _metrics(run, dataset, clean):
    return {"run": run, "model": "smallcnn", "objective": ["ce"], "epochs": 1, "n_train": 10, "clean_acc": clean,
            "n_test": 10, "train_minutes": 1.0, "dataset": dataset}


def test_runs_at_chance_level_are_flagged():
    t = training_table([_metrics("collapsed", "cifar10", 0.1), _metrics("edge", "cifar10", 0.1 + CHANCE_MARGIN),
                        _metrics("learning", "cifar10", 0.1 + CHANCE_MARGIN + 0.01), _metrics("mnist", "mnist", 0.98)])
    flags = dict(zip(t["run"], t["at_chance"], strict=True))
    assert flags == {"collapsed": True, "edge": True, "learning": False, "mnist": False}
    assert list(t["clean_acc_%"]) == [10.0, 12.0, 13.0, 98.0]


def test_diverged_runs_are_flagged_in_the_table_and_the_report_note():
    from robustlib.reporting.page import training_notes

    diverged = dict(_metrics("hsv", "cifar10", 0.1), epochs=100, diverged={"epoch": 39, "step": 314})
    t = training_table([diverged, _metrics("standard", "cifar10", 0.8), dict(_metrics("old", "cifar10", 0.8),
                                                                             diverged=None)])
    assert dict(zip(t["run"], t["diverged_at"], strict=True)) == {"hsv": 39, "old": "-", "standard": "-"}
    note = training_notes(t)
    assert "At chance level" in note and "hsv at epoch 39 of 100 (model: epoch 38)" in note
    assert training_notes(t[t["run"] != "hsv"]) == ""


def test_objectives_are_described_with_every_weight_and_setting():
    from robustlib.reporting.tables import describe_objective

    rs = {"pgd_at": {"weight": 1.0, "steps": 8}, "l1": 2.0e-5, "rs_loss": {"weight": 1.0e-4, "reduction": "sum"}}
    assert describe_objective(rs) == "pgd_at 1 (steps 8) + l1 2e-05 + rs_loss 0.0001 (reduction sum)"
    hs = {"ce": 1.0, "hamming": {"weight": 9000.0, "alpha": 8.0}, "stability": {"weight": 0.4}}
    assert describe_objective(hs) == "ce 1 + hamming 9000 (alpha 8) + stability 0.4"
    assert describe_objective({"fgsm": 1.0, "margin": {"margin": 1.0}}) == "fgsm 1 + margin 1 (margin 1)"


def test_per_example_outcomes_are_the_columns_the_report_averages(tmp_path):
    """Each order metric maps to the per-example column whose mean is the report's number; verified to
    the verify stage's verdicts at the asked eps; anything else (minutes) or a missing run to None."""
    import pandas as pd

    from robustlib.evaluation import schema
    from robustlib.pipeline import paths
    from robustlib.reporting.tables import per_example_outcomes

    attack = pd.DataFrame({"index": [5, 2, 9], "clean_correct": [True, True, False],
                           "robust_pgd_linf": [True, False, False], "worst_linf": [False, False, False],
                           "robust_aa_l2": [True, True, False], "worst_stadv": [False, True, False]})
    paths.attack_results_path(tmp_path, "r").parent.mkdir(parents=True)
    schema.save_results(attack, paths.attack_results_path(tmp_path, "r"))
    verify = pd.DataFrame({"index": [5, 2, 5, 2], "eps": [0.1, 0.1, 0.3, 0.3],
                           "verdict": ["verified", "timeout", "falsified", "verified"]})
    paths.verify_results_path(tmp_path, "r").parent.mkdir(parents=True)
    verify.to_csv(paths.verify_results_path(tmp_path, "r"), index=False)

    def get(metric, eps=0.1):
        s = per_example_outcomes(tmp_path, "r", metric, eps)
        return None if s is None else dict(zip(s.index, s, strict=True))

    assert get("pgd_linf_%") == {5: True, 2: False, 9: False}
    assert get("worst_linf_%") == get("linf_worst") == {5: False, 2: False, 9: False}
    assert get("l2_AA") == {5: True, 2: True, 9: False} and get("clean_%") == {5: True, 2: True, 9: False}
    assert get("spatial") == {5: False, 2: True, 9: False}
    assert get("verified") == {5: True, 2: False} and get("verified", 0.3) == {5: False, 2: True}
    assert get("verified", 8 / 255) is None and get("train_minutes") is None and get("NPTM") is None
    assert get("verified", 0.1 + 4e-8) == get("verified")  # the stage writes eps to 7 decimals (8/255: 0.0313725)
    assert get("verified", 0.1 + 2e-6) is None
    assert per_example_outcomes(tmp_path, "missing", "pgd_linf_%", 0.1) is None
    for metric in ("pgd_linf_%", "l2_AA", "spatial"):  # the mean is the report's number
        assert per_example_outcomes(tmp_path, "r", metric, 0.1).mean() == attack[
            {"pgd_linf_%": "robust_pgd_linf", "l2_AA": "robust_aa_l2", "spatial": "worst_stadv"}[metric]].mean()


def test_attack_table_flags_unresolved_autoattack_survivors():
    """Table 1's AA_unresolved and AA_escape_hits: per threat model, the counts the attack stage
    recorded ("-" when none)."""
    from robustlib.reporting.tables import attack_table

    base = {"clean_acc": 0.5, "aa_linf_acc": 0.3, "worst_linf_acc": 0.3, "aa_l2_acc": 0.2}
    attack = [{"run": "a", **base, "autoattack": {"linf": {"unresolved": 0, "blind_escape_hits": 3},
                                                  "l2": {"unresolved": 2, "blind_escape_hits": 5}}},
              {"run": "b", **base, "autoattack": {"linf": {"square_stronger": True}}}]
    t = attack_table([{"run": "a", "train_minutes": 1.0}, {"run": "b", "train_minutes": 2.0}], attack)
    assert t.set_index("run")["AA_unresolved"].to_dict() == {"a": "l2:2", "b": "-"}
    assert t.set_index("run")["AA_escape_hits"].to_dict() == {"a": "linf:3,l2:5", "b": "-"}
    assert t.set_index("run")["AA_square_flag"].to_dict() == {"a": "-", "b": "linf"}


def test_verification_table_keeps_eps_exact_for_the_papers_8_255():
    """Rounding eps to 3 decimals (0.031) once hid every cifar10-cpu Table 2 number from the comparison
    with the paper, which selects the rows at 8/255 within 1e-6."""
    from robustlib.reporting.paper import PAPER_EPS
    from robustlib.reporting.tables import verification_table

    e = {"verified": 1, "n": 10, "pgd_acc": 0.3, "verified_fraction": 0.2, "ibp_certified_acc": 0.1, "unknown": 0,
         "timeouts": 0, "median_seconds": 0.1234, "p90_seconds": 1.0, "unstable_median": 0}
    t = verification_table([{"run": "a", "clean_acc": 0.5, "eps": {"0.0313725": e}}], {})
    assert (t["eps"] - PAPER_EPS).abs().lt(1e-6).tolist() == [True]
    assert t.loc[0, "median_s"] == 0.123
