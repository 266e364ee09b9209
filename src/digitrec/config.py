"""Typed configuration: one frozen dataclass per concern, whose defaults are a good run.

Training recipes are named `TrainConfig`s. A run writes its resolved config into `model.json`
so that `digitrec train --recipe NAME --seed S` reproduces it.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# MNIST's own statistics of the 0..1 scaled training pixels. Shared by training, recognition,
# export and the server so that every path feeds the model the same numbers.
MNIST_MEAN = 0.1307
MNIST_STD = 0.3081


def cache_dir() -> Path:
    """Where fetched datasets live: $XDG_CACHE_HOME/digitrec, default ~/.cache/digitrec."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "digitrec"


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "mnist"
    data_dir: str | None = None  # a folder with the four IDX files (raw or .gz), tried first
    validation_size: int = 5000  # held out of the training set, never trained on
    subset: int | None = None  # train on the first N training images only (tests, quick tries)


@dataclass(frozen=True)
class AugmentConfig:
    """Random affine + elastic augmentation, applied to whole batches on the fly."""

    enabled: bool = False
    rotate_degrees: float = 0.0
    scale: float = 0.0  # zoom drawn from [1 - scale, 1 + scale]
    shear: float = 0.0  # radians-ish shear factor
    translate: float = 0.0  # fraction of the image size
    elastic: float = 0.0  # strength of the smooth random displacement field, in pixels
    stroke: float = 0.0  # probability of thickening or thinning the strokes
    blur_noise: float = 0.0  # probability of a light blur plus Gaussian noise
    low_resolution: float = 0.0  # probability of shrinking to 6-12 px and back (far-away digits)
    until: float = 1.0  # fraction of the training steps augmented; the rest see clean images


@dataclass(frozen=True)
class TrainConfig:
    model: str = "cnn"
    model_args: dict[str, Any] = field(default_factory=dict)
    epochs: float = 1.0  # fractions allowed: the fast recipe trains on part of an epoch too
    batch_size: int = 256
    optimizer: str = "adam"  # adam | adamw | sgd | adadelta
    learning_rate: float = 3e-3
    betas: tuple[float, float] = (0.9, 0.999)  # Adam's moment decays
    weight_decay: float = 0.0
    momentum: float = 0.9
    schedule: str = "onecycle"  # onecycle | step | constant
    step_gamma: float = 0.7  # StepLR decay per epoch, for the reference recipe
    warmup: float = 0.2  # one-cycle warm-up fraction
    cycle_momentum: bool = True  # one-cycle moves Adam's beta1 0.95 -> 0.85 -> 0.95 over betas[0]
    label_smoothing: float = 0.0
    ema: float = 0.0  # exponential moving average of weights (0 = off)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    bf16: bool = True  # bf16 autocast where the CPU supports it natively
    channels_last: bool = True
    threads: int | None = None  # torch intra-op threads; None = all cores
    seed: int = 0
    device: str = "cpu"
    evals_per_epoch: int = 1  # how often to measure validation during an epoch
    members: int = 1  # >1 trains an ensemble of members voted by mean probability
    member_kernels: tuple[int, ...] = ()  # per-member kernel size, for ensembles
    calibrate: bool = True  # fit a softmax temperature on the validation split
    # Outlier exposure: non-digit images (letters, symbols, clothes, pieces of digits) per
    # training digit in each batch, trained towards equal probabilities, so that the model is
    # unsure of what is not a digit; 0 = off.
    outliers: float = 0.0
    outlier_weight: float = 0.5
    # What the reading pipeline hands the model (`digitrec.pagecrops`): digits cut from
    # synthetic pages, as a share of the training digits added to them, and marks cut from
    # pages added to the outliers (a third as many again); 0 = off.
    page_crops: float = 0.0
    # How often each kind of page is drawn for those digits, relative to the others (a kind not
    # named weighs 1): far-away photos hand the model blurred, blocky crops that no MNIST
    # augmentation imitates well, so the robust recipe draws them most.
    page_weights: dict[str, float] = field(default_factory=dict)
    # Steps between saves of the training state (`last.safetensors`), besides every epoch's
    # end, so a run killed part-way through an epoch resumes there; 0 = epoch ends only. A save
    # takes about as long as one step, so the cost stays a small fraction of training.
    checkpoint_every: int = 100


