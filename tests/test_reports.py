"""Report tables: a collapsed network is flagged, on either side of the chance threshold."""

from robustlib.reports import CHANCE_MARGIN, training_table


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
    from robustlib.stages.report import _training_notes

    diverged = dict(_metrics("hsv", "cifar10", 0.1), epochs=100, diverged={"epoch": 39, "step": 314})
    t = training_table([diverged, _metrics("standard", "cifar10", 0.8), dict(_metrics("old", "cifar10", 0.8),
                                                                             diverged=None)])
    assert dict(zip(t["run"], t["diverged_at"], strict=True)) == {"hsv": 39, "old": "-", "standard": "-"}
    note = _training_notes(t)
    assert "At chance level" in note and "hsv at epoch 39 of 100 (model: epoch 38)" in note
    assert _training_notes(t[t["run"] != "hsv"]) == ""


def test_objectives_are_described_with_every_weight_and_setting():
    from robustlib.reports import describe_objective

    rs = {"pgd_at": {"weight": 1.0, "steps": 8}, "l1": 2.0e-5, "rs_loss": {"weight": 1.0e-4, "reduction": "sum"}}
    assert describe_objective(rs) == "pgd_at 1 (steps 8) + l1 2e-05 + rs_loss 0.0001 (reduction sum)"
    hs = {"ce": 1.0, "hamming": {"weight": 9000.0, "alpha": 8.0}, "stability": {"weight": 0.4}}
    assert describe_objective(hs) == "ce 1 + hamming 9000 (alpha 8) + stability 0.4"
    assert describe_objective({"fgsm": 1.0, "margin": {"margin": 1.0}}) == "fgsm 1 + margin 1 (margin 1)"
