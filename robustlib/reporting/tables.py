"""The report's tables, from the stages' metrics and per-example results (their columns:
``robustlib.evaluation.schema``); ``write_table`` writes one as CSV and markdown. Figures:
``robustlib.reporting.figures``."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from robustlib.data.datasets import dataset_info
from robustlib.evaluation import schema
from robustlib.evaluation.suite import AA_L2, AA_LINF, AUTOATTACK, LINF
from robustlib.pipeline import paths
from robustlib.pipeline.io import atomic_write, read_json
from robustlib.threat import NORMS

CHANCE_MARGIN = 0.02
"""A run whose clean accuracy is within this of 1 / classes is flagged ``at_chance`` (a collapsed network)."""


def write_table(df: pd.DataFrame, stem: str | Path) -> tuple[Path, Path]:
    """Write ``df`` as ``<stem>.csv`` and ``<stem>.md`` (atomically); return both paths."""
    stem = Path(stem)
    csv, md = stem.with_suffix(".csv"), stem.with_suffix(".md")
    atomic_write(csv, lambda p: df.to_csv(p, index=False))
    atomic_write(md, lambda p: p.write_text(df.to_markdown(index=False) + "\n"))
    return csv, md


def training_table(metrics: Sequence[Mapping]) -> pd.DataFrame:
    """One row per run: clean accuracy (%) and training minutes, from the train stage's metrics;
    ``at_chance``: clean accuracy within ``CHANCE_MARGIN`` of guessing (the network collapsed, e.g. to a
    constant: what the attack and verification tables say of it is about that network); ``diverged_at``:
    the epoch whose loss turned non-finite (the run's model is the previous epoch's), else ``-``."""
    rows = [{
        schema.RUN: m["run"],
        schema.MODEL: m["model"],
        schema.OBJECTIVE: " + ".join(m["objective"]),
        schema.EPOCHS: m["epochs"],
        schema.N_TRAIN: m["n_train"],
        schema.CLEAN_ACC_PCT: round(100 * m["clean_acc"], 2),
        schema.N_TEST: m["n_test"],
        schema.TRAIN_MINUTES: round(m["train_minutes"], 2),
        schema.AT_CHANCE: bool(m["clean_acc"] <= 1 / dataset_info(m["dataset"]).num_classes + CHANCE_MARGIN),
        schema.DIVERGED_AT: diverged_epoch(m) or schema.NOT_DIVERGED,
    } for m in metrics]
    return pd.DataFrame(rows).sort_values(schema.RUN).reset_index(drop=True)


def diverged_epoch(train_metrics: Mapping) -> int | None:
    """The epoch at which a run's training loss turned non-finite (train stage metrics), or None."""
    d = train_metrics.get("diverged")
    return int(d["epoch"]) if d else None


def describe_objective(objective: Mapping[str, object]) -> str:
    """A run's objective (``runs.<run>.objective`` of params) in words: each term's weight and its other
    settings, e.g. ``ce 1 + hamming 9000 (alpha 8) + stability 0.4 (reduction sum)``."""
    parts = []
    for name, spec in objective.items():
        if isinstance(spec, Mapping):
            extra = ", ".join(f"{k} {v:g}" if isinstance(v, (int, float)) and not isinstance(v, bool) else f"{k} {v}"
                              for k, v in spec.items() if k != "weight")
            parts.append(f"{name} {float(spec.get('weight', 1.0)):g}" + (f" ({extra})" if extra else ""))
        else:
            parts.append(f"{name} {float(spec):g}")
    return " + ".join(parts)


def run_summary(out, run: str) -> dict:
    """Clean and robust accuracy (%) of a run from its per-example attack results, with training minutes
    (a row of the ablations' and laplacian's tables)."""
    table = schema.load_results(paths.attack_results_path(out, run))
    train = read_json(paths.train_metrics_path(out, run))
    row = {schema.RUN: run, schema.N: len(table), schema.CLEAN_PCT: 100 * table[schema.CLEAN].mean()}
    row.update({name: 100 * table[col].mean() for name, col in schema.SUMMARY_OUTCOMES.items() if col in table})
    row[schema.TRAIN_MINUTES] = train["train_minutes"]
    return row


