"""The cluster recipe on a single-node Slurm (Debian's slurm-wlm and munge) started here: dask-jobqueue's
SLURMCluster submits the Dask workers as Slurm jobs and robustlib.scaleout runs a DVC pipeline on them.

The fixture skips, with the command and its error output, where Slurm is not installed or its daemons
do not start (CI installs it: .ci/run). Set-up: munged with its own key and socket, slurmctld and slurmd
as root with proctrack/linuxproc, task/none and no cgroups, all under a temporary folder.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slurm

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "sinfo")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(cmd: list[str], log: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, start_new_session=True)


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A running single-node Slurm; yields the environment (SLURM_CONF) its clients need."""
    missing = [d for d in DAEMONS if not shutil.which(d)]
    if missing:
        pytest.skip(f"Slurm is not installed here (no {missing}): apt-get install slurm-wlm munge")
    if os.geteuid() != 0:
        pytest.skip("the single-node Slurm recipe runs its daemons as root (SlurmUser=root)")
    d = tmp_path_factory.mktemp("slurm")
    for sub in ("state", "spool", "munge"):
        (d / sub).mkdir()
    (d / "munge").chmod(0o755)
    key = d / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    sock = d / "munge" / "munge.socket.2"
    host = socket.gethostname().split(".")[0]
    cpus = 4  # two workers of 2 threads each on a 2-core machine: slurmd takes the configured count
    mem = 12000
    (d / "slurm.conf").write_text(f"""ClusterName=robustlib-test
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={sock}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SlurmdParameters=config_overrides
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
ReturnToService=2
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={mem} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
""")
    env = dict(os.environ, SLURM_CONF=str(d / "slurm.conf"))
    procs = []
    try:
        munge = subprocess.run(["munged", "--force", "-S", str(sock), f"--key-file={key}",
                                f"--log-file={d}/munge/munged.log", f"--pid-file={d}/munge/munged.pid",
                                f"--seed-file={d}/munge/munged.seed"], capture_output=True, text=True)
        if munge.returncode != 0:
            pytest.skip(f"munged did not start (rc {munge.returncode}): {munge.stderr[-1000:]}")
        procs.append(_start(["slurmctld", "-D"], d / "slurmctld.log", env))
        time.sleep(2)
        procs.append(_start(["slurmd", "-D"], d / "slurmd.log", env))
        for _ in range(30):
            info = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, env=env)
            if info.returncode == 0 and info.stdout.strip() in ("idle", "mixed"):
                break
            if any(p.poll() is not None for p in procs):
                break
            time.sleep(1)
        else:
            info = None
        if info is None or info.returncode != 0 or info.stdout.strip() not in ("idle", "mixed"):
            logs = "\n".join(f"{n}: {(d / n).read_text()[-1500:]}" for n in ("slurmctld.log", "slurmd.log"))
            pytest.skip(f"Slurm daemons did not come up: sinfo -> {getattr(info, 'stdout', '')!r} "
                        f"{getattr(info, 'stderr', '')!r}\n{logs}")
        yield env
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
        pid = d / "munge" / "munged.pid"
        if pid.exists():
            subprocess.run(["kill", pid.read_text().strip()], check=False)


def _slurm_reproduce(ws: Path, env: dict, monkeypatch, targets=None) -> dict:
    from robustlib.scaleout import runner

    for k in ("SLURM_CONF",):
        monkeypatch.setenv(k, env[k])
    monkeypatch.chdir(ws)
    return runner.reproduce(ws, workers=2, slurm=True, targets=targets, cluster_overrides={
        "scheduler_options": {"host": "127.0.0.1", "dashboard_address": None}, "walltime": "00:20:00"})


def test_toy_pipeline_through_slurm_jobs(slurm, tmp_path, monkeypatch):
    from test_scaleout import DVC, _files, _status_clean, _toy

    ref = _toy(tmp_path / "seq")
    subprocess.run([DVC, "repro", "-q"], cwd=ref, check=True, capture_output=True)
    ws = _toy(tmp_path / "par")
    out = _slurm_reproduce(ws, slurm, monkeypatch)
    assert out["cluster"] == "slurm" and {r["status"] for r in out["results"]} == {"ran"}
    logs = list((ws / "runs" / "scaleout" / "slurm-logs").glob("*.err"))
    assert logs, "no Slurm job logs: the workers did not run as Slurm jobs"
    assert (ws / "dvc.lock").read_bytes() == (ref / "dvc.lock").read_bytes()
    assert _files(ws) == _files(ref) and _status_clean(ws)


@pytest.mark.pipeline
def test_smoke_profile_stages_through_slurm_jobs(slurm, root, tmp_path, monkeypatch, smoke_reference):
    """Two of the smoke profile's stages (a training and the LPIPS network, side by side: the stages that
    depend on others are the toy pipeline's above) on two Slurm jobs; their
    outputs agree with the sequential `dvc repro` of tests/test_pipeline_smoke.py (conftest.smoke_runs)."""
    from robustlib.scaleout.workspace import compare_outputs, copy_workspace, run

    ws = copy_workspace(root, tmp_path / "ws", "smoke")
    out = _slurm_reproduce(ws, slurm, monkeypatch, targets=["train@standard", "lpips"])
    ran = {r["stage"] for r in out["results"] if r["status"] == "ran"}
    assert ran == {"train@standard", "lpips"}
    status = run([str(Path(sys.executable).with_name("dvc")), "status", "train@standard", "lpips"], ws)
    assert "up to date" in status, status
    lock = yaml.safe_load((ws / "dvc.lock").read_text())["stages"]
    assert set(lock) == ran
    cmp = compare_outputs(smoke_reference, ws, "smoke")
    assert cmp["only_b"] == [] and cmp["unexplained"] == [], cmp
    ref_lock = yaml.safe_load((smoke_reference / "dvc.lock").read_text())["stages"]
    for name in ran:
        assert lock[name]["cmd"] == ref_lock[name]["cmd"] and lock[name]["params"] == ref_lock[name]["params"]
