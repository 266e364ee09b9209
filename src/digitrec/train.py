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
from digitrec.data import Split, Splits
from digitrec.distributed import SINGLE_PROCESS, World
from digitrec.evaluate import evaluate_split, fit_temperature, predict_logits
from digitrec.models import count_parameters, create_model, load_model, to_input

Progress = Callable[[dict[str, Any]], None]


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
    if config.low_resolution > 0:
        x = _low_resolution(x, config.low_resolution, uniform)
    return x


def _low_resolution(x: torch.Tensor, probability: float, uniform: Callable) -> torch.Tensor:
    """Some digits seen as a far-away photo sees them: shrunk to 6 to 12 px across and scaled
    back up, so the strokes blur and block together the way the recognizer receives them."""
    side = int(uniform(6, 13, (1,)).item())
    small = F.interpolate(x, size=(side, side), mode="area")
    blocky = F.interpolate(small, size=x.shape[-2:], mode="bilinear", align_corners=False)
    pick = (uniform(0, 1) < probability)[:, None, None, None]
    return torch.where(pick, blocky, x)


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    params = model.parameters()
    if config.optimizer in ("adam", "adamw"):
        # The fused kernel updates every tensor in one call instead of one per tensor.
        adam = torch.optim.Adam if config.optimizer == "adam" else torch.optim.AdamW
        return adam(
            params,
            lr=config.learning_rate,
            betas=config.betas,
            weight_decay=config.weight_decay,
            fused=True,
        )
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            params,
            lr=config.learning_rate,
            momentum=config.momentum,
            nesterov=True,
            weight_decay=config.weight_decay,
        )
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
            optimizer,
            max_lr=config.learning_rate,
            total_steps=total_steps,
            pct_start=min(max(config.warmup, 2 / total_steps), 0.5),
            div_factor=10.0,
            final_div_factor=100.0,
            cycle_momentum=config.cycle_momentum,
        )
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


@dataclass
class EpochProgress:
    """An epoch part-way through: its batch order and the running totals of the steps done.

    A mid-epoch checkpoint saves it, so a resumed run goes on with the very batches it would
    have trained on. The totals are the global ones (summed over the processes).
    """

    order: torch.Tensor  # (N,) int64: this epoch's permutation of the training set
    step: int = 0  # batches done
    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0
    train_seconds: float = 0.0


@dataclass(frozen=True)
class EpochHooks:
    """What an epoch reports and saves as it goes, and after which of its steps (1-based).

    `on_step(step, steps, loss, accuracy)` runs every 10 steps and after the last;
    `on_eval(step, train_seconds)` after each step in `eval_steps`; `on_checkpoint(progress)`
    after each step in `checkpoint_steps`, on every rank. Evaluations and checkpoints run with
    the training clock stopped.
    """

    on_step: Callable[[int, int, float, float], None] | None = None
    on_eval: Callable[[int, float], None] | None = None
    eval_steps: frozenset[int] = frozenset()
    on_checkpoint: Callable[[EpochProgress], None] | None = None
    checkpoint_steps: frozenset[int] = frozenset()


NO_HOOKS = EpochHooks()


@dataclass
class _EpochTotals:
    """This rank's running totals over an epoch."""

    # Tensors on the device, so that a step does not wait for the device to report them.
    loss: torch.Tensor
    correct: torch.Tensor
    seen: int
    train_seconds: float

    @classmethod
    def resumed(cls, progress: EpochProgress, device: torch.device) -> _EpochTotals:
        """The totals `progress` had reached (zero for a fresh epoch)."""
        loss = torch.tensor(progress.loss_sum, device=device)
        correct = torch.tensor(progress.correct, device=device, dtype=torch.long)
        return cls(loss, correct, progress.seen, progress.train_seconds)

    def add(self, logits: torch.Tensor, y: torch.Tensor, summed: torch.Tensor) -> None:
        """Count one batch: its summed loss and its right answers."""
        self.loss += summed
        self.correct += (logits.argmax(1) == y).sum()
        self.seen += len(y)

    def means(self) -> tuple[float, float]:
        """(mean loss, accuracy) of this rank's batches so far."""
        return self.loss.item() / self.seen, self.correct.item() / self.seen

    def progress(self, order: torch.Tensor, step: int, world: World) -> EpochProgress:
        """The epoch after `step` steps, with the global totals (a collective on every rank)."""
        totals = _global_totals(self.loss, self.correct, self.seen, world)
        return EpochProgress(order, step, *totals, self.train_seconds)

    def result(self, steps: int, world: World) -> dict[str, float]:
        """What `train_one_epoch` returns: the global mean loss and accuracy, time and steps."""
        loss_sum, correct, count = _global_totals(self.loss, self.correct, self.seen, world)
        return {
            "loss": loss_sum / max(count, 1),
            "accuracy": correct / max(count, 1),
            "train_seconds": self.train_seconds,
            "steps": steps,
        }


