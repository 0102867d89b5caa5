"""Where every stage writes, relative to an output root: under DVC a profile's own folder,
``reports/<profile>/`` (``profile_root``), so that every profile's results live side by side and
switching profile never touches another profile's files; a scratch folder such as ``runs/explore``
when a notebook is run by hand. Model checkpoints go to ``<root>/runs/<run>/`` (DVC-cached, not in
git), everything else (metrics, per-example results, tables, figures, report.md) is committed.
dvc.yaml declares the same paths; ``tests/test_pipeline_layout.py`` checks that the two agree."""

from __future__ import annotations

from pathlib import Path


def profile_root(project: Path, profile: str) -> Path:
    """The output root of ``profile`` under DVC (dvc.yaml passes ``reports/${base.profile}``)."""
    return Path(project) / "reports" / profile


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
    return Path(root) / "metrics" / "train" / f"{run}.json"


def train_curve_path(root: Path, run: str) -> Path:
    return Path(root) / "curves" / "train" / f"{run}.csv"


def dvclive_dir(root: Path, run: str) -> Path:
    return Path(root) / "dvclive" / "train" / run


def tables_dir(root: Path) -> Path:
    return Path(root) / "tables"


def figures_dir(root: Path) -> Path:
    return Path(root) / "figures"


def attack_results_path(root: Path, run: str) -> Path:
    """Per-example attack results (index, clean_correct, robust_<attack>..., worst cases)."""
    return Path(root) / "attack" / f"{run}.csv"


def attack_curve_path(root: Path, run: str) -> Path:
    return Path(root) / "curves" / "attack" / f"{run}.csv"


def attack_metrics_path(root: Path, run: str) -> Path:
    return Path(root) / "metrics" / "attack" / f"{run}.json"


def verify_results_path(root: Path, run: str) -> Path:
    """Per-example verification results (index, eps, verdict, seconds, unstable, method, ...)."""
    return Path(root) / "verify" / f"{run}.csv"


def verify_metrics_path(root: Path, run: str) -> Path:
    return Path(root) / "metrics" / "verify" / f"{run}.json"


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
    return Path(root) / "metrics" / "lpips.json"


def executed_dir(root: Path) -> Path:
    """Executed copies of the stage notebooks (papermill's output notebooks)."""
    return Path(root) / "executed"


def report_path(root: Path) -> Path:
    """The profile's one-page report."""
    return Path(root) / "report.md"


def provenance_path(root: Path) -> Path:
    """The commit, dirty files and resolved params the profile's results came from (report stage)."""
    return Path(root) / "provenance.json"


def gallery_figure_path(root: Path) -> Path:
    """The adversarial-example gallery's figure (gallery stage)."""
    return figures_dir(root) / "gallery.png"


def gallery_table_path(root: Path) -> Path:
    """The gallery's predictions (``robustlib.evaluation.schema.GALLERY_COLUMNS``; gallery stage)."""
    return tables_dir(root) / "gallery.csv"
