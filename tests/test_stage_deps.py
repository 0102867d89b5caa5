"""Each stage's DVC dependencies cover every robustlib module its notebook runs, and name only files that exist.

The closure is computed from the source (every ``import robustlib...`` / ``from robustlib... import``, followed
transitively, package ``__init__`` files included), so moving or splitting a module without updating
dvc.yaml fails here instead of silently leaving a stage that no longer re-runs when its code changes."""

import ast
import json
from pathlib import Path

import pytest
import yaml


def _stages(root):
    return yaml.safe_load((root / "dvc.yaml").read_text())["stages"]


def _module_file(root: Path, name: str) -> Path | None:
    base = root / Path(*name.split("."))
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return None


def _imports(root: Path, source: str, package: str) -> set[str]:
    """robustlib modules imported by ``source`` (``package``: the importing module's package)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "robustlib"}
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:
                mod = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([mod] if mod else []))
            if mod.split(".")[0] != "robustlib":
                continue
            found.add(mod)
            found |= {f"{mod}.{a.name}" for a in node.names if _module_file(root, f"{mod}.{a.name}")}
    return found


def closure(root: Path, source: str) -> set[Path]:
    """Files of every robustlib module ``source`` imports, transitively, with their packages' __init__ files."""
    todo, seen = list(_imports(root, source, "")), set()
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__, a/b/__init__ too
            sub = ".".join(parts[:i])
            if sub in seen:
                continue
            f = _module_file(root, sub)
            if f is None:
                continue
            seen.add(sub)
            pkg = sub if f.name == "__init__.py" else ".".join(sub.split(".")[:-1])
            todo.extend(_imports(root, f.read_text(), pkg))
    return {_module_file(root, s) for s in seen}


def _notebook_code(path: Path) -> str:
    nb = json.loads(path.read_text())
    return "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")


def _stage_bodies(root):
    for name, st in _stages(root).items():
        yield name, st.get("do", st)


@pytest.mark.parametrize("name", list(yaml.safe_load((Path(__file__).parents[1] / "dvc.yaml").read_text())["stages"]))
def test_deps_cover_the_code_the_stage_runs(root, name):
    body = dict(_stage_bodies(root))[name]
    deps = [d for d in body.get("deps", []) if isinstance(d, str) and not d.startswith(("reports/", "${"))]
    notebooks = [d for d in deps if d.endswith(".ipynb")]
    assert len(notebooks) == 1, f"{name}: one notebook per stage, got {notebooks}"
    needed = closure(root, _notebook_code(root / notebooks[0]))
    assert needed, f"{name}: its notebook imports no robustlib module"
    covered = [root / d for d in deps]
    missing = sorted(str(f.relative_to(root)) for f in needed
                     # a docstring-only __init__ runs no code
                     if f.name != "__init__.py" or f.read_text().count("\n") > 1
                     if not any(f == c or c in f.parents for c in covered))
    assert not missing, f"stage {name} runs these modules but dvc.yaml does not list them in its deps: {missing}"


def test_every_code_dependency_exists(root):
    for name, body in _stage_bodies(root):
        for d in body.get("deps", []):
            if isinstance(d, str) and d.startswith(("robustlib", "notebooks", "benchmarks")):
                assert (root / d).exists(), f"stage {name}: dependency {d} does not exist"


def test_closure_follows_imports_transitively(tmp_path):
    pkg = tmp_path / "robustlib" / "sub"
    pkg.mkdir(parents=True)
    (tmp_path / "robustlib" / "__init__.py").write_text('"""doc"""\n')
    (pkg / "__init__.py").write_text('"""doc"""\n')
    (pkg / "a.py").write_text("from robustlib.sub import b\n")
    (pkg / "b.py").write_text("from .c import thing\n")
    (pkg / "c.py").write_text("thing = 1\n")
    (pkg / "unused.py").write_text("")
    got = {str(p.relative_to(tmp_path)) for p in closure(tmp_path, "from robustlib.sub.a import x")}
    assert got == {"robustlib/__init__.py", "robustlib/sub/__init__.py", "robustlib/sub/a.py",
                   "robustlib/sub/b.py", "robustlib/sub/c.py"}
