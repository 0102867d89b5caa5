"""provenance.record: the commit, the uncommitted changes to what results depend on, and the params."""

import subprocess

import yaml

from robustlib.pipeline import provenance


def _git(ws, *args):
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=ws, check=True,
                   capture_output=True)


def test_record_names_the_commit_and_dirty_files(tmp_path):
    ws = tmp_path
    (ws / "robustlib").mkdir()
    (ws / "robustlib" / "x.py").write_text("a = 1\n")
    (ws / "params.yaml").write_text("base: {profile: smoke}\n")
    (ws / "notes.txt").write_text("not a dependency\n")
    _git(ws, "init", "-q")
    _git(ws, "add", "-A")
    _git(ws, "commit", "-qm", "c")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ws, capture_output=True, text=True).stdout.strip()
    clean = provenance.record(ws, "params.yaml")
    assert clean["commit"] == head and clean["dirty"] == [] and clean["params"] == {"base": {"profile": "smoke"}}
    (ws / "robustlib" / "x.py").write_text("a = 2\n")
    (ws / "params.yaml").write_text("base: {profile: default}\n")
    (ws / "notes.txt").write_text("changed, but results do not depend on it\n")
    dirty = provenance.record(ws, "params.yaml")
    assert dirty["dirty"] == ["params.yaml", "robustlib/x.py"]  # whole paths (no stripped first character)
    assert dirty["params_sha256"] != clean["params_sha256"]
    assert dirty["params"] == yaml.safe_load((ws / "params.yaml").read_text())


def test_record_outside_git_says_so(tmp_path):
    (tmp_path / "params.yaml").write_text("base: {}\n")
    rec = provenance.record(tmp_path, "params.yaml")
    assert rec["commit"] is None and rec["dirty"] is None
