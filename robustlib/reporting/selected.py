"""Table 2's row of a weight sweep's selected setting, trained with several seeds (issue 24): the median of the
seeded runs beside the paper's Hamming row, the spread, the order against RS loss tested seed by seed, and the
paper's cost claim ("Hamming regularization verifies more examples than RS loss, at a fraction of the training
time") judged with both training minutes and the compute of an epoch counted in plain passes
(``robustlib.reporting.training_cost``), since minutes move with the host's load.

The sweep summaries come from the sweep_report stage (``robustlib.pipeline.sweeps.summary_path``); a sweep holds
Table 2's selected setting when its ``base_run`` is a row of ``robustlib.reporting.paper.TABLE2`` and it lists
``seeded_runs``."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from robustlib.evaluation import schema
from robustlib.pipeline.params import run_config
from robustlib.pipeline.sweeps import summary_path
from robustlib.reporting.paper import SELECTED_RUN, SIGNIFICANCE, TABLE2, PairedTest, paired_test
from robustlib.reporting.training_cost import passes_per_epoch

COMPARED_RUN = "rs_loss"
"""The run the paper's claim compares with (Table 2's RS-loss row)."""
NUMBERS = (schema.TABLE_CLEAN, schema.T2_PGD, schema.T2_AUTOATTACK, schema.T2_VERIFIED)


@dataclass(frozen=True)
class SeededSetting:
    """A sweep's selected setting and the regular runs that train it with other seeds."""

    sweep: str
    base_run: str
    setting: Mapping  # gamma_h, gamma_s, their factors, reading
    seeds: tuple[int, ...]
    runs: tuple[str, ...]


def seeded_setting(input_root: Path) -> SeededSetting | None:
    """The sweep under ``input_root`` whose base run is a row of Table 2 and that has seeded runs (None: none)."""
    for f in sorted(summary_path(Path(input_root), "*").parent.glob("*.json")):
        s = json.loads(f.read_text())
        runs = tuple(r["run"] for r in s.get("seeded_runs") or [])
        if runs and s["base_run"] in TABLE2.rows and s.get("selected_setting"):
            return SeededSetting(s["sweep"], s["base_run"], s["selected_setting"], tuple(s.get("seeds") or ()), runs)
    return None


def median_row(at_8: pd.DataFrame, runs: Sequence[str]) -> pd.Series | None:
    """The median over ``runs`` of Table 2's numbers at the paper's eps (``at_8``: verification rows indexed by
    run), with ``n`` the smallest of theirs; None until every run has its row."""
    if not runs or any(r not in at_8.index for r in runs):
        return None
    rows = at_8.loc[list(runs)]
    out = rows[[c for c in NUMBERS if c in rows.columns]].astype(float).median()
    out[schema.N] = int(rows[schema.N].min())
    return out


def _spread(at_8: pd.DataFrame, runs: Sequence[str], column: str) -> str:
    v = at_8.loc[list(runs), column].astype(float)
    return f"{' / '.join(f'{x:.1f}' for x in v)} (median {v.median():.1f}, range {v.max() - v.min():.1f} points)"


def verified_upper(at_8: pd.DataFrame, run: str) -> float:
    """``run``'s verified accuracy (%) if every example left undecided (time limit or margin within the numerical
    tolerance) while PGD could not break it were verified: the most a longer MILP time limit could give."""
    row = at_8.loc[run]
    undecided = sum(float(row.get(schema.T2_GAPS[k], 0) or 0) for k in ("timeout", "unknown_other"))
    return float(row[schema.T2_VERIFIED]) + 100 * undecided / float(row[schema.N])


def _setting_words(s: SeededSetting) -> str:
    st = s.setting
    return (f"gamma_H {st['gamma_h']:g} and gamma_S {st['gamma_s']:g} at the start of appendix A's 10x ramp (x"
            f"{st['gamma_h_factor']:g} and x{st['gamma_s_factor']:g} the paper's), reading `{st['reading']}` of eq. "
            f"17, seeds {', '.join(str(k) for k in s.seeds)} (runs {', '.join(s.runs)}; selected by sweep "
            f"`{s.sweep}` on validation PGD)")


