"""What every stage does first (resolve paths, read and validate params, fix threads and device), and
the inputs several stages share (the run's test examples, the cross-run stages' input folder)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from robustlib import params as P

logger = logging.getLogger(__name__)


@dataclass
class StageEnv:
    root: Path  # project root (holds dvc.yaml)
    out: Path  # output root: root itself under DVC, a scratch folder when exploring
    params: dict[str, Any]
    device: torch.device

    @property
    def data_root(self) -> Path:
        from robustlib.data import data_root

        return data_root(self.root / self.params["base"]["data_root"])


def input_dir(env: StageEnv, input_root: str | None) -> Path:
    """Where a cross-run stage reads the per-run stages' outputs: ``input_root`` (relative to the
    project root), or the output root itself (as under DVC)."""
    return env.out if input_root is None else (env.root / input_root).resolve()


def test_examples(env: StageEnv, run: str, n: int) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """The first ``n`` test examples of the run's saved split (the same indices in every stage)."""
    from robustlib import paths
    from robustlib.data import Split, load_split

    split = Split.load(paths.split_path(env.out, run))
    idx = split.test[:n]
    test = load_split(split.dataset, train=False, root=env.data_root)
    return test.images(idx), test.labels(idx), idx


def setup(params_file: str, output_root: str) -> StageEnv:
    """Validate ``params_file`` (relative to the project root), set torch threads, pick the device."""
    root = P.project_root()
    params = P.load(root / params_file)
    base = params["base"]
    torch.set_num_threads(int(base.get("threads", 2)))
    want = str(base.get("device", "auto"))
    if want == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(want)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise P.ParamsError("base.device is 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    out = (root / output_root).resolve()
    logger.info("profile %s, device %s, outputs under %s", base.get("profile"), device, out)
    return StageEnv(root, out, params, device)
