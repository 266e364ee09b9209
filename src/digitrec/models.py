"""Model registry: small `nn.Module`s, built by name.

Every model takes a batch of digits scaled to 0..1, white on black, shaped (N, 1, 28, 28), and
returns raw class scores (logits, N x 10); softmax turns them into probabilities at the output
(`probabilities`). Models that want standardised inputs carry the mean/std inside, so training,
recognition, export and the server all feed the same 0..1 pixels.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from digitrec.checkpoint import ModelCard, ModelError, check_card, check_finite, read_weights
from digitrec.config import MNIST_MEAN, MNIST_STD

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
_DESCRIPTIONS: dict[str, str] = {}


def register_model(name: str, description: str) -> Callable:
    def decorator(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = factory
        _DESCRIPTIONS[name] = description
        return factory

    return decorator


def create_model(name: str, **kwargs: Any) -> nn.Module:
    if name not in _REGISTRY:
        raise KeyError(f"unknown model {name!r}; choose from {', '.join(_REGISTRY)}")
    return _REGISTRY[name](**kwargs)


def list_models() -> dict[str, str]:
    """Model name -> one-line description."""
    return dict(_DESCRIPTIONS)


def to_input(images_u8: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
    """uint8 (N, 1, 28, 28) -> float 0..1, the scaling the article does."""
    x = images_u8.float().div_(255.0)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Softmax: raw scores -> probabilities that sum to 1 over the 10 classes."""
    return torch.softmax(logits.float(), dim=-1)


class Standardize(nn.Module):
    """(x - mean) / std with MNIST's statistics; no parameters, exported with the model."""

    def __init__(self, mean: float = MNIST_MEAN, std: float = MNIST_STD) -> None:
        super().__init__()
        self.mean, self.std = mean, std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def conv_bn(
    in_channels: int, out_channels: int, kernel_size: int, padding: int, stride: int = 1
) -> nn.Sequential:
    """Conv -> BatchNorm -> ReLU; the conv has no bias since batch norm brings its own."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def global_max_pool(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, C), the largest response of each channel anywhere in the image.

    adaptive_max_pool2d keeps the argmax for its backward pass; `amax` over (2, 3) rebuilds a
    mask there, which made every training step of `fastcnn` 15% slower.
    """
    return F.adaptive_max_pool2d(x, 1).flatten(1)


class ArticleMLP(nn.Module):
    """The article's Keras network: Flatten -> Dense 128 ReLU -> Dense 10 (softmax at output)."""

    def __init__(self, hidden: int = 128, num_classes: int = 10) -> None:
        super().__init__()
        self.flatten = nn.Flatten()  # (N, 1, 28, 28) -> (N, 784)
        self.hidden = nn.Linear(28 * 28, hidden)  # 784 * 128 + 128 = 100,480 parameters
        self.relu = nn.ReLU()
        self.output = nn.Linear(hidden, num_classes)  # 128 * 10 + 10 = 1,290 parameters

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.flatten(x)
        x = self.relu(self.hidden(x))
        return self.output(x)


