"""Training: explicit functions over in-memory tensors, made for speed on a CPU.

The whole dataset lives in memory as one uint8 tensor (N, 1, 28, 28); a batch is an index into
it, so there is no per-sample Dataset overhead. Augmentation transforms whole batches at once
with `affine_grid`/`grid_sample`. Seeds and generators are passed in; the global RNG is left as
it was found (`torch.random.fork_rng`).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from digitrec import checkpoint, data, distributed
from digitrec.config import (
    MNIST_MEAN,
    MNIST_STD,
    RECIPES,
    AugmentConfig,
    DataConfig,
    TrainConfig,
    recipe,
    to_dict,
    train_config_from_dict,
)
from digitrec.distributed import SINGLE_PROCESS, World
from digitrec.models import count_parameters, create_model

Progress = Callable[[dict[str, Any]], None]


@dataclass
class Split:
    """Images as uint8 (N, 1, 28, 28) and labels as int64 (N,), on the training device."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class Splits:
    train: Split
    validation: Split
    test: Split
    dataset: str
    sha256: dict[str, str]
    classes: tuple[str, ...] = field(default_factory=tuple)
    subset: int | None = None  # trained on the first N training images only


class DeviceError(ValueError):
    """A --device this machine does not have."""


def check_device(device: str) -> str:
    """`device` if this process can train on it ("cpu", "cuda", "cuda:N"), else a DeviceError
    that says why, before any data is loaded onto it."""
    kind, _, index = device.partition(":")
    if kind == "cpu" and not index:
        return device
    if kind != "cuda" or (index and not index.isdigit()):
        raise DeviceError(f"unknown device {device!r}: use cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise DeviceError(f"device {device!r}: no CUDA GPU is usable here (this torch build: "
                          f"{torch.__version__}); train on cpu")  # fmt: skip
    if index and int(index) >= torch.cuda.device_count():
        raise DeviceError(f"device {device!r}: this machine has "
                          f"{torch.cuda.device_count()} CUDA GPU(s)")  # fmt: skip
    return device


def make_splits(dataset: data.Dataset, config: DataConfig, device: str = "cpu") -> Splits:
    """Hold out a fixed validation set (seeded by the dataset, not the run) and go to tensors."""
    check_device(device)
    train_index, val_index = data.split_validation(
        len(dataset.train_labels), config.validation_size, seed=12345
    )
    if config.subset:
        train_index = train_index[: config.subset]

    def split(images: np.ndarray, labels: np.ndarray) -> Split:
        x = torch.from_numpy(np.ascontiguousarray(images)).unsqueeze(1).to(device)
        return Split(x, torch.from_numpy(labels.astype(np.int64)).to(device))

    return Splits(
        train=split(dataset.train_images[train_index], dataset.train_labels[train_index]),
        validation=split(dataset.train_images[val_index], dataset.train_labels[val_index]),
        test=split(dataset.test_images, dataset.test_labels),
        dataset=dataset.name,
        sha256=dict(dataset.sha256),
        classes=tuple(dataset.classes),
        subset=config.subset,
    )


def to_input(images_u8: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
    """uint8 (N, 1, 28, 28) -> float 0..1, the scaling the article does."""
    x = images_u8.float().div_(255.0)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def augment(x: torch.Tensor, config: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Random affine + elastic + stroke + blur/noise on a whole batch x (N, 1, H, W) in 0..1."""
    n, _, h, w = x.shape
    device = x.device

    def uniform(low: float, high: float, size: tuple[int, ...] = (n,)) -> torch.Tensor:
        return torch.rand(size, generator=generator, device=device) * (high - low) + low

    angle = uniform(-1, 1) * math.radians(config.rotate_degrees)
    zoom = uniform(1 - config.scale, 1 + config.scale)
    shear = uniform(-config.shear, config.shear)
    shift = uniform(-config.translate, config.translate, (n, 2)) * 2  # grid units span 2
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    # theta maps output coordinates to input coordinates: (N, 2, 3).
    theta = torch.stack(
        [
            torch.stack([cos, -sin + shear * cos, shift[:, 0]], dim=1),
            torch.stack([sin, cos + shear * sin, shift[:, 1]], dim=1),
        ],
        dim=1,
    )
    grid = F.affine_grid(theta, [n, 1, h, w], align_corners=False)  # (N, H, W, 2)
    if config.elastic > 0:
        # A smooth random displacement: coarse noise upsampled, in pixels -> grid units.
        coarse = torch.randn((n, 2, 4, 4), generator=generator, device=device)
        field_ = F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False)
        grid = grid + field_.permute(0, 2, 3, 1) * (config.elastic * 2 / h)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if config.stroke > 0:
        pick = uniform(0, 1) < config.stroke
        thicker = uniform(0, 1) < 0.6
        dilated = F.max_pool2d(x, 3, stride=1, padding=1)
        eroded = -F.max_pool2d(-x, 3, stride=1, padding=1)
        # Blend half-way so a stroke changes by about one pixel, not two.
        changed = torch.where(thicker[:, None, None, None], dilated, eroded)
        x = torch.where(pick[:, None, None, None], 0.5 * (x + changed), x)
    if config.blur_noise > 0:
        pick = (uniform(0, 1) < config.blur_noise)[:, None, None, None]
        blurred = F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
        noisy = blurred + 0.08 * torch.randn(x.shape, generator=generator, device=device)
        x = torch.where(pick, noisy.clamp_(0, 1), x)
    return x


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    params = model.parameters()
    if config.optimizer in ("adam", "adamw"):
        # The fused kernel updates every tensor in one call: about 4% of a `fast` step on a CPU.
        adam = torch.optim.Adam if config.optimizer == "adam" else torch.optim.AdamW
        return adam(params, lr=config.learning_rate, betas=config.betas,
                    weight_decay=config.weight_decay, fused=True)  # fmt: skip
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=config.learning_rate, momentum=config.momentum, nesterov=True,
            weight_decay=config.weight_decay,
        )  # fmt: skip
    if config.optimizer == "adadelta":
        return torch.optim.Adadelta(params, lr=config.learning_rate)
    raise ValueError(f"unknown optimizer {config.optimizer!r}")


def make_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig, total_steps: int, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler:
    if config.schedule == "onecycle":
        # OneCycleLR divides by the length of its warm-up phase, which rounds to zero steps on
        # very short runs (5 steps at 20% warm-up): keep at least two warm-up steps.
        total_steps = max(total_steps, 4)
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=config.learning_rate, total_steps=total_steps,
            pct_start=min(max(config.warmup, 2 / total_steps), 0.5),
            div_factor=10.0, final_div_factor=100.0, cycle_momentum=config.cycle_momentum,
        )  # fmt: skip
    if config.schedule == "step":  # stepped once per epoch, as pytorch/examples does
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: config.step_gamma ** (step // steps_per_epoch)
        )
    if config.schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    raise ValueError(f"unknown schedule {config.schedule!r}")


def clock(device_type: str) -> float:
    """perf_counter once the device has finished its queued work. CUDA runs kernels
    asynchronously: without the sync, the clock would stop while the steps are still running."""
    if device_type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()


def bf16_supported(device: str) -> bool:
    if device.startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


class WeightAverage:
    """Exponential moving average of all float weights and buffers (batch-norm stats too)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        # Warm up the decay so the average is not dominated by the random initial weights.
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for key, value in model.state_dict().items():
            if value.dtype.is_floating_point:
                self.shadow[key].lerp_(value, 1 - decay)
            else:
                self.shadow[key].copy_(value)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.shadow


def train_one_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    train: Split,
    config: TrainConfig,
    generator: torch.Generator,
    steps: int | None = None,
    average: WeightAverage | None = None,
    on_step: Callable[[int, int, float, float], None] | None = None,
    on_eval: Callable[[int, float], None] | None = None,
    eval_steps: frozenset[int] = frozenset(),
    world: World = SINGLE_PROCESS,
    augment_steps: int | None = None,
) -> dict[str, float]:
    """One pass (or `steps` batches) over a fresh permutation; returns loss and accuracy.

    With augmentation on, the first `augment_steps` batches (default: all) are augmented.

    `train_seconds` counts only the training steps: `on_eval` runs with the clock stopped.
    On several processes (`world`), `model` is wrapped in DDP, each rank trains on its shard of
    every global batch of `config.batch_size`, and the metrics returned are the global ones.
    """
    model.train()
    use_bf16 = config.bf16 and bf16_supported(config.device)
    device_type = "cuda" if config.device.startswith("cuda") else "cpu"
    # The same permutation on every rank: they share the generator's seed and state.
    order = torch.randperm(len(train), generator=generator, device="cpu").to(train.labels.device)
    augment_generator = generator
    if config.augment.enabled and world.is_distributed:
        augment_generator = distributed.rank_generator(generator, world)
    batches = math.ceil(len(train) / config.batch_size)
    steps = batches if steps is None else min(steps, batches)
    total_loss = torch.zeros((), device=train.labels.device)
    total_correct = torch.zeros((), device=train.labels.device, dtype=torch.long)
    seen, train_seconds = 0, 0.0
    start = clock(device_type)
    for step in range(steps):
        batch = order[step * config.batch_size : (step + 1) * config.batch_size]
        index = distributed.shard(batch, world)
        x = to_input(train.images[index], config.channels_last)
        y = train.labels[index]
        if config.augment.enabled and (augment_steps is None or step < augment_steps):
            x = augment(x, config.augment, generator_for(augment_generator, x.device))
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=use_bf16):
            logits = model(x)
        if world.is_distributed:
            summed = F.cross_entropy(
                logits.float(), y, label_smoothing=config.label_smoothing, reduction="sum"
            )
            # DDP averages the ranks' gradients; scaling each rank's sum by N / global batch
            # makes that average the gradient of the global batch's mean loss, as on one
            # process, also when the shares differ in size (the last batch of an epoch).
            loss = summed * (world.world_size / len(batch))
            total_loss += summed.detach()
        else:
            loss = F.cross_entropy(logits.float(), y, label_smoothing=config.label_smoothing)
            total_loss += loss.detach() * len(y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if average is not None:
            average.update(distributed.unwrap(model))
        total_correct += (logits.argmax(1) == y).sum()
        seen += len(y)
        if on_step is not None and (step % 10 == 0 or step == steps - 1):
            on_step(step + 1, steps, total_loss.item() / seen, total_correct.item() / seen)
        if on_eval is not None and (step + 1) in eval_steps:
            train_seconds += clock(device_type) - start
            on_eval(step + 1, train_seconds)
            model.train()
            start = clock(device_type)
    train_seconds += clock(device_type) - start
    loss_sum, correct, count = total_loss.item(), total_correct.item(), seen
    if world.is_distributed:  # the global batches' figures, not this rank's shares
        totals = torch.tensor([loss_sum, correct, count], dtype=torch.float64,
                              device=total_loss.device)  # fmt: skip
        loss_sum, correct, count = distributed.sum_over_ranks(totals, world).tolist()
    return {
        "loss": loss_sum / max(count, 1),
        "accuracy": correct / max(count, 1),
        "train_seconds": train_seconds,
        "steps": steps,
    }


def generator_for(generator: torch.Generator, device: torch.device) -> torch.Generator:
    """The CPU generator works for CPU tensors; a CUDA batch needs a CUDA generator."""
    if device.type == "cpu":
        return generator
    cuda_generator = torch.Generator(device=device)
    cuda_generator.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
    return cuda_generator


@torch.no_grad()
def predict_logits(
    model: nn.Module, images_u8: torch.Tensor, batch_size: int = 2000
) -> torch.Tensor:
    """Logits (N, 10) in float32 for uint8 images (N, 1, 28, 28)."""
    model.eval()
    out = [
        model(to_input(images_u8[i : i + batch_size])).float()
        for i in range(0, len(images_u8), batch_size)
    ]
    return torch.cat(out) if out else torch.zeros((0, 10))


def evaluate(model: nn.Module, split: Split, temperature: float = 1.0) -> dict[str, float]:
    """Loss and accuracy of a model on a split."""
    logits = predict_logits(model, split.images) / temperature
    return {
        "loss": F.cross_entropy(logits, split.labels).item(),
        "accuracy": (logits.argmax(1) == split.labels).float().mean().item(),
    }


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Temperature scaling: the T minimising validation NLL of softmax(logits / T)."""
    temperatures = torch.exp(torch.linspace(math.log(0.25), math.log(8.0), 200))
    losses = torch.stack([F.cross_entropy(logits / t, labels) for t in temperatures])
    return float(temperatures[int(losses.argmin())])


@dataclass
class RunResult:
    """What `fit` trained. On ranks other than 0 the card is empty (rank 0 alone evaluates and
    writes) and, for an ensemble, history and model are too."""

    run_dir: Path
    card: dict[str, Any]
    history: list[dict[str, Any]]
    model: nn.Module | None


def reproduce_command(config: TrainConfig, recipe_name: str | None, splits: Splits) -> str | None:
    """The `digitrec train` line that trains this run again, when a named recipe made it."""
    if recipe_name not in RECIPES or recipe(recipe_name, seed=config.seed) != config:
        return None  # overridden fields: the card's "recipe" holds the full config instead
    dataset = "" if splits.dataset == "mnist" else f" --dataset {splits.dataset}"
    subset = f" --subset {splits.subset}" if splits.subset else ""
    return f"digitrec train --recipe {recipe_name} --seed {config.seed}{dataset}{subset}"


def model_card(
    config: TrainConfig,
    splits: Splits,
    model: nn.Module,
    metrics: dict[str, Any],
    recipe_name: str | None,
    temperature: float,
    members: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    return {
        "model": config.model if not members else "ensemble",
        "model_args": dict(config.model_args),
        "members": members,
        "parameters": count_parameters(model),
        "classes": list(splits.classes),
        "input": {
            "size": [28, 28],
            "scale": "pixels / 255 (0..1)",
            "polarity": "white digit on black",
            "layout": "MNIST: digit fitted into 20x20, centred by mass in 28x28",
            "standardise": {"mean": MNIST_MEAN, "std": MNIST_STD},
        },
        "temperature": temperature,
        "dataset": {"name": splits.dataset, "sha256": splits.sha256},
        "recipe_name": recipe_name,
        "recipe": to_dict(config),
        "command": reproduce_command(config, recipe_name, splits),
        "metrics": metrics,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def fit(
    config: TrainConfig,
    splits: Splits,
    out_dir: str | Path,
    recipe_name: str | None = None,
    on_progress: Progress | None = None,
    resume: bool = False,
    on_eval: Callable[[nn.Module, float, float], None] | None = None,
    world: World = SINGLE_PROCESS,
    parallel_members: bool = False,
) -> RunResult:
    """Train a model (or an ensemble of members) and write its run directory.

    `on_eval(model, epoch_fraction, train_seconds)` is called `config.evals_per_epoch` times per
    epoch with the training clock stopped (the benchmark measures test accuracy there).

    On several processes (`world`, inside `distributed.process_group`) every rank calls this;
    they train one model data-parallel, and rank 0 alone evaluates, emits progress and writes
    `out_dir`; the other ranks return an empty card. With `parallel_members` an ensemble's
    members are trained one per process instead (see `_fit_ensemble`).
    """
    out_dir = Path(out_dir)
    if world.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    emit = on_progress if on_progress is not None and world.is_main else (lambda event: None)
    if config.threads:
        torch.set_num_threads(config.threads)
    if config.members > 1:
        return _fit_ensemble(config, splits, out_dir, recipe_name, emit, resume, world,
                             parallel_members)  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model, history, temperature = _fit_single(
            config, splits, out_dir, emit, resume, on_eval, world
        )
    if not world.is_main:
        return RunResult(out_dir, {}, history, model)
    test = evaluate(model, splits.test, temperature)
    last = history[-1] if history else {}
    metrics = {
        "train_accuracy": last.get("train_accuracy"),
        "validation_accuracy": last.get("validation_accuracy"),
        "best_validation_accuracy": max((h["validation_accuracy"] for h in history), default=None),
        "test_accuracy": test["accuracy"],
        "test_loss": test["loss"],
        "train_seconds": sum(h["train_seconds"] for h in history),
    }
    card = model_card(config, splits, model, metrics, recipe_name, temperature)
    card = checkpoint.save_run(out_dir, model.state_dict(), card)
    emit({"event": "done", "metrics": metrics})
    return RunResult(out_dir, card, history, model)


def _fit_single(
    config: TrainConfig,
    splits: Splits,
    out_dir: Path,
    emit: Progress,
    resume: bool,
    on_eval: Callable[[nn.Module, float, float], None] | None,
    world: World = SINGLE_PROCESS,
) -> tuple[nn.Module, list[dict[str, Any]], float]:
    model = create_model(config.model, **config.model_args).to(config.device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = make_optimizer(model, config)
    steps_per_epoch = math.ceil(len(splits.train) / config.batch_size)
    total_steps = max(1, round(config.epochs * steps_per_epoch))
    augment_until = round(config.augment.until * total_steps)  # in steps from the start
    scheduler = make_scheduler(optimizer, config, total_steps, steps_per_epoch)
    average = WeightAverage(model, config.ema) if config.ema > 0 else None
    history: list[dict[str, Any]] = []
    best_accuracy, start_epoch = -1.0, 0
    best_state = None

    if resume:
        tensors, state = checkpoint.load_state(out_dir / checkpoint.STATE_FILE)
        if train_config_from_dict(state["config"]) != config:
            emit({"event": "warning", "message": "resuming with the run's own saved recipe"})
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        optimizer.load_state_dict(checkpoint.unflatten_optimizer(tensors, state["optimizer"]))
        _match_parameter_layout(optimizer)
        scheduler.load_state_dict(state["scheduler"])
        generator.set_state(tensors["rng.generator"])
        torch.set_rng_state(tensors["rng.torch"])
        if average is not None:
            average.shadow = {k[4:]: v for k, v in tensors.items() if k.startswith("ema.")}
            average.updates = state["ema_updates"]
        best_state = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")}
        history, best_accuracy, start_epoch = state["history"], state["best"], state["epoch"]
        emit({"event": "resume", "epoch": start_epoch})

    # Wrapped after loading: DDP starts every rank from rank 0's weights and buffers, and the
    # state saved below is always the unwrapped model's, whatever the number of processes.
    trained = distributed.wrap(model, world, config.device)
    epochs = math.ceil(config.epochs)
    evals = max(1, config.evals_per_epoch)
    for epoch in range(start_epoch, epochs):
        steps = min(steps_per_epoch, total_steps - epoch * steps_per_epoch)
        eval_steps = frozenset(round(steps * (i + 1) / evals) for i in range(evals))
        elapsed = sum(h["train_seconds"] for h in history)

        def step_event(
            step: int, of: int, loss: float, accuracy: float, epoch: int = epoch
        ) -> None:
            emit({"event": "step", "epoch": epoch + 1, "epochs": epochs, "step": step,
                  "steps": of, "loss": loss, "accuracy": accuracy})  # fmt: skip

        def eval_event(
            step: int, seconds: float, epoch: int = epoch, base: float = elapsed
        ) -> None:
            if on_eval is not None and world.is_main:
                current = _averaged(model, average)
                on_eval(current, epoch + step / steps_per_epoch, base + seconds)

        result = train_one_epoch(
            trained, optimizer, scheduler, splits.train, config, generator, steps=steps,
            average=average, on_step=step_event, on_eval=eval_event, eval_steps=eval_steps,
            world=world, augment_steps=augment_until - epoch * steps_per_epoch,
        )  # fmt: skip
        if not world.is_main:
            continue  # rank 0 alone validates and writes; the others go on to the next epoch
        current = _averaged(model, average)
        validation = evaluate(current, splits.validation)
        record = {
            "epoch": epoch + 1,
            "train_loss": result["loss"],
            "train_accuracy": result["accuracy"],
            "validation_loss": validation["loss"],
            "validation_accuracy": validation["accuracy"],
            "train_seconds": result["train_seconds"],
            "learning_rate": scheduler.get_last_lr()[0],
        }
        history.append(record)
        if validation["accuracy"] > best_accuracy:
            best_accuracy = validation["accuracy"]
            best_state = {k: v.detach().clone() for k, v in current.state_dict().items()}
        _save_state(out_dir, config, model, optimizer, scheduler, generator, average,
                    best_state, history, best_accuracy, epoch + 1)  # fmt: skip
        checkpoint.write_json(out_dir / checkpoint.HISTORY_FILE, history)
        emit({"event": "epoch", **record})

    if not world.is_main:
        return model, history, 1.0
    final = create_model(config.model, **config.model_args).to(config.device)
    final.load_state_dict(best_state if best_state is not None else model.state_dict())
    final.eval()
    temperature = 1.0
    if config.calibrate:
        temperature = fit_temperature(predict_logits(final, splits.validation.images),
                                      splits.validation.labels)  # fmt: skip
    return final, history, temperature


def _match_parameter_layout(optimizer: torch.optim.Optimizer) -> None:
    """Give loaded optimizer state its parameter's memory layout (channels-last convs).

    The state comes back from disk contiguous; fused Adam walks parameter, gradient and
    moments as flat memory, so a layout mismatch would pair the wrong elements.
    """
    for param, values in optimizer.state.items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor) and value.shape == param.shape:
                values[key] = torch.empty_like(param).copy_(value)


def _averaged(model: nn.Module, average: WeightAverage | None) -> nn.Module:
    """The model to evaluate: a copy holding the weight average when there is one."""
    if average is None:
        return model
    clone = copy.deepcopy(model)
    clone.load_state_dict(average.state_dict())
    return clone


def _save_state(
    out_dir: Path, config: TrainConfig, model: nn.Module, optimizer: torch.optim.Optimizer,
    scheduler: Any, generator: torch.Generator, average: WeightAverage | None,
    best_state: dict | None, history: list, best: float, epoch: int,
) -> None:  # fmt: skip
    optim_tensors, optim_plain = checkpoint.flatten_optimizer(optimizer.state_dict())
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update(optim_tensors)
    tensors["rng.generator"] = generator.get_state()
    tensors["rng.torch"] = torch.get_rng_state()
    if average is not None:
        tensors.update({f"ema.{k}": v for k, v in average.state_dict().items()})
    if best_state is not None:
        tensors.update({f"best.{k}": v for k, v in best_state.items()})
    state = {
        "config": to_dict(config),
        "optimizer": optim_plain,
        "scheduler": scheduler.state_dict(),
        "ema_updates": average.updates if average is not None else 0,
        "history": history,
        "best": best,
        "epoch": epoch,
    }
    checkpoint.save_state(out_dir / checkpoint.STATE_FILE, tensors, state)


def _fit_ensemble(
    config: TrainConfig, splits: Splits, out_dir: Path, recipe_name: str | None,
    emit: Progress, resume: bool, world: World = SINGLE_PROCESS, parallel_members: bool = False,
) -> RunResult:  # fmt: skip
    """Members one after another, each data-parallel over `world`; or, with `parallel_members`
    on several processes, one member per process: rank r trains members r, r + N, ... alone and
    writes their directories, then rank 0 assembles the vote from those directories (on several
    machines they must be on a filesystem every machine shares)."""
    from digitrec.models import Ensemble

    member_configs = []
    kernels = config.member_kernels or (None,) * config.members
    for index in range(config.members):
        args = dict(config.model_args)
        if kernels[index % len(kernels)] is not None:
            args["kernel_size"] = kernels[index % len(kernels)]
        member_configs.append(dataclasses.replace(
            config, members=1, member_kernels=(), model_args=args, seed=config.seed * 100 + index
        ))  # fmt: skip
    parallel = parallel_members and world.is_distributed
    if parallel:
        for index in range(world.rank, config.members, world.world_size):
            member_dir = out_dir / "members" / str(index)
            if not (resume and (member_dir / checkpoint.WEIGHTS_FILE).is_file()):
                member_resume = resume and (member_dir / checkpoint.STATE_FILE).is_file()
                fit(member_configs[index], splits, member_dir, recipe_name, emit, member_resume)
        distributed.wait_for_all(world, distributed.LONG_WAIT_S)
        if not world.is_main:
            return RunResult(out_dir, {}, [], None)

    members, specs, history = [], [], []
    for index, member_config in enumerate(member_configs):
        args = member_config.model_args
        emit({"event": "member", "index": index + 1, "of": config.members, "model_args": args})
        member_dir = out_dir / "members" / str(index)
        if (parallel or resume) and (member_dir / checkpoint.WEIGHTS_FILE).is_file():
            if not world.is_main:
                continue
            model, card, member_history = _load_member(member_dir, config.device)
        else:
            member_resume = resume and (member_dir / checkpoint.STATE_FILE).is_file()
            result = fit(member_config, splits, member_dir, recipe_name, emit, member_resume,
                         world=world)  # fmt: skip
            if not world.is_main:
                continue
            model, card, member_history = result.model, result.card, result.history
        members.append(model)
        specs.append({"model": card["model"], "model_args": card["model_args"],
                      "temperature": card["temperature"]})  # fmt: skip
        history.extend({**h, "member": index + 1} for h in member_history)
    if not world.is_main:
        return RunResult(out_dir, {}, [], None)
    ensemble = Ensemble(members, [s["temperature"] for s in specs])
    ensemble.eval()
    test = evaluate(ensemble, splits.test)
    validation = evaluate(ensemble, splits.validation)
    train = evaluate(ensemble, Split(splits.train.images[:10000], splits.train.labels[:10000]))
    metrics = {
        "train_accuracy": train["accuracy"],
        "validation_accuracy": validation["accuracy"],
        "test_accuracy": test["accuracy"],
        "test_loss": test["loss"],
        "train_seconds": sum(h["train_seconds"] for h in history),
        "member_test_accuracy": [
            evaluate(m, splits.test, s["temperature"])["accuracy"]
            for m, s in zip(members, specs, strict=True)
        ],  # fmt: skip
    }
    card = model_card(config, splits, ensemble, metrics, recipe_name, 1.0, members=specs)
    card = checkpoint.save_run(out_dir, ensemble.state_dict(), card)
    checkpoint.write_json(out_dir / checkpoint.HISTORY_FILE, history)
    emit({"event": "done", "metrics": metrics})
    return RunResult(out_dir, card, history, ensemble)


def _load_member(
    member_dir: Path, device: str = "cpu"
) -> tuple[nn.Module, dict[str, Any], list[dict[str, Any]]]:
    """A finished ensemble member from its run directory: (uncalibrated model, card, history)."""
    arrays, card = checkpoint.read_weights(member_dir)
    model = create_model(card["model"], **card["model_args"]).to(device)
    model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in arrays.items()})
    model.eval()
    history = json.loads((member_dir / checkpoint.HISTORY_FILE).read_text())
    return model, card, history
