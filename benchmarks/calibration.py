"""Which reading of the stability term (eq. 16) do the paper's weights belong to?

Appendix A: "the range of gamma_H / gamma_S was set such that the corresponding losses were roughly equal
for a randomly initialized, untrained network" (grid gamma_H / gamma_S = 100 ... 500), i.e. at
initialisation L_S / L_H should be about 100-500. This measures L_S / L_H at initialisation, on real
training batches (batch 128, train mode, x +/- rho with rho a random corner of the eps-cube, exactly the
training step's views), for each network and each reading of eq. 16 -- f = logits (eq. 4) or softmax,
batch sum (eq. 16) or batch mean -- and the ratio gamma_S L_S / (gamma_H L_H) at the paper's two weight
pairs (2400 / 0.8; 9000 / 0.4 for the verification network). L_H is eq. 17 (a batch mean) throughout.

Run:  python benchmarks/calibration.py           (writes benchmarks/results/calibration.{json,md})
      python benchmarks/calibration.py --quick   (1 seed x 1 batch)

Needs MNIST (shipped) and CIFAR-10 under the data root (``data/cifar10/*.npz``; rows without it are
skipped with a note).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from robustlib.data.datasets import MissingDataError, data_root, dataset_info, load_split
from robustlib.models import build_model
from robustlib.regularizers import StepContext, hamming, stability
from robustlib.threat import ThreatModel

RESULTS = Path(__file__).resolve().parent / "results"
DATA = Path(__file__).resolve().parents[1] / "data"
READINGS = [("logits", "sum"), ("logits", "mean"), ("softmax", "sum"), ("softmax", "mean")]
WEIGHTS = {"2400/0.8": (2400.0, 0.8), "9000/0.4": (9000.0, 0.4)}
# (network, dataset, eps): the paper's networks at the paper's training eps; SmallCNN on MNIST also at
# the default profile's verification eps
SETTINGS = [("smallcnn", "mnist", 0.3), ("smallcnn", "mnist", 0.1), ("cwcnn", "mnist", 0.3),
            ("smallcnn", "cifar10", 8 / 255), ("preactresnet18", "cifar10", 8 / 255)]


def measure(model_name: str, dataset: str, eps: float, seeds: int, batches: int, batch: int) -> dict[str, Any]:
    info = dataset_info(dataset)
    data = load_split(dataset, train=True, root=data_root(DATA))
    kw = {"in_channels": info.in_channels, "image_size": info.image_size, "num_classes": info.num_classes,
          "mean": info.mean, "std": info.std}
    samples: dict[str, list[float]] = {f"{o}/{r}": [] for o, r in READINGS}
    l_h: list[float] = []
    for seed in range(seeds):
        torch.manual_seed(seed)
        model = build_model(model_name, **kw).train()  # training mode: BatchNorm as in the training step
        g = torch.Generator().manual_seed(1000 + seed)
        for _ in range(batches):
            idx = torch.randperm(len(data), generator=g)[:batch]
            x, y = data.images(idx), data.y[idx]
            ctx = StepContext(model, x, y, ThreatModel("linf", eps), 0.0, g)
            with torch.no_grad():
                ctx.run_views(("plus", "minus"), with_preacts=True)
                lh = float(hamming(ctx.preacts["plus"], ctx.preacts["minus"], 8.0))
                l_h.append(lh)
                for o, r in READINGS:
                    p, m = ctx.logits["plus"], ctx.logits["minus"]
                    if o == "softmax":
                        p, m = p.softmax(1), m.softmax(1)
                    samples[f"{o}/{r}"].append(float(stability(p, m, r)) / lh)
    row: dict[str, Any] = {"model": model_name, "dataset": dataset, "eps": eps, "n": len(l_h),
                           "L_H": statistics.mean(l_h)}
    for key, vals in samples.items():
        ratio = statistics.mean(vals)
        row[f"LS/LH {key}"] = ratio
        for wname, (gh, gs) in WEIGHTS.items():
            row[f"gS*LS/(gH*LH) {key} @{wname}"] = gs * ratio / gh
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=3, help="random initialisations per network")
    ap.add_argument("--batches", type=int, default=2, help="data batches per initialisation")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=RESULTS / "calibration")
    args = ap.parse_args()
    if args.quick:
        args.seeds, args.batches = 1, 1
    torch.set_num_threads(args.threads)
    rows, skipped = [], []
    for model_name, dataset, eps in SETTINGS:
        try:
            row = measure(model_name, dataset, eps, args.seeds, args.batches, args.batch)
        except MissingDataError as e:
            skipped.append(f"{model_name}/{dataset}: {e}")
            continue
        rows.append(row)
        print(model_name, dataset, f"eps={eps:.4f}",
              {k: round(v, 4) for k, v in row.items() if k.startswith("LS/LH")}, flush=True)
    meta = {"torch": torch.__version__, "seeds": args.seeds, "batches": args.batches, "batch": args.batch,
            "alpha": 8.0, "date": time.strftime("%Y-%m-%d %H:%M"), "skipped": skipped}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    head = "| network | data | eps | L_H | reading of eq. 16 | L_S/L_H | gS LS / gH LH @2400/0.8 | @9000/0.4 |"
    lines = [head, "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        for o, red in READINGS:
            key = f"{o}/{red}"
            lines.append(f"| {r['model']} | {r['dataset']} | {r['eps']:.4g} | {r['L_H']:.4f} | f = {o}, batch {red} | "
                         f"{r[f'LS/LH {key}']:.4g} | {r[f'gS*LS/(gH*LH) {key} @2400/0.8']:.3g} | "
                         f"{r[f'gS*LS/(gH*LH) {key} @9000/0.4']:.3g} |")
    text = (f"# Stability / Hamming at initialisation ({meta['date']})\n\n"
            f"Random initialisation, train mode, real training batches of {args.batch}, alpha 8; mean over "
            f"{args.seeds} initialisations x {args.batches} batches. Appendix A sets gamma_H / gamma_S in "
            f"100 ... 500 so that gamma_S L_S ~ gamma_H L_H at initialisation, i.e. L_S / L_H ~ 100-500; the "
            f"chosen weights have gamma_H / gamma_S = 3000 (2400/0.8) and 22500 (9000/0.4).\n\n"
            + "\n".join(lines) + "\n")
    if skipped:
        text += "\nSkipped (data missing): " + "; ".join(skipped) + "\n"
    args.out.with_suffix(".md").write_text(text)
    print("wrote", args.out.with_suffix(".json"), "and", args.out.with_suffix(".md"))


if __name__ == "__main__":
    main()