def per_example_outcomes(out, run: str, metric: str, eps: float) -> pd.Series | None:
    """The per-example outcomes (booleans indexed by test index) behind report column ``metric`` of
    ``run``: the attack stage's (``schema.REPORT_OUTCOMES``) or, for ``verified``, the verify stage's
    verdicts at ``eps``; None for any other column (e.g. minutes) or where the run has no such results."""
    if metric == schema.T2_VERIFIED:
        f = paths.verify_results_path(out, run)
        if not f.exists():
            return None
        table = schema.load_verify_results(f)
        near = [e for e in table[schema.EPS].unique() if abs(e - eps) < 1e-6]  # the stage writes eps to 7 decimals
        at = schema.verified_at(table, near[0]) if near else pd.Series(dtype=bool)
        return None if at.empty else at
    column, f = schema.REPORT_OUTCOMES.get(metric), paths.attack_results_path(out, run)
    if column is None or not f.exists():
        return None
    table = schema.load_results(f)
    return table[column].astype(bool).set_axis(table[schema.INDEX]) if column in table else None


def perceptual_settings(attack: Sequence[Mapping], undefended_run: str | None) -> pd.DataFrame:
    """Each perceptual attack's budget and the undefended run's accuracy under it (the positive
    controls), from the attack stage's metrics."""
    by_run = {m["run"]: m for m in attack}
    base = by_run.get(undefended_run, {})
    budgets = next((m["perceptual_budgets"] for m in attack if m.get("perceptual_budgets")), {})
    controls = base.get("sanity", {}).get("perceptual_controls", {})
    rows = []
    for name, eps in budgets.items():
        acc = base.get(schema.acc_key(name))
        rows.append({schema.PS_ATTACK: name, schema.PS_BUDGET: eps,
                     schema.undefended_acc(undefended_run): "n/a" if name in base.get("not_applicable", {}) else
                     (round(100 * acc, 2) if acc is not None else "-"),
                     schema.PS_CONTROL_MAX: round(100 * controls[name]["max_acc"], 2)
                     if "max_acc" in controls.get(name, {}) else "-"})
    return pd.DataFrame(rows)


def attack_table(train: Sequence[Mapping], attack: Sequence[Mapping]) -> pd.DataFrame:
    """Paper Table 1 analog: clean / L-inf AA / L2 AA / spatial / recolor / JPEG / NPTM (%) / training
    minutes per run; each perceptual column is the per-example worst case over that threat model's
    attacks (NPTM: LPA and PPGD); an attack that does not apply to the dataset shows ``n/a``. ``AA_square_flag``
    names the threat models where AutoAttack's Square (gradient-free) broke examples that APGD and
    FAB did not (a sign of gradient masking); ``AA_escape_hits`` counts, per threat model, the examples
    AutoAttack left unbroken with a zero input gradient that the escape attack broke, and
    ``AA_unresolved`` the unbroken examples with a zero input gradient that no bound proves robust and
    no escape reached (``robustlib.attacks.autoattack``)."""
    minutes = {m["run"]: m["train_minutes"] for m in train}
    rows = []
    for m in attack:
        row = {schema.RUN: m["run"], schema.TABLE_CLEAN: 100 * m[schema.CLEAN_ACC],
               schema.LINF_AA: 100 * m[schema.acc_key(AA_LINF)], schema.LINF_WORST: 100 * m[schema.worst_acc_key(LINF)],
               schema.L2_AA: 100 * m[schema.acc_key(AA_L2)]}
        for col, threat, attacks in schema.PERCEPTUAL_COLUMNS:  # worst case over the threat model's attacks
            if schema.worst_acc_key(threat) in m:
                row[col] = round(100 * m[schema.worst_acc_key(threat)], 2)
            else:
                row[col] = "n/a" if any(a in m.get("not_applicable", {}) for a in attacks) else "-"
        row[schema.TRAIN_MINUTES] = minutes.get(m["run"])
        rows.append({**row, **_attack_flags(m)})
    return pd.DataFrame(rows).round(2).sort_values(schema.RUN).reset_index(drop=True)


def _attack_flags(m: Mapping) -> dict[str, str]:
    """Table 1's flag columns from a run's attack metrics: AutoAttack's, per threat model, and the sanity
    checks' records of gradient masking (``-`` where none)."""
    aa = m.get("autoattack", {})
    row = {schema.AA_SQUARE_FLAG: ",".join(n for n in NORMS if aa.get(n, {}).get("square_stronger")) or "-"}
    for col, key in ((schema.AA_ESCAPE_HITS, "blind_escape_hits"), (schema.AA_UNRESOLVED, "unresolved")):
        row[col] = ",".join(f"{n}:{aa[n][key]}" for n in NORMS if aa.get(n, {}).get(key)) or "-"
    sanity = m.get("sanity", {})
    row[schema.PGD_NONMONOTONE] = "yes" if sanity.get("pgd_nonmonotone") else "-"
    row[schema.PGD_UNCONVERGED] = "yes" if sanity.get(f"budget_{LINF}", {}).get("unconverged") else "-"
    row[schema.PGD_BELOW_FGSM] = "yes" if sanity.get("pgd_weaker_than_fgsm") else "-"
    return row


