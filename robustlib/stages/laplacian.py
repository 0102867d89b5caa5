"""The laplacian stage: the paper's Table 4 (sparse, paired x±rho regularizer vs the dense heat-kernel
Laplacian over all pairs) from the attack stage's results, and the appendix-B nearest-neighbour
statistics of the training data with a histogram."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd

from robustlib.data.datasets import Split, load_split
from robustlib.data.neighbours import nearest_other_distances, sample_indices, summarize
from robustlib.evaluation import schema
from robustlib.pipeline import paths
from robustlib.pipeline.io import write_json
from robustlib.reporting.figures import neighbour_histogram
from robustlib.reporting.plots import save_figure
from robustlib.reporting.tables import run_summary, write_table
from robustlib.stages.common import input_dir, setup
from robustlib.threat import ThreatModel

logger = logging.getLogger(__name__)


def run(params_file: str = "params.yaml", output_root: str = ".", input_root: str | None = None) -> dict[str, Any]:
    """Write Table 4 and the neighbour statistics (JSON and figure) under ``output_root`` from the
    per-run results and the sparse run's split under ``input_root`` (default: ``output_root``)."""
    env = setup(params_file, output_root, "laplacian")
    inp = input_dir(env, input_root)
    lp = env.params["laplacian"]
    rows = []
    for form, r in (("sparse", lp["sparse_run"]), ("dense", lp["dense_run"])):
        if r is None and form == "dense":  # a profile without the (costly) dense run: Table 4 has the sparse row
            logger.info("laplacian.dense_run is null: Table 4 lists the sparse run only")
            continue
        if r not in env.params["runs"]:
            raise ValueError(f"laplacian: unknown run {r!r}; runs: {sorted(env.params['runs'])}")
        rows.append({schema.REGULARIZER: form, **run_summary(inp, r)})
    table = pd.DataFrame(rows).round(2)
    write_table(table, paths.tables_dir(env.out) / "laplacian_table4")

    split_file = paths.split_path(inp, lp["sparse_run"])
    if not split_file.exists():
        raise FileNotFoundError(f"missing {split_file}: the train stage writes it (`dvc repro`, or the train "
                                "notebook with the same output root)")
    split = Split.load(split_file)
    train = load_split(split.dataset, train=True, root=env.data_root)
    x = train.images(split.train)
    threat = ThreatModel(env.params["train"]["norm"], float(env.params["train"]["eps"]))
    query = sample_indices(x.shape[0], float(lp["fraction"]), int(env.params["base"]["seed"]))
    dists, _ = nearest_other_distances(x, query)
    stats = summarize(dists, x.shape[0], threat, x[0].numel())
    write_json(stats.as_dict(), paths.tables_dir(env.out) / "neighbour_stats.json")
    fig = save_figure(neighbour_histogram(dists, stats), paths.figures_dir(env.out) / "neighbour_distances.png")
    return {"table": table, "stats": stats.as_dict(), "figure": fig}