def per_seed_order(at_8: pd.DataFrame, runs: Sequence[str],
                   outcomes: Callable[[str, str], pd.Series | None]) -> tuple[str, list[tuple[str, PairedTest]]]:
    """The order "the selected setting verifies more examples than RS loss" tested on each seed: each seeded
    run's verified examples against RS loss's on the same examples (one-sided exact McNemar). Reproduced only when
    every seed is ahead with p < ``SIGNIFICANCE``. Returns the verdict and each seed's test."""
    theirs = outcomes(COMPARED_RUN, schema.T2_VERIFIED)
    tests = []
    for r in runs:
        ours = outcomes(r, schema.T2_VERIFIED)
        if ours is None or theirs is None:
            return "not testable here (per-example verification results missing)", []
        tests.append((r, paired_test(ours, theirs)))
    ahead = sum(t.a_only > t.b_only for _, t in tests)
    significant = sum(t.a_only > t.b_only and t.p < SIGNIFICANCE for _, t in tests)
    verdict = ("reproduced" if significant == len(tests) else "not reproduced") + (
        f" (ahead in {ahead} of {len(tests)} seeds, significantly in {significant}")
    if significant < len(tests) and all(c in at_8.columns for c in schema.T2_GAPS.values()):
        upper = [verified_upper(at_8, r) for r in runs]
        theirs_verified = float(at_8.at[COMPARED_RUN, schema.T2_VERIFIED])
        still_behind = sum(u < theirs_verified for u in upper)
        verdict += (f"; with every example left undecided at the time limit verified, the seeds would reach "
                    f"{' / '.join(f'{u:.1f}' for u in upper)} against RS loss's {theirs_verified:.1f} (its own "
                    f"at most {verified_upper(at_8, COMPARED_RUN):.1f}): behind even then in {still_behind} of "
                    f"{len(runs)}" + ("" if still_behind == len(runs) else ", so the order is undecided beyond the "
                                      "time limit"))
    return verdict + ")", tests


def cost_claim(params: Mapping, train: Mapping[str, Mapping], runs: Sequence[str], order_verdict: str) -> str:
    """The paper's claim "Hamming regularization verifies more examples than RS loss, at a fraction of the
    training time", judged at the selected setting: training minutes (median of the seeds; host-dependent) and
    an epoch's compute in plain forward+backward passes (``training_cost.passes_per_epoch``; host-independent)."""
    minutes = pd.Series([float(train[r]["train_minutes"]) for r in runs])
    theirs = float(train[COMPARED_RUN]["train_minutes"])
    passes = {r: passes_per_epoch(run_config(params, r), int(train[r]["n_train"])) for r in (runs[0], COMPARED_RUN)}
    ratio = passes[COMPARED_RUN] / passes[runs[0]]
    faster = ratio > 1 and theirs > minutes.median()
    return (f"The paper's claim \"Hamming regularization verifies more examples than RS loss, at a fraction of the "
            f"training time\", at the selected setting: training {minutes.median():.1f} min (median of the seeds; "
            f"{', '.join(f'{m:.1f}' for m in minutes)}) against RS loss's {theirs:.1f} min "
            f"({theirs / minutes.median():.1f}x; minutes on this host's {params['base'].get('threads', 2)} CPU "
            "threads, which move with its load), "
            f"and {passes[runs[0]]:,.0f} against {passes[COMPARED_RUN]:,.0f} plain forward+backward passes per "
            f"epoch ({ratio:.1f}x; FLOPs counted per step by `robustlib.reporting.training_cost`) -- the time part "
            + ("holds" if faster else "does not hold") + f"; the verification part: {order_verdict}.")


ORDER = "Hamming regularization at the selected setting verifies more examples than RS loss"
"""The order claim of Table 2 at the selected setting, as the report words it."""


def not_selected_lines() -> list[str]:
    """The order's line in a profile without a weight sweep whose seeded runs are Table 2's selected setting."""
    return [f"{ORDER} (paper: 21.04 vs 20.27) -- not testable here (no weight sweep of Table 2's runs with seeded "
            "runs in this profile)"]


def selected_lines(params: Mapping, at_8: pd.DataFrame, s: SeededSetting, train: Mapping[str, Mapping],
                   outcomes: Callable[[str, str], pd.Series | None]) -> list[str]:
    """The report's verdict lines on the selected setting below Table 2's comparison: the setting (weights,
    reading, seeds), the spread over the seeds, the order against RS loss per seed and the cost claim (``train``:
    the train metrics of each run)."""
    missing = [r for r in s.runs if r not in at_8.index]
    if missing:
        return [f"selected setting ({_setting_words(s)}): pending, no verification at 8/255 yet for "
                f"{', '.join(missing)}"]
    lines = [f"selected setting (row `{SELECTED_RUN}` above: the median of its seeds): {_setting_words(s)}; "
             f"per seed at 8/255, verified {_spread(at_8, s.runs, schema.T2_VERIFIED)}, PGD "
             f"{_spread(at_8, s.runs, schema.T2_PGD)}, clean {_spread(at_8, s.runs, schema.TABLE_CLEAN)}"]
    if COMPARED_RUN not in at_8.index:
        return lines
    verdict, tests = per_seed_order(at_8, s.runs, outcomes)
    per_seed = "; ".join(f"{r}: {100 * at_8.at[r, schema.T2_VERIFIED] / 100:.1f} vs "
                         f"{at_8.at[COMPARED_RUN, schema.T2_VERIFIED]:.1f}, {t}" for r, t in tests)
    lines.append(f"{ORDER} (paper: 21.04 vs 20.27), seed by seed ({per_seed}) -- {verdict}")
    if COMPARED_RUN in train and all(r in train for r in s.runs):
        short = verdict.split(" (")[0] + (f" within the {params['verify']['time_limit']:g}-s MILP time limit, "
                                          "undecided beyond it" if "undecided" in verdict else "")
        lines.append(cost_claim(params, train, s.runs, short))
    return lines
