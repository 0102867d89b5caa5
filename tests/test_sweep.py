"""Weight sweeps (issue 24): the expansion of a profile's ``sweeps`` into cells, validation, the selection rule and
its checks, the figures and report section on synthetic data, dvc.yaml against the library's paths, and the four
sweep stages end to end in a small workspace with every params read checked against what dvc.yaml declares.
(The sweep notebooks are checked thin and clean with the others in tests/test_pipeline_layout.py.)"""


import json
import math
import re
import shutil
from dataclasses import asdict
from functools import partial
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from robustlib.pipeline import params as P
from robustlib.pipeline import sweeps as S


def _seeded_check(params, cell):
    return S.check_seeded_runs(params, "verify", cell, partial(P.config_of, params))


def _load(root, profile):
    return P.load(root / "profiles" / f"{profile}.yaml")


def _with(params, sweep, **changes):
    """A copy of ``params`` with sweep ``sweep``'s spec changed and its cells re-expanded."""
    out = json.loads(json.dumps(params))
    out["sweeps"][sweep].update(changes)
    out["sweep_cells"] = S.expand(out)
    return out


def test_default_reading_is_named_alike_everywhere():
    from robustlib.regularizers.manifold import DEFAULT_READING, READINGS
    from robustlib.reporting import sweep as R

    assert S.DEFAULT_READING == DEFAULT_READING == R.DEFAULT_READING
    assert set(READINGS) == {"mean_sq", "sum_sq_over_m", "mean_of_sq", "sum_of_sq_over_m2", "mean"}


# ---------------------------------------------------------------------------------------------
# expansion and validation
# ---------------------------------------------------------------------------------------------
def test_cifar_sweep_expands_to_the_grid_with_only_the_weights_changed(root):
    params = _load(root, "cifar10-cpu")
    cells = params["sweep_cells"]
    want = {(gh, gs) for gh in (9000.0, 900.0, 90.0, 9.0) for gs in (0.4, 0.04, 0.004)}
    spec = params["sweeps"]["verify"]
    n_readings = len(spec["readings"]) if spec.get("readings_at") else 0  # reading cells once the grid is selected
    assert len(cells) == 12 + n_readings and list(cells)[0] == "verify_h9000_s0p4" and "verify_h9_s0p004" in cells
    base = P.run_config(params, "hamming_stability_verify")
    got = set()
    grid = {n: c for n, c in cells.items() if c["reading"] == S.DEFAULT_READING}
    assert len(grid) == 12 and all(n.startswith("verify_h9_s0p04_") for n in set(cells) - set(grid))
    for name, cell in grid.items():
        cfg = P.cell_config(params, name)
        h, s = cfg.objective["hamming"], cfg.objective["stability"]
        got.add((h["weight"], s["weight"]))
        assert name == S.cell_name("verify", h["weight"], s["weight"])
        assert h == {"weight": h["weight"], "alpha": 8.0} and s == {"weight": s["weight"]}  # no reading: the default
        assert cell["reading"] == "mean_sq" and cfg.stop_on_collapse == 5
        assert h["weight"] == pytest.approx(9000 * cell["gamma_h_factor"]) and \
            s["weight"] == pytest.approx(0.4 * cell["gamma_s_factor"])
        same = {k: v for k, v in asdict(cfg).items() if k not in ("objective", "stop_on_collapse")}
        assert same == {k: v for k, v in asdict(base).items() if k not in ("objective", "stop_on_collapse")}
        assert cfg.objective["ce"] == base.objective["ce"]
    assert got == want


def test_readings_at_the_best_cell_add_named_cells(root):
    params = _with(_load(root, "cifar10-cpu"), "verify", readings_at={"gamma_h": 0.01, "gamma_s": 0.1})
    P.validate(params)
    extra = list(params["sweep_cells"])[12:]
    assert extra == ["verify_h90_s0p04_sum_sq_over_m", "verify_h90_s0p04_mean_of_sq"]
    for name, reading in zip(extra, ("sum_sq_over_m", "mean_of_sq"), strict=True):
        cfg = P.cell_config(params, name)
        assert cfg.objective["hamming"] == {"weight": 90.0, "alpha": 8.0, "reading": reading}
        assert cfg.objective["stability"] == {"weight": 0.04}
        assert params["sweep_cells"][name]["reading"] == reading


