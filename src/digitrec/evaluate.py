"""Evaluation of a trained model: logits, loss and accuracy on a split, temperature calibration,
and a run's figures on every split with what they say. Training calls these; they need nothing
from training."""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from digitrec import data
from digitrec.checkpoint import ModelCard, ModelError
from digitrec.config import DataConfig
from digitrec.data import Split, Splits
from digitrec.models import Ensemble, load_model, to_input


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


def evaluate_split(model: nn.Module, split: Split, temperature: float = 1.0) -> dict[str, float]:
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


def fit_verdict(train_accuracy: float, validation_accuracy: float, test_accuracy: float) -> str:
    """The article's reading of the numbers: a good model is accurate on all sets alike."""
    gap = train_accuracy - test_accuracy
    if train_accuracy < 0.97:
        return (
            f"underfitting: training accuracy is only {train_accuracy:.2%}; "
            "train longer or use a larger model"
        )
    if gap > 0.015:
        return (
            f"overfitting: training accuracy is {gap:.2%} above test accuracy; "
            "add augmentation or regularisation"
        )
    accuracies = (train_accuracy, validation_accuracy, test_accuracy)
    spread = max(accuracies) - min(accuracies)
    return (
        f"good fit: train, validation and test accuracy agree within {spread:.2%} "
        f"(train {train_accuracy:.2%}, validation {validation_accuracy:.2%}, "
        f"test {test_accuracy:.2%})"
    )


def evaluate_run(model: Any, splits: Splits, train_sample: int = 10000) -> dict[str, Any]:
    """Loss and accuracy on train (a fixed sample, in eval mode), validation and test."""
    train = dataclasses.replace(
        splits.train,
        images=splits.train.images[:train_sample],
        labels=splits.train.labels[:train_sample],
    )
    results = {
        "train": evaluate_split(model, train),
        "validation": evaluate_split(model, splits.validation),
        "test": evaluate_split(model, splits.test),
    }
    results["verdict"] = fit_verdict(
        results["train"]["accuracy"],
        results["validation"]["accuracy"],
        results["test"]["accuracy"],
    )
    return results


@dataclasses.dataclass
class RunsEvaluation:
    """`evaluate_runs`' answer: the figures, and what they were measured with (for a report)."""

    results: dict[str, Any]
    model: nn.Module
    card: ModelCard
    splits: Splits


def evaluate_runs(
    runs: Sequence[str | os.PathLike], data_dir: str | os.PathLike | None = None
) -> RunsEvaluation:
    """One run on every split of its dataset, or the vote of several runs (the mean of their
    calibrated probabilities) with each run's own test accuracy under "runs". Runs vote only
    when they were trained on one dataset: another dataset's class 3 is not a 3."""
    loaded = [load_model(run) for run in runs]
    datasets = sorted({str(card.dataset) for _, card in loaded})
    if len(datasets) > 1:
        raise ModelError(f"a vote needs runs trained on one dataset, not {' and '.join(datasets)}")
    model = loaded[0][0] if len(loaded) == 1 else Ensemble([m for m, _ in loaded]).eval()
    dataset = data.load(datasets[0], data_dir=data_dir)
    splits = data.make_splits(dataset, DataConfig(dataset=dataset.name))
    results = evaluate_run(model, splits)
    if len(loaded) > 1:
        results["runs"] = [
            {"run": str(run), "test_accuracy": evaluate_split(m, splits.test)["accuracy"]}
            for run, (m, _) in zip(runs, loaded, strict=True)
        ]
    return RunsEvaluation(results, model, loaded[0][1], splits)
