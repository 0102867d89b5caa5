"""Where every stage writes, relative to an output root (the project root under DVC; a scratch
folder such as ``runs/explore`` when a notebook is run by hand). dvc.yaml declares the same paths;
``tests/test_pipeline_layout.py`` checks that the two agree."""

from __future__ import annotations

from pathlib import Path


def run_dir(root: Path, run: str) -> Path:
    return Path(root) / "runs" / run


def model_path(root: Path, run: str) -> Path:
    return run_dir(root, run) / "model.pt"


def split_path(root: Path, run: str) -> Path:
    return run_dir(root, run) / "split.json"


def resume_path(root: Path, run: str) -> Path:
    """The per-epoch checkpoint used to resume an interrupted run; deleted when the run completes."""
    return run_dir(root, run) / "resume.pt"


def train_metrics_path(root: Path, run: str) -> Path:
    return Path(root) / "reports" / "metrics" / "train" / f"{run}.json"


def train_curve_path(root: Path, run: str) -> Path:
    return Path(root) / "reports" / "curves" / "train" / f"{run}.csv"


def dvclive_dir(root: Path, run: str) -> Path:
    return Path(root) / "reports" / "dvclive" / "train" / run


def tables_dir(root: Path) -> Path:
    return Path(root) / "reports" / "tables"


def figures_dir(root: Path) -> Path:
    return Path(root) / "reports" / "figures"


def attack_results_path(root: Path, run: str) -> Path:
    """Per-example attack results (index, clean_correct, robust_<attack>..., worst cases)."""
    return Path(root) / "reports" / "attack" / f"{run}.csv"


def attack_curve_path(root: Path, run: str) -> Path:
    return Path(root) / "reports" / "curves" / "attack" / f"{run}.csv"


def attack_metrics_path(root: Path, run: str) -> Path:
    return Path(root) / "reports" / "metrics" / "attack" / f"{run}.json"


def verify_results_path(root: Path, run: str) -> Path:
    """Per-example verification results (index, eps, verdict, seconds, unstable, method, ...)."""
    return Path(root) / "reports" / "verify" / f"{run}.csv"


def verify_metrics_path(root: Path, run: str) -> Path:
    return Path(root) / "reports" / "metrics" / "verify" / f"{run}.json"


def verify_shard_dir(root: Path, run: str) -> Path:
    """Per-shard verification results of an unfinished verify stage (kept outside the stage's DVC
    outputs, which DVC removes before a stage runs, so a killed stage resumes from them); deleted when
    the stage completes."""
    return run_dir(root, run) / "verify_shards"


def lpips_model_path(root: Path) -> Path:
    """The fixed LPIPS network of the NPTM attacks (LPA, PPGD), trained by the lpips stage."""
    return Path(root) / "runs" / "_lpips" / "model.pt"


def lpips_resume_path(root: Path) -> Path:
    return Path(root) / "runs" / "_lpips" / "resume.pt"


def lpips_metrics_path(root: Path) -> Path:
    return Path(root) / "reports" / "metrics" / "lpips.json"
