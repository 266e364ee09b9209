"""Evaluation of a trained run: loss and accuracy on every split, and what they say."""

from __future__ import annotations

from typing import Any

from digitrec.train import Split, Splits, evaluate


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
    train = Split(splits.train.images[:train_sample], splits.train.labels[:train_sample])
    results = {
        "train": evaluate(model, train),
        "validation": evaluate(model, splits.validation),
        "test": evaluate(model, splits.test),
    }
    results["verdict"] = fit_verdict(
        results["train"]["accuracy"],
        results["validation"]["accuracy"],
        results["test"]["accuracy"],
    )
    return results
