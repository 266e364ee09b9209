"""Fine-tuning on feedback: `digitrec finetune`.

A trained model is trained a little further on the digits people corrected or confirmed (the
28x28 crops it saw, from `digitrec.feedback`), mixed with a replay of MNIST training digits so
that it does not forget what it knew, at a low learning rate for a few hundred steps. A fifth of
the usable records, chosen by record and seeded, is held out to measure the change on feedback
the fine-tune never saw; MNIST's test set measures what the model may have lost. A model whose
MNIST test accuracy falls by more than `FinetuneConfig.max_test_drop` is refused and nothing is
written; otherwise the result is an ordinary run directory (`checkpoint.save_run`) that
`digitrec recognize`, `serve` and `export` take like any other.

Only the standard library is imported at module level, so the command line can read the
defaults of `FinetuneConfig` without loading torch.
"""

from __future__ import annotations

import os
import shlex
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from digitrec.checkpoint import ModelCard
    from digitrec.feedback import FeedbackRecord, FeedbackStore
    from digitrec.train import Split, Splits


@dataclass(frozen=True)
class FinetuneConfig:
    steps: int = 300
    batch_size: int = 64
    # Low: the model is already good; a large step undoes what MNIST taught it.
    learning_rate: float = 1e-4
    replay: int = 10  # MNIST training digits replayed per feedback digit
    min_replay: int = 2000  # replayed at least this many, so a few records cannot dominate
    holdout: float = 0.2  # fraction of the usable records held out to measure, never trained on
    seed: int = 0
    # Refuse a model whose MNIST test accuracy falls by more than this (0.001: 0.1 points).
    max_test_drop: float = 0.001
    until_id: int | None = None  # only records with ids up to this one (reproducible runs)
    test_images: int | None = None  # the first N MNIST test digits measure (None: all 10,000)
    threads: int | None = None  # torch threads (None: torch's default)


@dataclass
class FinetuneResult:
    accepted: bool
    reason: str  # why a model was refused; "" when it was written
    before: dict[str, float | None]  # feedback (held out) and mnist_test accuracy, 0..1
    after: dict[str, float | None]
    trained_records: list[int]
    held_out_records: list[int]
    trained_digits: int
    held_out_digits: int
    replayed_digits: int
    temperature: float
    seconds: float
    run_dir: Path | None = None
    card: dict[str, Any] = field(default_factory=dict)


def finetune(
    model: str | os.PathLike | None,
    store: FeedbackStore,
    out_dir: str | os.PathLike,
    config: FinetuneConfig = FinetuneConfig(),
    data_dir: str | os.PathLike | None = None,
) -> FinetuneResult:
    """Fine-tune ``model`` (a run directory or .safetensors file; None: the bundled model) on
    the usable records of ``store`` and write ``out_dir``, unless MNIST test accuracy falls by
    more than ``config.max_test_drop`` (then nothing is written and ``accepted`` is False)."""
    import torch

    began = time.perf_counter()
    threads = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    try:
        result = _finetune(model, store, out_dir, config, data_dir)
    finally:
        torch.set_num_threads(threads)  # the setting is the whole process's
    result.seconds = time.perf_counter() - began
    return result


def _finetune(
    model: str | os.PathLike | None,
    store: FeedbackStore,
    out_dir: str | os.PathLike,
    config: FinetuneConfig,
    data_dir: str | os.PathLike | None,
) -> FinetuneResult:
    import torch

    from digitrec import data
    from digitrec.config import DataConfig
    from digitrec.data import make_splits

    calibrated, card, source = load_base(model)
    records = usable_records(store, config.until_id)
    trained, held_out = split_records(records, config.holdout, config.seed)
    train_images, train_labels = to_arrays(trained)
    held_images, held_labels = to_arrays(held_out)
    splits = make_splits(data.load("mnist", data_dir=data_dir), DataConfig())
    test = _first(splits.test, config.test_images)
    before = measure(calibrated, held_images, held_labels, test)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        replayed = tune(
            calibrated.model, train_images, train_labels, splits, config, label_smoothing(card)
        )
    temperature = refit_temperature(calibrated.model, splits)
    tuned = type(calibrated)(calibrated.model, temperature).eval()
    after = measure(tuned, held_images, held_labels, test)
    result = FinetuneResult(
        accepted=True,
        reason="",
        before=before,
        after=after,
        trained_records=[r.id for r in trained],
        held_out_records=[r.id for r in held_out],
        trained_digits=len(train_labels),
        held_out_digits=len(held_labels),
        replayed_digits=replayed,
        temperature=temperature,
        seconds=0.0,
    )
    drop = before["mnist_test"] - after["mnist_test"]
    if drop > config.max_test_drop:
        result.accepted = False
        result.reason = (
            f"MNIST test accuracy would fall {100 * drop:.2f} points ({before['mnist_test']:.2%} "
            f"-> {after['mnist_test']:.2%}), more than the {100 * config.max_test_drop:.1f} "
            "allowed; nothing written"
        )
    else:
        last_id = max(r.id for r in records)
        command = reproduce_command(source, store.location, out_dir, config, last_id)
        result.card = tuned_card(card, result, config, command, test)
        result.run_dir = Path(out_dir)
        result.card = save(calibrated.model, result.card, out_dir)
    return result