def test_mnist_sweep_scales_both_weights_together_on_the_cw_cnn(root):
    params = _load(root, "mnist-survey")
    cells = params["sweep_cells"]
    assert list(cells) == ["cw_h2400_s0p8", "cw_h240_s0p08", "cw_h24_s0p008", "cw_h2p4_s0p0008"]
    for name in cells:
        cfg = P.cell_config(params, name)
        assert cfg.model == "cwcnn" and cfg.epochs == 5 and cfg.eps == pytest.approx(0.3)
        assert cfg.objective["hamming"]["weight"] / cfg.objective["stability"]["weight"] == pytest.approx(3000)
    assert params["sweeps"]["cw"]["autoattack"]["n_test"] >= 1


def test_sweeps_are_not_inherited_and_cells_touch_no_run(root, tmp_path):
    assert _load(root, "paper")["sweeps"] == {} and _load(root, "default")["sweep_cells"] == {}
    (tmp_path / "profiles").mkdir()
    for f in (root / "profiles").glob("*.yaml"):
        shutil.copy(f, tmp_path / "profiles" / f.name)
    (tmp_path / "profiles" / "child.yaml").write_text("extends: cifar10-cpu\n")
    child = P.load(tmp_path / "profiles" / "child.yaml")
    assert child["sweeps"] == {} and child["sweep_cells"] == {}
    cifar = _load(root, "cifar10-cpu")
    assert not set(cifar["sweep_cells"]) & set(P.all_runs(cifar))


@pytest.mark.parametrize("change,match", [
    ({"gamma_h_factors": []}, "gamma_h_factors must be a non-empty list"),
    ({"gamma_s": -1}, r"gamma_s must be a number > 0"),
    ({"grid": "random"}, "grid must be one of"),
    ({"grid": "diagonal"}, "as many gamma_h_factors as gamma_s_factors"),
    ({"readings_at": {"gamma_h": 0.5, "gamma_s": 1.0}}, "is not a cell of the grid"),
    ({"readings": ["mean_sq"]}, "other than the default"),
    ({"readings": ["squared"], "readings_at": {"gamma_h": 1.0, "gamma_s": 1.0}}, "unknown reading 'squared'"),
    ({"train": {"objective": {"ce": 1.0}}}, "without objective"),
    ({"train": {"epochz": 3}}, "unknown option"),
    ({"eval": {"n_val": 1000, "eps": 0.03}}, "eval must have exactly the keys"),
    ({"eval": {"n_val": 5000, "n_test": 0, "eps": 0.03, "steps": 20, "restarts": 10}}, "exceeds data.n_val"),
    ({"base_run": "standard"}, "must have a hamming and a stability term"),
    ({"base_run": "nope"}, "unknown run 'nope'"),
    ({"seeded_runs": ["nope"]}, r"seeded_runs: unknown runs \['nope'\]"),
    ({"seeds": [0, 0]}, "distinct integers"),
    ({"autoattack": {"n": 3}}, "autoattack must be null or"),
    ({"colour": "blue"}, r"unknown key\(s\) \['colour'\]"),
])
def test_bad_sweeps_fail_early_naming_the_key(root, change, match):
    params = json.loads(json.dumps(_load(root, "cifar10-cpu")))
    params["sweeps"]["verify"].update(change)
    with pytest.raises(P.ParamsError, match=match):
        params["sweep_cells"] = S.expand(params)
        P.validate(params)


def test_stale_or_clashing_cells_are_refused(root):
    params = json.loads(json.dumps(_load(root, "cifar10-cpu")))
    params["sweep_cells"].popitem()
    with pytest.raises(P.ParamsError, match="sweep_cells must be the expansion of sweeps"):
        P.validate(params)
    params = json.loads(json.dumps(_load(root, "cifar10-cpu")))
    params["runs"]["verify_h9_s0p004"] = {"objective": {"ce": 1.0}}
    params["run_names"] = P.all_runs(params)
    with pytest.raises(P.ParamsError, match=r"named like runs"):
        P.validate(params)


