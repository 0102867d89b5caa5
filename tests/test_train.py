import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from robustlib.regularizers import Ramp
from robustlib.training.loop import NonFiniteLossError, TrainConfig, config_from_mapping, train
from robustlib.training.schedules import PAPER_LR_KNOTS, EpsRamp, piecewise_linear

KW = dict(in_channels=1, image_size=8, num_classes=3, mean=(0.5,), std=(0.25,))


def _data(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 8, 8, generator=g)
    y = (x.mean((1, 2, 3)) * 3 * 0.999).long().clamp(max=2)  # learnable labels
    return x, y


def _cfg(**over):
    base = dict(model="mlp", model_kwargs=dict(KW, hidden=[16, 16]), epochs=3, batch_size=16, lr=0.1,
                eps=0.1, objective={"ce": 1.0, "hamming": {"weight": 5.0}, "stability": {"weight": 1.0}})
    base.update(over)
    return TrainConfig(**base)


def _weights(model):
    return torch.cat([p.detach().flatten() for p in model.state_dict().values()])


def test_paper_schedules_as_fractions():
    # LR: 0 -> 1 over 40%, -> 0.05 over the next 40%, -> 0 over the last 20% (x peak 0.1 = 0.005)
    assert piecewise_linear(PAPER_LR_KNOTS, 0.0) == 0.0
    assert piecewise_linear(PAPER_LR_KNOTS, 0.2) == pytest.approx(0.5)
    assert piecewise_linear(PAPER_LR_KNOTS, 0.4) == pytest.approx(1.0)
    assert piecewise_linear(PAPER_LR_KNOTS, 0.8) == pytest.approx(0.05)
    assert piecewise_linear(PAPER_LR_KNOTS, 0.9) == pytest.approx(0.025)
    assert piecewise_linear(PAPER_LR_KNOTS, 1.0) == 0.0
    # eps 2/255 -> 8/255 over epochs 10-35 of 100
    ramp = EpsRamp()
    assert ramp(8 / 255, 0.05) == pytest.approx(2 / 255)
    assert ramp(8 / 255, 0.225) == pytest.approx(5 / 255)
    assert ramp(8 / 255, 0.5) == pytest.approx(8 / 255)
    # gamma: 1x until epoch 20, 10x from epoch 80, linear between
    g = Ramp()
    assert (g(0.1), g(0.5), g(0.9)) == (1.0, pytest.approx(5.5), 10.0)
    with pytest.raises(ValueError):
        Ramp(start=0.8, end=0.2)


def test_bad_config_is_rejected_before_compute():
    with pytest.raises(ValueError, match="unknown objective term"):
        _cfg(objective={"ce": 1.0, "hamming_distance": 1.0})
    with pytest.raises(ValueError, match="eps"):
        _cfg(eps=-1)
    with pytest.raises(ValueError, match="unknown training settings"):
        config_from_mapping({"epochs": 1, "learning_rate": 0.1})
    with pytest.raises(ValueError, match="augment"):
        _cfg(augment="mixup")


def test_training_learns_and_is_repeatable():
    x, y = _data()
    a = train(_cfg(objective={"ce": 1.0}, epochs=4), x, y, x[:32], y[:32], progress=False)
    b = train(_cfg(objective={"ce": 1.0}, epochs=4), x, y, x[:32], y[:32], progress=False)
    assert torch.equal(_weights(a.model), _weights(b.model))
    assert a.history[-1]["train_loss"] < a.history[0]["train_loss"]
    assert [h["epoch"] for h in a.history] == [1, 2, 3, 4]


def test_interrupted_then_resumed_equals_uninterrupted(tmp_path):
    x, y = _data()
    full = train(_cfg(), x, y, x[:16], y[:16], progress=False)

    class Killed(Exception):
        pass

    def kill_in_epoch_2(epoch, step):
        if epoch == 1 and step == 3:
            raise Killed

    ckpt = tmp_path / "resume.pt"
    with pytest.raises(Killed):
        train(_cfg(), x, y, x[:16], y[:16], resume_path=ckpt, step_hook=kill_in_epoch_2, progress=False)
    assert torch.load(ckpt, weights_only=True)["epoch"] == 1
    resumed = train(_cfg(), x, y, x[:16], y[:16], resume_path=ckpt, progress=False)
    assert resumed.resumed_from_epoch == 1
    assert torch.equal(_weights(resumed.model), _weights(full.model))
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in full.history]


