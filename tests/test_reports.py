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