def test_cell_names_are_valid_params_keys():
    assert S.cell_name("verify", 9000 * 0.001, 0.4 * 0.1) == "verify_h9_s0p04"
    assert S.cell_name("verify", 9, 0.0004, "mean") == "verify_h9_s0p0004_mean"
    assert "." not in S.cell_name("x", 1e-7, 123456.5)


# ---------------------------------------------------------------------------------------------
# selection and the checks on what the researcher adds after it
# ---------------------------------------------------------------------------------------------
def _row(cell, pgd, clean, collapsed=None, trained=True, fh=1.0, fs=1.0):
    return {"cell": cell, "val_pgd_acc": pgd, "val_clean_acc": clean, "collapsed_epoch": collapsed,
            "trained": trained, "gamma_h_factor": fh, "gamma_s_factor": fs}


def test_selection_is_the_argmax_with_its_tie_rule():
    rows = [_row("a", 0.20, 0.40), _row("b", 0.25, 0.30), _row("c", 0.25, 0.35), _row("d", 0.25, 0.35)]
    assert S.best(rows)["cell"] == "c"  # best PGD; tie to the better clean; tie again to the earlier cell
    assert S.best([_row("x", 0.9, 0.9, collapsed=31), _row("y", 0.5, 0.5, trained=False), _row("z", 0.1, 0.2)])[
        "cell"] == "z"  # collapsed and untrained cells are not eligible
    assert S.best([_row("x", 0.1, 0.1, collapsed=3)]) is None and S.best([]) is None


def test_readings_must_be_tried_at_the_best_grid_cell():
    best = {"cell": "verify_h90_s0p04", "gamma_h_factor": 0.01, "gamma_s_factor": 0.1}
    assert S.check_readings_at({"readings_at": None}, best) is None
    assert S.check_readings_at({"readings_at": {"gamma_h": 0.01, "gamma_s": 0.1}}, best) is None
    msg = S.check_readings_at({"readings_at": {"gamma_h": 0.1, "gamma_s": 0.1}}, best)
    assert "not the best grid cell verify_h90_s0p04" in msg
    assert "no grid cell is eligible" in S.check_readings_at({"readings_at": {"gamma_h": 1.0, "gamma_s": 1.0}}, None)


def _seeded_profile(root, seeds=(0, 1, 2), hamming=None, stability=0.04, epochs=None):
    params = json.loads(json.dumps(_load(root, "cifar10-cpu")))
    for seed in seeds:
        run = {"seed": seed, "objective": {"ce": 1.0, "hamming": hamming or {"weight": 90.0, "alpha": 8.0},
                                           "stability": {"weight": stability}}}
        if epochs:
            run["epochs"] = epochs
        params["runs"][f"sel_s{seed}"] = run
    params["run_names"] = P.all_runs(params)
    params["sweeps"]["verify"]["seeded_runs"] = [f"sel_s{s}" for s in seeds]
    P.validate(params)
    return params


def test_seeded_runs_must_carry_the_selected_setting(root):
    ok = _seeded_profile(root)
    assert _seeded_check(ok, "verify_h90_s0p04") == []
    assert "does not carry the selected setting 'verify_h900_s0p04'" in \
        _seeded_check(ok, "verify_h900_s0p04")[0]
    bad_weight = _seeded_check(_seeded_profile(root, stability=0.4), "verify_h90_s0p04")
    assert len(bad_weight) == 3 and "objective" in bad_weight[0]
    reading = {"weight": 90.0, "alpha": 8.0, "reading": "mean_of_sq"}
    assert _seeded_check(_seeded_profile(root, hamming=reading), "verify_h90_s0p04")
    # the reading cell is selected: runs without the reading fail, runs with it pass
    with_reading = _with(_seeded_profile(root, hamming=reading), "verify",
                         readings_at={"gamma_h": 0.01, "gamma_s": 0.1})
    assert _seeded_check(with_reading, "verify_h90_s0p04_mean_of_sq") == []
    assert _seeded_check(with_reading, "verify_h90_s0p04")
    assert "have seeds [0, 1]" in _seeded_check(_seeded_profile(root, seeds=(0, 1)),
                                                      "verify_h90_s0p04")[0]
    assert "epochs" in _seeded_check(_seeded_profile(root, epochs=50), "verify_h90_s0p04")[0]
    assert "no cell was selected" in _seeded_check(ok, None)[0]


