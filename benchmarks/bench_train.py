"""Seconds per training step: plain cross-entropy, the "floor" (one cross-entropy forward+backward
over a batch three times as large) and hamming+stability (the paper's objective at its weights, the
literal eq. 16: logits, batch sum), on SmallCNN and CWCNN (MNIST shapes, batch 128, 2 threads), with the
Hamming regularizer compiled by torch.compile (the training default) and eager (the hand-written
autograd function, ``ROBUSTLIB_COMPILE=0``). Issue target: hamming+stability <= 1.15x the floor on both
models.

Run:  python benchmarks/bench_train.py            (writes benchmarks/results/train_step.{json,md})
      python benchmarks/bench_train.py --quick    (fewer steps, for a smoke check)

Each configuration is timed in several interleaved rounds (so slow drift of the machine hits all
of them alike) and the median step time is reported. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from robustlib.models import build_model
from robustlib.regularizers import StepContext, build_objective
from robustlib.threat import ThreatModel

RESULTS = Path(__file__).resolve().parent / "results"
MNIST = {"in_channels": 1, "image_size": 28, "num_classes": 10, "mean": (0.1307,), "std": (0.3081,)}
PAPER_HS = {"ce": 1.0, "hamming": {"weight": 2400.0, "alpha": 8.0}, "stability": {"weight": 0.8}}
CONFIGS: dict[str, tuple[dict[str, Any], int, bool]] = {
    # name: (objective, batch multiplier, compile the regularizer)
    "plain": ({"ce": 1.0}, 1, True),
    "floor_3x_batch": ({"ce": 1.0}, 3, True),
    "hamming_stability": (PAPER_HS, 1, True),
    "hamming_stability_eager": (PAPER_HS, 1, False),
}


class StepTimer:
    """Times training steps of one objective on one model with fixed random data."""

    def __init__(self, model_name: str, objective: Mapping[str, Any], batch: int, eps: float = 0.3,
                 seed: int = 0, spectral_norm: bool = False, compile_regularizer: bool = True,
                 model_kwargs: Mapping[str, Any] = MNIST, norm: str = "linf", device: str = "cpu") -> None:
        self.compile = "1" if compile_regularizer else "0"
        torch.manual_seed(seed)
        kw = dict(model_kwargs)
        self.model = build_model(model_name, spectral_norm=spectral_norm, **kw).train().to(device)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.0, momentum=0.9, weight_decay=5e-4)
        # lr=0: every step does the full work of a real step on the same weights, so timings do
        # not drift with the weights (diverging weights could slow steps down through denormals).
        self.objective = build_objective(objective, ramp=None)
        g = torch.Generator().manual_seed(seed)
        size = int(kw.get("image_size", 28))
        self.x = torch.rand(batch, int(kw.get("in_channels", 1)), size, size, generator=g).to(device)
        self.y = torch.randint(0, int(kw.get("num_classes", 10)), (batch,), generator=g).to(device)
        self.threat = ThreatModel(norm, eps)
        self.gen = torch.Generator(device=device).manual_seed(seed + 1)
        self.device = torch.device(device)

    def step(self) -> None:
        os.environ["ROBUSTLIB_COMPILE"] = self.compile
        ctx = StepContext(self.model, self.x, self.y, self.threat, 0.5, self.gen)
        loss, _ = self.objective(ctx)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    def time(self, steps: int) -> float:
        t0 = time.perf_counter()
        for _ in range(steps):
            self.step()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) / steps


def time_interleaved(timers: Mapping[str, StepTimer], steps: int, rounds: int, warmup: int) -> dict[str, float]:
    """Median seconds per step of each timer over ``rounds`` interleaved rounds of ``steps`` steps."""
    for t in timers.values():
        t.time(warmup)
    samples: dict[str, list[float]] = {name: [] for name in timers}
    for _ in range(rounds):
        for name, t in timers.items():
            samples[name].append(t.time(steps))
    return {name: statistics.median(s) for name, s in samples.items()}


def run(models: list[str], batch: int, steps: int, rounds: int, warmup: int, threads: int) -> dict[str, Any]:
    torch.set_num_threads(threads)
    results: dict[str, Any] = {}
    for model in models:
        from robustlib.regularizers import manifold

        manifold._COMPILED.update(signature=None, fn=None)  # compile for this model's shapes
        timers = {name: StepTimer(model, obj, batch * mult, compile_regularizer=c)
                  for name, (obj, mult, c) in CONFIGS.items()}
        sec = time_interleaved(timers, steps, rounds, warmup)
        results[model] = {
            "seconds_per_step": sec,
            "floor_over_plain": sec["floor_3x_batch"] / sec["plain"],
            "hamming_stability_over_plain": sec["hamming_stability"] / sec["plain"],
            "hamming_stability_over_floor": sec["hamming_stability"] / sec["floor_3x_batch"],
            "hamming_stability_eager_over_floor": sec["hamming_stability_eager"] / sec["floor_3x_batch"],
        }
        print(f"{model}: " + ", ".join(f"{k} {1e3 * v:.1f} ms" for k, v in sec.items())
              + f" | h+s / floor = {results[model]['hamming_stability_over_floor']:.3f}")
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["smallcnn", "cwcnn"])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=10, help="steps per timed round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="2 rounds of 3 steps")
    ap.add_argument("--out", type=Path, default=RESULTS / "train_step")
    args = ap.parse_args()
    if args.quick:
        args.steps, args.rounds, args.warmup = 3, 2, 1
    results = run(args.models, args.batch, args.steps, args.rounds, args.warmup, args.threads)
    meta = {"torch": torch.__version__, "threads": args.threads, "batch": args.batch, "steps": args.steps,
            "rounds": args.rounds, "machine": platform.machine(), "processor": platform.processor(),
            "target": "hamming_stability_over_floor <= 1.15", "date": time.strftime("%Y-%m-%d %H:%M")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    lines = ["| model | plain ms | floor (3x batch) ms | hamming+stability ms | h+s eager ms | floor/plain | "
             "h+s/plain | h+s/floor | h+s eager/floor |", "|---|---|---|---|---|---|---|---|---|"]
    for m, r in results.items():
        s = r["seconds_per_step"]
        lines.append(f"| {m} | {1e3 * s['plain']:.1f} | {1e3 * s['floor_3x_batch']:.1f} | "
                     f"{1e3 * s['hamming_stability']:.1f} | {1e3 * s['hamming_stability_eager']:.1f} | "
                     f"{r['floor_over_plain']:.2f} | {r['hamming_stability_over_plain']:.2f} | "
                     f"{r['hamming_stability_over_floor']:.3f} | {r['hamming_stability_eager_over_floor']:.3f} |")
    header = f"# Training step cost ({meta['date']}, {args.threads} threads)\n\n"
    args.out.with_suffix(".md").write_text(header + "\n".join(lines) + "\n\nTarget: h+s/floor <= 1.15 (h+s: Hamming "
                                           "regularizer compiled by torch.compile, the training default; eager: "
                                           "ROBUSTLIB_COMPILE=0).\n")
    print("wrote", args.out.with_suffix(".json"), "and", args.out.with_suffix(".md"))


if __name__ == "__main__":
    main()
