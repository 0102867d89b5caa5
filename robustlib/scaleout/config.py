"""Worker settings of the parallel runner, per profile, from ``scaleout.yaml`` (validated here).

The settings are not in params.yaml: ``robustlib.pipeline.params`` (a dependency of every stage) rejects sections
that no stage reads, and no stage reads these, so they live beside the profiles in a file of their own.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from dask.utils import parse_bytes

logger = logging.getLogger(__name__)

CONFIG_FILE = "scaleout.yaml"
KEYS = {"workers", "threads_per_worker", "memory_per_worker", "gpus_per_worker", "retries", "verify_shards", "slurm"}
SLURM_KEYS = {"queue", "account", "walltime", "job_extra_directives", "job_script_prologue", "python",
              "local_directory", "log_directory", "interface"}


class ScaleoutConfigError(ValueError):
    """Bad scaleout settings: the message names the key and what is expected."""


@dataclass(frozen=True)
class ScaleoutConfig:
    """Resolved settings for one profile."""

    profile: str
    workers: int
    threads_per_worker: int
    memory_per_worker: int  # bytes
    gpus_per_worker: int | str  # an integer, or "auto" (1 where CUDA exists, resolved by the cluster)
    retries: int
    verify_shards: bool
    slurm: dict[str, Any] = field(default_factory=dict)

    def gpus(self, cuda_devices: int) -> int:
        """GPUs per worker given ``cuda_devices`` visible here ("auto": 1 when there is one, else 0)."""
        if self.gpus_per_worker == "auto":
            return 1 if cuda_devices > 0 else 0
        return int(self.gpus_per_worker)


def _merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(dict(base))
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else copy.deepcopy(v)
    return out


def _int(where: str, value: Any, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ScaleoutConfigError(f"{where} must be an integer >= {lo}, got {value!r}")
    return value


def resolve(raw: Mapping[str, Any], profile: str, known_profiles: set[str] | None = None) -> ScaleoutConfig:
    """Validate the file's content ``raw`` and resolve ``profile``'s settings (``default`` overridden by
    the profile's entry). ``known_profiles``: the profiles that exist (an entry for another name is an error)."""
    if not isinstance(raw, Mapping) or "default" not in raw:
        raise ScaleoutConfigError(f"{CONFIG_FILE} must be a mapping with a 'default' entry")
    for name, entry in raw.items():
        if name != "default" and known_profiles is not None and name not in known_profiles:
            raise ScaleoutConfigError(f"{CONFIG_FILE}: {name!r} is no profile; profiles: {sorted(known_profiles)}")
        if not isinstance(entry, Mapping):
            raise ScaleoutConfigError(f"{CONFIG_FILE}: {name} must be a mapping, got {entry!r}")
        _refuse_unknown(entry, KEYS, name)
        slurm = entry.get("slurm") or {}
        if not isinstance(slurm, Mapping):
            raise ScaleoutConfigError(f"{CONFIG_FILE}: {name}.slurm must be a mapping, got {slurm!r}")
        _refuse_unknown(slurm, SLURM_KEYS, f"{name}.slurm")
    s = _merge(raw["default"], raw.get(profile) or {})
    missing = sorted(KEYS - {"slurm"} - set(s))
    if missing:
        raise ScaleoutConfigError(f"{CONFIG_FILE}: {profile} lacks {missing} (set them under default)")
    where = f"{CONFIG_FILE}: {profile}"
    try:
        memory = parse_bytes(s["memory_per_worker"])
    except (ValueError, TypeError) as err:
        raise ScaleoutConfigError(f"{where}.memory_per_worker must be a size such as '8GiB', "
                                  f"got {s['memory_per_worker']!r}") from err
    if memory < 2**28:
        raise ScaleoutConfigError(f"{where}.memory_per_worker must be at least 256MiB, got {s['memory_per_worker']!r}")
    gpus = s["gpus_per_worker"]
    if gpus != "auto":
        _int(f"{where}.gpus_per_worker ('auto' or)", gpus, 0)
    if not isinstance(s["verify_shards"], bool):
        raise ScaleoutConfigError(f"{where}.verify_shards must be true or false, got {s['verify_shards']!r}")
    extra = (s.get("slurm") or {}).get("job_extra_directives", [])
    if not (isinstance(extra, list) and all(isinstance(e, str) for e in extra)):
        raise ScaleoutConfigError(f"{where}.slurm.job_extra_directives must be a list of strings, got {extra!r}")
    return ScaleoutConfig(profile=profile, workers=_int(f"{where}.workers", s["workers"], 1),
                          threads_per_worker=_int(f"{where}.threads_per_worker", s["threads_per_worker"], 1),
                          memory_per_worker=int(memory), gpus_per_worker=gpus,
                          retries=_int(f"{where}.retries", s["retries"], 0), verify_shards=s["verify_shards"],
                          slurm=dict(s.get("slurm") or {}))


def load(root: str | Path, profile: str) -> ScaleoutConfig:
    """``profile``'s settings from ``<root>/scaleout.yaml``."""
    root = Path(root)
    path = root / CONFIG_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: the parallel runner's settings live there")
    known = {p.stem for p in (root / "profiles").glob("*.yaml")}
    return resolve(yaml.safe_load(path.read_text()) or {}, profile, known)


def _refuse_unknown(entry: Mapping, known: set[str], where: str) -> None:
    """Raise ``ScaleoutConfigError`` naming each key of ``entry`` (at ``where`` in the file) not in ``known``."""
    bad = sorted(set(entry) - known)
    if bad:
        raise ScaleoutConfigError(f"{CONFIG_FILE}: unknown key(s) {[f'{where}.{b}' for b in bad]}; "
                                  f"known: {sorted(known)}")