# ---------------------------------------------------------------------------------------------
# figures, table and report section on synthetic data
# ---------------------------------------------------------------------------------------------
def _synthetic_rows():
    rows = []
    for i, fh in enumerate((1.0, 0.1, 0.01, 0.001)):
        for j, fs in enumerate((1.0, 0.1, 0.01)):
            collapsed = 31 - 3 * j if fh >= 0.1 else None
            clean = 0.1 if collapsed else 0.3 + 0.05 * i + 0.02 * j
            rows.append({"cell": S.cell_name("verify", 9000 * fh, 0.4 * fs), "gamma_h": S._round(9000 * fh),
                         "gamma_s": S._round(0.4 * fs), "gamma_h_factor": fh, "gamma_s_factor": fs,
                         "reading": "mean_sq", "trained": True, "collapsed_epoch": collapsed,
                         "diverged_epoch": 38 if (fh, fs) == (1.0, 1.0) else None,
                         "epochs_completed": collapsed + 4 if collapsed else 100, "train_minutes": 9.0 + i,
                         "val_clean_acc": clean, "val_pgd_acc": 0.0 if collapsed else clean / 2 - 0.01 * i})
    for reading, acc in (("sum_sq_over_m", 0.1), ("mean_of_sq", 0.35)):
        rows.append({**rows[7], "cell": rows[7]["cell"] + "_" + reading, "reading": reading, "val_clean_acc": acc,
                     "val_pgd_acc": acc / 3, "collapsed_epoch": 12 if acc < 0.2 else None})
    return rows


def _synthetic_curves(rows):
    curves = {}
    for k, r in enumerate(rows):
        n = r["epochs_completed"]
        e = torch.arange(1, n + 1, dtype=torch.float64)
        dying = r["collapsed_epoch"] is not None
        df = {"epoch": e.int().tolist()}
        for j in range(3):
            dead = (torch.sigmoid((e - (r["collapsed_epoch"] or 1e9) + 5) / 2) * (0.9 - 0.2 * j)) if dying else \
                0.05 * (j + 1) * torch.ones_like(e)
            df[f"diag_dead_l{j}"] = dead.tolist()
            df[f"diag_unstable_l{j}"] = (0.3 * torch.exp(-e / (20 + k))).tolist()
        for t, scale in (("ce", 1.0), ("hamming", 50.0 if dying else 0.5), ("stability", 2.0)):
            df[f"diag_grad_{t}"] = (scale * (1 + 0.01 * e)).tolist()
        curves[r["cell"]] = pd.DataFrame(df)
    return curves


def test_figures_and_table_on_synthetic_sweeps(tmp_path):
    from robustlib.reporting.plots import save_figure
    from robustlib.reporting.sweep import accuracy_figure, cells_table, diagnostics_figure, references_table

    rows = _synthetic_rows()
    refs = [{"run": "rs_loss", "n": 1000, "clean_acc": 0.344, "pgd_linf_acc": 0.245, "aa_linf_acc": 0.226,
             "worst_linf_acc": 0.226}, {"run": "pgd_at", "n": 1000, "clean_acc": 0.541, "pgd_linf_acc": 0.312}]
    table = cells_table(rows)
    assert list(table.columns[:8]) == ["cell", "gamma_H", "gamma_S", "x_H", "x_S", "reading", "val_clean_%",
                                       "val_PGD_%"]
    assert table.loc[0, "collapsed_at"] == 31 and table.loc[11, "collapsed_at"] == "-"
    assert table.loc[0, "diverged_at"] == 38
    assert references_table(refs).loc[1, "AA_%"] is None or math.isnan(references_table(refs).loc[1, "AA_%"])
    acc = save_figure(accuracy_figure(rows, 9000.0, 0.4, refs, rows[10]["cell"], 8 / 255), tmp_path / "acc.png")
    diag = save_figure(diagnostics_figure(_synthetic_curves(rows), {r["cell"]: r["collapsed_epoch"] for r in rows}),
                       tmp_path / "diag.png")
    for f in (acc, diag):
        assert f.stat().st_size > 20_000 and f.read_bytes()[:4] == b"\x89PNG"
    grid_only = [r for r in rows if r["reading"] == "mean_sq"][::3]  # a diagonal-like sweep, no reading cells
    save_figure(accuracy_figure(grid_only, 9000.0, 0.4, [], None, 0.3), tmp_path / "diagonal.png")


