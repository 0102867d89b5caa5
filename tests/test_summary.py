"""The compact per-run summaries the report stage writes for `dvc metrics show`: few keys, every value the
detailed metrics file's, the derived flags as the report's tables derive them; checked on every committed
profile's metrics."""

from __future__ import annotations

import json
import math

import pytest

from robustlib.pipeline import paths
from robustlib.reporting import summary as S
from robustlib.reporting.tables import attack_table, training_table

PROFILES = ("default", "mnist-survey", "cifar10-cpu")


def _metrics(root, profile: str, kind: str) -> list[dict]:
    folder = root / "reports" / profile / "metrics" / kind
    files = sorted(folder.glob("*.json"))
    assert files, folder
    return [json.loads(f.read_text()) for f in files]


def _same(a, b) -> bool:
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("kind", S.KINDS)
def test_summaries_are_few_keys_copied_from_the_detailed_files(root, profile, kind):
    dataset = _metrics(root, profile, "train")[0]["dataset"]
    for m in _metrics(root, profile, kind):
        s = S.summary(kind, m, dataset)
        assert 0 < len(s) <= S.MAX_KEYS, (m["run"], len(s))
        where = S.fields(kind, m, dataset)
        assert set(s) == set(where) | set(S.flags(kind, m))
        for key, path in where.items():
            assert _same(s[key], S.lookup(m, path)), (m["run"], key)
        assert all(isinstance(v, (bool, int, float)) for v in s.values()), m["run"]  # what dvc shows as numbers


def test_attack_summary_holds_every_accuracy_and_autoattacks_checks(root):
    m = _metrics(root, "cifar10-cpu", "attack")[0]
    s = S.summary("attack", m, "cifar10")
    assert {k for k in m if k.endswith("_acc")} <= set(s)
    assert {"n", "minutes", "aa_linf_unresolved", "aa_l2_square_stronger", "aa_l2_escape_hits"} <= set(s)


def test_verify_summary_writes_eps_as_the_paper_does(root):
    s = S.summary("verify", next(m for m in _metrics(root, "cifar10-cpu", "verify") if m["run"] == "rs_loss"),
                  "cifar10")
    assert {"verified@8/255", "pgd@8/255", "aa@8/255", "unknown@8/255", "median_seconds@8/255",
            "verified@2/255"} <= set(s)
    s = S.summary("verify", _metrics(root, "default", "verify")[0], "mnist")
    assert any(k.endswith("@0.1") for k in s)


@pytest.mark.parametrize("profile", PROFILES)
def test_derived_flags_match_the_report_tables(root, profile):
    train, attack = _metrics(root, profile, "train"), _metrics(root, profile, "attack")
    t_train = training_table(train).set_index("run")
    for m in train:
        f = S.flags("train", m)
        assert f["at_chance"] == bool(t_train.loc[m["run"], "at_chance"])
        assert f["diverged"] == (t_train.loc[m["run"], "diverged_at"] != "-")
    t1 = attack_table(train, attack).set_index("run")
    for m in attack:
        f = S.flags("attack", m)
        for key, column in (("pgd_nonmonotone", "PGD_nonmonotone"), ("pgd_unconverged", "PGD_unconverged"),
                            ("pgd_below_fgsm", "PGD_below_FGSM")):
            assert f[key] == (t1.loc[m["run"], column] == "yes"), (m["run"], key)


def test_a_diverged_run_says_when():
    m = {"run": "r", "dataset": "mnist", "model": "smallcnn", "objective": ["ce"], "epochs": 5, "n_train": 10,
         "n_test": 10, "train_minutes": 1.0, "clean_acc": 0.5, "val_acc": 0.5, "diverged": {"epoch": 3}}
    assert S.flags("train", m) == {"at_chance": False, "diverged": True, "diverged_epoch": 3}
    assert S.flags("train", {**m, "clean_acc": 0.11, "diverged": None}) == {"at_chance": True, "diverged": False}


def test_too_many_keys_are_refused():
    m = {"run": "r", "n": 1, "minutes": 1.0, **{f"attack{i}_acc": 0.5 for i in range(S.MAX_KEYS)}}
    with pytest.raises(ValueError, match="at most 40"):
        S.summary("attack", m)


def test_summary_paths(tmp_path):
    assert S.summary_path(tmp_path, "attack", "r") == tmp_path / "summary" / "attack" / "r.json"
    assert S.summary_dir(tmp_path, "train").parent == S.summary_dir(tmp_path, "verify").parent
    metrics = paths.train_metrics_path(tmp_path, "r").parent.parent  # the report depends on metrics/: its own
    assert metrics not in S.summary_dir(tmp_path, "train").parents  # outputs must lie elsewhere
    with pytest.raises(ValueError):
        S.summary_dir(tmp_path, "sweep")
