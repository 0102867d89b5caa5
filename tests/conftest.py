"""Shared fixtures: tests run on CPU with small tensors and a fixed thread count."""

import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent

# The Hamming regularizer is compiled by torch.compile in training (robustlib.regularizers.manifold);
# tests use the eager path (no compile time per test process) except the test that checks the compiled
# one against it (test_regularizers.py::test_compiled_hamming_matches_the_eager_paths).
os.environ.setdefault("ROBUSTLIB_COMPILE", "0")
# The smoke pipeline runs in the background beside the other tests (pytest_collection_finish): more threads than
# the 2 cores. OpenMP threads that spin while they wait for a descheduled partner then slow every process several
# times over; passive waiting (they sleep instead) changes no result, only who waits how. Subprocesses inherit it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _test_threads(config) -> int:
    """Torch threads of this process's tests: ROBUSTLIB_TEST_THREADS if set, else 1 while the smoke pipeline runs
    in the background (its stages take 2; more threads than the 2 cores make every one of them wait), else 2."""
    default = "1" if config.stash.get(_SMOKE, None) is not None else "2"
    return int(os.environ.get("ROBUSTLIB_TEST_THREADS", default))


@pytest.fixture(autouse=True, scope="session")
def _torch_threads(request):
    torch.set_num_threads(_test_threads(request.config))


@pytest.fixture
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def smoke_reference(smoke_runs) -> Path:
    """The smoke profile's sequential `dvc repro` results (``reports/smoke/`` and ``dvc.lock``), for tests that
    run parts of the smoke profile elsewhere and compare (tests/test_scaleout_slurm.py)."""
    return smoke_runs.seq


@dataclass
class SmokeRuns:
    """The smoke profile run end to end: ``seq`` by `dvc repro` (each stage's params reads logged to
    ``reads_log``), ``par`` by the two-worker scale-out runner on ``PAR_TARGETS`` (its summary in ``summary``), or
    None where no selected test needs it. ``procs``: the running commands (command, workspace, log, process)."""

    seq: Path
    par: Path | None
    reads_log: Path
    summary: Path
    procs: list = field(default_factory=list)

    def wait(self) -> "SmokeRuns":
        for cmd, _, log, proc in self.procs:
            code = proc.wait()
            assert code == 0, f"{' '.join(cmd)} failed ({code}):\n{log.read_text()[-6000:]}"
        return self


OTHER_REPORT = ("reports/other/report.md", "another profile's committed report\n")
"""A file of another profile's results, in the `dvc repro` workspace: it must survive the smoke run."""

PAR_TARGETS = ("verify@hamming_stability",)
"""What the two-worker scale-out test reproduces: a MILP run's chain (its training, the standard run's (the
attack's transfer source) and the LPIPS network, side by side; the attack; the verify stage with its shards as
tasks of their own). The whole profile on 1 and 2 workers is benchmarks/bench_scaleout.py's (it compares the
outputs and dvc.lock the same way)."""

SMOKE_USERS = ("smoke_runs", "smoke_reference")
_SMOKE = pytest.StashKey[SmokeRuns]()


def _needs_smoke(item) -> int:
    """1 for a test that needs the smoke pipeline (it waits for it), else 0."""
    return int(any(f in getattr(item, "fixturenames", ()) for f in SMOKE_USERS))


@pytest.hookimpl(trylast=True)  # after -k / -m have deselected
def pytest_collection_modifyitems(session, config, items):
    """The tests that need the smoke pipeline run last: it starts in the background once collection is done
    (``pytest_collection_finish``), and the other tests run meanwhile."""
    items.sort(key=_needs_smoke)  # stable: the order within each group is kept


def pytest_collection_finish(session):
    if session.config.option.collectonly or not any(map(_needs_smoke, session.items)):
        return
    with_par = any(item.path.name == "test_scaleout_smoke.py" for item in session.items)
    runs = _start_smoke(session.config._tmp_path_factory.mktemp("smoke"), with_par)  # tmp_path_factory's object
    session.config.stash[_SMOKE] = runs
    session.config.add_cleanup(lambda: _stop(runs))