def load_base(model: str | os.PathLike | None) -> tuple[Any, dict[str, Any], str | None]:
    """(calibrated module, card, path as given or None for the bundled model) of a model that
    can be fine-tuned on digits: one network (not a vote) trained on MNIST."""
    from digitrec.checkpoint import ModelError
    from digitrec.models import load_model
    from digitrec.recognize import model_or_bundled

    path = model_or_bundled(model)
    if path.suffix == ".onnx":
        raise ModelError(f"{path}: an ONNX file cannot be trained; give its run directory")
    calibrated, card = load_model(path)
    if card.members:
        raise ModelError(f"{path}: fine-tuning a vote of several models is not supported")
    if card.dataset != "mnist":
        raise ModelError(f"{path}: fine-tuning on digits needs a model trained on mnist")
    return calibrated, card, None if model is None else str(model)


def usable_records(store: FeedbackStore, until_id: int | None = None) -> list[FeedbackRecord]:
    """The usable records (images left out: only their crops are trained on)."""
    from digitrec.feedback import FeedbackError, describe

    records = list(store.records(usable=True, until_id=until_id, images=False))
    if not records:
        raise FeedbackError(
            f"no usable feedback records in {describe(store.location)}: store some with "
            "`digitrec feedback add` or the drawing page first"
        )
    return records


def split_records(
    records: list[FeedbackRecord], holdout: float, seed: int
) -> tuple[list[FeedbackRecord], list[FeedbackRecord]]:
    """(trained, held out): a seeded ``holdout`` fraction of whole records held out, at least
    one when there are two or more, so no image is both trained on and measured."""
    import numpy as np

    count = round(len(records) * holdout)
    if len(records) >= 2:
        count = min(max(count, 1), len(records) - 1)
    else:
        count = 0
    order = np.random.default_rng(seed).permutation(len(records))
    held = {int(i) for i in order[:count]}
    trained = [r for i, r in enumerate(records) if i not in held]
    return trained, [r for i, r in enumerate(records) if i in held]


def to_arrays(records: list[FeedbackRecord]) -> tuple[np.ndarray, np.ndarray]:
    """Crops (N, 28, 28) uint8 and right digits (N,) int64 of the records' digit pairs."""
    import numpy as np

    pairs = [pair for record in records for pair in record.pairs()]
    if not pairs:
        return np.zeros((0, 28, 28), np.uint8), np.zeros(0, np.int64)
    return np.stack([p for p, _ in pairs]), np.asarray([d for _, d in pairs], np.int64)


def measure(
    model: Any, images: np.ndarray, labels: np.ndarray, test: Split
) -> dict[str, float | None]:
    """Accuracy on the held-out feedback digits (None when there are none) and on MNIST test."""
    import torch

    from digitrec.evaluate import evaluate_split, predict_logits

    feedback = None
    if len(labels):
        logits = predict_logits(model, torch.from_numpy(images).unsqueeze(1))
        feedback = float((logits.argmax(1).numpy() == labels).mean())
    return {"feedback": feedback, "mnist_test": evaluate_split(model, test)["accuracy"]}


