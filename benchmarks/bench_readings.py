"""Size of each reading of eq. 17 (the Hamming term, ``robustlib.regularizers.manifold.READINGS``) against the
default reading, on SmallCNN / CIFAR-10 at initialisation: 128 real training images, rho a random corner of the
eps-cube (x +/- rho clipped to [0, 1], as in training), alpha 8, for several initialisation seeds and both ends of
the eps ramp (2/255 and 8/255). Also the stability term (eq. 16, logits, batch sum) over the default Hamming term
(appendix A: gamma_H / gamma_S was chosen so that the weighted losses are about equal at initialisation).

Run:  python benchmarks/bench_readings.py       (needs data/cifar10; CPU, seconds)
Writes benchmarks/results/hamming_readings.{json,md}.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import torch

from robustlib.data.datasets import dataset_info, load_split
from robustlib.models import build_model
from robustlib.regularizers.manifold import DEFAULT_READING, READINGS, hamming_reading, stability
from robustlib.threat import ThreatModel

RESULTS = Path(__file__).resolve().parent / "results"


def measure(seeds: range, eps_values: tuple[float, ...], batch: int = 128, alpha: float = 8.0) -> dict:
    info = dataset_info("cifar10")
    data = load_split("cifar10", train=True, root=Path("data"))
    x = data.images(torch.arange(batch))
    rows = []
    for seed in seeds:
        torch.manual_seed(seed)
        model = build_model("smallcnn", in_channels=3, image_size=32, num_classes=10, mean=list(info.mean),
                            std=list(info.std))
        for eps in eps_values:
            rho = ThreatModel("linf", eps).random_corner(x, torch.Generator().manual_seed(1000 + seed))
            with torch.no_grad():
                out_p, zp = model((x + rho).clamp(0, 1), return_preacts=True)
                out_m, zm = model((x - rho).clamp(0, 1), return_preacts=True)
                values = {r: float(hamming_reading(zp, zm, alpha, r)) for r in READINGS}
                rows.append({"seed": seed, "eps": eps, "values": values,
                             "ratio": {r: v / values[DEFAULT_READING] for r, v in values.items()},
                             "stability_over_hamming": float(stability(out_p, out_m)) / values[DEFAULT_READING]})
    summary = {}
    for r in READINGS:
        ratios = [row["ratio"][r] for row in rows]
        summary[r] = {"formula": READINGS[r], "min": min(ratios), "median": statistics.median(ratios),
                      "max": max(ratios)}
    s_over_h = [row["stability_over_hamming"] for row in rows]
    return {"date": time.strftime("%Y-%m-%d %H:%M"), "batch": batch, "alpha": alpha, "seeds": list(seeds),
            "eps": list(eps_values), "readings": summary, "stability_over_hamming": {
                "min": min(s_over_h), "median": statistics.median(s_over_h), "max": max(s_over_h)}, "rows": rows}


def main() -> None:
    torch.set_num_threads(2)
    res = measure(range(5), (2 / 255, 8 / 255))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "hamming_readings.json").write_text(json.dumps(res, indent=1) + "\n")
    lines = ["# Readings of eq. 17 against the default (SmallCNN / CIFAR-10, initialisation)", "",
             f"{res['date']}: {res['batch']} training images, alpha {res['alpha']}, initialisation seeds "
             f"{res['seeds']}, eps 2/255 and 8/255 (x +/- rho clipped to [0, 1]); per layer j of m_j units, "
             "H_k = 1/2 |tanh(alpha z+_k) - tanh(alpha z-_k)|, averaged over layers and examples.", "",
             "| reading | per-layer value | value / default: min | median | max |", "|---|---|---|---|---|"]
    for r, s in res["readings"].items():
        lines.append(f"| `{r}` | {s['formula']} | {s['min']:.4g} | {s['median']:.4g} | {s['max']:.4g} |")
    so = res["stability_over_hamming"]
    lines += ["", f"Stability (eq. 16, logits, batch sum) / default Hamming: min {so['min']:.4g}, median "
              f"{so['median']:.4g}, max {so['max']:.4g} (unweighted).", ""]
    (RESULTS / "hamming_readings.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
