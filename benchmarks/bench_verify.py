"""Benchmark of the MILP verifier (issue 5): the full verifier (progressive CROWN bounds, a short
PGD, early-stopping MILP) against a naive MILP with interval-only bounds, on the same network and
the same MNIST test examples.

    python benchmarks/bench_verify.py --checkpoint runs/hamming_stability_verify/model.pt --n 100 \
        --eps 0.1 [--time-limit 30]

Writes benchmarks/results/verify.json (summaries and per-example rows) and verify.md (median, p90,
decided fraction, speed-up). Targets (issue 5): >= 95% decided, median <= 2 s per example, >= 10x
faster than the naive MILP, on a hamming+stability SmallCNN (MNIST, eps 0.1).
"""

from __future__ import annotations

import argparse
import logging
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from robustlib.data import load_split
from robustlib.io import load_model, write_json
from robustlib.verify import summarize, verify

RESULTS = Path(__file__).resolve().parent / "results"
CONFIGS = {
    "full": dict(bounds="linear", attack_steps=20),
    "naive_milp": dict(bounds="interval", attack_steps=0),
}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="a model saved by robustlib.io.save_model")
    p.add_argument("--n", type=int, default=100, help="number of test examples")
    p.add_argument("--eps", type=float, default=0.1)
    p.add_argument("--time-limit", type=float, default=30.0, help="seconds per example")
    p.add_argument("--seed", type=int, default=0, help="seed of the choice of test examples")
    p.add_argument("--data-root", default="data")
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
        runs[name] = {**summarize(res), "wall_seconds": wall, "config": cfg}
        rows[name] = [{"index": int(i), **r.to_dict()} for i, r in zip(idx, res, strict=True)]
        print(f"{name}: {runs[name]}", flush=True)
    full, naive = runs["full"], runs["naive_milp"]
    speedup = {
        "median": naive["median_seconds"] / max(full["median_seconds"], 1e-9),
        "mean": naive["mean_seconds"] / max(full["mean_seconds"], 1e-9),
    }
    targets = {
        "decided_fraction>=0.95": full["decided_fraction"] >= 0.95,
        "median_seconds<=2": full["median_seconds"] <= 2.0,
        "speedup_median>=10": speedup["median"] >= 10,
    }
    out = {
        "checkpoint": str(ckpt), "n": args.n, "eps": args.eps, "time_limit": args.time_limit,
        "seed": args.seed, "indices": idx.tolist(), "runs": runs, "speedup": speedup, "targets": targets,
        "rows": rows, "machine": {"python": sys.version.split()[0], "torch": torch.__version__,
                                  "platform": platform.platform(), "processes": args.processes},
    }
    out_dir = Path(args.out)
    write_json(out, out_dir / "verify.json")
    lines = [
        f"# MILP verification benchmark ({ckpt}, MNIST, L-inf eps {args.eps}, {args.n} test examples, "
        f"time limit {args.time_limit:g} s)",
        "",
        "| verifier | verified | falsified | unknown | decided | median s | p90 s | mean s | timeouts |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, s in runs.items():
        lines.append(f"| {name} | {s['verified']} | {s['falsified']} | {s['unknown']} | "
                     f"{s['decided_fraction']:.2f} | {s['median_seconds']:.3f} | {s['p90_seconds']:.3f} | "
                     f"{s['mean_seconds']:.3f} | {s['timeouts']} |")
    lines += ["", f"Speed-up (naive / full): median {speedup['median']:.1f}x, mean {speedup['mean']:.1f}x.",
              "", "Targets: " + ", ".join(f"{k}: {'met' if v else 'NOT met'}" for k, v in targets.items()), ""]
    (out_dir / "verify.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return out


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    main()