def train_one_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    train: Split,
    config: TrainConfig,
    generator: torch.Generator,
    steps: int | None = None,
    average: WeightAverage | None = None,
    hooks: EpochHooks = NO_HOOKS,
    world: World = SINGLE_PROCESS,
    augment_steps: int | None = None,
    progress: EpochProgress | None = None,
) -> dict[str, float]:
    """One pass (or `steps` batches) over a fresh permutation; returns loss and accuracy.

    With augmentation on, the first `augment_steps` batches (default: all) are augmented.
    `progress` continues an epoch a checkpoint saved part-way through; `hooks` report and save
    the epoch as it goes. `train_seconds` counts only the training steps. On several processes
    (`world`), `model` is wrapped in DDP, each rank trains on its shard of every global batch of
    `config.batch_size`, and the metrics returned are the global ones.
    """
    model.train()
    use_bf16 = config.bf16 and bf16_supported(config.device)
    device_type = "cuda" if config.device.startswith("cuda") else "cpu"
    if progress is None:
        # The same permutation on every rank: they share the generator's seed and state.
        progress = EpochProgress(torch.randperm(len(train), generator=generator, device="cpu"))
    order = progress.order.to(train.labels.device)
    augment_generator = _augment_generator(generator, config, world)
    batches = math.ceil(len(train) / config.batch_size)
    steps = batches if steps is None else min(steps, batches)
    totals = _EpochTotals.resumed(progress, train.labels.device)
    start = clock(device_type)
    for step in range(progress.step, steps):
        batch = order[step * config.batch_size : (step + 1) * config.batch_size]
        index = distributed.shard(batch, world)
        x = to_input(_with_outliers(train, index, config, generator), config.channels_last)
        y = train.labels[index]
        if config.augment.enabled and (augment_steps is None or step < augment_steps):
            x = augment(x, config.augment, generator_for(augment_generator, x.device))
        logits, loss, summed = _forward_loss(model, x, y, config, world, len(batch), use_bf16)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if average is not None:
            average.update(distributed.unwrap(model))
        totals.add(logits, y, summed)
        if hooks.on_step is not None and (step % 10 == 0 or step == steps - 1):
            hooks.on_step(step + 1, steps, *totals.means())
        pause = (step + 1) in hooks.eval_steps and hooks.on_eval is not None
        if pause or (step + 1) in hooks.checkpoint_steps:
            totals.train_seconds += clock(device_type) - start
            _pause_epoch(model, hooks, step + 1, order, totals, world)
            start = clock(device_type)
    totals.train_seconds += clock(device_type) - start
    return totals.result(steps, world)


def _augment_generator(
    generator: torch.Generator, config: TrainConfig, world: World
) -> torch.Generator:
    """The generator augmentation draws from: on several processes, each rank's own."""
    if config.augment.enabled and world.is_distributed:
        # Drawn afresh after a mid-epoch resume, since only rank 0 saves: the resumed run goes
        # on validly, but not bit for bit as the uninterrupted one would have.
        return distributed.rank_generator(generator, world)
    return generator


