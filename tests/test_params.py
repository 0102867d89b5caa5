import shutil

import pytest
import yaml

from robustlib import params as P


@pytest.mark.parametrize("profile", ["default", "smoke", "cifar10-cpu", "paper"])
def test_every_profile_validates(root, profile):
    params = P.load(root / "profiles" / f"{profile}.yaml")
    for run in params["runs"]:
        P.run_config(params, run)


def test_committed_params_yaml_is_the_default_profile(root):
    assert P.load(root / "params.yaml") == P.load(root / "profiles" / "default.yaml")


def test_profiles_carry_the_paper_settings(root):
    paper = P.load(root / "profiles" / "paper.yaml")
    cfg = P.run_config(paper, "hamming_stability")
    assert (cfg.model, cfg.epochs, cfg.batch_size, cfg.lr, cfg.weight_decay) == ("preactresnet18", 100, 128, 0.1, 5e-4)
    assert cfg.eps == pytest.approx(8 / 255, rel=1e-4)
    assert cfg.objective["hamming"] == {"weight": 2400.0, "alpha": 8.0}
    assert cfg.objective["stability"] == {"weight": 0.8}
    assert cfg.gamma_ramp == {"start": 0.2, "end": 0.8, "factor": 10.0}
    assert paper["data"]["dataset"] == "cifar10"
    assert P.run_config(P.load(root / "profiles" / "default.yaml"), "standard").model_kwargs["mean"] == [0.1307]


def _workspace(tmp_path, root):
    shutil.copytree(root / "profiles", tmp_path / "profiles")
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    return tmp_path


def test_use_profile_writes_params_and_rejects_unknown(tmp_path, root):
    ws = _workspace(tmp_path, root)
    P.use_profile("smoke", ws)
    written = yaml.safe_load((ws / "params.yaml").read_text())
    assert written["base"]["profile"] == "smoke" and written["train"]["epochs"] == 1
    with pytest.raises(P.ParamsError, match="unknown profile 'fast'.*smoke"):
        P.use_profile("fast", ws)


@pytest.mark.parametrize("mutate,match", [
    (lambda p: p["base"].update(learning_rate=1), r"base.learning_rate.*read by no stage"),
    (lambda p: p.update(extras={}), "section 'extras' is read by no stage"),
    (lambda p: p["runs"]["standard"].update(epochz=3), "runs.standard: unknown option"),
    (lambda p: p["runs"]["standard"].update(objective={"xent": 1}), "unknown objective term 'xent'"),
    (lambda p: p["train"].update(eps=-0.1), "eps must be"),
    (lambda p: p["data"].update(dataset="imagenet"), "data.dataset must be one of"),
    (lambda p: p["verify"].update(solver="gurobi"), "verify.solver must be one of"),
    (lambda p: p["verify"].update(shard_size=0), "verify.shard_size must be"),
])
def test_bad_params_fail_early_naming_the_key(root, tmp_path, mutate, match):
    params = P.load(root / "profiles" / "default.yaml")
    mutate(params)
    with pytest.raises(P.ParamsError, match=match):
        P.validate(params)


def test_run_lookup_names_known_runs(root):
    params = P.load(root / "profiles" / "default.yaml")
    with pytest.raises(P.ParamsError, match="unknown run 'nope'.*standard"):
        P.run_config(params, "nope")