def _curve(grads: dict[str, list[float]], dead_last: list[float]) -> pd.DataFrame:
    n = len(dead_last)
    return pd.DataFrame({"epoch": list(range(1, n + 1)), **{f"diag_grad_{t}": g for t, g in grads.items()},
                         "diag_grad_total": [1.0] * n, "diag_dead_l0": [0.0] * n, "diag_dead_l1": dead_last})


def test_collapse_routes_name_the_first_term_to_reach_cross_entropy_before_the_collapse():
    from robustlib.reporting.sweep import collapse_routes, routes_summary

    curves = {
        # stability reaches CE at epoch 3 (2.0 >= 2.0); at the collapse epoch (5) CE's gradient vanishes: not counted
        "a": _curve({"ce": [2.0, 2.0, 2.0, 1.0, 0.0], "hamming": [0.1] * 5, "stability": [0.5, 1.0, 2.0, 3.0, 0.0]},
                    [0.1, 0.2, 0.5, 0.9, 1.0]),
        # hamming first at epoch 2 (both reach by epoch 3)
        "b": _curve({"ce": [1.0, 1.0, 1.0, 0.0], "hamming": [0.5, 1.5, 2.0, 0.0], "stability": [0.1, 0.5, 3.0, 0.0]},
                    [0.0, 0.3, 0.6, 0.8]),
        # never: the largest ratio is 0.9 before the collapse, 50 at it
        "c": _curve({"ce": [1.0, 1.0, 0.02], "hamming": [0.9, 0.5, 1.0], "stability": [0.1, 0.1, 0.1]},
                    [0.0, 0.5, 1.0]),
        "ok": _curve({"ce": [1.0, 1.0], "hamming": [0.1, 0.2], "stability": [0.3, 0.4]}, [0.0, 0.05]),
        "no_diag": pd.DataFrame({"epoch": [1], "val_acc": [0.5]}),
    }
    routes = {r["cell"]: r for r in collapse_routes(curves, {"a": 5, "b": 4, "c": 3, "ok": None})}
    assert set(routes) == {"a", "b", "c", "ok"}
    assert (routes["a"]["reached"], routes["a"]["term"], routes["a"]["max_ratio"]) == (3, "stability", 3.0)
    assert routes["a"]["dead"] == {0: 0.0, 1: 1.0}
    assert (routes["b"]["reached"], routes["b"]["term"]) == (2, "hamming")
    assert (routes["c"]["reached"], routes["c"]["term"], routes["c"]["max_ratio"]) == (None, None, 0.9)
    assert (routes["ok"]["reached"], routes["ok"]["max_ratio"], routes["ok"]["dead"]) == (None, 0.4, {0: 0.0, 1: 0.05})
    text = routes_summary(list(routes.values()))
    assert "of 3 collapsed cells, in 1 the hamming term's weighted gradient reached cross-entropy's first (epoch " \
           "reached -> epoch collapsed: 2 -> 4)" in text
    assert "in 1 the stability term's weighted gradient reached cross-entropy's first (epoch reached -> epoch " \
           "collapsed: 3 -> 5)" in text
    assert "; in 1 no regularizer's gradient reached cross-entropy's (largest ratio 0.9)." in text
    assert "Of 1 surviving cells, 0 had a regularizer's gradient reach cross-entropy's; their largest ratios" in text
    assert routes_summary([routes["ok"]]).startswith("No cell collapsed. Of 1 surviving cells")
    assert "ReLU layer 1 (the last) was 80.0-100.0% dead (median 100.0%)" in text
    assert "was 100.0% dead (median 100.0%)" in routes_summary([routes["a"]])
    assert routes_summary([]) == "No cell recorded probe diagnostics."


