"""Where a profile's results came from: the git commit of the code, the files that differed from it,
and the params file that was run (written next to the profile's report)."""

from __future__ import annotations

import hashlib
import logging
import subprocess
from pathlib import Path
from typing import Any

import yaml

logger = logging.getLogger(__name__)

TRACKED = ("robustlib", "notebooks", "dvc.yaml", "params.yaml", "profiles")
"""What the results depend on besides data: a change here that is not committed is listed as dirty."""


def _git(root: Path, *args: str) -> str | None:
    try:
        res = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        logger.warning("git %s failed: %s", " ".join(args), e)
        return None
    return res.stdout if res.returncode == 0 else None


def record(root: Path, params_file: str | Path) -> dict[str, Any]:
    """The commit (``git rev-parse HEAD``; None outside a git checkout), the uncommitted changes to
    the code, notebooks, pipeline and params (``git status --porcelain``), and the params file's
    SHA-256 and content."""
    root = Path(root)
    text = (root / params_file).read_text()
    status = _git(root, "status", "--porcelain", "--", *TRACKED)
    return {
        "commit": (_git(root, "rev-parse", "HEAD") or "").strip() or None,
        "dirty": None if status is None else [line[3:] for line in status.splitlines() if line.strip()],
        "params_file": str(params_file),
        "params_sha256": hashlib.sha256(text.encode()).hexdigest(),
        "params": yaml.safe_load(text),
    }
