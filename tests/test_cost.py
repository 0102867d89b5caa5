"""robustlib.reporting.training_cost against closed forms: the FLOPs of SmallCNN's convolutions and matrix products
counted by hand, for a plain step, a 3x-batch regularizer step and PGD adversarial training."""

import os

import pytest

from robustlib.reporting.training_cost import passes_per_epoch, passes_per_step, step_flops
from robustlib.training.loop import TrainConfig

CIFAR = {"in_channels": 3, "image_size": 32, "num_classes": 10}
MNIST = {"in_channels": 1, "image_size": 28, "num_classes": 10}


def _smallcnn_macs(c: int, size: int, width: int = 128, classes: int = 10) -> tuple[int, int]:
    """Multiply-accumulates per image of SmallCNN (conv 16 4x4 s2 p1, conv 32 4x4 s2 p1, fc width, fc classes):
    (all layers, the first convolution alone)."""
    s1, s2 = size // 2, size // 4
    conv1 = s1 * s1 * 16 * c * 4 * 4
    conv2 = s2 * s2 * 32 * 16 * 4 * 4
    return conv1 + conv2 + 32 * s2 * s2 * width + width * classes, conv1


def _cfg(objective, kw=CIFAR, batch=8, eps=8 / 255) -> TrainConfig:
    return TrainConfig(model="smallcnn", model_kwargs=dict(kw), objective=objective, batch_size=batch, eps=eps,
                       epochs=1)


@pytest.mark.parametrize("kw", [CIFAR, MNIST])
def test_plain_step_is_forward_weight_grads_and_input_grads_but_the_first_layers(kw):
    macs, conv1 = _smallcnn_macs(kw["in_channels"], kw["image_size"])
    f, c1 = 2 * macs * 8, 2 * conv1 * 8  # a batch of 8, 2 FLOPs per multiply-accumulate
    # forward F, weight gradients F, input gradients F less the first layer's (the images need none)
    assert step_flops(_cfg({"ce": 1.0}, kw)) == 3 * f - c1


def test_hamming_and_stability_cost_one_pass_over_a_3x_batch():
    plain = step_flops(_cfg({"ce": 1.0}))
    both = _cfg({"ce": 1.0, "hamming": {"weight": 9.0, "alpha": 8.0}, "stability": {"weight": 0.04}})
    assert step_flops(both) == 3 * plain and passes_per_step(both) == 3.0


@pytest.mark.parametrize("steps", [1, 7])
def test_pgd_training_adds_a_forward_and_a_full_input_backward_per_attack_step(steps):
    macs, conv1 = _smallcnn_macs(3, 32)
    f, c1 = 2 * macs * 8, 2 * conv1 * 8
    cfg = _cfg({"pgd_at": {"weight": 1.0, "steps": steps}})
    assert step_flops(cfg) == 3 * f - c1 + steps * 2 * f
    assert passes_per_step(cfg) == pytest.approx((3 * f - c1 + steps * 2 * f) / (3 * f - c1))


def test_passes_per_epoch_multiplies_by_the_steps_of_an_epoch():
    cfg = _cfg({"ce": 1.0, "stability": {"weight": 0.04}})
    assert passes_per_epoch(cfg, 17) == 3.0 * 3  # ceil(17 / 8) steps
    assert passes_per_epoch(cfg, 16) == 3.0 * 2
    with pytest.raises(ValueError, match="n_train must be positive"):
        passes_per_epoch(cfg, 0)


def test_counting_needs_the_input_shape_and_leaves_the_compile_setting_alone(monkeypatch):
    with pytest.raises(ValueError, match="image_size"):
        step_flops(_cfg({"ce": 1.0}, {"in_channels": 3}))
    monkeypatch.setenv("ROBUSTLIB_COMPILE", "1")
    step_flops(_cfg({"ce": 1.0, "hamming": {"weight": 1.0, "alpha": 8.0}}))
    assert os.environ["ROBUSTLIB_COMPILE"] == "1"