def test_report_section_from_a_summary(tmp_path):
    from robustlib.reporting.sweep import cells_table, references_table, sweep_section, sweep_sections

    rows = _synthetic_rows()
    refs = [{"run": "rs_loss", "n": 1000, "clean_acc": 0.344, "pgd_linf_acc": 0.245, "aa_linf_acc": 0.226,
             "worst_linf_acc": 0.226}]
    summary = {"sweep": "verify", "base_run": "hamming_stability_verify", "paper_point": {"gamma_h": 9000.0,
               "gamma_s": 0.4}, "grid": "product", "eval": {"n_val": 1000, "n_test": 0, "eps": 0.0313725,
               "steps": 20, "restarts": 10}, "rule": "best validation PGD", "best_grid_cell": rows[10]["cell"],
               "selected": rows[10]["cell"], "selected_setting": {"gamma_h": 9.0, "gamma_s": 0.04, "gamma_h_factor":
               0.001, "gamma_s_factor": 0.1, "reading": "mean_sq"}, "readings_pending": [],
               "readings": {"mean_sq": "((1/m_j) sum_k H_k)^2"}, "autoattack": None,
               "cells": cells_table(rows).to_dict("records"), "references": refs,
               "reference_table": references_table(refs).to_dict("records"), "seeds": [0, 1, 2],
               "seeded_runs": [{"run": "sel_s0", "clean_acc": 0.36, "pgd_linf_acc": 0.25, "aa_linf_acc": 0.22,
                                "verified": {"0.0078431": 0.3, "0.0313725": 0.19}},
                               {"run": "sel_s1", "clean_acc": 0.38, "pgd_linf_acc": 0.27, "aa_linf_acc": 0.24,
                                "verified": {"0.0078431": 0.32, "0.0313725": 0.21}},
                               {"run": "sel_s2", "attack": "pending", "verify": "pending"}],
               "figures": {"accuracy": "figures/sweep_verify_accuracy.png",
                           "diagnostics": "figures/sweep_verify_diagnostics.png"},
               "table": "tables/sweep_verify.md"}
    text = "\n".join(sweep_section(summary, "figures", "tables"))
    assert "## Weight sweep `verify`" in text and "**Selected: `verify_h9_s0p04`**" in text
    assert "![sweep accuracy](figures/sweep_verify_accuracy.png)" in text and "VALIDATION" in text
    assert "| sel_s2 " in text and "attack, verify" in text and "rs_loss" in text
    assert "mean +/- sd (2 seeds)" in text and "37.00 +/- 1.41" in text and "20.00 +/- 1.41" in text
    assert "Collapse routes" not in text  # a summary written before the routes were recorded
    summary["collapse_routes"] = [{"cell": "x", "collapsed_at": 7, "reached": 4, "term": "stability",
                                   "max_ratio": 1.5, "dead": {0: 0.5, 2: 1.0}}]
    routed = "\n".join(sweep_section(summary, "figures", "tables"))
    assert "of 1 collapsed cells" in routed and "4 -> 7" in routed
    del summary["collapse_routes"]
    path = S.summary_path(tmp_path, "verify")
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(summary))
    assert sweep_sections(tmp_path, "figures", "tables") == sweep_section(summary, "figures", "tables")
    assert sweep_sections(tmp_path / "none", "f", "t") == []


# ---------------------------------------------------------------------------------------------
# dvc.yaml, paths and notebooks
# ---------------------------------------------------------------------------------------------
def _stages(root):
    return yaml.safe_load((root / "dvc.yaml").read_text())["stages"]


def _outs(body):
    return {next(iter(o)) if isinstance(o, dict) else o for k in ("outs", "metrics", "plots") for o in body.get(k, [])}