def verification_table(verify: Sequence[Mapping], attack: Mapping[str, Mapping]) -> pd.DataFrame:
    """Paper Table 2 analog: per MILP-verified run and eps, on the same examples, clean / PGD-robust /
    AutoAttack-robust / verified accuracy (%), the gap PGD - verified split into its causes (examples
    that timed out, stayed unknown otherwise -- e.g. a margin within the numerical tolerance --, or were
    falsified by a counterexample PGD missed), median and p90 seconds per example, timeouts, unstable
    ReLUs and the solver (the paper's numbers: ``robustlib.reporting.paper.TABLE2``, beside ours in the report)."""
    rows = []
    for m in verify:
        for eps, e in m["eps"].items():
            if "verified" not in e:
                continue
            a = attack.get(m["run"], {})
            same_eps = a and abs(float(eps) - a[schema.eps_key(LINF)]) < 1e-12
            aa = e.get("aa_acc", a[schema.acc_key(AUTOATTACK[LINF])] if same_eps else None)
            gap = e.get("gap", {})
            rows.append({schema.RUN: m["run"], schema.EPS: float(eps), schema.N: e["n"],
                         schema.TABLE_CLEAN: 100 * m["clean_acc"], schema.T2_PGD: 100 * e["pgd_acc"],
                         schema.T2_AUTOATTACK: None if aa is None else 100 * aa,
                         schema.T2_VERIFIED: 100 * e["verified_fraction"], schema.T2_IBP: 100 * e["ibp_certified_acc"],
                         schema.T2_PGD_MINUS_VERIFIED: 100 * (e["pgd_acc"] - e["verified_fraction"]),
                         **{col: gap.get(cause) for cause, col in schema.T2_GAPS.items()},
                         schema.T2_UNKNOWN: e["unknown"], schema.T2_TIMEOUTS: e["timeouts"],
                         schema.T2_MEDIAN_S: e["median_seconds"], schema.T2_P90_S: e["p90_seconds"],
                         schema.T2_UNSTABLE_MEDIAN: e["unstable_median"],
                         schema.T2_SOLVER: m.get("solver", {}).get("solver", "highs")})
    df = pd.DataFrame(rows)  # eps exact: the report matches it to the paper's 8/255 (0.031 would not)
    return df.round({c: 3 for c in df.columns if c != schema.EPS})


def certified_table(verify: Sequence[Mapping]) -> pd.DataFrame:
    """Per run: IBP-certified accuracy (%) at each eps of the verify stage, and for spectral-norm runs the
    Lipschitz bound and the accuracy it certifies at the L2 eps."""
    return pd.DataFrame([{schema.RUN: m["run"],
                          **{schema.ibp_certified_at(eps): round(100 * e["ibp_certified_acc"], 2)
                             for eps, e in m["eps"].items()},
                          **({schema.LIPSCHITZ_L: round(m["lipschitz_l2"]["L"], 3),
                              schema.LIPSCHITZ_CERTIFIED_L2_PCT:
                                  round(100 * m["lipschitz_l2"]["certified_acc_at_l2_eps"], 2)}
                             if "lipschitz_l2" in m else {})} for m in verify])


def benchmark_table(folder: Path) -> pd.DataFrame:
    """Seconds per training step and ratio to a plain step for every objective (from
    benchmarks/results/objectives.json, written by benchmarks/bench_objectives.py)."""
    f = folder / "objectives.json"
    if not f.exists():
        raise FileNotFoundError(f"missing {f}: run `python benchmarks/bench_objectives.py` (it is committed with "
                                "the repository; the report shows its table)")
    data = json.loads(f.read_text())
    rows = []
    for model, res in data["results"].items():
        for name, sec in res["seconds_per_step"].items():
            rows.append({schema.MODEL: model, schema.OBJECTIVE: name, schema.BENCH_MS_PER_STEP: round(1e3 * sec, 2),
                         schema.BENCH_X_PLAIN: round(sec / res["seconds_per_step"]["plain"], 2)})
    return pd.DataFrame(rows)