def _start_smoke(base: Path, with_par: bool) -> SmokeRuns:
    """Start the smoke profile's `dvc repro` and, with ``with_par``, ``python -m robustlib.scaleout -j 2`` on
    ``PAR_TARGETS`` in a second workspace, both fresh git copies of the tracked files without results. Each
    stage runs torch on 2 threads (``base.threads``); this process's own tests take one meanwhile
    (``_test_threads``)."""
    from robustlib.scaleout.workspace import copy_workspace, tool_env

    other = base / "seq" / OTHER_REPORT[0]
    other.parent.mkdir(parents=True)
    other.write_text(OTHER_REPORT[1])  # committed with the copy, as another profile's results are
    seq = copy_workspace(ROOT, base / "seq", "smoke")
    runs = SmokeRuns(seq, None, base / "params_reads.jsonl", base / "summary.json")
    subprocess.run([sys.executable, "-m", "robustlib.pipeline", "check"], cwd=seq, env=tool_env(), check=True,
                   capture_output=True)
    commands = [([str(Path(sys.executable).with_name("dvc")), "repro"], seq,
                 tool_env(ROBUSTLIB_PARAMS_LOG=str(runs.reads_log)))]
    if with_par:
        runs.par = copy_workspace(ROOT, base / "par", "smoke")
        commands.append(([sys.executable, "-m", "robustlib.scaleout", "-j", "2", "--summary", str(runs.summary),
                          *PAR_TARGETS], runs.par, tool_env()))
    for i, (cmd, cwd, env) in enumerate(commands):
        log = base / f"run{i}.log"
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                                start_new_session=True)  # its own process group: _stop ends its stages too
        runs.procs.append((cmd, cwd, log, proc))
    return runs


def _stop(runs: SmokeRuns) -> None:
    """At the end of the session: stop what is still running (an interrupted or failed session), with the
    stages (papermill, kernels) it started."""
    for *_, proc in runs.procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="session")
def smoke_runs(request) -> SmokeRuns:
    """The smoke pipeline started at the end of collection (``pytest_collection_finish``), once finished."""
    runs = request.config.stash.get(_SMOKE, None)
    assert runs is not None, "the smoke pipeline was not started: is the test collected with smoke_runs?"
    runs.wait()
    return runs


TINY_PROFILE = """extends: smoke
data: {n_train: 400, n_val: 200, n_test: 100}
train: {epochs: 2, batch_size: 50, lr_knots: [[0.0, 1.0], [1.0, 1.0]]}
runs:
  standard:
    objective: {ce: 1.0}
  hamming_stability:
    objective: {ce: 1.0, hamming: {weight: 10.0, alpha: 8.0}, stability: {weight: 0.0025}}
  pgd_at:
    objective: {pgd_at: {weight: 1.0, steps: 3}}
finetunes: {}
verify: {milp_runs: [hamming_stability]}
ablations: {table_runs: [hamming_stability], sweep_runs: [hamming_stability]}
laplacian: {sparse_run: hamming_stability}
"""
"""Tiny runs over the smoke profile, for the tests that run stages end to end (``tiny_workspace``)."""


@pytest.fixture
def tiny_workspace(root, tmp_path, monkeypatch):
    """``make(extra, **profiles)``: a workspace under ``tmp_path / "ws"`` with the repository's profiles and
    dvc.yaml, the profile ``tiny`` (``TINY_PROFILE`` followed by the YAML sections ``extra``) and any further
    ``profiles`` (name -> text, e.g. ``extends: tiny`` and other runs), the last of them (else ``tiny``)
    active, as the working directory, reading the shipped MNIST; returns its folder."""
    from robustlib.pipeline import params as P

    def make(extra: str = "", **profiles: str) -> Path:
        ws = tmp_path / "ws"
        (ws / "profiles").mkdir(parents=True)
        for f in (root / "profiles").glob("*.yaml"):
            shutil.copy(f, ws / "profiles" / f.name)
        for name, text in {"tiny": TINY_PROFILE + extra, **profiles}.items():
            (ws / "profiles" / f"{name}.yaml").write_text(text)
        shutil.copy(root / "dvc.yaml", ws / "dvc.yaml")
        monkeypatch.chdir(ws)
        monkeypatch.setenv("ROBUSTLIB_DATA", str(root / "data"))
        P.use_profile(list(profiles)[-1] if profiles else "tiny", ws)
        return ws

    return make
