"""Seconds per training step of a run at its TRAINED weights, on real training images and on random
inputs of the same shape, with subnormal ("denormal") floats kept or flushed to zero
(``torch.set_flush_denormal``), and how many subnormal values reach each layer in the backward pass.

Why: in profile ``cifar10-cpu``, ``hamming_only`` took 40-57 s per epoch once eps ramped up, against 14 s
estimated by ``bench_epoch.py`` (random inputs, weights at initialisation). Arithmetic on subnormal
floats is slow on x86 CPUs, and saturated sigmoids (the Hamming surrogate, alpha 8) produce them.
This measures how much of the gap they explain. Each run's own objective, network and batch
(``bench_train.StepTimer``, learning rate 0: every step does the work of a real one on fixed weights);
weights from ``reports/<profile>/runs/<run>/model.pt``, or ``resume.pt`` while the run is training, or
from any checkpoint given as ``run=path`` (a saved model or a training checkpoint: mid-training weights).

Run:  python benchmarks/bench_trained_step.py --profile cifar10-cpu --runs standard hamming_only
      python benchmarks/bench_trained_step.py --runs hamming_only=/tmp/hamming_only_epoch18.pt
Writes benchmarks/results/trained_step_<profile>.{json,md}. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from pathlib import Path

import torch
from bench_train import RESULTS, StepTimer

from robustlib.data.datasets import data_root, load_split
from robustlib.pipeline import params as P
from robustlib.pipeline import paths

INPUTS = ("real", "random")


def _weights(profile: str, run: str, path: str | None = None) -> tuple[dict, str]:
    """The state dict of ``path`` (default: the run's final model, else its training checkpoint) and
    where it came from."""
    root = paths.profile_root(P.project_root(), profile)
    final, resume = paths.model_path(root, run), paths.resume_path(root, run)
    if path is None and not final.exists() and not resume.exists():
        raise FileNotFoundError(f"no weights for run {run!r}: neither {final} nor {resume} exists (train it first)")
    source = Path(path) if path else final if final.exists() else resume
    blob = torch.load(source, map_location="cpu", weights_only=False)
    if "state_dict" in blob:
        return blob["state_dict"], f"{source.name}"
    return blob["model"], f"{source.name} (training checkpoint, epoch {blob['epoch']})"


def subnormal_counts(timer: StepTimer) -> dict[str, float]:
    """Per module with parameters: the fraction of subnormal entries in the gradient w.r.t. its output,
    over one step with subnormals kept."""
    tiny = torch.finfo(torch.float32).tiny
    counts: dict[str, list[int]] = {}

    def hook(name):
        def record(_module, _grad_in, grad_out):
            g = grad_out[0]
            if g is not None:
                c = counts.setdefault(name, [0, 0])
                c[0] += int(((g != 0) & (g.abs() < tiny)).sum())
                c[1] += g.numel()
        return record

    handles = [m.register_full_backward_hook(hook(n)) for n, m in timer.model.named_modules()
               if n and any(True for _ in m.parameters(recurse=False))]
    try:
        torch.set_flush_denormal(False)
        timer.step()
    finally:
        for h in handles:
            h.remove()
    return {name: c[0] / max(c[1], 1) for name, c in counts.items()}


def measure(profile: str, run: str, steps: int, rounds: int, path: str | None = None) -> dict:
    params = P.load(P.project_root() / "profiles" / f"{profile}.yaml")
    cfg = P.run_config(params, run)
    timer = StepTimer(cfg.model, cfg.objective, cfg.batch_size, eps=cfg.eps, spectral_norm=cfg.spectral_norm,
                      model_kwargs=cfg.model_kwargs, norm=cfg.norm)
    state, source = _weights(profile, run, path)
    timer.model.load_state_dict(state)
    train = load_split(params["data"]["dataset"], train=True, root=data_root(params["base"].get("data_root", "data")))
    idx = torch.arange(cfg.batch_size)
    inputs = {"real": (train.images(idx).contiguous(), train.labels(idx)), "random": (timer.x, timer.y)}
    samples: dict[tuple[str, bool], list[float]] = {(i, f): [] for i in INPUTS for f in (False, True)}
    for r in range(rounds + 1):  # round 0 warms up
        for (name, flush), times in samples.items():
            timer.x, timer.y = inputs[name]
            torch.set_flush_denormal(flush)
            t = timer.time(steps)
            if r:
                times.append(t)
    torch.set_flush_denormal(False)
    timer.x, timer.y = inputs["real"]
    sub_real = subnormal_counts(timer)
    sec = {f"{name}_{'flush' if flush else 'keep'}": statistics.median(t) for (name, flush), t in samples.items()}
    n_train = params["data"]["n_train"] or len(train) - int(params["data"]["n_val"])
    n_steps = math.ceil(int(n_train) / cfg.batch_size)
    return {"run": run, "weights": source, "objective": sorted(cfg.objective), "seconds_per_step": sec,
            "seconds_per_epoch_real_keep": sec["real_keep"] * n_steps, "steps_per_epoch": n_steps,
            "subnormal_fraction_of_output_grads_real": sub_real}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--profile", default="cifar10-cpu")
    ap.add_argument("--runs", nargs="+", required=True, help="run names, or run=path to time a given checkpoint")
    ap.add_argument("--steps", type=int, default=8, help="steps per timed round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    flush_supported = torch.set_flush_denormal(True)
    torch.set_flush_denormal(False)
    results = {}
    for spec in args.runs:
        run, _, path = spec.partition("=")
        results[spec] = measure(args.profile, run, args.steps, args.rounds, path or None)
        print(spec, {k: round(1e3 * v, 1) for k, v in results[spec]["seconds_per_step"].items()}, "ms/step", flush=True)
    meta = {"profile": args.profile, "threads": torch.get_num_threads(), "steps": args.steps, "rounds": args.rounds,
            "flush_denormal_supported": flush_supported, "torch": torch.__version__, "machine": platform.machine(),
            "date": time.strftime("%Y-%m-%d %H:%M")}
    out = RESULTS / f"trained_step_{args.profile}"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    lines = [f"# Training steps at trained weights, profile `{args.profile}` ({meta['date']}, CPU, "
             f"{meta['threads']} threads)", "",
             "Median ms per step over interleaved rounds (learning rate 0, so the weights stay fixed). real: the first "
             "batch of training images; random: uniform inputs of that shape. keep: subnormal floats as computed; "
             "flush: flushed to zero (`torch.set_flush_denormal(True)`; training does not set it). The last column: "
             "the largest fraction of subnormal entries in any layer's output gradient (real images, kept).", "",
             "| run | weights | objective | real keep | real flush | random keep | random flush | s/epoch (real keep) "
             "| max subnormal fraction |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results.values():
        s = r["seconds_per_step"]
        worst = max(r["subnormal_fraction_of_output_grads_real"].values(), default=0.0)
        lines.append(f"| {r['run']} | {r['weights']} | {' + '.join(r['objective'])} | {1e3 * s['real_keep']:.1f} | "
                     f"{1e3 * s['real_flush']:.1f} | {1e3 * s['random_keep']:.1f} | {1e3 * s['random_flush']:.1f} | "
                     f"{r['seconds_per_epoch_real_keep']:.1f} | {worst:.2e} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("wrote", out.with_suffix(".json"), "and", out.with_suffix(".md"))


if __name__ == "__main__":
    main()