def test_sweep_stage_outputs_are_the_library_paths(root):
    from robustlib.pipeline import paths

    r = Path("reports/${base.profile}")
    st = _stages(root)
    assert st["sweep_train"]["foreach"] == st["sweep_eval"]["foreach"] == "${sweep_cells}"
    assert st["sweep_select"]["foreach"] == st["sweep_report"]["foreach"] == "${sweeps}"
    train = {o.replace("${key}", "C").replace("${item.sweep}", "S") for o in _outs(st["sweep_train"]["do"])}
    assert {str(paths.model_path(r, "C")), str(paths.split_path(r, "C")), str(S.cell_curve_path(r, "S", "C")),
            str(S.cell_dvclive_dir(r, "C")), str(S.cell_train_metrics_path(r, "S", "C"))} <= train
    assert str(paths.resume_path(r, "C")) not in train  # deleted once the cell completes
    ev = {o.replace("${key}", "C").replace("${item.sweep}", "S") for o in _outs(st["sweep_eval"]["do"])}
    assert str(S.cell_eval_path(r, "S", "C")) in ev
    assert str(S.selection_path(r, "S")) in {o.replace("${key}", "S") for o in _outs(st["sweep_select"]["do"])}
    rep = {o.replace("${key}", "S") for o in _outs(st["sweep_report"]["do"])}
    assert {str(S.summary_path(r, "S")), str(S.accuracy_figure_path(r, "S")), str(S.diagnostics_figure_path(r, "S")),
            str(S.table_stem(r, "S").with_suffix(".csv")), str(S.table_stem(r, "S").with_suffix(".md"))} <= rep
    # the report stage renders the summaries from its metrics dependency
    assert "reports/${base.profile}/metrics" in st["report"]["deps"]
    # the select and report stages read the cells' records from the folders they depend on
    assert {"reports/${base.profile}/sweep/${key}/train", "reports/${base.profile}/sweep/${key}/eval"} <= \
        set(st["sweep_select"]["do"]["deps"])
    assert "reports/${base.profile}/sweep/${key}" in st["sweep_report"]["do"]["deps"]


# ---------------------------------------------------------------------------------------------
# the four stages end to end, with the params they read checked against dvc.yaml
# ---------------------------------------------------------------------------------------------
TINY_SWEEP = """sweeps:
  tiny:
    base_run: hamming_stability
    gamma_h: 1.0
    gamma_s: 0.0025
    gamma_h_factors: [1.0, 0.1]
    gamma_s_factors: [1.0]
    train: {stop_on_collapse: 2}
    eval: {n_val: 100, n_test: 50, eps: 0.3, steps: 3, restarts: 1}
    references: [pgd_at]
    readings: [mean]
    seeds: [0, 1]
    autoattack: {n_test: 20}
"""


def _declared(root, params) -> dict[str, set[str]]:
    """Each sweep stage instance's declared params, resolved as DVC resolves dvc.yaml."""
    out = {}
    for family in ("sweep_train", "sweep_eval", "sweep_select", "sweep_report"):
        body = _stages(root)[family]
        items = params["sweep_cells"] if family in ("sweep_train", "sweep_eval") else params["sweeps"]
        for key, item in items.items():
            out[f"{family}@{key}"] = {re.sub(r"\$\{item\.(\w+)\}", lambda m, i=item: str(i[m.group(1)]),
                                             p.replace("${key}", key)) for p in body["do"]["params"]}
    return out


def _check_reads(log: Path, declared: dict[str, set[str]]) -> None:
    reads: dict[str, set[str]] = {}
    for line in log.read_text().splitlines():
        rec = json.loads(line)
        reads.setdefault(rec["stage"], set()).add(rec["path"])

    def under(p, d):
        return p == d or p.startswith(d + ".")

    problems = []
    for stage, paths_read in reads.items():
        undeclared = sorted(r for r in paths_read if not any(under(r, d) for d in declared[stage]))
        if undeclared:
            problems.append(f"{stage} reads undeclared {undeclared}")
    for stage, decl in declared.items():
        if stage in reads:
            unread = sorted(d for d in decl if not any(under(r, d) or under(d, r) for r in reads[stage]))
            if unread:
                problems.append(f"{stage} declares unread {unread}")
    assert not problems, problems


