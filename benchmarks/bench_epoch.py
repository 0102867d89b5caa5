"""Seconds per training epoch of every run of a profile, from timed training steps: each run's own
objective, network and batch on inputs of the dataset's shape (random images), at mid-training
(progress 0.5: the regularizer weights half-way up their ramp), times the number of steps in one
epoch of the profile's training split. What a profile's training costs, before running it.

Run:  python benchmarks/bench_epoch.py --profile cifar10-cpu          (CPU, 2 threads)
      python benchmarks/bench_epoch.py --profile paper --runs hamming_stability pgd_at --device cuda
Writes benchmarks/results/epoch_<profile>_<device>.{json,md}. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time

import torch
from bench_train import RESULTS, StepTimer, time_interleaved

from robustlib.pipeline import params as P

SPLIT_SIZES = {"mnist": 60000, "fashion_mnist": 60000, "cifar10": 50000, "cifar100": 50000}


def epoch_seconds(profile: str, runs: list[str] | None, steps: int, rounds: int, warmup: int,
                  device: str) -> tuple[dict, dict]:
    params = P.load(P.project_root() / "profiles" / f"{profile}.yaml")
    data = params["data"]
    n_train = data["n_train"] or SPLIT_SIZES[data["dataset"]] - int(data["n_val"])
    results = {}
    for run in runs or P.all_runs(params):
        cfg = P.run_config(params, run)
        timer = StepTimer(cfg.model, cfg.objective, cfg.batch_size, eps=cfg.eps, spectral_norm=cfg.spectral_norm,
                          model_kwargs=cfg.model_kwargs, norm=cfg.norm, device=device)
        sec = time_interleaved({run: timer}, steps, rounds, warmup)[run]
        n_steps = math.ceil(n_train / cfg.batch_size)
        results[run] = {"model": cfg.model, "objective": sorted(cfg.objective), "seconds_per_step": sec,
                        "steps_per_epoch": n_steps, "seconds_per_epoch": sec * n_steps, "epochs": cfg.epochs,
                        "training_minutes": sec * n_steps * cfg.epochs / 60}
        print(f"{run}: {1e3 * sec:.1f} ms/step, {sec * n_steps:.1f} s/epoch, "
              f"{results[run]['training_minutes']:.1f} min for {cfg.epochs} epochs", flush=True)
    meta = {"profile": profile, "device": device, "threads": torch.get_num_threads(), "n_train": n_train,
            "steps": steps, "rounds": rounds, "torch": torch.__version__, "machine": platform.machine(),
            "gpu": torch.cuda.get_device_name() if device == "cuda" else None,
            "date": time.strftime("%Y-%m-%d %H:%M")}
    return meta, results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--profile", default="cifar10-cpu")
    ap.add_argument("--runs", nargs="+", default=None, help="default: every run of the profile")
    ap.add_argument("--steps", type=int, default=10, help="steps per timed round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    meta, results = epoch_seconds(args.profile, args.runs, args.steps, args.rounds, args.warmup, args.device)
    out = RESULTS / f"epoch_{args.profile}_{args.device}"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    total = sum(r["training_minutes"] for r in results.values())
    lines = [f"# Training cost of profile `{args.profile}` ({meta['date']}, {args.device}"
             + (f" {meta['gpu']}" if meta["gpu"] else f", {meta['threads']} threads") + ")", "",
             f"Timed steps ({args.rounds} rounds of {args.steps}, median) x steps per epoch ({meta['n_train']} "
             "training images); random inputs of the dataset's shape, regularizer weights at mid-ramp.", "",
             "| run | model | objective | ms/step | s/epoch | epochs | training min |", "|---|---|---|---|---|---|---|"]
    for run, r in results.items():
        lines.append(f"| {run} | {r['model']} | {' + '.join(r['objective'])} | {1e3 * r['seconds_per_step']:.1f} | "
                     f"{r['seconds_per_epoch']:.1f} | {r['epochs']} | {r['training_minutes']:.1f} |")
    lines += ["", f"Total training: {total:.0f} min ({total / 60:.2f} h)."]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("wrote", out.with_suffix(".json"), "and", out.with_suffix(".md"))


if __name__ == "__main__":
    main()