RECIPES: dict[str, TrainConfig] = {
    # The article's network and recipe: Flatten, Dense 128 ReLU, Dense 10 softmax; Adam, 5 epochs.
    "article": TrainConfig(
        model="mlp",
        epochs=5,
        batch_size=32,
        learning_rate=1e-3,
        schedule="constant",
        bf16=False,
    ),
    # Seconds on a laptop CPU: a narrow strided batch-norm CNN, 0.75 epoch of one-cycle Adam.
    # Four thin convs learn as much per epoch as three wider ones in less time; short Adam
    # memories (beta1 0.8 held, beta2 0.95) and a high peak rate suit a run this short, and
    # label smoothing lets it stop before the end of the first epoch (README: Recipes).
    "fast": TrainConfig(
        model="fastcnn",
        model_args={"widths": (16, 32, 48, 64)},
        epochs=0.75,
        batch_size=128,
        learning_rate=1.2e-2,
        betas=(0.8, 0.95),
        cycle_momentum=False,
        label_smoothing=0.1,
    ),
    # One strong model: the strided CNN, wider and one conv deeper, 26 epochs of affine +
    # elastic augmentation, label smoothing and a weight average. The last 15% of the steps
    # see the digits undistorted, so the model ends on digits as they are (README: Recipes).
    "accurate": TrainConfig(
        model="fastcnn",
        model_args={"widths": (64, 128, 192, 256)},
        epochs=26,
        batch_size=128,
        optimizer="adamw",
        learning_rate=3e-3,
        weight_decay=5e-4,
        label_smoothing=0.1,
        ema=0.999,
        augment=AugmentConfig(
            enabled=True,
            rotate_degrees=10,
            scale=0.1,
            shear=0.1,
            translate=0.08,
            elastic=1.0,
            until=0.85,
        ),
    ),
    # The default recognition model: trained to read real-world writing, not just MNIST, and
    # small enough for tens of thousands of digits a second through ONNX Runtime on 2 cores.
    # The augmentation is mild on purpose: the preprocessing already centres and sizes digits
    # like MNIST, and stronger distortion cost MNIST accuracy without gains on real images.
    "robust": TrainConfig(
        model="fastcnn",
        epochs=14,
        batch_size=128,
        optimizer="adamw",
        learning_rate=4e-3,
        weight_decay=5e-4,
        label_smoothing=0.05,
        ema=0.998,
        augment=AugmentConfig(
            enabled=True,
            rotate_degrees=10,
            scale=0.1,
            shear=0.1,
            translate=0.06,
            elastic=1.0,
            stroke=0.3,
            blur_noise=0.2,
            low_resolution=0.15,
        ),
        # Letters, symbols and wrong cuts of touching digits must read unsure.
        outliers=0.25,
        # Half as many digits again, as the pipeline cuts them from synthetic pages; seven
        # pages in ten are far-away photos, whose crops MNIST and its augmentation resemble least.
        page_crops=0.5,
        page_weights={"lowres": 40.0},
    ),
    # pytorch/examples mnist/main.py: Adadelta lr 1.0, StepLR gamma 0.7, batch 64, 14 epochs.
    "reference-pytorch": TrainConfig(
        model="pytorch-example",
        epochs=14,
        batch_size=64,
        optimizer="adadelta",
        learning_rate=1.0,
        schedule="step",
        step_gamma=0.7,
        bf16=False,
        channels_last=False,
    ),
    # keras-io mnist_convnet.py: Adam, batch 128, 15 epochs, 10% validation split.
    "reference-keras": TrainConfig(
        model="keras-convnet",
        epochs=15,
        batch_size=128,
        learning_rate=1e-3,
        schedule="constant",
        bf16=False,
        channels_last=False,
    ),
}


# About ten seconds: the fast recipe with a wider second conv, 2.5 epochs and random shifts
# that stop for the last 15% of the steps (the model ends on the digits as they are).
RECIPES["fast-long"] = dataclasses.replace(
    RECIPES["fast"],
    model_args={"widths": (16, 48, 64, 64)},
    epochs=2.5,
    augment=AugmentConfig(enabled=True, translate=0.08, until=0.85),
)

# A vote of three `accurate` models that differ only in their seed: mean probabilities.
RECIPES["ensemble"] = dataclasses.replace(RECIPES["accurate"], members=3)


class DeviceError(ValueError):
    """A device this process cannot train on; the message is one line."""


def available_cores() -> int:
    """CPU cores this process may run on (its affinity, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def recipe(name: str, **overrides: Any) -> TrainConfig:
    """The named recipe with some fields replaced (`None` overrides are ignored)."""
    if name not in RECIPES:
        raise KeyError(f"unknown recipe {name!r}; choose from {', '.join(RECIPES)}")
    base = RECIPES[name]
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if overrides.get("model", base.model) != base.model and "model_args" not in overrides:
        # A recipe's model_args (widths, kernels) fit its own model only: another model starts
        # from its own defaults.
        overrides.update(model_args={}, member_kernels=())
    return dataclasses.replace(base, **overrides)


def to_dict(config: Any) -> dict[str, Any]:
    """A dataclass config as plain JSON-able data."""
    return dataclasses.asdict(config)


def train_config_from_dict(data: dict[str, Any]) -> TrainConfig:
    """Inverse of `to_dict` for `TrainConfig` (ignores keys from newer versions)."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: v for k, v in data.items() if k in names}
    if isinstance(values.get("augment"), dict):
        aug_names = {f.name for f in dataclasses.fields(AugmentConfig)}
        values["augment"] = AugmentConfig(
            **{k: v for k, v in values["augment"].items() if k in aug_names}
        )
    for key in ("member_kernels", "betas"):  # JSON turned these tuples into lists
        if key in values:
            values[key] = tuple(values[key])
    if isinstance(values.get("model_args"), dict):  # widths too
        values["model_args"] = {
            k: tuple(v) if isinstance(v, list) else v for k, v in values["model_args"].items()
        }
    return TrainConfig(**values)


def check_device(device: str) -> str:
    """`device` if this process can train on it ("cpu", "cuda", "cuda:N"), else a DeviceError
    that says why, before any data is loaded onto it."""
    import torch

    kind, _, index = device.partition(":")
    if kind == "cpu" and not index:
        return device
    if kind != "cuda" or (index and not index.isdigit()):
        raise DeviceError(f"unknown device {device!r}: use cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise DeviceError(
            f"device {device!r}: no CUDA GPU is usable here (this torch build: "
            f"{torch.__version__}); train on cpu"
        )
    if index and int(index) >= torch.cuda.device_count():
        raise DeviceError(
            f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s)"
        )
    return device
