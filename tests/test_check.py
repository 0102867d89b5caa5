"""The pre-compute check (python -m robustlib.pipeline check): every bad value is refused with a message
naming the key and what is allowed, and nothing runs."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from robustlib.pipeline import __main__ as cli
from robustlib.pipeline import check as C
from robustlib.pipeline import params as P


def _workspace(tmp_path: Path, root: Path, profile: str, edit) -> Path:
    """A workspace with ``profile`` active, its data in place (MNIST ships; CIFAR-10 faked as present), and
    ``edit(params)`` applied to params.yaml."""
    ws = tmp_path / "ws"
    shutil.copytree(root / "profiles", ws / "profiles")
    (ws / "dvc.yaml").write_text("stages: {}\n")
    shutil.copytree(root / "data" / "MNIST" / "raw", ws / "data" / "MNIST" / "raw")
    (ws / "data" / "cifar10").mkdir(parents=True)
    for f in ("train_1.npz", "test.npz"):  # check_files only looks for the names; nothing is loaded
        (ws / "data" / "cifar10" / f).write_bytes(b"")
    P.use_profile(profile, ws)
    params = yaml.safe_load((ws / "params.yaml").read_text())
    edit(params)
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return ws


def _set(path: str, value):
    def edit(params):
        node = params
        *head, last = path.split(".")
        for k in head:
            node = node[k]
        node[last] = value
    return edit


BAD = [  # (profile, key, bad value, what the message must say)
    ("cifar10-cpu", "attack.linf_eps", "eight", "attack.linf_eps: must be a finite number in (0, 1], got 'eight'"),
    ("cifar10-cpu", "attack.linf_eps", float("nan"), "attack.linf_eps: must be a finite number in (0, 1], got nan"),
    ("cifar10-cpu", "attack.linf_eps", 8.0, "attack.linf_eps: must be a finite number in (0, 1], got 8.0"),
    ("cifar10-cpu", "attack.l2_eps", float("inf"), "attack.l2_eps: must be a finite number in (0, 55.4256], got inf"),
    ("default", "attack.l2_eps", 0.0, "attack.l2_eps: must be a finite number in (0, 28], got 0.0"),
    ("cifar10-cpu", "runs.standard.model", "resnet9000", "runs.standard.model: unknown model 'resnet9000'"),
    ("cifar10-cpu", "data.path", "data/nowhere", "data.path: 'data/nowhere' does not exist"),
    ("default", "attack.pgd_steps", 0, "attack.pgd_steps: must be an integer >= 1, got 0"),
    ("default", "attack.pgd_restarts", 2.5, "attack.pgd_restarts: must be an integer >= 1, got 2.5"),
    ("default", "attack.batch_size", True, "attack.batch_size: must be an integer >= 1, got True"),
    ("default", "attack.autoattack_version", "strong", "attack.autoattack_version: must be one of"),
    ("default", "attack.perceptual", {"stadv": 0.05, "blur": 1.0}, "attack.perceptual.blur: unknown perceptual attack"),
    ("cifar10-cpu", "attack.perceptual.jpeg", -0.25, "attack.perceptual.jpeg: must be a finite number in (0, inf]"),
    ("default", "attack.curve_linf_eps", [0.0, 0.1, "x"], "attack.curve_linf_eps: must be a list of 1 or more values"),
    ("default", "attack.sanity.budget_tol", 5, "attack.sanity.budget_tol: must be a finite number in [0, 1], got 5"),
    ("default", "attack.sanity.undefended_run", "nobody", "attack.sanity.undefended_run: must be null or one of"),
    ("default", "verify.eps", [0.1, 1.5], "verify.eps: must be a list of 1 or more values"),
    ("default", "verify.bounds", "crown", "verify.bounds: must be one of ['interval', 'linear']"),
    ("default", "verify.solver", "gurobi", "verify.solver: must be one of ['highs', 'scip'], got 'gurobi'"),
    ("default", "base.device", "tpu", "base.device: must be auto, cpu, cuda or cuda:<index>, got 'tpu'"),
    ("default", "base.seed", -1, "base.seed: must be an integer >= 0, got -1"),
    ("default", "data.n_val", "many", "data.n_val: must be an integer >= 0, got 'many'"),
    ("default", "laplacian.fraction", 0.0, "laplacian.fraction: must be a finite number in (0, 1], got 0.0"),
    ("default", "lpips.model", "vgg99", "lpips.model: unknown model 'vgg99'"),
    ("default", "gallery.runs", ["standard"], "gallery.runs: must be a list of exactly 2 values"),  # dvc.yaml: [0], [1]
    ("default", "gallery.runs", ["standard", "nobody"], "gallery name unknown runs ['nobody']"),  # params.load
]


@pytest.mark.parametrize("profile,key,value,message", BAD, ids=[f"{k}={v!r}" for _, k, v, _ in BAD])
def test_each_bad_value_is_refused_naming_the_key(tmp_path, root, monkeypatch, capsys, profile, key, value, message):
    ws = _workspace(tmp_path, root, profile, _set(key, value))
    monkeypatch.chdir(ws)
    assert cli.main(["check"]) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert not (ws / "reports").exists()  # nothing ran


def test_the_command_exits_2_with_the_message(tmp_path, root):
    ws = _workspace(tmp_path, root, "cifar10-cpu", _set("attack.linf_eps", "eight"))
    res = subprocess.run([sys.executable, "-m", "robustlib.pipeline", "check"], cwd=ws, capture_output=True, text=True)
    assert res.returncode == 2 and "attack.linf_eps: must be a finite number in (0, 1]" in res.stderr


def test_every_problem_is_reported_at_once(tmp_path, root):
    def edit(params):
        params["attack"]["linf_eps"] = "eight"
        params["attack"]["pgd_steps"] = 0
    ws = _workspace(tmp_path, root, "default", edit)
    found = C.problems(P.load(ws / "params.yaml"), ws)
    assert [p.split(":")[0] for p in found] == ["attack.linf_eps", "attack.pgd_steps"]


@pytest.mark.parametrize("profile", ["default", "smoke", "mnist-survey", "cifar10-cpu", "paper"])
def test_every_committed_profile_passes(tmp_path, root, profile):
    ws = _workspace(tmp_path, root, profile, lambda p: None)
    assert C.problems(P.load(ws / "params.yaml"), ws) == []


def test_missing_data_names_the_install_step(tmp_path, root):
    ws = _workspace(tmp_path, root, "cifar10-cpu", lambda p: None)
    shutil.rmtree(ws / "data" / "cifar10")
    res = subprocess.run([sys.executable, "-m", "robustlib.pipeline", "check"], cwd=ws, capture_output=True, text=True)
    assert res.returncode == 2 and "`python -m robustlib.data.install cifar10 <folder>`" in res.stderr


def test_repro_checks_before_any_compute(root):
    """scripts/repro.sh stops (set -e) at the check, which comes before `dvc repro`."""
    lines = (root / "scripts" / "repro.sh").read_text().splitlines()
    assert "set -euo pipefail" in lines
    check = next(i for i, line in enumerate(lines) if line.strip() == "python -m robustlib.pipeline check")
    assert check < next(i for i, line in enumerate(lines) if line.strip().startswith("dvc repro"))


def test_checks_name_what_is_allowed():
    assert C.real(0, 1, lo_open=True)(0.5) is None and C.real(0, 1, lo_open=True)(0) == "a finite number in (0, 1]"
    assert C.integer(1)(True) == "an integer >= 1" and C.integer(1)(3) is None
    assert C.optional(C.integer(0))(None) is None and C.optional(C.integer(0))(-1) == "null or an integer >= 0"
    assert C.list_of(C.real(0, 1), 1)([]) is not None and C.list_of(C.real(0, 1), 1)([0.5]) is None
    assert C.list_of(C.real(0, 1), 2, 2)([0.5]).startswith("a list of exactly 2 values")
    assert C.list_of(C.real(0, 1), 2, 2)([0.5, 0.1, 0.2]) is not None and C.list_of(C.real(0, 1), 2, 2)([0, 1]) is None
