"""The one results schema (robustlib.evaluation.schema): every table kind the pipeline writes reads back as
it was written, under the schema's column names."""

import pandas as pd

from robustlib.evaluation import schema
from robustlib.evaluation.suite import (
    AA_L2,
    AA_LINF,
    CURVE_AUTOATTACK,
    CURVE_FGSM,
    CURVE_PGD,
    FGSM_LINF,
    LINF,
    PGD_LINF,
    STADV,
)
from robustlib.reporting.tables import attack_table, training_table, write_table


def test_per_example_attack_results_round_trip(tmp_path):
    table = pd.DataFrame({schema.INDEX: [7, 3, 11], schema.CLEAN: [True, True, False],
                          schema.robust(FGSM_LINF): [True, False, False],
                          schema.robust(PGD_LINF): [False, False, False]})
    schema.add_worst_cases(table, {FGSM_LINF: LINF, PGD_LINF: LINF})
    table[schema.ALL] = table[schema.worst(LINF)]
    schema.save_results(table, tmp_path / "attack" / "r.csv")
    back = schema.load_results(tmp_path / "attack" / "r.csv")
    pd.testing.assert_frame_equal(back, table)
    assert schema.attacks_in(back) == [FGSM_LINF, PGD_LINF]
    assert schema.accuracies(back) == {schema.CLEAN_ACC: 2 / 3, schema.acc_key(FGSM_LINF): 1 / 3,
                                       schema.acc_key(PGD_LINF): 0.0, schema.worst_acc_key(LINF): 0.0}


def test_robustness_curve_round_trip(tmp_path):
    curve = schema.curve_table([schema.curve_row("linf", 0.0, CURVE_PGD, 1.0),
                                schema.curve_row("linf", 0.0313725, CURVE_FGSM, 0.4375),
                                schema.curve_row("l2", 2.0, CURVE_AUTOATTACK, 0.125)])
    assert list(curve.columns) == schema.CURVE_COLUMNS == ["norm", "eps", "attack", "robust_acc"]
    schema.save_curve(curve, tmp_path / "curve.csv")
    pd.testing.assert_frame_equal(schema.load_curve(tmp_path / "curve.csv"), curve)
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically: no temporary file left behind


def test_verification_per_example_round_trip(tmp_path):
    rows = [dict(zip(schema.VERIFY_COLUMNS, (5, 0.1, schema.VERIFIED, "milp", "", 0.25, 0.5, 1e-5, 3, 97, True,
                                             True, "optimal"), strict=True)),
            dict(zip(schema.VERIFY_COLUMNS, (2, 0.1, "unknown", "milp", "timeout", 5.0, float("nan"), float("nan"),
                                             10, 90, True, False, ""), strict=True))]
    table = pd.DataFrame(rows, columns=schema.VERIFY_COLUMNS)
    schema.save_verify_results(table, tmp_path / "v.csv")
    back = schema.load_verify_results(tmp_path / "v.csv")
    pd.testing.assert_frame_equal(back.fillna({schema.VERIFY_REASON: "", schema.VERIFY_DETAIL: ""}), table)
    assert schema.verified_at(back, 0.1).to_dict() == {5: True, 2: False}
    assert schema.verified_at(back, 0.3).empty


def test_report_tables_round_trip_under_the_schemas_names(tmp_path):
    train = [{"run": r, "model": "smallcnn", "objective": ["ce"], "epochs": 1, "n_train": 10, "clean_acc": acc,
              "n_test": 10, "train_minutes": 1.5, "dataset": "mnist"} for r, acc in (("b", 0.9), ("a", 0.05))]
    summary = training_table(train)
    assert list(summary.columns) == [schema.RUN, schema.MODEL, schema.OBJECTIVE, schema.EPOCHS, schema.N_TRAIN,
                                     schema.CLEAN_ACC_PCT, schema.N_TEST, schema.TRAIN_MINUTES, schema.AT_CHANCE,
                                     schema.DIVERGED_AT]
    csv, md = write_table(summary, tmp_path / "train_summary")
    pd.testing.assert_frame_equal(pd.read_csv(csv), summary)
    assert md.read_text().startswith("| run ")
    attack = [{"run": "a", schema.CLEAN_ACC: 0.5, schema.acc_key(AA_LINF): 0.25, schema.worst_acc_key(LINF): 0.25,
               schema.acc_key(AA_L2): 0.5, schema.worst_acc_key(STADV): 0.125}]
    t1 = attack_table(train, attack)
    assert list(t1.columns[:9]) == [schema.RUN, schema.TABLE_CLEAN, schema.LINF_AA, schema.LINF_WORST, schema.L2_AA,
                                    *(col for col, _, _ in schema.PERCEPTUAL_COLUMNS)]
    csv, _ = write_table(t1, tmp_path / "table1")
    back = pd.read_csv(csv, keep_default_na=False)
    assert back.loc[0, schema.LINF_AA] == 25.0 and back.loc[0, schema.SPATIAL] == 12.5
    assert back.loc[0, schema.RECOLOR] == "-" and back.loc[0, schema.AA_SQUARE_FLAG] == "-"


def test_percent_columns():
    assert schema.percent("clean") == schema.CLEAN_PCT == "clean_%"
    assert schema.PGD_LINF_PCT == "pgd_linf_%" and schema.WORST_LINF_PCT == "worst_linf_%"
    assert schema.quantity(schema.AA_LINF_PCT) == AA_LINF
    outcomes = schema.REPORT_OUTCOMES
    assert outcomes[schema.LINF_AA] == outcomes[schema.AA_LINF_PCT] == schema.robust(AA_LINF)