def test_sweep_stages_end_to_end(root, tmp_path, monkeypatch, tiny_workspace):
    from robustlib.attacks.common import AttackResult
    from robustlib.pipeline import paths
    from robustlib.pipeline.io import write_json
    from robustlib.stages import sweep as stage
    from robustlib.stages import sweep_select
    from robustlib.stages.common import PARAMS_LOG

    ws = tiny_workspace(TINY_SWEEP)
    log = tmp_path / "reads.jsonl"
    monkeypatch.setenv(PARAMS_LOG, str(log))
    params = P.load(ws / "params.yaml")
    out = ws / "reports" / "tiny"
    cells = list(params["sweep_cells"])
    assert cells == ["tiny_h1_s0p0025", "tiny_h0p1_s0p0025"]
    aa_calls = []

    def fake_autoattack(model, x, y, threat, version="standard", seed=0):  # AutoAttack itself: tests/test_attacks.py
        aa_calls.append((x.shape[0], version, threat.eps))
        return AttackResult(x.clone(), {"square_stronger": False})

    monkeypatch.setattr(sweep_select, "autoattack", fake_autoattack)
    for cell in cells:
        metrics = stage.train_cell(cell, "params.yaml", "reports/tiny", progress=False)
        assert metrics["sweep"] == "tiny" and "collapsed_epoch" in metrics and metrics["trained"]
        assert (out / "runs" / cell / "model.pt").exists() and not (out / "runs" / cell / "resume.pt").exists()
        curve = pd.read_csv(S.cell_curve_path(out, "tiny", cell))
        assert {"diag_dead_l0", "diag_unstable_l1", "diag_grad_hamming", "diag_hamming_weighted", "probe_classes",
                "diag_w1_norm"} <= set(curve.columns)
        assert (S.cell_dvclive_dir(out, cell) / "metrics.json").exists()
        ev = stage.eval_cell(cell, "params.yaml", "reports/tiny")
        assert ev["val"]["n"] == 100 and ev["test"]["n"] == 50 and 0 <= ev["val"]["pgd_acc"] <= ev["val"]["clean_acc"]
    selection = sweep_select.select("tiny", "params.yaml", "reports/tiny")
    assert [r["cell"] for r in selection["cells"]] == cells
    assert selection["readings_pending"] == ["mean"]
    assert selection["selected"] is not None  # the tiny cells learn (constant LR, small weights)
    if selection["selected"] is not None:
        assert aa_calls == [(20, "standard", 0.3)] and selection["autoattack"]["cell"] == selection["selected"]
    write_json({"n": 100, "clean_acc": 0.9, "pgd_linf_acc": 0.1, "aa_linf_acc": 0.05, "worst_linf_acc": 0.05},
               paths.attack_metrics_path(out, "pgd_at"))  # the reference run's attack stage (synthetic)
    (out / "metrics" / "verify").mkdir(parents=True)
    result = sweep_select.report("tiny", "params.yaml", "reports/tiny", "reports/tiny")
    summary = json.loads(S.summary_path(out, "tiny").read_text())
    assert summary["selected"] == selection["selected"] and summary["references"][0]["run"] == "pgd_at"
    assert S.accuracy_figure_path(out, "tiny").exists() and S.diagnostics_figure_path(out, "tiny").exists()
    assert len(result["table"]) == 2
    _check_reads(log, _declared(root, params))
    # a seeded run that does not carry the selected setting fails the report stage
    if selection["selected"] is not None:
        tiny = yaml.safe_load((ws / "profiles" / "tiny.yaml").read_text())
        tiny["runs"]["sel_s0"] = {"seed": 0, "objective": {"ce": 1.0, "hamming": {"weight": 123.0, "alpha": 8.0},
                                                           "stability": {"weight": 0.0025}}}
        tiny["sweeps"]["tiny"]["seeded_runs"] = ["sel_s0"]
        (ws / "profiles" / "tiny.yaml").write_text(yaml.safe_dump(tiny))
        P.use_profile("tiny", ws)
        with pytest.raises(ValueError, match="does not carry the selected setting"):
            sweep_select.report("tiny", "params.yaml", "reports/tiny", "reports/tiny")
    # readings_at naming a cell that is not the best grid cell fails the select stage
    best = selection["best_grid_cell"]
    if best is not None:  # (the tiny cells learn: see above)
        other = next(r for r in selection["cells"] if r["cell"] != best)
        tiny = yaml.safe_load((ws / "profiles" / "tiny.yaml").read_text())
        tiny["sweeps"]["tiny"]["seeded_runs"] = []
        tiny["sweeps"]["tiny"]["readings_at"] = {"gamma_h": other["gamma_h_factor"], "gamma_s": other["gamma_s_factor"]}
        (ws / "profiles" / "tiny.yaml").write_text(yaml.safe_dump(tiny))
        P.use_profile("tiny", ws)
        new = [c for c in P.load(ws / "params.yaml")["sweep_cells"] if c.endswith("_mean")]
        stage.train_cell(new[0], "params.yaml", "reports/tiny", progress=False)
        stage.eval_cell(new[0], "params.yaml", "reports/tiny")
        with pytest.raises(ValueError, match="is not the best grid cell"):
            sweep_select.select("tiny", "params.yaml", "reports/tiny")
