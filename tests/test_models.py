import pytest
import torch
from torch import nn

from robustlib.models import MODELS, build_model

MNIST = dict(in_channels=1, image_size=28, num_classes=10, mean=(0.1307,), std=(0.3081,))
CIFAR = dict(in_channels=3, image_size=32, num_classes=10, mean=(0.49, 0.48, 0.45), std=(0.25, 0.24, 0.26))


def _relu_inputs_by_hooks(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Independent reference: capture the input of every nn.ReLU module by forward hooks, or, for
    models that call torch.nn.functional.relu directly, of every such call."""
    seen: list[torch.Tensor] = []
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    if relus:
        handles = [m.register_forward_hook(lambda m, i, o: seen.append(i[0].detach().clone())) for m in relus]
        try:
            model(x)
        finally:
            for h in handles:
                h.remove()
        return seen
    orig = torch.nn.functional.relu

    def spy(t, *a, **k):
        seen.append(t.detach().clone())
        return orig(t, *a, **k)

    torch.nn.functional.relu = spy
    try:
        model(x)
    finally:
        torch.nn.functional.relu = orig
    return seen


@pytest.mark.parametrize("name,kw,n_relu", [("mlp", MNIST, 2), ("smallcnn", MNIST, 3), ("cwcnn", MNIST, 6),
                                            ("smallcnn", CIFAR, 3), ("preactresnet18", CIFAR, 17)])
def test_preacts_are_the_relu_inputs_of_the_same_pass(name, kw, n_relu):
    torch.manual_seed(0)
    model = build_model(name, **kw).eval()
    x = torch.rand(2, kw["in_channels"], kw["image_size"], kw["image_size"])
    logits, pre = model(x, return_preacts=True)
    assert logits.shape == (2, 10)
    assert torch.allclose(logits, model(x), atol=1e-5)
    ref = _relu_inputs_by_hooks(model, x)
    assert len(pre) == len(ref) == n_relu
    for a, b in zip(pre, ref, strict=True):
        assert torch.allclose(a, b, atol=1e-5)


def test_normalization_happens_inside():
    torch.manual_seed(0)
    model = build_model("smallcnn", **MNIST).eval()
    x = torch.rand(3, 1, 28, 28)
    manual = model.layers((x - 0.1307) / 0.3081)
    assert torch.allclose(model(x), manual, atol=1e-5)
    assert torch.allclose(model.as_sequential()(x), manual, atol=1e-5)


def test_cwcnn_architecture_matches_carlini_wagner():
    model = build_model("cwcnn", **MNIST)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    fcs = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [c.out_channels for c in convs] == [32, 32, 64, 64]
    assert all(c.kernel_size == (3, 3) for c in convs)
    assert [f.out_features for f in fcs] == [200, 200, 10]
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == 2


def test_smallcnn_is_the_verification_network():
    model = build_model("smallcnn", **MNIST)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size, c.stride) for c in convs] == [(16, (4, 4), (2, 2)), (32, (4, 4), (2, 2))]
    assert [f.out_features for f in model.modules() if isinstance(f, nn.Linear)] == [128, 10]


def test_bad_names_and_shapes():
    with pytest.raises(ValueError, match="unknown model"):
        build_model("resnet50")
    with pytest.raises(ValueError, match="impossible model shape"):
        build_model("mlp", num_classes=1)
    with pytest.raises(ValueError, match="std"):
        build_model("mlp", std=(0.0,))
    assert set(MODELS) == {"mlp", "smallcnn", "cwcnn", "preactresnet18", "alexnet_cifar"}


def test_spectral_norm_option_bounds_each_layer():
    torch.manual_seed(0)
    model = build_model("mlp", spectral_norm=True, hidden=(32,), **MNIST).train()
    for _ in range(30):  # power iterations run in train-mode forwards
        model(torch.rand(4, 1, 28, 28))
    model.eval()
    for m in model.modules():
        if isinstance(m, nn.Linear):
            assert float(torch.linalg.matrix_norm(m.weight.detach(), ord=2)) == pytest.approx(1.0, rel=0.02)
    assert model.arch["spectral_norm"] is True