def tune(
    model: Any,
    images: np.ndarray,
    labels: np.ndarray,
    splits: Splits,
    config: FinetuneConfig,
    smoothing: float = 0.0,
) -> int:
    """Train ``model`` (in place) on the feedback digits mixed with replayed MNIST training
    digits, with the label ``smoothing`` it was trained with; returns how many MNIST digits were
    replayed. Call inside a seeded RNG."""
    import torch
    import torch.nn.functional as F

    from digitrec.models import to_input

    generator = torch.Generator().manual_seed(config.seed)
    replay = min(max(config.replay * len(labels), config.min_replay), len(splits.train))
    chosen = torch.randperm(len(splits.train), generator=generator)[:replay]
    pool_images = torch.cat([torch.from_numpy(images).unsqueeze(1), splits.train.images[chosen]])
    pool_labels = torch.cat([torch.from_numpy(labels), splits.train.labels[chosen]])
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    model.train()
    for module in model.modules():
        # Batch norm keeps the statistics it measured on all of MNIST: a batch of a few dozen
        # digits, some of them from photos, would drag them away.
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()
    for _ in range(config.steps):
        index = torch.randint(0, len(pool_labels), (config.batch_size,), generator=generator)
        logits = model(to_input(pool_images[index])).float()
        loss = F.cross_entropy(logits, pool_labels[index], label_smoothing=smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model.eval()
    return replay


def label_smoothing(card: ModelCard) -> float:
    """The label smoothing the model was trained with: fine-tuning with another loss pulls its
    logits towards another scale and costs MNIST accuracy even at a tiny learning rate."""
    return float(card.recipe.get("label_smoothing") or 0.0)


def refit_temperature(model: Any, splits: Splits) -> float:
    """The softmax temperature fitted again on MNIST's validation split, as training fits it."""
    from digitrec.evaluate import fit_temperature, predict_logits

    return fit_temperature(
        predict_logits(model, splits.validation.images), splits.validation.labels
    )


def tuned_card(
    card: ModelCard,
    result: FinetuneResult,
    config: FinetuneConfig,
    command: str,
    test: Split,
) -> dict[str, Any]:
    """The fine-tuned model's card: the base's architecture, classes, input and dataset, the new
    temperature and metrics, and what it was fine-tuned on."""
    from datetime import UTC, datetime

    kept = (
        "model",
        "model_args",
        "members",
        "parameters",
        "classes",
        "input",
        "dataset",
        "recipe_name",
        "recipe",
    )
    return {
        **{key: value for key, value in card.to_dict().items() if key in kept},
        "temperature": result.temperature,
        "command": command,
        "metrics": {
            "test_accuracy": result.after["mnist_test"],
            "test_images": len(test),
            "feedback_accuracy": result.after["feedback"],
        },
        "finetune": {
            "base_tensors_sha256": card.tensors_sha256,
            "base_command": card.command,
            "feedback_records": result.trained_records,
            "held_out_records": result.held_out_records,
            "trained_digits": result.trained_digits,
            "held_out_digits": result.held_out_digits,
            "replayed_mnist_digits": result.replayed_digits,
            "label_smoothing": label_smoothing(card),
            "before": result.before,
            "after": result.after,
            "config": asdict(config),
        },
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def save(model: Any, card: dict[str, Any], out_dir: str | os.PathLike) -> dict[str, Any]:
    from digitrec.checkpoint import save_run

    return save_run(out_dir, model.state_dict(), card)


def reproduce_command(
    model: str | None,
    location: str,
    out_dir: str | os.PathLike,
    config: FinetuneConfig,
    last_id: int,
) -> str:
    """The `digitrec finetune` line that makes this model again from the same records (ids up
    to ``last_id``; the card lists them), with every setting that differs from the defaults.
    The thread count is kept when set: it changes the order of float sums, so the weights."""
    from digitrec.feedback import describe

    words = ["digitrec", "finetune"]
    if model is not None:
        words += ["--model", model]
    words += ["--feedback", describe(location), "--out", str(out_dir)]
    defaults = FinetuneConfig()
    for name, value in asdict(config).items():
        if name == "until_id" or value == getattr(defaults, name):
            continue
        words += [f"--{name.replace('_', '-')}", str(value)]
    words += ["--until-id", str(last_id)]
    return shlex.join(words)


def _first(split: Split, count: int | None) -> Split:
    from digitrec.train import Split

    if count is None or count >= len(split):
        return split
    return Split(split.images[:count], split.labels[:count])


def result_table(result: FinetuneResult) -> str:
    """Before and after, as text: held-out feedback and MNIST test accuracy."""

    def shown(value: float | None) -> str:
        return "-" if value is None else f"{value:.2%}"

    lines = [
        f"trained on {result.trained_digits} feedback digits from {len(result.trained_records)} "
        f"records with {result.replayed_digits} MNIST digits replayed; measured on "
        f"{result.held_out_digits} digits of {len(result.held_out_records)} held-out records "
        f"({result.seconds:.1f}s)",
        f"{'':24} {'before':>8} {'after':>8}",
    ]
    for key, name in (("feedback", "held-out feedback"), ("mnist_test", "MNIST test")):
        lines.append(f"{name:24} {shown(result.before[key]):>8} {shown(result.after[key]):>8}")
    return "\n".join(lines)