def test_resume_checkpoint_of_another_configuration_is_ignored(tmp_path):
    x, y = _data()
    ckpt = tmp_path / "resume.pt"
    train(_cfg(epochs=1), x, y, x[:16], y[:16], resume_path=ckpt, progress=False)
    other = train(_cfg(epochs=2, lr=0.05), x, y, x[:16], y[:16], resume_path=ckpt, progress=False)
    assert other.resumed_from_epoch == 0


def test_process_killed_by_sigkill_resumes_exactly(tmp_path):
    """A real kill: a child process trains with a per-epoch checkpoint and is SIGKILLed mid-run."""
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(f"""
        import time, torch, sys
        sys.path.insert(0, {str(os.path.dirname(__file__))!r})
        from test_train import _cfg, _data
        from robustlib.training.loop import train
        torch.set_num_threads(1)
        x, y = _data()
        def slow(epoch, step):
            if epoch >= 1:
                time.sleep(0.05)
        train(_cfg(epochs=4), x, y, x[:16], y[:16], resume_path={str(tmp_path / 'r.pt')!r}, step_hook=slow,
              progress=False)
    """))
    proc = subprocess.Popen([sys.executable, str(script)])
    deadline = time.time() + 60
    while not (tmp_path / "r.pt").exists() and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (tmp_path / "r.pt").exists()
    done = torch.load(tmp_path / "r.pt", weights_only=True)["epoch"]
    assert 1 <= done < 4
    x, y = _data()
    resumed = train(_cfg(epochs=4), x, y, x[:16], y[:16], resume_path=tmp_path / "r.pt", progress=False)
    full = train(_cfg(epochs=4), x, y, x[:16], y[:16], progress=False)
    assert resumed.resumed_from_epoch == done
    assert torch.equal(_weights(resumed.model), _weights(full.model))


def test_non_finite_loss_stops_at_the_step_and_writes_no_checkpoint(tmp_path):
    x, y = _data()
    x_bad = x.clone()
    ckpt = tmp_path / "resume.pt"
    # one NaN pixel in the second epoch's batches: the loss of that step is NaN
    x_bad[5, 0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteLossError, match=r"epoch 1, step \d+") as err:
        train(_cfg(objective={"ce": 1.0}), x_bad, y, x[:16], y[:16], resume_path=ckpt, progress=False)
    assert "No checkpoint was written" in str(err.value)
    assert not ckpt.exists()


def test_a_run_that_diverges_after_an_epoch_keeps_its_last_finite_epoch(tmp_path):
    """The train stage's policy: the failing epoch is dropped, the model and history are epoch 2's (equal
    to its checkpoint), and the second value says where training diverged; in epoch 1 it re-raises."""
    from robustlib.training.runner import train_or_last_finite

    x, y = _data()
    x_val = x[:16].clone()
    stop = {"device": "cpu", "resume_path": tmp_path / "resume.pt", "progress": False}
    res, diverged = train_or_last_finite(_cfg(objective={"ce": 1.0}, epochs=2), x.clone(), y, x_val, y[:16], **stop)
    assert diverged is None and len(res.history) == 2

    def poisoned(from_epoch):  # a train set whose every image turns NaN at step 2 of ``from_epoch``
        xs = x.clone()

        def hook(epoch, step):
            if (epoch, step) == (from_epoch, 1):
                xs[:] = float("nan")
        return xs, hook

    cfg = _cfg(objective={"ce": 1.0}, epochs=4)
    xs, hook = poisoned(2)
    with pytest.MonkeyPatch.context() as mp:
        import robustlib.training.runner as stage
        mp.setattr(stage, "train", lambda *a, **k: train(*a, **k, step_hook=hook))
        res, diverged = stage.train_or_last_finite(cfg, xs, y, x_val, y[:16], **stop)
        assert diverged["epoch"] == 3 and "epoch 3, step 2" in diverged["message"]
        assert [h["epoch"] for h in res.history] == [1, 2] and res.resumed_from_epoch == 2
        blob = torch.load(stop["resume_path"], weights_only=True)
        assert blob["epoch"] == 2
        assert torch.equal(_weights(res.model), torch.cat([v.flatten() for v in blob["model"].values()]))
        assert torch.isfinite(_weights(res.model)).all() and not res.model.training

        stop["resume_path"].unlink()
        xs, hook = poisoned(0)
        with pytest.raises(NonFiniteLossError, match="epoch 1, step 2"):
            stage.train_or_last_finite(cfg, xs, y, x_val, y[:16], **stop)


