"""Replay the verify stage's AutoAttack with the profile's current ``attack.square_escalation`` and compare its
per-example verdicts with the committed ones: the evidence that a verify stage whose results came from an
earlier escalation setting may be `dvc commit`-ed instead of re-run (docs/evaluation.md).

    python scripts/check_escalation.py [run ...]     # default: every run of verify.milp_runs

The verify stage runs AutoAttack itself only at an eps other than the attack stage's, on the PGD-robust examples
it did not verify (``robustlib.stages.verify._autoattack_robust``, called here unchanged). Exit 1 when any
example's AutoAttack verdict differs from ``reports/<profile>/verify/<run>.csv``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from robustlib.evaluation import schema
from robustlib.pipeline import paths
from robustlib.pipeline.io import load_model
from robustlib.pipeline.params import load
from robustlib.stages.common import setup, test_examples
from robustlib.stages.verify import _autoattack_robust

ROOT = Path(__file__).resolve().parents[1]


def check(env, run: str) -> list[str]:
    """The differences between the replayed and the committed AutoAttack verdicts of ``run`` (empty: none)."""
    vp, ap = env.params["verify"], env.params["attack"]
    table = schema.load_verify_results(paths.verify_results_path(env.out, run))
    attack_table = schema.load_results(paths.attack_results_path(env.out, run)).set_index(schema.INDEX)
    model = load_model(paths.model_path(env.out, run))
    x, y, idx = test_examples(env, run, int(vp["n_test"]))
    seed = int(env.params["base"]["seed"])
    problems = []
    for eps in sorted(set(table[schema.EPS])):
        rows = table[table[schema.EPS] == eps].set_index(schema.INDEX).loc[idx]
        pgd_ok = torch.tensor(rows[schema.VERIFY_PGD_ROBUST].to_numpy(dtype=bool))
        verified = torch.tensor((rows[schema.VERIFY_VERDICT] == schema.VERIFIED).to_numpy())
        aa_ok, source, seconds, attacked = _autoattack_robust(model, x, y, idx, float(eps), ap, attack_table, seed,
                                                              pgd_ok, verified)
        was = rows[schema.VERIFY_AA_ROBUST].to_numpy(dtype=bool)
        differ = [i for i, a, b in zip(idx, aa_ok.tolist(), was.tolist(), strict=True) if a != b]
        print(f"{run} eps {eps:g}: AutoAttack from the {source}, {attacked} examples attacked in {seconds:.0f} s, "
              f"square_escalation {ap['square_escalation']}: {len(differ)} verdicts differ", flush=True)
        problems += [f"{run} eps {eps:g}: example {i}" for i in differ]
    return problems


def main(argv: list[str]) -> int:
    profile = load(ROOT / "params.yaml")["base"]["profile"]
    env = setup("params.yaml", str(paths.profile_root(ROOT, profile)))
    torch.set_num_threads(1)  # as the verify stage's AutoAttack worker runs
    runs = argv or list(env.params["verify"]["milp_runs"])
    problems = [p for run in runs for p in check(env, run)]
    print("\n".join(problems) if problems else "no verdict differs")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
