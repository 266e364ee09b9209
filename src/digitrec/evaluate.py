"""Evaluation of a trained model: logits, loss and accuracy on a split, temperature calibration,
and a run's figures on every split with what they say. Training calls these; they need nothing
from training."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from digitrec.data import Split, Splits
from digitrec.models import to_input


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
