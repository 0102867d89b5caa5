"""What every stage does first (resolve paths, read and validate params, fix threads and device), and
the inputs several stages share (where the run's test examples are, the cross-run stages' input folder)."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from robustlib.data.datasets import Split
from robustlib.data.datasets import data_root as resolve_data_root
from robustlib.pipeline import params as P
from robustlib.pipeline import paths

logger = logging.getLogger(__name__)


@dataclass
class StageEnv:
    root: Path  # project root (holds dvc.yaml)
    out: Path  # output root: reports/<profile> under DVC, a scratch folder when exploring
    params: dict[str, Any]
    device: torch.device

    @property
    def data_root(self) -> Path:
        return resolve_data_root(self.root / self.params["base"]["data_root"])


def input_dir(env: StageEnv, input_root: str | None) -> Path:
    """Where a cross-run stage reads the per-run stages' outputs: ``input_root`` (relative to the
    project root); ``None``: the output root itself; ``""``: the active profile's pipeline results,
    ``reports/<base.profile>`` (what a notebook opened in JupyterLab reads)."""
    if input_root is None:
        return env.out
    if input_root == "":
        return paths.profile_root(env.root, env.params["base"]["profile"]).resolve()
    return (env.root / input_root).resolve()


def test_examples(env: StageEnv, run: str, n: int) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """The first ``n`` test examples of the run's saved split (``Split.test_examples``)."""
    return Split.load(paths.split_path(env.out, run)).test_examples(n, env.data_root)


PARAMS_LOG = "ROBUSTLIB_PARAMS_LOG"
"""Environment variable: a file to which every stage appends the params it reads (``ReadLog``); the
pipeline test compares them with the ``params:`` that dvc.yaml declares for the stage."""


class ReadLog(dict):
    """Params (a dict) that append the dotted path of every value read to a JSON-lines file, with the
    stage's DVC name: a leaf read by ``[]``/``get`` (also a missing key), or a whole section read by
    ``items()``/``values()`` (or anything built on them, e.g. JSON), and ``<path>.*`` when its keys are
    listed (the set of names, e.g. of the runs). Copies are plain dicts whose leaves were read.
    Membership tests (``in``) and ``len`` are not recorded."""

    def __init__(self, data: Any = (), stage: str = "", file: Path | None = None, path: str = "",
                 seen: set | None = None) -> None:
        super().__init__(data)
        self._stage, self._file, self._path = stage, file, path
        self._seen = set() if seen is None else seen

    def __reduce__(self):  # copies (deepcopy, pickle) are plain dicts: the log stays with the stage's params
        return dict, (dict(self),)

    def _record(self, path: str) -> None:
        if self._file is not None and path not in self._seen:
            self._seen.add(path)
            with open(self._file, "a") as f:
                f.write(json.dumps({"stage": self._stage, "path": path}) + "\n")

    def _sub(self, key: Any) -> str:
        return f"{self._path}.{key}" if self._path else str(key)

    def __getitem__(self, key: Any) -> Any:
        value = super().__getitem__(key)
        if isinstance(value, dict):
            return ReadLog(value, self._stage, self._file, self._sub(key), self._seen)
        self._record(self._sub(key))
        return value

    def get(self, key: Any, default: Any = None) -> Any:
        if key in self:
            return self[key]
        self._record(self._sub(key))
        return default

    def __iter__(self):  # listing the keys reads the structure: ``<path>.*``
        self._record(f"{self._path}.*" if self._path else "*")
        return iter(list(super().keys()))

    def keys(self):
        return list(iter(self))

    def items(self):
        self._record(self._path)
        return dict(super().items()).items()

    def values(self):
        self._record(self._path)
        return dict(super().items()).values()


def setup(params_file: str, output_root: str, stage: str | Callable[[dict], str] | None = None) -> StageEnv:
    """Validate ``params_file`` (relative to the project root), set torch threads, pick the device.
    ``stage`` (the stage's DVC name, or a function of the params giving it): with
    ``ROBUSTLIB_PARAMS_LOG`` set, the stage's params reads are logged there (``ReadLog``)."""
    root = P.project_root()
    params = P.load(root / params_file)
    if stage and os.environ.get(PARAMS_LOG):
        name = stage(params) if callable(stage) else stage
        params = ReadLog(params, name, Path(os.environ[PARAMS_LOG]))
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
