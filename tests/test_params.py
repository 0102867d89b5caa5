import shutil

import pytest
import yaml

from robustlib.pipeline import params as P


@pytest.mark.parametrize("profile", ["default", "smoke", "cifar10-cpu", "paper", "mnist-survey"])
def test_every_profile_validates(root, profile):
    params = P.load(root / "profiles" / f"{profile}.yaml")
    for run in params["runs"]:
        P.run_config(params, run)


def test_committed_params_yaml_is_the_profile_it_names(root):
    """params.yaml is the active profile as `params use` writes it (the committed dvc.lock is for it)."""
    active = P.load(root / "params.yaml")
    profile = P.load(root / "profiles" / f"{active['base']['profile']}.yaml")
    profile["base"]["profile"] = active["base"]["profile"]  # `use` names the profile (profiles inherit the key)
    assert active == profile


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
    (lambda p: p["verify"].update(shard_size=0), "verify.shard_size must be"),
    (lambda p: p["laplacian"].update(dense_run="dense"), r"name unknown runs \['dense'\]"),
])
def test_bad_params_fail_early_naming_the_key(root, tmp_path, mutate, match):
    params = P.load(root / "profiles" / "default.yaml")
    mutate(params)
    with pytest.raises(P.ParamsError, match=match):
        P.validate(params)


def test_profiles_without_a_dense_run_validate(root):
    """laplacian.dense_run: null (Table 4 lists the sparse run only) -- the default profile's case."""
    params = P.load(root / "profiles" / "default.yaml")
    assert params["laplacian"]["dense_run"] is None and "dense_laplacian" not in params["runs"]
    assert P.load(root / "profiles" / "mnist-survey.yaml")["laplacian"]["dense_run"] == "dense_laplacian"


def test_run_lookup_names_known_runs(root):
    params = P.load(root / "profiles" / "default.yaml")
    with pytest.raises(P.ParamsError, match="unknown run 'nope'.*standard"):
        P.run_config(params, "nope")


def test_paper_profile_trains_preactresnet18_on_cpu(root, monkeypatch):
    """The paper profile's main run builds and takes a few training steps of PreActResNet18 on CPU
    (its 100 epochs need a GPU: tests/test_cuda.py and benchmarks/results/paper_epoch.* when one is lent)."""
    import dataclasses
    import math

    import torch

    from robustlib.training.loop import init_model, train

    monkeypatch.setenv("ROBUSTLIB_COMPILE", "0")  # the eager Hamming function: no compilation in a test
    paper = P.load(root / "profiles" / "paper.yaml")
    assert paper["attack"]["autoattack_version"] == "plus"
    cfg = dataclasses.replace(P.run_config(paper, "hamming_stability"), epochs=1, batch_size=4)
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(8, 3, 32, 32, generator=g), torch.randint(0, 10, (8,), generator=g)
    before = init_model(cfg, "cpu").state_dict()
    assert all(torch.equal(v, init_model(cfg, "cpu").state_dict()[k]) for k, v in before.items())  # seeded init
    res = train(cfg, x, y, x[:2], y[:2], progress=False)
    assert len(res.history) == 1 and math.isfinite(res.history[0]["train_loss"])
    after = res.model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before if before[k].is_floating_point())
