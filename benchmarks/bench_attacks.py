"""Attack-speed benchmark: PGD iterations per second of robustlib's ``pgd`` vs torchattacks' PGD and
pyautoattack's APGD-CE on the same model and points (2 threads), and the wall time of the whole
attack evaluation of one SmallCNN / MNIST model (PGD curves 20 steps x 10 restarts on a small eps
grid, AutoAttack L-inf and L2) on 1,000 test points, run side by side as the attack stage runs them.

    python benchmarks/bench_attacks.py [--checkpoint runs/hamming_stability/model.pt] [--n 1000]

Writes benchmarks/results/attacks.json and benchmarks/results/attacks.md (``--name`` for another stem,
e.g. ``attacks_cifar10`` with ``--dataset cifar10 --skip-autoattack`` for ReColorAdv's timing).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

from robustlib.attacks.autoattack import SQUARE_QUERIES
from robustlib.attacks.common import NotApplicable
from robustlib.attacks.gradient import pgd
from robustlib.data.datasets import load_split
from robustlib.evaluation import schema
from robustlib.evaluation.curves import robustness_curves  # the attack stage's own curve computation
from robustlib.evaluation.suite import CURVE_AUTOATTACK, CurveSettings, autoattack_in, perceptual_attacks
from robustlib.evaluation.worst_case import evaluate_attacks
from robustlib.pipeline.io import load_model, write_json
from robustlib.pipeline.parallel import Background
from robustlib.pipeline.params import load as load_params
from robustlib.threat import ThreatModel

RESULTS = Path(__file__).parent / "results"
PERCEPTUAL_PROFILE = Path(__file__).resolve().parents[1] / "profiles" / "cifar10-cpu.yaml"
"""Its ``attack.perceptual``: every perceptual attack at Laidlaw et al. 2021's CIFAR-10 budget."""
AUTOATTACK = {"autoattack_version": "standard", "batch_size": 500, "square_escalation": 2,
              "square_queries": SQUARE_QUERIES}
"""AutoAttack's settings here (as attack params): ``robustlib.attacks.autoattack.autoattack``'s defaults."""


def _acc(model, x, y):
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def perceptual_speed(model, x, y, lpips_path: Path, n: int) -> dict:
    """Seconds of each perceptual attack (the attack stage's settings: budgets of Laidlaw et al. 2021,
    their iterations) on the first ``n`` points, one thread, and the accuracy it leaves; ReColorAdv is
    n/a on grayscale data. The NPTM attacks use the lpips stage's network at ``lpips_path``."""
    budgets = load_params(PERCEPTUAL_PROFILE)["attack"]["perceptual"]
    lpips_net = load_model(lpips_path) if lpips_path.exists() else None
    out = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the attack stage's worker processes
    try:
        for attack in perceptual_attacks(budgets, lpips_net):
            torch.manual_seed(0)
            t0 = time.perf_counter()
            try:
                adv = attack(model, x[:n], y[:n]).points
            except NotApplicable as err:
                out[attack.name] = {"not_applicable": str(err)}
                continue
            dt = time.perf_counter() - t0
            out[attack.name] = {"seconds": dt, "seconds_per_100": 100 * dt / n, "acc": _acc(model, adv, y[:n])}
            print(f"  {attack.name:11s} {dt:7.1f} s on {n} points, accuracy left {out[attack.name]['acc']:.3f}",
                  flush=True)
    finally:
        torch.set_num_threads(threads)
    return out