def test_eps_and_lr_schedules_reach_the_loop():
    x, y = _data()
    res = train(_cfg(objective={"ce": 1.0}, epochs=4, eps_ramp={"start": 0.0, "end": 0.5, "initial": 0.0}),
                x, y, x[:16], y[:16], progress=False)
    eps = [h["eps"] for h in res.history]
    assert eps[0] < eps[1] <= 0.1 and eps[-1] == pytest.approx(0.1)
    assert res.history[-1]["lr"] < res.history[1]["lr"]  # decays in the last part


# ---------------------------------------------------------------------------------------------
# probe diagnostics and the collapse stop (issue 24)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("spectral_norm", [False, True])
def test_diagnostics_do_not_change_training(spectral_norm):
    """Equal parameters AND buffers (spectral norm's power-iteration vectors, updated by every train-mode forward)
    after 2 epochs with and without the per-epoch probe diagnostics."""
    x, y = _data()
    on = train(_cfg(epochs=2, diagnostics=True, spectral_norm=spectral_norm), x, y, x[:40], y[:40], progress=False)
    off = train(_cfg(epochs=2, diagnostics=False, spectral_norm=spectral_norm), x, y, x[:40], y[:40],
                progress=False)
    a, b = on.model.state_dict(), off.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert all(torch.equal(p, q) for p, q in zip(on.model.parameters(), off.model.parameters(), strict=True))
    assert "diag_grad_hamming" in on.history[-1] and "diag_grad_hamming" not in off.history[-1]
    keep = [k for k in off.history[0] if k != "seconds"]
    assert [{k: h[k] for k in keep} for h in on.history] == [{k: h[k] for k in keep} for h in off.history]


def test_diagnostic_fields_against_direct_computations():
    """Each field on the probe batch (the first 128 validation images; here all 40) at the end of training,
    recomputed directly: dead and unstable fractions per layer, the weighted terms, the first layer's norm."""
    from robustlib.regularizers import build_objective
    from robustlib.threat import ThreatModel
    from robustlib.training.diagnostics import PROBE_SIZE, probe_generator

    x, y = _data()
    cfg = _cfg(epochs=2)
    assert cfg.records_diagnostics and not _cfg(objective={"ce": 1.0}).records_diagnostics
    res = train(cfg, x, y, x[:40], y[:40], progress=False)
    row, model = res.history[-1], res.model
    assert PROBE_SIZE == 128
    with torch.no_grad():
        logits, z = model(x[:40], return_preacts=True)
        rho = ThreatModel("linf", row["eps"]).random_corner(x[:40], probe_generator(cfg.seed))
        _, zp = model((x[:40] + rho).clamp(0, 1), return_preacts=True)
        _, zm = model((x[:40] - rho).clamp(0, 1), return_preacts=True)
    for j in range(len(z)):
        dead = sum(bool((z[j][:, k] <= 0).all()) for k in range(z[j].shape[1])) / z[j].shape[1]
        assert row[f"diag_dead_l{j}"] == pytest.approx(dead)
        assert row[f"diag_unstable_l{j}"] == pytest.approx(float(((zp[j] > 0) != (zm[j] > 0)).float().mean()))
    assert row["probe_classes"] == len(set(logits.argmax(1).tolist()))
    assert row["diag_w1_norm"] == pytest.approx(float(model.layers[1].weight.detach().norm()))
    # the weighted terms: the objective on the probe batch with the probe's rho, in train mode
    objective = build_objective(cfg.objective, cfg.gamma_ramp)
    progress = (2 * 6 - 1) / (2 * 6)  # the last step of epoch 2 (96 images / batch 16 = 6 steps per epoch)
    from robustlib.regularizers import StepContext

    model.train()
    ctx = StepContext(model, x[:40], y[:40], ThreatModel("linf", row["eps"]), progress, probe_generator(cfg.seed))
    _, parts = objective(ctx)
    model.eval()
    for name, wt in objective.terms.items():
        assert row[f"diag_{name}_weighted"] == pytest.approx(wt.weight_at(progress) * float(parts[name]), rel=1e-5)
    assert all(row[f"diag_grad_{n}"] >= 0 for n in ("ce", "hamming", "stability", "total"))


