"""Benchmark of the MILP verifier (issues 5 and 10): the same examples verified three ways, side by side:

- ``highs``: the full verifier (progressive CROWN bounds, a short PGD, early-stopping MILP) with HiGHS;
- ``scip``: the same verifier and the same MILP encoding, solved by SCIP (``pyscipopt``), an
  independent second solver;
- ``naive``: a naive MILP with interval-only bounds and no attack, solved by HiGHS.

    python benchmarks/bench_verify.py [--checkpoint runs/hamming_stability_verify/model.pt] [--n 100] \
        [--eps 0.1] [--time-limit 30] [--processes 1]

Writes benchmarks/results/verify.json (settings of each solver, summaries, per-example rows,
disagreements) and verify.md (per verifier: verified / falsified / unknown, decided fraction, median,
p90 and mean seconds per example, median seconds of the examples that reached the MILP, timeouts).
A verdict disagreement on an example that two verifiers both decided (one says verified, the other
falsified) is a soundness failure: it is listed and the benchmark exits with status 1.
The faster of highs and scip (more examples decided, then less mean time on the examples that reached
the MILP) is named as the recommended ``verify.solver``.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from robustlib.data.datasets import load_split
from robustlib.pipeline.io import load_model, write_json
from robustlib.verification.cascade import summarize
from robustlib.verification.shards import verify
from robustlib.verification.solvers import solver_settings as settings_of

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parent.parent
CONFIGS = {
    "highs": dict(bounds="linear", attack_steps=20, solver="highs"),
    "scip": dict(bounds="linear", attack_steps=20, solver="scip"),
    "naive": dict(bounds="interval", attack_steps=0, solver="highs"),
}


def disagreements(rows: dict[str, list[dict]]) -> list[dict]:
    """Examples that two verifiers both decided, one as verified and the other as falsified."""
    out = []
    for a, b in itertools.combinations(rows, 2):
        for ra, rb in zip(rows[a], rows[b], strict=True):
            if {ra["verdict"], rb["verdict"]} == {"verified", "falsified"}:
                out.append({"index": ra["index"], a: ra["verdict"], b: rb["verdict"],
                            f"{a}_detail": ra["detail"], f"{b}_detail": rb["detail"]})
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=str(ROOT / "runs" / "hamming_stability_verify" / "model.pt"),
                   help="a model saved by robustlib.pipeline.io.save_model "
                        "(default: the default profile's verification run)")
    p.add_argument("--n", type=int, default=100, help="number of test examples")
    p.add_argument("--eps", type=float, default=0.1)
    p.add_argument("--time-limit", type=float, default=30.0, help="seconds per example")
    p.add_argument("--seed", type=int, default=0, help="seed of the choice of test examples")
    p.add_argument("--data-root", default=str(ROOT / "data"))
    p.add_argument("--processes", type=int, default=1)
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)
    ckpt = Path(args.checkpoint)
    if not ckpt.exists():
        p.error(f"checkpoint {ckpt} not found: run `dvc repro` first (the train stage writes it)")
    if args.n < 1 or args.eps < 0 or args.time_limit <= 0:
        p.error("need --n >= 1, --eps >= 0 and --time-limit > 0")
    torch.set_num_threads(1)
    model = load_model(ckpt)
    test = load_split("mnist", train=False, root=args.data_root)
    idx = np.sort(np.random.default_rng(args.seed).permutation(len(test))[: args.n])
    x, y = test.images(idx), test.labels(idx)

    runs, rows = {}, {}
    for name, cfg in CONFIGS.items():
        t0 = time.perf_counter()
        res = verify(model, x, y, args.eps, time_limit=args.time_limit, processes=args.processes, **cfg)
        wall = time.perf_counter() - t0
        milp_secs = [r.seconds for r in res if r.method == "milp"]
        runs[name] = {**summarize(res), "wall_seconds": wall, "config": cfg,
                      "milp_examples": len(milp_secs),
                      "milp_median_seconds": float(np.median(milp_secs)) if milp_secs else float("nan"),
                      "milp_mean_seconds": float(np.mean(milp_secs)) if milp_secs else float("nan"),
                      "solver_settings": settings_of(cfg["solver"])}
        rows[name] = [{"index": int(i), **r.to_dict()} for i, r in zip(idx, res, strict=True)]
        print(f"{name}: {({k: v for k, v in runs[name].items() if k != 'solver_settings'})}", flush=True)
    bad = disagreements(rows)

    def speed(s: dict) -> tuple[int, float]:  # more decided first, then less time where the solver ran
        return -(s["verified"] + s["falsified"]), s["milp_mean_seconds"]

    faster = min(("highs", "scip"), key=lambda k: speed(runs[k]))
    if not (runs["highs"]["milp_examples"] and runs["scip"]["milp_examples"]):
        faster = "undetermined (no example reached the MILP)"
    full, naive = runs["highs"], runs["naive"]
    speedup = {
        "median": naive["median_seconds"] / max(full["median_seconds"], 1e-9),
        "mean": naive["mean_seconds"] / max(full["mean_seconds"], 1e-9),
        "scip_over_highs_mean": runs["scip"]["mean_seconds"] / max(full["mean_seconds"], 1e-9),
    }
    targets = {
        "no_disagreement": not bad,
        "decided_fraction>=0.95": full["decided_fraction"] >= 0.95,
        "median_seconds<=2": full["median_seconds"] <= 2.0,
        "speedup_median>=10": speedup["median"] >= 10,
    }
    out = {
        "checkpoint": str(ckpt), "n": args.n, "eps": args.eps, "time_limit": args.time_limit,
        "seed": args.seed, "indices": idx.tolist(), "runs": runs, "disagreements": bad,
        "faster_solver": faster, "speedup": speedup, "targets": targets, "rows": rows,
        "machine": {"python": sys.version.split()[0], "torch": torch.__version__, "platform": platform.platform(),
                    "processes": args.processes},
    }
    out_dir = Path(args.out)
    write_json(out, out_dir / "verify.json")
    lines = [
        f"# MILP verification benchmark ({ckpt}, MNIST, L-inf eps {args.eps}, {args.n} test examples, "
        f"time limit {args.time_limit:g} s, {args.processes} process(es))",
        "",
        "The same examples, three verifiers: `highs` and `scip` run the same verifier and MILP encoding "
        "(CROWN bounds, PGD-20, early-stopping MILP) with different solvers; `naive` is an interval-bound MILP "
        "(HiGHS, no attack). Verified means the proven margin exceeds the numerical tolerance "
        "(robustlib.bounds.tolerance.margin_tolerance: 1e-4 + 1e-5 x a bound on the largest logit over the ball).",
        "",
        "| | " + " | ".join(CONFIGS) + " |",
        "|---|" + "---|" * len(CONFIGS),
    ]
    fields = [("verified", "verified", "{}"), ("falsified", "falsified", "{}"), ("unknown", "unknown", "{}"),
              ("decided fraction", "decided_fraction", "{:.2f}"), ("timeouts", "timeouts", "{}"),
              ("median s / example", "median_seconds", "{:.3f}"), ("p90 s / example", "p90_seconds", "{:.3f}"),
              ("mean s / example", "mean_seconds", "{:.3f}"), ("examples reaching the MILP", "milp_examples", "{}"),
              ("median s of those", "milp_median_seconds", "{:.3f}"),
              ("mean s of those", "milp_mean_seconds", "{:.3f}"),
              ("median tolerance", "tol_median", "{:.2e}"),
              ("unstable ReLUs (median)", "unstable_median", "{:.0f}"), ("wall s", "wall_seconds", "{:.1f}")]
    for label, key, fmt in fields:
        lines.append(f"| {label} | " + " | ".join(fmt.format(runs[c][key]) for c in CONFIGS) + " |")
    lines += ["", f"Verdict disagreements on examples decided by two verifiers: {len(bad)}"
              + ("" if not bad else " -- " + ", ".join(str(b["index"]) for b in bad)) + ".",
              f"Faster solver on these examples: {faster} (more examples decided, then less mean time on the examples "
              f"reaching the MILP); scip / highs mean time per example {speedup['scip_over_highs_mean']:.2f}x.",
              f"Speed-up of the full verifier (highs) over the naive MILP: median {speedup['median']:.1f}x, "
              f"mean {speedup['mean']:.1f}x.",
              "", "Targets: " + ", ".join(f"{k}: {'met' if v else 'NOT met'}" for k, v in targets.items()), ""]
    (out_dir / "verify.md").write_text("\n".join(lines))
    print("\n".join(lines))
    if bad:
        print(f"FAIL: {len(bad)} verdict disagreement(s) on decided examples", file=sys.stderr)
    return out


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    sys.exit(1 if main()["disagreements"] else 0)