def iteration_speed(model, x, y, eps: float, steps: int, repeats: int = 3) -> dict:
    """``steps`` iterations of each attack on the same points (no restarts), best of ``repeats``.

    ``iters_per_s`` = steps / wall time (what a user waits for; robustlib stops attacking examples
    once fooled); ``example_steps_per_s`` = gradient steps actually executed per example per second
    (robustlib counts its shrinking active set; the others attack every example every step)."""
    import torchattacks  # torchattacks: the reference PGD, installed for the tests and this benchmark only
    from pyautoattack.autopgd_base import APGDAttack  # pyautoattack: loaded only when AutoAttack runs elsewhere

    n = len(y)
    out = {}
    executed = []
    g = torch.Generator().manual_seed(0)

    def run_ours():
        executed.clear()
        return pgd(model, x, y, ThreatModel("linf", eps), steps=steps, generator=g,
                   trace=lambda r, t, idx, xa, loss: executed.append(len(idx) if t < steps else 0)).points

    ta = torchattacks.PGD(model, eps=eps, alpha=2.5 * eps / steps, steps=steps, random_start=True)
    apgd = APGDAttack(model, n_restarts=1, n_iter=steps, eps=eps, norm="Linf", seed=0, device="cpu", loss="ce")
    runs = (("robustlib.pgd", run_ours, None), ("torchattacks.PGD", lambda: ta(x, y), n * steps),
            ("pyautoattack.APGD-CE", lambda: apgd.perturb(x, y), n * steps))
    best: dict = {}
    for _ in range(repeats):  # interleaved, best of ``repeats``: the cores are shared, load varies
        for name, fn, work in runs:
            t0 = time.perf_counter()
            adv = fn()
            dt = time.perf_counter() - t0
            if name not in best or dt < best[name][0]:
                best[name] = (dt, sum(executed) if work is None else work, _acc(model, adv, y))
    for name, (dt, done, acc) in best.items():
        out[name] = {"seconds": dt, "iters_per_s": steps / dt, "example_steps_per_s": done / dt,
                     "example_steps": done, "robust_acc": acc}
        print(f"  {name:22s} {dt:7.2f} s  {steps / dt:8.2f} it/s  {done / dt:10.0f} example-steps/s  "
              f"robust acc {acc:.3f}", flush=True)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default="runs/hamming_stability/model.pt")
    p.add_argument("--data", default="data")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--linf-grid", default="0.1,0.2,0.3")
    p.add_argument("--l2-grid", default="1.0,2.0")
    p.add_argument("--skip-autoattack", action="store_true")
    p.add_argument("--processes", type=int, default=2, help="worker processes, as attack.processes in params")
    p.add_argument("--dataset", default="mnist", help="the checkpoint's dataset (cifar10 for ReColorAdv)")
    p.add_argument("--lpips", default="runs/_lpips/model.pt", help="the lpips stage's network (NPTM attacks)")
    p.add_argument("--perceptual-n", type=int, default=100, help="points for the perceptual attacks' timing")
    p.add_argument("--name", default="attacks", help="results file stem under benchmarks/results/")
    p.add_argument("--note", default="")
    args = p.parse_args(argv)
    ckpt = Path(args.checkpoint)
    if not ckpt.exists():
        sys.exit(f"error: no checkpoint at {ckpt}. Run `dvc repro` (the train stage writes it) or pass "
                 f"--checkpoint PATH to a model saved by robustlib.pipeline.io.save_model.")
    torch.set_num_threads(args.threads)
    model = load_model(ckpt)
    test = load_split(args.dataset, train=False, root=args.data)
    idx = torch.randperm(len(test), generator=torch.Generator().manual_seed(0))[:args.n]  # a random sample: the
    # packed CIFAR-10 test arrays are sorted by class (their first n would be one class)
    x, y = test.images(idx), test.labels(idx)
    res: dict = {"checkpoint": str(ckpt), "n": args.n, "threads": args.threads, "clean_acc": _acc(model, x, y),
                 "torch": torch.__version__, "platform": platform.platform(), "note": args.note}
    print(f"clean accuracy {res['clean_acc']:.4f} on {args.n} points, {args.threads} threads")
    res["speed"] = {}
    for eps in (0.1, 0.3):
        print(f"PGD-20 L-inf eps={eps}:")
        res["speed"][f"linf_{eps}"] = iteration_speed(model, x, y, eps, 20)
    print(f"perceptual attacks on {args.perceptual_n} points:")
    res["perceptual"] = perceptual_speed(model, x, y, Path(args.lpips), args.perceptual_n)

    # The whole evaluation as the attack stage runs it: AutoAttack L-inf and L2 side by side in two
    # forked workers, the PGD curves in a third alongside them (robustlib.pipeline.parallel).
    grids = {"linf": [float(e) for e in args.linf_grid.split(",")], "l2": [float(e) for e in args.l2_grid.split(",")]}
    t_all = time.perf_counter()
    curve_settings = CurveSettings(len(y), grids, 20, 10, 0, 500)
    background = Background(robustness_curves, model, x, y, curve_settings, enabled=args.processes > 1)
    timings, curves = {}, []
    if not args.skip_autoattack:
        aa = [autoattack_in(AUTOATTACK, 0, ThreatModel(norm, eps)) for norm, eps in (("linf", 0.3), ("l2", 2.0))]
        table = evaluate_attacks(model, x, y, {a.name: a for a in aa}, processes=args.processes)
        for a in aa:
            timings[a.name] = table.attrs["seconds"][a.name]
            curves.append(schema.curve_row(a.threat.norm, a.threat.eps, CURVE_AUTOATTACK,
                                           float(table[schema.robust(a.name)].mean())))
            print(f"AutoAttack {a.threat.norm} eps={a.threat.eps}: {timings[a.name]:.1f} s, robust acc "
                  f"{curves[-1][schema.ROBUST_ACC]:.4f}", flush=True)
    t0 = time.perf_counter()
    curve = background.result()
    timings["pgd_curves_wait_after_autoattack"] = time.perf_counter() - t0
    curves += curve.to_dict("records")
    print(curve.to_string(index=False), flush=True)
    timings["total"] = time.perf_counter() - t_all
    res["evaluation_seconds"], res["curves"] = timings, curves
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_json(res, RESULTS / f"{args.name}.json")
    lines = ["# Attack benchmark\n", f"Checkpoint `{ckpt}`, {args.n} {args.dataset} test points, {args.threads} "
             "threads, "
             f"clean accuracy {res['clean_acc']:.4f}. {args.note}\n",
             "| setting | attack | seconds | iterations/s | example-steps/s | robust acc |",
             "|---|---|---|---|---|---|"]
    for setting, rows in res["speed"].items():
        for name, r in rows.items():
            lines.append(f"| PGD-20 {setting} | {name} | {r['seconds']:.2f} | {r['iters_per_s']:.2f} | "
                         f"{r['example_steps_per_s']:.0f} | {r['robust_acc']:.4f} |")
    lines += ["", f"Perceptual attacks (attack-stage settings, one thread) on the first {args.perceptual_n} points, "
              f"`{args.dataset}`:", "", "| attack | seconds per 100 points | accuracy left |", "|---|---|---|"]
    for name, r in res["perceptual"].items():
        lines.append(f"| {name} | n/a ({r['not_applicable'][:40]}) | - |" if "not_applicable" in r else
                     f"| {name} | {r['seconds_per_100']:.1f} | {r['acc']:.3f} |")
    lines += ["", "| evaluation part | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in timings.items()]
    lines += ["", "| norm | eps | attack | robust acc |", "|---|---|---|---|"]
    lines += [f"| {c[schema.NORM]} | {c[schema.EPS]} | {c[schema.ATTACK]} | {c[schema.ROBUST_ACC]:.4f} |"
              for c in curves]
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {RESULTS / args.name}.json and .md")


if __name__ == "__main__":
    main()
