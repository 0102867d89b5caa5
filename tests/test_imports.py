"""Import hygiene of robustlib (issue 23): no module imports inside a function except a heavy optional
dependency loaded lazily (each exception named below, with why), no import cycle between robustlib
modules (counting the imports inside functions, which is where cycles hide), and package ``__init__``
files that only document their package."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "robustlib"

ALLOWED_IN_FUNCTION = {
    ("robustlib/attacks/autoattack.py", "pyautoattack"):
        "pyautoattack: imported only when AutoAttack runs (robustlib.attacks.autoattack's notes)",
    ("robustlib/stages/train.py", "dvclive"): "dvclive: the training log, loaded only when the train stage logs",
    ("robustlib/verification/solvers.py", "highspy"): "highspy: a MILP solver, loaded by the verifier that uses it",
    ("robustlib/verification/solvers.py", "pyscipopt"): "pyscipopt: the second MILP solver, loaded only when chosen",
    ("robustlib/training/runner.py", "dvclive"): "dvclive: the training log, loaded only when a run logs",
    ("robustlib/data/datasets.py", "torchvision"): "torchvision: only to read the raw dataset files once",
    # outside the attack-suite slice of issue 23 (their owners hoist them or name them here):
    ("robustlib/models.py", "torch.nn.utils.parametrizations"): "spectral norm, for spectral-norm models only",
}
"""(file, imported module or its package) -> why it is imported inside a function."""


def _modules() -> dict[str, Path]:
    out = {}
    for f in sorted(PACKAGE.rglob("*.py")):
        parts = f.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


def _imports(tree: ast.AST, package: str, in_function: bool | None = None) -> list[tuple[str, list[str], int]]:
    """(module, names imported from it, line) of every import in ``tree``; ``in_function``: only those
    inside (True) or outside (False) a function."""
    inside: set[int] = set()
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            inside |= {id(n) for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom))}
    out = []
    for node in ast.walk(tree):
        if in_function is not None and (id(node) in inside) != in_function:
            continue
        if isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([mod] if mod else []))
            out.append((mod, [a.name for a in node.names], node.lineno))
    return out


def _package_of(name: str, f: Path) -> str:
    return name if f.name == "__init__.py" else name.rpartition(".")[0]


def _allowed(rel: str, module: str) -> bool:
    return any(rel == f and (module == m or module.startswith(m + ".")) for f, m in ALLOWED_IN_FUNCTION)


def test_no_imports_inside_functions_but_the_named_lazy_ones():
    bad = []
    for name, f in _modules().items():
        rel = str(f.relative_to(ROOT))
        for module, _, line in _imports(ast.parse(f.read_text()), _package_of(name, f), in_function=True):
            if not _allowed(rel, module):
                bad.append(f"{rel}:{line} imports {module} inside a function")
    assert not bad, "hoist these imports, or name the lazy optional dependency in ALLOWED_IN_FUNCTION:\n" + \
        "\n".join(bad)


def _graph() -> dict[str, set[str]]:
    """robustlib module -> the robustlib modules it names in an import (anywhere, functions included):
    ``from p import m`` names module ``p.m`` where there is one, else package ``p``. (Importing ``p.m``
    also runs ``p/__init__``; a package whose ``__init__`` re-exports its modules is thereby in a cycle
    with each of them, which the docstring-only ``__init__`` files below avoid.)"""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, f in modules.items():
        edges = set()
        for module, names, _ in _imports(ast.parse(f.read_text()), _package_of(name, f)):
            if module.split(".")[0] != "robustlib":
                continue
            edges |= {t for t in [f"{module}.{n}" for n in names if f"{module}.{n}" in modules] or [module]
                      if t in modules}
        graph[name] = edges - {name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles_between_robustlib_modules():
    assert _cycles(_graph()) == []


def test_the_cycle_finder_finds_a_cycle_hidden_in_functions():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize("package", ["robustlib/attacks", "robustlib/attacks/perceptual", "robustlib/evaluation",
                                     "robustlib/reporting"])
def test_package_inits_only_document_their_package(package):
    """No re-exports: importing robustlib.attacks.ascent must not import every attack."""
    body = ast.parse((ROOT / package / "__init__.py").read_text()).body
    assert len(body) == 1 and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
