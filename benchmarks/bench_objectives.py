"""Seconds per training step of every objective of the default profile's runs, on SmallCNN and
CWCNN (MNIST shapes, batch 128, 2 threads), and each one's ratio to a plain cross-entropy step; the
floor (one cross-entropy pass over a 3x batch) is included for the paper's cost claim
(regularization about 3 passes, adversarial training 7-11x). The report shows the table.

Run:  python benchmarks/bench_objectives.py          (writes benchmarks/results/objectives.{json,md})
      python benchmarks/bench_objectives.py --quick  (fewer steps)
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
from bench_train import PAPER_HS, RESULTS, StepTimer, time_interleaved

from robustlib.pipeline.params import load, run_config

PROFILE = Path(__file__).resolve().parent.parent / "profiles" / "default.yaml"


def objectives() -> dict[str, tuple[dict, bool, int]]:
    """name -> (objective, spectral_norm, batch multiplier): plain, the floor, and one entry per
    distinct objective among the default profile's runs (sweep variants of hamming+stability skipped)."""
    params = load(PROFILE)
    out: dict[str, tuple[dict, bool, int]] = {"plain": ({"ce": 1.0}, False, 1),
                                              "floor_3x_batch": ({"ce": 1.0}, False, 3),
                                              "hamming_stability_paper_weights": (PAPER_HS, False, 1)}
    for run in params["runs"]:
        if run.startswith("sweep_") or run == "standard":
            continue
        cfg = run_config(params, run)
        out[run] = (cfg.objective, cfg.spectral_norm, 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["smallcnn", "cwcnn"])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=RESULTS / "objectives")
    args = ap.parse_args()
    if args.quick:
        args.steps, args.rounds, args.warmup = 2, 1, 1
    torch.set_num_threads(args.threads)
    results = {}
    for model in args.models:
        timers = {name: StepTimer(model, obj, args.batch * mult, spectral_norm=sn)
                  for name, (obj, sn, mult) in objectives().items()}
        sec = time_interleaved(timers, args.steps, args.rounds, args.warmup)
        results[model] = {"seconds_per_step": sec, "ratio_to_plain": {k: v / sec["plain"] for k, v in sec.items()}}
        for k, v in sec.items():
            print(f"{model:9s} {k:34s} {1e3 * v:9.1f} ms  {v / sec['plain']:6.2f}x plain")
    meta = {"torch": torch.__version__, "threads": args.threads, "batch": args.batch, "steps": args.steps,
            "rounds": args.rounds, "machine": platform.machine(), "date": time.strftime("%Y-%m-%d %H:%M")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    lines = ["| objective | " + " | ".join(f"{m} ms | {m} x plain" for m in results) + " |",
             "|---|" + "---|---|" * len(results)]
    for name in next(iter(results.values()))["seconds_per_step"]:
        cells = [f"{1e3 * r['seconds_per_step'][name]:.1f} | {r['ratio_to_plain'][name]:.2f}" for r in results.values()]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    args.out.with_suffix(".md").write_text(f"# Cost per training step ({meta['date']}, {args.threads} threads, batch "
                                           f"{args.batch})\n\n" + "\n".join(lines) + "\n")
    print("wrote", args.out.with_suffix(".json"), "and", args.out.with_suffix(".md"))


if __name__ == "__main__":
    main()