def _forward_loss(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    config: TrainConfig,
    world: World,
    global_batch: int,
    use_bf16: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(digit logits, loss to step on, this rank's summed loss); outlier images follow in `x`."""
    device_type = "cuda" if config.device.startswith("cuda") else "cpu"
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=use_bf16):
        logits = model(x)
    logits, outlier_logits = logits[: len(y)], logits[len(y) :]
    loss, summed = _batch_loss(logits, y, config, world, global_batch)
    if len(outlier_logits):
        # Cross-entropy against the uniform distribution: no class for a non-digit.
        loss = loss - config.outlier_weight * F.log_softmax(outlier_logits.float(), 1).mean()
    return logits, loss, summed


def _pause_epoch(
    model: nn.Module,
    hooks: EpochHooks,
    step: int,
    order: torch.Tensor,
    totals: _EpochTotals,
    world: World,
) -> None:
    """After `step`, evaluate and save the epoch's progress as `hooks` ask (clock stopped)."""
    if step in hooks.eval_steps and hooks.on_eval is not None:
        hooks.on_eval(step, totals.train_seconds)
        model.train()
    if step in hooks.checkpoint_steps:
        progress = totals.progress(order, step, world)
        if hooks.on_checkpoint is not None:
            hooks.on_checkpoint(progress)


def _with_outliers(
    train: Split, index: torch.Tensor, config: TrainConfig, generator: torch.Generator
) -> torch.Tensor:
    """The batch's digit images followed by `config.outliers` times as many outlier images."""
    images = train.images[index]
    if train.outliers is None or config.outliers <= 0:
        return images
    count = max(1, round(len(index) * config.outliers))
    pick = torch.randint(len(train.outliers), (count,), generator=generator)
    return torch.cat([images, train.outliers[pick.to(train.outliers.device)]])


def with_page_crops(
    splits: Splits, config: TrainConfig, emit: Progress = lambda event: None
) -> Splits:
    """``splits`` whose training split also holds `config.page_crops` times as many digits
    again, cut by the pipeline from synthetic pages of its own digits (`digitrec.pagecrops`);
    ``emit`` hears a "prepare" event first, since cutting tens of thousands takes minutes."""
    if config.page_crops <= 0 or len(splits.train) == 0:
        return splits
    from digitrec.pagecrops import page_digits

    train = splits.train
    images, labels = train.images[:, 0].cpu().numpy(), train.labels.cpu().numpy()
    count = max(1, round(len(labels) * config.page_crops))
    emit({"event": "prepare", "message": f"cutting {count:,} digits from synthetic pages"})
    crops, found = page_digits(
        images, labels, count, np.random.default_rng(config.seed + 1), config.page_weights
    )
    device = train.images.device
    added = Split(
        torch.cat([train.images, torch.from_numpy(crops).unsqueeze(1).to(device)]),
        torch.cat([train.labels, torch.from_numpy(found).to(device)]),
        outliers=train.outliers,
    )
    return dataclasses.replace(splits, train=added)


def with_outlier_images(splits: Splits, config: TrainConfig) -> Splits:
    """``splits`` whose training split carries the outlier images `config.outliers` asks for:
    as many as a fifth of the training digits, made from them, Fashion-MNIST (when it can be
    had) and a printed font."""
    if config.outliers <= 0 or splits.train.outliers is not None:
        return splits
    from digitrec.outliers import make_outliers

    try:
        fashion = data.load("fashion-mnist").train_images
    except data.DataError:
        fashion = None  # the font and the digit pieces stand in
    digits = splits.train.images[:, 0].cpu().numpy()
    count = max(64, len(digits) // 5)
    images = make_outliers(count, np.random.default_rng(config.seed), digits, fashion)
    if config.page_crops > 0:
        from digitrec.pagecrops import page_marks

        marks = page_marks(count // 3, np.random.default_rng(config.seed + 2))
        images = np.concatenate([images, marks])
    outliers = torch.from_numpy(images).unsqueeze(1).to(splits.train.images.device)
    return dataclasses.replace(splits, train=dataclasses.replace(splits.train, outliers=outliers))


def _batch_loss(
    logits: torch.Tensor, y: torch.Tensor, config: TrainConfig, world: World, global_batch: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss to step on, this rank's summed loss for the epoch's totals, detached)."""
    if not world.is_distributed:
        loss = F.cross_entropy(logits.float(), y, label_smoothing=config.label_smoothing)
        return loss, loss.detach() * len(y)
    summed = F.cross_entropy(
        logits.float(), y, label_smoothing=config.label_smoothing, reduction="sum"
    )
    # DDP averages the ranks' gradients; scaling each rank's sum by N / global batch makes
    # that average the gradient of the global batch's mean loss, as on one process, also when
    # the shares differ in size (the last batch of an epoch).
    return summed * (world.world_size / global_batch), summed.detach()


def _global_totals(
    total_loss: torch.Tensor, total_correct: torch.Tensor, seen: int, world: World
) -> tuple[float, int, int]:
    """(loss sum, correct, count) of the global batches, not this rank's shares."""
    loss_sum, correct, count = total_loss.item(), int(total_correct.item()), seen
    if world.is_distributed:
        totals = torch.tensor(
            [loss_sum, correct, count], dtype=torch.float64, device=total_loss.device
        )
        loss_sum, correct, count = distributed.sum_over_ranks(totals, world).tolist()
    return loss_sum, int(correct), int(count)


def generator_for(generator: torch.Generator, device: torch.device) -> torch.Generator:
    """The CPU generator works for CPU tensors; a CUDA batch needs a CUDA generator."""
    if device.type == "cpu":
        return generator
    cuda_generator = torch.Generator(device=device)
    cuda_generator.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
    return cuda_generator


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
    if recipe_name not in RECIPES:
        return None
    named = recipe(recipe_name, seed=config.seed, checkpoint_every=config.checkpoint_every)
    if named != config:
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
        return _fit_ensemble(
            config, splits, out_dir, recipe_name, emit, resume, world, parallel_members
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model, history, temperature = _fit_single(
            config,
            with_outlier_images(with_page_crops(splits, config, emit), config),
            out_dir,
            emit,
            resume,
            on_eval,
            world,
            recipe_name,
        )
    if not world.is_main:
        return RunResult(out_dir, {}, history, model)
    test = evaluate_split(model, splits.test, temperature)
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


# Settings that say where and how often a run trains, not what it trains: a resumed run may
# change them (another GPU, more threads) and still continue the same training.
RESUME_MAY_CHANGE = frozenset({"device", "threads", "checkpoint_every"})


@dataclass
class Training:
    """Everything a run changes as it trains; `last.safetensors` holds all of it."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    generator: torch.Generator
    average: WeightAverage | None
    history: list[dict[str, Any]] = field(default_factory=list)
    best_accuracy: float = -1.0
    best_state: dict[str, torch.Tensor] | None = None
    epoch: int = 0  # epochs finished
    progress: EpochProgress | None = None  # the unfinished epoch, after a mid-epoch checkpoint


def data_settings(splits: Splits) -> dict[str, Any]:
    """What a resumed run must train on again: the dataset, its subset and validation size."""
    return {
        "dataset": splits.dataset,
        "subset": splits.subset,
        "validation_size": len(splits.validation),
    }


def checkpoint_steps(
    config: TrainConfig, epoch: int, steps: int, steps_per_epoch: int
) -> frozenset[int]:
    """The steps of `epoch` (1-based, within the epoch) after which the state is saved: every
    `config.checkpoint_every` steps of the whole run, except an epoch's last, which saves it
    anyway."""
    if config.checkpoint_every <= 0:
        return frozenset()
    first = epoch * steps_per_epoch
    return frozenset(s for s in range(1, steps) if (first + s) % config.checkpoint_every == 0)


def _fit_single(
    config: TrainConfig,
    splits: Splits,
    out_dir: Path,
    emit: Progress,
    resume: bool,
    on_eval: Callable[[nn.Module, float, float], None] | None,
    world: World = SINGLE_PROCESS,
    recipe_name: str | None = None,
) -> tuple[nn.Module, list[dict[str, Any]], float]:
    """Train one model epoch by epoch; returns (best model, history, softmax temperature)."""
    steps_per_epoch = math.ceil(len(splits.train) / config.batch_size)
    total_steps = max(1, round(config.epochs * steps_per_epoch))
    augment_until = round(config.augment.until * total_steps)  # in steps from the start
    run = _start_training(config, total_steps, steps_per_epoch)
    settings = {
        "config": to_dict(config),
        "data": data_settings(splits),
        "recipe_name": recipe_name,
    }
    if resume:
        _restore_training(run, out_dir / checkpoint.STATE_FILE, config, splits, world)
        at = f"epoch {run.epoch + 1} at step {run.progress.step}" if run.progress else None
        message = f"continuing {at or f'after epoch {run.epoch}'}"
        emit({"event": "resume", "epoch": run.epoch, "message": message})

    # Wrapped after loading: DDP starts every rank from rank 0's weights and buffers, and the
    # state saved below is always the unwrapped model's, whatever the number of processes.
    trained = distributed.wrap(run.model, world, config.device)
    for epoch in range(run.epoch, math.ceil(config.epochs)):
        steps = min(steps_per_epoch, total_steps - epoch * steps_per_epoch)
        hooks = _epoch_hooks(
            run, config, epoch, steps, steps_per_epoch, out_dir, settings, emit, on_eval, world
        )
        result = train_one_epoch(
            trained,
            run.optimizer,
            run.scheduler,
            splits.train,
            config,
            run.generator,
            steps=steps,
            average=run.average,
            hooks=hooks,
            world=world,
            augment_steps=augment_until - epoch * steps_per_epoch,
            progress=run.progress,
        )
        run.epoch, run.progress = epoch + 1, None
        if world.is_main:  # rank 0 alone validates and writes; the others go on
            _end_epoch(run, result, splits, out_dir, settings, emit)

    if not world.is_main:
        return run.model, run.history, 1.0
    return _final_model(run, config, splits)


def _epoch_hooks(
    run: Training,
    config: TrainConfig,
    epoch: int,
    steps: int,
    steps_per_epoch: int,
    out_dir: Path,
    settings: dict[str, Any],
    emit: Progress,
    on_eval: Callable[[nn.Module, float, float], None] | None,
    world: World,
) -> EpochHooks:
    """Progress events, `on_eval` calls and mid-epoch saves for epoch `epoch` (0-based)."""
    epochs = math.ceil(config.epochs)
    evals = max(1, config.evals_per_epoch)
    elapsed = sum(h["train_seconds"] for h in run.history)

    def step_event(step: int, of: int, loss: float, accuracy: float) -> None:
        emit(
            {
                "event": "step",
                "epoch": epoch + 1,
                "epochs": epochs,
                "step": step,
                "steps": of,
                "loss": loss,
                "accuracy": accuracy,
            }
        )

    def eval_event(step: int, seconds: float) -> None:
        if on_eval is not None and world.is_main:
            model = _averaged(run.model, run.average)
            on_eval(model, epoch + step / steps_per_epoch, elapsed + seconds)

    def save_progress(progress: EpochProgress) -> None:
        if world.is_main:
            run.progress = progress
            _save_state(out_dir / checkpoint.STATE_FILE, run, settings)
            emit({"event": "checkpoint", "epoch": epoch + 1, "step": progress.step})

    return EpochHooks(
        on_step=step_event,
        on_eval=eval_event,
        eval_steps=frozenset(round(steps * (i + 1) / evals) for i in range(evals)),
        on_checkpoint=save_progress,
        checkpoint_steps=checkpoint_steps(config, epoch, steps, steps_per_epoch),
    )


def _final_model(
    run: Training, config: TrainConfig, splits: Splits
) -> tuple[nn.Module, list[dict[str, Any]], float]:
    """(the best weights in a fresh model, the history, the temperature fitted on validation)."""
    final = create_model(config.model, **config.model_args).to(config.device)
    final.load_state_dict(run.best_state if run.best_state is not None else run.model.state_dict())
    final.eval()
    temperature = 1.0
    if config.calibrate:
        logits = predict_logits(final, splits.validation.images)
        temperature = fit_temperature(logits, splits.validation.labels)
    return final, run.history, temperature


def _start_training(config: TrainConfig, total_steps: int, steps_per_epoch: int) -> Training:
    """A fresh model, optimizer, schedule, generator and weight average for `config`."""
    model = create_model(config.model, **config.model_args).to(config.device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, config)
    return Training(
        model=model,
        optimizer=optimizer,
        scheduler=make_scheduler(optimizer, config, total_steps, steps_per_epoch),
        generator=torch.Generator().manual_seed(config.seed),
        average=WeightAverage(model, config.ema) if config.ema > 0 else None,
    )


def _end_epoch(
    run: Training,
    result: dict[str, float],
    splits: Splits,
    out_dir: Path,
    settings: dict[str, Any],
    emit: Progress,
) -> None:
    """Validate, keep the best weights, save the state and the history, report the epoch."""
    current = _averaged(run.model, run.average)
    validation = evaluate_split(current, splits.validation)
    record = {
        "epoch": run.epoch,
        "train_loss": result["loss"],
        "train_accuracy": result["accuracy"],
        "validation_loss": validation["loss"],
        "validation_accuracy": validation["accuracy"],
        "train_seconds": result["train_seconds"],
        "learning_rate": run.scheduler.get_last_lr()[0],
    }
    run.history.append(record)
    if validation["accuracy"] > run.best_accuracy:
        run.best_accuracy = validation["accuracy"]
        run.best_state = {k: v.detach().clone() for k, v in current.state_dict().items()}
    _save_state(out_dir / checkpoint.STATE_FILE, run, settings)
    checkpoint.write_json(out_dir / checkpoint.HISTORY_FILE, run.history)
    emit({"event": "epoch", **record})


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


def _save_state(path: Path, run: Training, settings: dict[str, Any]) -> None:
    """`run` as tensors plus JSON bookkeeping, with the settings a resume must match."""
    optim_tensors, optim_plain = checkpoint.flatten_optimizer(run.optimizer.state_dict())
    tensors = {f"model.{k}": v for k, v in run.model.state_dict().items()}
    tensors.update(optim_tensors)
    tensors["rng.generator"] = run.generator.get_state()
    tensors["rng.torch"] = torch.get_rng_state()
    if run.average is not None:
        tensors.update({f"ema.{k}": v for k, v in run.average.state_dict().items()})
    if run.best_state is not None:
        tensors.update({f"best.{k}": v for k, v in run.best_state.items()})
    progress = None
    if run.progress is not None:
        tensors["progress.order"] = run.progress.order
        progress = {k: v for k, v in dataclasses.asdict(run.progress).items() if k != "order"}
    state = {
        **settings,
        "optimizer": optim_plain,
        "scheduler": run.scheduler.state_dict(),
        "ema_updates": run.average.updates if run.average is not None else 0,
        "history": run.history,
        "best": run.best_accuracy,
        "epoch": run.epoch,
        "progress": progress,
    }
    checkpoint.save_state(path, tensors, state)


def _restore_training(
    run: Training, path: Path, config: TrainConfig, splits: Splits, world: World
) -> None:
    """Load the state at `path` into `run`, after checking it continues this very training."""
    tensors, state = checkpoint.load_state(path)
    _check_same_training(path, state, config, splits)
    part = {
        prefix: {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        for prefix in ("model.", "ema.", "best.")
    }
    run.model.load_state_dict(part["model."])
    run.optimizer.load_state_dict(checkpoint.unflatten_optimizer(tensors, state["optimizer"]))
    _match_parameter_layout(run.optimizer)
    run.scheduler.load_state_dict(state["scheduler"])
    run.generator.set_state(tensors["rng.generator"])
    torch.set_rng_state(tensors["rng.torch"])
    if run.average is not None:
        run.average.shadow = {k: v.to(config.device) for k, v in part["ema."].items()}
        run.average.updates = state["ema_updates"]
    run.best_state = part["best."] or None  # none yet when saved within the first epoch
    run.history, run.best_accuracy, run.epoch = state["history"], state["best"], state["epoch"]
    if state.get("progress") is not None:
        run.progress = EpochProgress(tensors["progress.order"], **state["progress"])
        if not world.is_main:  # the totals saved are global: counted once, on rank 0
            run.progress = EpochProgress(run.progress.order, run.progress.step)


def _check_same_training(
    path: Path, state: dict[str, Any], config: TrainConfig, splits: Splits
) -> None:
    """A ModelError unless the state at `path` was saved by this training: the same data
    settings, and the same config apart from where and how often it runs."""
    saved_data, data_now = state.get("data"), data_settings(splits)
    if saved_data != data_now:
        raise checkpoint.ModelError(
            f"{path}: saved while training on {_describe(saved_data)}, not on {_describe(data_now)}"
        )
    saved, now = to_dict(train_config_from_dict(state["config"])), to_dict(config)
    changed = sorted(k for k in now if k not in RESUME_MAY_CHANGE and saved.get(k) != now[k])
    if changed:
        raise checkpoint.ModelError(
            f"{path}: saved by a run with other settings ({', '.join(changed)} differ)"
        )


def _describe(settings: dict[str, Any] | None) -> str:
    if not settings:
        return "unrecorded data"
    subset = f"the first {settings['subset']} images of " if settings.get("subset") else ""
    return f"{subset}{settings['dataset']} (validation {settings['validation_size']})"


def resume_settings(
    run_dir: str | Path,
    recipe_name: str | None = None,
    dataset: str | None = None,
    subset: int | None = None,
    **config_values: Any,
) -> tuple[TrainConfig, DataConfig, str | None]:
    """(config, data settings, recipe name) to resume the run in `run_dir` with.

    Everything comes from the run's saved state. A value given (not None) must agree with it,
    else a ModelError says which one does not; only `RESUME_MAY_CHANGE` fields may change.
    """
    _, state = checkpoint.load_state(Path(run_dir) / checkpoint.STATE_FILE)
    config = train_config_from_dict(state["config"])
    data_saved = state.get("data") or {}
    given = {
        "recipe": (recipe_name, state.get("recipe_name")),
        "dataset": (dataset, data_saved.get("dataset")),
        "subset": (subset, data_saved.get("subset")),
    }
    for name, value in config_values.items():
        if name not in RESUME_MAY_CHANGE:
            given[name] = (value, getattr(config, name))
    for name, (value, saved) in given.items():
        if value is not None and value != saved:
            flag = "--" + name.replace("_", "-")
            raise checkpoint.ModelError(
                f"{run_dir} was trained with {flag} {saved}, not {value}: leave {flag} out to "
                "resume it as it was, or train a new run"
            )
    changes = {k: v for k, v in config_values.items() if k in RESUME_MAY_CHANGE and v is not None}
    data_config = DataConfig(
        dataset=data_saved.get("dataset", "mnist"),
        subset=data_saved.get("subset"),
        validation_size=data_saved.get("validation_size", DataConfig.validation_size),
    )
    return dataclasses.replace(config, **changes), data_config, state.get("recipe_name")


def _fit_ensemble(
    config: TrainConfig,
    splits: Splits,
    out_dir: Path,
    recipe_name: str | None,
    emit: Progress,
    resume: bool,
    world: World = SINGLE_PROCESS,
    parallel_members: bool = False,
) -> RunResult:
    """Members one after another, each data-parallel over `world`; or, with `parallel_members`
    on several processes, one member per process: rank r trains members r, r + N, ... alone and
    writes their directories, then rank 0 assembles the vote from those directories (on several
    machines they must be on a filesystem every machine shares)."""
    from digitrec.models import Ensemble

    _ensemble_state(out_dir, config, splits, recipe_name, resume, world)
    member_configs = _member_configs(config)
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

    members, specs, history = _ensemble_members(
        member_configs, splits, out_dir, recipe_name, emit, resume, world, parallel
    )
    if not world.is_main:
        return RunResult(out_dir, {}, [], None)
    ensemble = Ensemble(members, [s["temperature"] for s in specs])
    ensemble.eval()
    metrics = _ensemble_metrics(ensemble, members, specs, splits, history)
    card = model_card(config, splits, ensemble, metrics, recipe_name, 1.0, members=specs)
    card = checkpoint.save_run(out_dir, ensemble.state_dict(), card)
    checkpoint.write_json(out_dir / checkpoint.HISTORY_FILE, history)
    emit({"event": "done", "metrics": metrics})
    return RunResult(out_dir, card, history, ensemble)


def _member_configs(config: TrainConfig) -> list[TrainConfig]:
    """Each member's own config: its seed and, with `member_kernels`, its kernel size."""
    member_configs = []
    kernels = config.member_kernels or (None,) * config.members
    for index in range(config.members):
        args = dict(config.model_args)
        if kernels[index % len(kernels)] is not None:
            args["kernel_size"] = kernels[index % len(kernels)]
        seed = config.seed * 100 + index
        member_configs.append(
            dataclasses.replace(config, members=1, member_kernels=(), model_args=args, seed=seed)
        )
    return member_configs


def _ensemble_members(
    member_configs: list[TrainConfig],
    splits: Splits,
    out_dir: Path,
    recipe_name: str | None,
    emit: Progress,
    resume: bool,
    world: World,
    parallel: bool,
) -> tuple[list[nn.Module], list[dict[str, Any]], list[dict[str, Any]]]:
    """(models, specs, joint history) of the members, trained here or loaded when finished."""
    members, specs, history = [], [], []
    for index, member_config in enumerate(member_configs):
        args = member_config.model_args
        emit({"event": "member", "index": index + 1, "of": len(member_configs), "model_args": args})
        member_dir = out_dir / "members" / str(index)
        if (parallel or resume) and (member_dir / checkpoint.WEIGHTS_FILE).is_file():
            if not world.is_main:
                continue
            model, card, member_history = _load_member(member_dir, member_config.device)
        else:
            member_resume = resume and (member_dir / checkpoint.STATE_FILE).is_file()
            result = fit(
                member_config, splits, member_dir, recipe_name, emit, member_resume, world=world
            )
            if not world.is_main:
                continue
            model, card, member_history = result.model, result.card, result.history
        members.append(model)
        specs.append(
            {
                "model": card["model"],
                "model_args": card["model_args"],
                "temperature": card["temperature"],
            }
        )
        history.extend({**h, "member": index + 1} for h in member_history)
    return members, specs, history


def _ensemble_metrics(
    ensemble: nn.Module,
    members: list[nn.Module],
    specs: list[dict[str, Any]],
    splits: Splits,
    history: list[dict[str, Any]],
) -> dict[str, Any]:
    """The vote's accuracy on each split and every member's own test accuracy."""
    test = evaluate_split(ensemble, splits.test)
    validation = evaluate_split(ensemble, splits.validation)
    train = evaluate_split(
        ensemble, Split(splits.train.images[:10000], splits.train.labels[:10000])
    )
    return {
        "train_accuracy": train["accuracy"],
        "validation_accuracy": validation["accuracy"],
        "test_accuracy": test["accuracy"],
        "test_loss": test["loss"],
        "train_seconds": sum(h["train_seconds"] for h in history),
        "member_test_accuracy": [
            evaluate_split(m, splits.test, s["temperature"])["accuracy"]
            for m, s in zip(members, specs, strict=True)
        ],
    }


def _ensemble_state(
    out_dir: Path,
    config: TrainConfig,
    splits: Splits,
    recipe_name: str | None,
    resume: bool,
    world: World,
) -> None:
    """An ensemble's own `last.safetensors`: no tensors (each member keeps its training state in
    members/N), only what `--resume` reads back and checks, written before any member trains."""
    path = out_dir / checkpoint.STATE_FILE
    if resume:
        _check_same_training(path, checkpoint.load_state(path)[1], config, splits)
    elif world.is_main:
        settings = {
            "config": to_dict(config),
            "data": data_settings(splits),
            "recipe_name": recipe_name,
        }
        checkpoint.save_state(path, {}, settings)


def _load_member(
    member_dir: Path, device: str = "cpu"
) -> tuple[nn.Module, dict[str, Any], list[dict[str, Any]]]:
    """A finished ensemble member from its run directory: (uncalibrated model, card, history)."""
    model, card = load_model(member_dir, calibrated=False, device=device)
    history = json.loads((member_dir / checkpoint.HISTORY_FILE).read_text())
    return model, card.to_dict(), history
