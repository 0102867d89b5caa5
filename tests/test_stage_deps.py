"""Each stage's DVC dependencies are exactly the robustlib code its notebook runs (scripts/stage_deps.py
computes it), and name only files that exist: moving or splitting a module without updating dvc.yaml fails
here instead of leaving a stage that no longer re-runs when its code changes."""

import importlib.util
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("stage_deps", ROOT / "scripts" / "stage_deps.py")
stage_deps = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(stage_deps)


def _bodies():
    return dict(stage_deps.stage_bodies(yaml.safe_load((ROOT / "dvc.yaml").read_text())))


@pytest.mark.parametrize("name", list(_bodies()))
def test_deps_are_the_code_the_stage_runs(name):
    body = _bodies()[name]
    have = [d for d in body["deps"] if isinstance(d, str) and d.startswith("robustlib")]
    assert have == stage_deps.expected_deps(ROOT, body), f"run `python scripts/stage_deps.py --write` ({name})"


def test_every_code_dependency_exists():
    for name, body in _bodies().items():
        for d in body.get("deps", []):
            if isinstance(d, str) and d.startswith(("robustlib", "notebooks", "benchmarks")):
                assert (ROOT / d).exists(), f"stage {name}: dependency {d} does not exist"


def test_closure_follows_imports_transitively(tmp_path):
    pkg = tmp_path / "robustlib" / "sub"
    pkg.mkdir(parents=True)
    (tmp_path / "robustlib" / "__init__.py").write_text('"""doc"""\n')
    (pkg / "__init__.py").write_text('"""doc"""\n')
    (pkg / "a.py").write_text("from robustlib.sub import b\n")
    (pkg / "b.py").write_text("from .c import thing\n")
    (pkg / "c.py").write_text("thing = 1\n")
    (pkg / "unused.py").write_text("")
    got = stage_deps.closure(tmp_path, "from robustlib.sub.a import x")
    assert {str(p.relative_to(tmp_path)) for p in got} == {
        "robustlib/__init__.py", "robustlib/sub/__init__.py", "robustlib/sub/a.py", "robustlib/sub/b.py",
        "robustlib/sub/c.py"}
    assert stage_deps.compact(tmp_path, got) == ["robustlib/__init__.py", "robustlib/sub/__init__.py",
                                                 "robustlib/sub/a.py", "robustlib/sub/b.py", "robustlib/sub/c.py"]
    (pkg / "unused.py").unlink()
    assert stage_deps.compact(tmp_path, got) == ["robustlib/__init__.py", "robustlib/sub"]
