"""Each DVC stage's code dependencies, computed from the robustlib modules its notebook runs.

    python scripts/stage_deps.py           # exit 1 and list the stages whose dvc.yaml deps differ
    python scripts/stage_deps.py --write   # rewrite every stage's robustlib deps in dvc.yaml

A stage's closure follows every ``import robustlib...`` / ``from robustlib... import`` transitively from its
notebook (package ``__init__`` files included); a package whose every module is in the closure is listed as
its folder, otherwise its modules are listed one by one. Other deps (notebooks, data, inputs) are kept.
tests/test_stage_deps.py runs the check.
"""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parents[1]


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
                parts = package.split(".")
                mod = ".".join(parts[: len(parts) - node.level + 1] + ([mod] if mod else []))
            if mod.split(".")[0] != "robustlib":
                continue
            found.add(mod)
            found |= {f"{mod}.{a.name}" for a in node.names if _module_file(root, f"{mod}.{a.name}")}
    return found


def closure(root: Path, source: str) -> set[Path]:
    """Files of every robustlib module ``source`` imports, transitively, with their packages' __init__ files."""
    todo, seen = list(_imports(root, source, "")), set()
    while todo:
        parts = todo.pop().split(".")
        for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__, a/b/__init__ too
            sub = ".".join(parts[:i])
            f = _module_file(root, sub)
            if sub in seen or f is None:
                continue
            seen.add(sub)
            pkg = sub if f.name == "__init__.py" else ".".join(sub.split(".")[:-1])
            todo.extend(_imports(root, f.read_text(), pkg))
    return {_module_file(root, s) for s in seen}


def notebook_code(path: Path) -> str:
    nb = json.loads(path.read_text())
    return "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")


def compact(root: Path, files: set[Path]) -> list[str]:
    """``files`` as dvc.yaml deps: a package folder when every module under it is needed, else the modules."""
    out: list[str] = []

    def walk(folder: Path) -> None:
        modules = sorted(folder.rglob("*.py"))
        if folder != root / "robustlib" and modules and all(m in files for m in modules):
            out.append(folder.relative_to(root).as_posix())
            return
        out.extend(f.relative_to(root).as_posix() for f in sorted(folder.glob("*.py")) if f in files)
        for sub in sorted(p for p in folder.iterdir() if p.is_dir() and (p / "__init__.py").exists()):
            walk(sub)

    walk(root / "robustlib")
    return out


def stage_bodies(dvc: dict):
    for name, stage in dvc["stages"].items():
        yield name, stage.get("do", stage)


def expected_deps(root: Path, body) -> list[str]:
    notebook = next(d for d in body["deps"] if isinstance(d, str) and d.endswith(".ipynb"))
    return compact(root, closure(root, notebook_code(root / notebook)))


def main(argv: list[str]) -> int:
    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.width = 4096
    path = ROOT / "dvc.yaml"
    dvc = yaml.load(path.read_text())
    stale = []
    for name, body in stage_bodies(dvc):
        code = expected_deps(ROOT, body)
        have = [d for d in body["deps"] if isinstance(d, str) and d.startswith("robustlib")]
        if have != code:
            stale.append(name)
            if "--write" in argv:
                others = [d for d in body["deps"] if not (isinstance(d, str) and d.startswith("robustlib"))]
                body["deps"].clear()
                body["deps"].extend([others[0], *code, *others[1:]])  # the notebook first, then the code
    if "--write" in argv:
        with path.open("w") as f:
            yaml.dump(dvc, f)
        print(f"rewrote the robustlib deps of {len(stale)} stage(s): {stale}")
        return 0
    if stale:
        print(f"dvc.yaml deps differ from the code the stages run: {stale} (python scripts/stage_deps.py --write)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