def test_resumed_run_keeps_its_diagnostics_history(tmp_path):
    x, y = _data()
    full = train(_cfg(epochs=3), x, y, x[:16], y[:16], progress=False)

    class Killed(Exception):
        pass

    def kill(epoch, step):
        if (epoch, step) == (2, 1):
            raise Killed

    ckpt = tmp_path / "resume.pt"
    with pytest.raises(Killed):
        train(_cfg(epochs=3), x, y, x[:16], y[:16], resume_path=ckpt, step_hook=kill, progress=False)
    resumed = train(_cfg(epochs=3), x, y, x[:16], y[:16], resume_path=ckpt, progress=False)
    assert resumed.resumed_from_epoch == 2
    strip = [{k: v for k, v in h.items() if k != "seconds"} for h in full.history]
    assert [{k: v for k, v in h.items() if k != "seconds"} for h in resumed.history] == strip
    assert "diag_dead_l0" in resumed.history[0]  # epoch 1's diagnostics came back from the checkpoint


def _balanced(n=96, seed=0):
    """Three equally frequent classes: the terciles of the image mean (``_data``'s labels are nearly all class 1)."""
    x, _ = _data(n, seed)
    rank = x.mean((1, 2, 3)).argsort().argsort()
    return x, (rank * 3 // n).long()


def test_a_collapsing_run_stops_and_a_healthy_one_trains_every_epoch(tmp_path):
    """One class for every training label drives the network to a constant prediction: with stop_on_collapse 2 it
    stops early and records the first epoch of the constant streak; balanced, learnable labels train all 6 epochs."""
    x, y = _balanced()
    constant = torch.zeros_like(y)
    cfg = _cfg(epochs=6, stop_on_collapse=2, objective={"ce": 1.0})
    down = train(cfg, x, constant, x[:40], constant[:40], resume_path=tmp_path / "r.pt", progress=False)
    assert down.collapsed_epoch is not None and len(down.history) < 6
    streak = [h["probe_classes"] for h in down.history]
    assert streak[-2:] == [1.0, 1.0] and down.collapsed_epoch == len(streak) - 1
    assert all(s > 1 for s in streak[: down.collapsed_epoch - 1])
    # resuming the stopped run does not train on
    again = train(cfg, x, constant, x[:40], constant[:40], resume_path=tmp_path / "r.pt", progress=False)
    assert again.collapsed_epoch == down.collapsed_epoch and len(again.history) == len(down.history)
    healthy = train(cfg, x, y, x[:40], y[:40], progress=False)
    assert healthy.collapsed_epoch is None and len(healthy.history) == 6
    assert all(h["probe_classes"] > 1 for h in healthy.history)


def test_new_options_leave_old_configurations_keys_and_records_unchanged():
    """The resume key and the saved config of a run that does not use the later options are what they were before
    the options existed (the committed runs resume and record as before); stop_on_collapse changes the key,
    diagnostics (which cannot change training) does not."""
    import hashlib
    import json
    from dataclasses import asdict

    cfg = _cfg()
    old = {k: v for k, v in asdict(cfg).items() if k not in ("diagnostics", "stop_on_collapse")}
    assert cfg.key() == hashlib.sha256(json.dumps(old, sort_keys=True).encode()).hexdigest()[:16]
    assert cfg.record() == old
    assert _cfg(diagnostics=False).key() == cfg.key() and _cfg(stop_on_collapse=5).key() != cfg.key()
    with pytest.raises(ValueError, match="stop_on_collapse"):
        _cfg(stop_on_collapse=-1)


def test_diagnostics_run_on_the_compiled_hamming_path_without_changing_training(monkeypatch):
    """Training compiles the Hamming function (torch.compile, for the first shape seen): the diagnostics' probe batch
    of the training batch's shape runs through it too (its backward cannot retain the graph: one pass per term)."""
    from robustlib.regularizers import manifold

    monkeypatch.setenv("ROBUSTLIB_COMPILE", "1")
    monkeypatch.setitem(manifold._COMPILED, "signature", None)
    monkeypatch.setitem(manifold._COMPILED, "fn", None)
    monkeypatch.setitem(manifold._COMPILED, "failed", False)
    x, y = _data()
    on = train(_cfg(epochs=2, diagnostics=True), x, y, x[:16], y[:16], progress=False)
    assert manifold._COMPILED["fn"] is not None and not manifold._COMPILED["failed"]
    off = train(_cfg(epochs=2, diagnostics=False), x, y, x[:16], y[:16], progress=False)
    assert all(torch.equal(p, q) for p, q in zip(on.model.parameters(), off.model.parameters(), strict=True))
    assert on.history[-1]["diag_grad_hamming"] > 0
