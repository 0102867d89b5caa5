"""Models: MLP, SmallCNN, CWCNN, PreActResNet18, and AlexNetCIFAR (the LPIPS network of the NPTM attacks).

Every model takes images in [0, 1] (NCHW float32), normalizes inside, and can return the
pre-activation of every ReLU from the same forward pass: ``model(x, return_preacts=True)`` gives
``(logits, [z_1, ..., z_k])``. ``build_model(name, **kwargs)`` builds any of them by name; the name and
arguments are kept on ``model.arch`` so checkpoints can rebuild the model (``robustlib.pipeline.io``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Normalize", "MLP", "SmallCNN", "CWCNN", "AlexNetCIFAR", "PreActResNet18", "MODELS", "build_model"]


class Normalize(nn.Module):
    """Per-channel affine normalization ``(x - mean) / std`` (an exact, elementwise affine layer)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if any(s <= 0 for s in std):
            raise ValueError(f"std must be positive, got {list(std)}")
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class SequentialReLUNet(nn.Module):
    """A network ``Normalize -> layers`` where ``layers`` is an ``nn.Sequential`` of Conv2d, Linear,
    Flatten, MaxPool2d and ReLU. ``as_sequential()`` exposes the whole map for verification."""

    def __init__(self, normalize: Normalize, layers: nn.Sequential) -> None:
        super().__init__()
        self.normalize = normalize
        self.layers = layers

    def forward(self, x: torch.Tensor, return_preacts: bool = False):
        h = self.normalize(x)
        if not return_preacts:
            return self.layers(h)
        preacts: list[torch.Tensor] = []
        for layer in self.layers:
            if isinstance(layer, nn.ReLU):
                preacts.append(h)
            h = layer(h)
        return h, preacts

    def as_sequential(self) -> nn.Sequential:
        """The network as one ``nn.Sequential`` (Normalize first), sharing parameters with ``self``."""
        return nn.Sequential(self.normalize, *self.layers)


def _check_shape(in_channels: int, image_size: int, num_classes: int) -> None:
    if in_channels < 1 or image_size < 1 or num_classes < 2:
        raise ValueError(
            f"impossible model shape: in_channels={in_channels}, image_size={image_size}, "
            f"num_classes={num_classes}"
        )


class MLP(SequentialReLUNet):
    """Fully connected ReLU network: ``hidden`` widths, then a linear layer to the logits."""

    def __init__(self, in_channels: int = 1, image_size: int = 28, num_classes: int = 10,
                 hidden: Sequence[int] = (256, 256), mean: Sequence[float] = (0.0,),
                 std: Sequence[float] = (1.0,)) -> None:
        _check_shape(in_channels, image_size, num_classes)
        dims = [in_channels * image_size * image_size, *hidden]
        layers: list[nn.Module] = [nn.Flatten()]
        for a, b in zip(dims[:-1], dims[1:], strict=True):
            layers += [nn.Linear(a, b), nn.ReLU()]
        layers.append(nn.Linear(dims[-1], num_classes))
        super().__init__(Normalize(mean, std), nn.Sequential(*layers))


class SmallCNN(SequentialReLUNet):
    """The paper's verification network (Wong & Kolter's small CNN): conv 16 4x4 s2, conv 32 4x4 s2,
    fc ``width`` (128), fc ``num_classes``; padding 1 so 28 -> 14 -> 7 and 32 -> 16 -> 8."""

    def __init__(self, in_channels: int = 1, image_size: int = 28, num_classes: int = 10,
                 width: int = 128, mean: Sequence[float] = (0.0,), std: Sequence[float] = (1.0,)) -> None:
        _check_shape(in_channels, image_size, num_classes)
        s = image_size // 4
        layers = nn.Sequential(
            nn.Conv2d(in_channels, 16, 4, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 4, stride=2, padding=1), nn.ReLU(),
            nn.Flatten(), nn.Linear(32 * s * s, width), nn.ReLU(),
            nn.Linear(width, num_classes),
        )
        super().__init__(Normalize(mean, std), layers)


class CWCNN(SequentialReLUNet):
    """Carlini & Wagner's MNIST CNN: conv32 3x3, conv32 3x3, maxpool 2, conv64 3x3, conv64 3x3,
    maxpool 2, fc200, fc200, fc ``num_classes``."""

    def __init__(self, in_channels: int = 1, image_size: int = 28, num_classes: int = 10,
                 mean: Sequence[float] = (0.0,), std: Sequence[float] = (1.0,)) -> None:
        _check_shape(in_channels, image_size, num_classes)
        s = ((image_size - 4) // 2 - 4) // 2
        if s < 1:
            raise ValueError(f"CWCNN needs image_size >= 14, got {image_size}")
        layers = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3), nn.ReLU(), nn.Conv2d(32, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3), nn.ReLU(), nn.Conv2d(64, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * s * s, 200), nn.ReLU(), nn.Linear(200, 200), nn.ReLU(),
            nn.Linear(200, num_classes),
        )
        super().__init__(Normalize(mean, std), layers)


