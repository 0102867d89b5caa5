"""Verify shards as tasks of their own: the MILP examples of a verify stage split into blocks that
several workers compute before the stage runs; the stage then only loads and merges them.

The verify stage (``robustlib.stages.verify``) passes ``shard_dir=runs/<run>/verify_shards/eps_<eps>``
to ``robustlib.verification.shards.verify``, which saves its results per block of ``verify.shard_size`` examples
under a hash of the whole computation (``verify_key``: weights, examples, PGD counterexamples,
settings) and loads every block whose file is there. A shard task builds the stage's inputs with the
stage's own functions (``setup``, ``test_examples``, the seeded ``pgd``), computes its block with the
library's ``verify`` on that block's examples (each example's result depends on that example alone) and
saves it where and as ``verify`` would. A block whose hash does not match is ignored by the stage and
recomputed there: a shard task can save time, never change a result.

Run one shard by hand: ``python -m robustlib.scaleout.shards RUN EPS START`` (from the repository root).
"""

from __future__ import annotations

import argparse
import inspect
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from robustlib.attacks.gradient import pgd
from robustlib.pipeline import paths
from robustlib.pipeline.io import load_model
from robustlib.stages.common import setup, test_examples
from robustlib.threat import ThreatModel
from robustlib.verification.shards import _save_shard, _shard_file, verify, verify_key
from robustlib.verification.solvers import solver_settings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Shard:
    run: str
    eps: float
    start: int

    @property
    def key(self) -> str:
        return f"verify-shard@{self.run}/eps_{self.eps:g}/{self.start}"


def plan_shards(params: Mapping[str, Any], run: str) -> list[Shard]:
    """The shards of ``verify@run`` (none unless ``run`` is one of ``verify.milp_runs``)."""
    vp = params["verify"]
    if run not in vp["milp_runs"]:
        return []
    n, size = int(vp["n_test"]), int(vp["shard_size"])
    if n_test := params.get("data", {}).get("n_test"):
        n = min(n, int(n_test))
    return [Shard(run, float(eps), s) for eps in vp["eps"] for s in range(0, n, size)]


def shard_key(model, x, y, counterexamples, eps: float, vp: Mapping[str, Any], seed: int) -> str:
    """The hash under which ``verify`` saves and looks up the stage's shards: the same settings that
    ``verify`` hashes, from the arguments the verify stage passes (``attack_steps`` at ``verify``'s default)."""
    attack_steps = inspect.signature(verify).parameters["attack_steps"].default
    solver = str(vp["solver"])
    kw = dict(eps=float(eps), norm="linf", time_limit=float(vp["time_limit"]), bounds=vp["bounds"],
              attack_steps=int(attack_steps), solver=solver, margin_atol=float(vp["margin_atol"]),
              margin_rtol=float(vp["margin_rtol"]), margin_float32=bool(vp["margin_float32"]), seed=int(seed))
    ces = [c.detach().cpu() for c in counterexamples]
    settings = {**kw, "solver_settings": solver_settings(solver)}
    return verify_key(model, x.detach().cpu().float(), y.detach().cpu(), ces, settings)


def compute_block(model, x, y, counterexamples, eps: float, vp: Mapping[str, Any], seed: int, start: int,
                  shard_dir: Path, processes: int = 1) -> Path | None:
    """Compute and save the block of examples starting at ``start`` as ``verify`` would save it (the
    file, and ``None`` when ``start`` lies past the last example)."""
    n, size = len(y), int(vp["shard_size"])
    if start >= n:
        return None
    if start % size:
        raise ValueError(f"a shard starts at a multiple of verify.shard_size ({size}), got {start}")
    end = min(start + size, n)
    key = shard_key(model, x, y, counterexamples, eps, vp, seed)
    path = _shard_file(Path(shard_dir), key, start)
    if path.exists():
        return path
    results = verify(model, x[start:end], y[start:end], eps, "linf", time_limit=float(vp["time_limit"]),
                     processes=processes, counterexamples=counterexamples[start:end], bounds=vp["bounds"],
                     solver=str(vp["solver"]), margin_atol=float(vp["margin_atol"]),
                     margin_rtol=float(vp["margin_rtol"]), margin_float32=bool(vp["margin_float32"]), seed=seed,
                     progress=False)
    _save_shard(path, key, start, results)
    return path


def compute_stage_shard(run: str, eps: float, start: int, params_file: str = "params.yaml",
                        output_root: str | None = None, processes: int | None = None) -> dict[str, Any]:
    """One shard of ``verify@run`` in the workspace of the working directory, from the stage's own inputs."""
    t0 = time.perf_counter()
    if output_root is None:
        output_root = f"reports/{yaml.safe_load(Path(params_file).read_text())['base']['profile']}"
    env = setup(params_file, output_root)
    vp, seed = env.params["verify"], int(env.params["base"]["seed"])
    model = load_model(paths.model_path(env.out, run))
    x, y, _ = test_examples(env, run, int(vp["n_test"]))
    x_adv = pgd(model, x, y, ThreatModel("linf", eps), steps=int(vp["pgd_steps"]), restarts=int(vp["pgd_restarts"]),
                generator=torch.Generator().manual_seed(seed)).points
    shard_dir = paths.verify_shard_dir(env.out, run) / f"eps_{eps:g}"
    path = compute_block(model, x, y, x_adv, eps, vp, seed, start, shard_dir,
                         processes=int(processes or vp["processes"]))
    return {"run": run, "eps": eps, "start": start, "file": None if path is None else str(path),
            "seconds": round(time.perf_counter() - t0, 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m robustlib.scaleout.shards", description=__doc__.split("\n")[0])
    parser.add_argument("run")
    parser.add_argument("eps", type=float)
    parser.add_argument("start", type=int)
    parser.add_argument("--params-file", default="params.yaml")
    parser.add_argument("--output-root", default=None, help="default: reports/<base.profile>")
    parser.add_argument("--processes", type=int, default=None, help="default: verify.processes")
    args = parser.parse_args(argv)
    if not math.isfinite(args.eps) or args.eps < 0:
        parser.error("eps must be a finite number >= 0")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    out = compute_stage_shard(args.run, args.eps, args.start, args.params_file, args.output_root, args.processes)
    logger.info("shard %s", out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