class DigitCNN(nn.Module):
    """A compact batch-norm CNN: three conv stages with pooling, then one linear classifier.

    Sized for speed on a CPU: the first stage sees 28x28, the rest work on 14x14 and 7x7.
    """

    def __init__(self, widths: tuple[int, int, int] = (32, 64, 128), num_classes: int = 10) -> None:
        super().__init__()
        c1, c2, c3 = widths
        self.standardize = Standardize()
        self.conv1 = conv_bn(1, c1, 5, padding=2)  # (N, c1, 28, 28)
        self.conv2 = conv_bn(c1, c2, 3, padding=1)  # (N, c2, 14, 14)
        self.conv3 = conv_bn(c2, c3, 3, padding=1)  # (N, c3, 7, 7)
        self.classifier = nn.Linear(c3, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.standardize(x)
        x = F.max_pool2d(self.conv1(x), 2)
        x = F.max_pool2d(self.conv2(x), 2)
        x = self.conv3(x)
        x = global_max_pool(x)  # (N, c3)
        return self.classifier(x)


class StridedCNN(nn.Module):
    """DigitCNN's shape, but downsampling with strided convolutions instead of max-pooling.

    On a CPU the elementwise work on large maps (pooling's backward pass, batch norm, ReLU)
    costs more than the convolutions themselves; stride-2 convolutions skip the 28x28 maps and
    halve the time per step for about the same accuracy. `widths` names one conv per entry:
    a 5x5 and a 3x3 at stride 2 (28 -> 14 -> 7), then 3x3s at 7x7; a narrow, deeper stack
    (16, 32, 48, 64) learns as much per epoch as (32, 48, 96) in about 85% of the time.
    """

    def __init__(self, widths: tuple[int, ...] = (32, 64, 128), num_classes: int = 10) -> None:
        super().__init__()
        if len(widths) < 2:
            raise ValueError(f"fastcnn needs at least 2 widths, got {widths}")
        self.standardize = Standardize()
        channels = 1
        # Named conv1, conv2, ... (not a Sequential) so saved weights keep their keys.
        for index, width in enumerate(widths):
            kernel, stride = (5, 2) if index == 0 else (3, 2 if index == 1 else 1)
            self.add_module(
                f"conv{index + 1}", conv_bn(channels, width, kernel, kernel // 2, stride)
            )
            channels = width
        self.depth = len(widths)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.standardize(x)
        for index in range(self.depth):
            x = getattr(self, f"conv{index + 1}")(x)
        x = global_max_pool(x)  # (N, C)
        return self.classifier(x)


class WideCNN(nn.Module):
    """Two convs per stage, wider, with dropout (on 2 cores no more accurate than `fastcnn`
    at twice its width for the same training time)."""

    def __init__(
        self,
        widths: tuple[int, int, int] = (48, 96, 192),
        dropout: float = 0.2,
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        c1, c2, c3 = widths
        self.standardize = Standardize()
        self.conv1a = conv_bn(1, c1, 3, padding=1)  # (N, c1, 28, 28)
        self.conv1b = conv_bn(c1, c1, 3, padding=1)
        self.conv2a = conv_bn(c1, c2, 3, padding=1)  # (N, c2, 14, 14)
        self.conv2b = conv_bn(c2, c2, 3, padding=1)
        self.conv3a = conv_bn(c2, c3, 3, padding=1)  # (N, c3, 7, 7)
        self.conv3b = conv_bn(c3, c3, 3, padding=1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(c3, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.standardize(x)
        x = F.max_pool2d(self.conv1b(self.conv1a(x)), 2)
        x = F.max_pool2d(self.conv2b(self.conv2a(x)), 2)
        x = self.conv3b(self.conv3a(x))
        x = global_max_pool(x)  # (N, c3)
        return self.classifier(self.dropout(x))


class KernelNet(nn.Module):
    """A plain stack of same-size convolutions with batch norm and no pooling (An et al. 2020).

    Each unpadded k x k conv shrinks the 28x28 image by k - 1, so the kernel size sets how many
    convs fit (an ensemble may give each member its own, `TrainConfig.member_kernels`).
    """

    def __init__(self, kernel_size: int = 5, width: int = 32, num_classes: int = 10) -> None:
        super().__init__()
        self.standardize = Standardize()
        layers, channels, size, index = [], 1, 28, 0
        while size - (kernel_size - 1) >= 8:
            out = width + 16 * index
            layers.append(conv_bn(channels, out, kernel_size, padding=0))
            channels, size, index = out, size - (kernel_size - 1), index + 1
        self.features = nn.Sequential(*layers)  # (N, channels, size, size)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(channels * size * size, num_classes, bias=False),
            nn.BatchNorm1d(num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.standardize(x)
        x = self.features(x)
        return self.classifier(x)


class PytorchExampleNet(nn.Module):
    """pytorch/examples mnist/main.py `Net`, layer for layer (1,199,882 parameters)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.standardize = Standardize()
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(9216, 128)
        self.fc2 = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.standardize(x)
        x = F.relu(self.conv1(x))  # (N, 32, 26, 26)
        x = F.relu(self.conv2(x))  # (N, 64, 24, 24)
        x = F.max_pool2d(x, 2)  # (N, 64, 12, 12)
        x = self.dropout1(x)
        x = torch.flatten(x, 1)  # (N, 9216)
        x = F.relu(self.fc1(x))
        x = self.dropout2(x)
        return self.fc2(x)


class KerasConvNet(nn.Module):
    """keras-io mnist_convnet.py, layer for layer (34,826 parameters); inputs 0..1 as in Keras."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3)
        self.conv2 = nn.Conv2d(32, 64, 3)
        self.dropout = nn.Dropout(0.5)
        self.dense = nn.Linear(64 * 5 * 5, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)  # (N, 32, 13, 13)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)  # (N, 64, 5, 5)
        # Keras flattens channels-last (H, W, C); the order does not change what can be learned.
        x = torch.flatten(x, 1)  # (N, 1600)
        return self.dense(self.dropout(x))


@register_model("mlp", "the article's network: Flatten, Dense 128 ReLU, Dense 10 softmax")
def mlp(hidden: int = 128) -> nn.Module:
    return ArticleMLP(hidden=hidden)


@register_model("cnn", "compact batch-norm CNN (3 conv stages with max-pooling)")
def cnn(widths: tuple[int, int, int] = (32, 64, 128)) -> nn.Module:
    return DigitCNN(widths=tuple(widths))


@register_model("fastcnn", "the cnn with strided convolutions: half the time per step on a CPU")
def fastcnn(widths: tuple[int, ...] = (32, 64, 128)) -> nn.Module:
    return StridedCNN(widths=tuple(widths))


@register_model("wide", "wider two-convs-per-stage CNN with dropout (VGG-like)")
def wide(widths: tuple[int, int, int] = (48, 96, 192), dropout: float = 0.2) -> nn.Module:
    return WideCNN(widths=tuple(widths), dropout=dropout)


@register_model("kernelnet", "plain conv stack without pooling (3x3, 5x5 or 7x7 kernels)")
def kernelnet(kernel_size: int = 5, width: int = 32) -> nn.Module:
    return KernelNet(kernel_size=kernel_size, width=width)


@register_model("pytorch-example", "reference: pytorch/examples mnist/main.py Net")
def pytorch_example() -> nn.Module:
    return PytorchExampleNet()


@register_model("keras-convnet", "reference: keras-io mnist_convnet.py")
def keras_convnet() -> nn.Module:
    return KerasConvNet()


def layer_table(model: nn.Module) -> list[tuple[str, str, int]]:
    """(name, layer type, parameters) for each leaf layer, in definition order."""
    rows = []
    for name, module in model.named_modules():
        if name and not list(module.children()):
            params = sum(p.numel() for p in module.parameters(recurse=False))
            rows.append((name, type(module).__name__, params))
    return rows


class Ensemble(nn.Module):
    """A vote of several models: the mean of their (temperature-scaled) probabilities.

    Returns log of the mean probability, so softmax of the output is exactly the vote.
    """

    def __init__(self, members: list[nn.Module], temperatures: list[float] | None = None) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.temperatures = list(temperatures or [1.0] * len(members))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        votes = [
            torch.softmax(member(x).float() / t, dim=-1)
            for member, t in zip(self.members, self.temperatures, strict=True)
        ]
        return torch.log(torch.stack(votes).mean(0).clamp_min(1e-12))


class Calibrated(nn.Module):
    """Divides a model's logits by a temperature fitted on the validation split."""

    def __init__(self, model: nn.Module, temperature: float = 1.0) -> None:
        super().__init__()
        # Dividing by 0, a negative or a NaN temperature gives inf, flipped or NaN probabilities.
        if not math.isfinite(temperature) or temperature <= 0:
            raise ValueError(f"a softmax temperature must be finite and above 0, not {temperature}")
        self.model = model
        self.temperature = float(temperature)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).float() / self.temperature


def build_from_card(card: dict[str, Any]) -> nn.Module:
    """The architecture a model card describes (weights not loaded)."""
    if card.get("members"):
        members = [create_model(m["model"], **m.get("model_args", {})) for m in card["members"]]
        return Ensemble(members, [m.get("temperature", 1.0) for m in card["members"]])
    return create_model(card["model"], **card.get("model_args", {}))


def load_model(
    path: str | os.PathLike, calibrated: bool = True, device: str = "cpu"
) -> tuple[nn.Module, ModelCard]:
    """Rebuild a model from a run directory or .safetensors file alone: (module, card).

    Only safetensors and JSON are read (never a pickle); the weights and the card must match
    the digests in the card, the weights the shapes of the architecture the card names, and the
    card's classes the model's outputs. ``calibrated`` wraps the module with the card's softmax
    temperature, so that its softmax is calibrated; without it the network is returned as
    trained (an ensemble member, a model to fine-tune).
    """
    arrays, card = read_weights(path)
    try:
        model = build_from_card(card)
    except (KeyError, TypeError) as error:
        raise ModelError(f"{path}: the model card names an unknown model ({error})") from None
    state = {k: torch.from_numpy(np.array(v)) for k, v in arrays.items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        first = str(error).strip().splitlines()
        raise ModelError(
            f"{path}: weights do not fit the model ({first[1 if len(first) > 1 else 0].strip()})"
        ) from None
    wrapped = Calibrated(model.eval(), card.get("temperature", 1.0)).eval()
    with torch.inference_mode():  # a blank digit: (1, 1, 28, 28) in, (1, outputs) out
        logits = wrapped(torch.zeros(1, 1, 28, 28))
    check_card(card, path, outputs=logits.shape[-1])
    check_finite(torch.softmax(logits, dim=-1).numpy(), path)
    return (wrapped if calibrated else model).to(device), ModelCard.from_dict(card)