class AlexNetCIFAR(SequentialReLUNet):
    """perceptual-advex's ``CifarAlexNet`` (Laidlaw et al. 2021, ``alexnet_cifar``), the LPIPS network
    of their CIFAR-10 NPTM attacks: conv 64 3x3/2, maxpool 2, conv 192 3x3, maxpool 2, conv 384 3x3,
    conv 256 3x3, conv 256 3x3, maxpool 2, then dropout, fc 4096, dropout, fc 4096, fc
    ``num_classes`` (all convs padded 1). Any square size works (32 -> 16, 8, 4, 2; MNIST's 28 -> 14,
    7, 3, 1: the MNIST analogue). The LPIPS features are the five conv ReLU outputs."""

    def __init__(self, in_channels: int = 3, image_size: int = 32, num_classes: int = 10,
                 mean: Sequence[float] = (0.0,), std: Sequence[float] = (1.0,), hidden: int = 4096) -> None:
        _check_shape(in_channels, image_size, num_classes)
        s = image_size // 2 // 2 // 2 // 2
        if s < 1:
            raise ValueError(f"AlexNetCIFAR needs image_size >= 16, got {image_size}")
        layers = nn.Sequential(
            nn.Conv2d(in_channels, 64, 3, stride=2, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 192, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Dropout(), nn.Linear(256 * s * s, hidden), nn.ReLU(),
            nn.Dropout(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, num_classes),
        )
        super().__init__(Normalize(mean, std), layers)


class _PreActBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor, preacts: list[torch.Tensor] | None) -> torch.Tensor:
        z1 = self.bn1(x)
        if preacts is not None:
            preacts.append(z1)
        h = F.relu(z1)
        shortcut = self.shortcut(h) if self.shortcut is not None else x
        z2 = self.bn2(self.conv1(h))
        if preacts is not None:
            preacts.append(z2)
        return self.conv2(F.relu(z2)) + shortcut


class PreActResNet18(nn.Module):
    """Pre-activation ResNet-18 (He et al. 2016), the paper's CIFAR-10 architecture."""

    def __init__(self, in_channels: int = 3, image_size: int = 32, num_classes: int = 10,
                 mean: Sequence[float] = (0.0,), std: Sequence[float] = (1.0,)) -> None:
        super().__init__()
        _check_shape(in_channels, image_size, num_classes)
        self.normalize = Normalize(mean, std)
        self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        blocks: list[_PreActBlock] = []
        in_planes = 64
        for planes, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            for s in (stride, 1):
                blocks.append(_PreActBlock(in_planes, planes, s))
                in_planes = planes
        self.blocks = nn.ModuleList(blocks)
        self.bn = nn.BatchNorm2d(512)
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor, return_preacts: bool = False):
        preacts: list[torch.Tensor] | None = [] if return_preacts else None
        h = self.conv1(self.normalize(x))
        for block in self.blocks:
            h = block(h, preacts)
        z = self.bn(h)
        if preacts is not None:
            preacts.append(z)
        h = F.adaptive_avg_pool2d(F.relu(z), 1).flatten(1)
        logits = self.linear(h)
        return (logits, preacts) if return_preacts else logits


MODELS: dict[str, type[nn.Module]] = {
    "mlp": MLP,
    "smallcnn": SmallCNN,
    "cwcnn": CWCNN,
    "preactresnet18": PreActResNet18,
    "alexnet_cifar": AlexNetCIFAR,
}


def build_model(name: str, spectral_norm: bool = False, **kwargs: Any) -> nn.Module:
    """Build a model by name (``mlp``, ``smallcnn``, ``cwcnn``, ``preactresnet18``, ``alexnet_cifar``).

    ``kwargs`` go to the constructor (``in_channels``, ``image_size``, ``num_classes``, ``mean``,
    ``std``, and model-specific ones such as ``hidden`` or ``width``). With ``spectral_norm=True`` every
    Conv2d and Linear weight is reparametrized by ``torch.nn.utils.parametrizations.spectral_norm``.
    The name and arguments are stored on ``model.arch``.
    """
    key = name.lower()
    if key not in MODELS:
        raise ValueError(f"unknown model {name!r}; expected one of {sorted(MODELS)}")
    model = MODELS[key](**kwargs)
    if spectral_norm:
        from torch.nn.utils.parametrizations import spectral_norm as _sn

        for module in list(model.modules()):
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                _sn(module)
    model.arch = {"name": key, "spectral_norm": bool(spectral_norm), "kwargs": _plain(kwargs)}
    return model


def _plain(obj: Any) -> Any:
    """Convert tuples to lists recursively so ``arch`` is JSON- and weights_only-friendly."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj
