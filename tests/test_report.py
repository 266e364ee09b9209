"""The evaluation report: metric functions against hand-worked examples, and the written report."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from digitrec.models import load_model
from digitrec.report import (
    confident_mistakes,
    confusion_matrix,
    confusion_table,
    cross_entropy,
    expected_calibration_error,
    per_class_metrics,
    reliability_bins,
    softmax,
    write_report,
)


def test_confusion_matrix_counts_true_rows_and_predicted_columns():
    labels = np.array([0, 0, 1, 2, 2, 2])
    predictions = np.array([0, 1, 1, 2, 0, 2])
    expected = np.array([[1, 1, 0], [0, 1, 0], [1, 0, 2]])
    np.testing.assert_array_equal(confusion_matrix(labels, predictions, 3), expected)


def test_per_class_metrics_by_hand():
    confusion = np.array([[1, 1, 0], [0, 1, 0], [1, 0, 2]])
    rows = per_class_metrics(confusion)
    # class 0: 1 right of 2 predicted as 0, of 2 true 0s; class 1: 1/2 predicted, 1/1 true.
    assert rows[0] == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2})
    assert rows[1]["precision"] == pytest.approx(0.5)
    assert rows[1]["recall"] == pytest.approx(1.0)
    assert rows[1]["f1"] == pytest.approx(2 / 3)
    assert rows[2] == pytest.approx({"precision": 1.0, "recall": 2 / 3, "f1": 0.8, "support": 3})
    # A class never predicted and never present has 0s, not NaNs.
    assert per_class_metrics(np.zeros((2, 2), dtype=int))[0]["f1"] == 0.0


def test_expected_calibration_error():
    # 80% confident and right 80% of the time: calibrated.
    confidences = np.full(10, 0.8)
    correct = np.array([1] * 8 + [0] * 2)
    assert expected_calibration_error(confidences, correct) == pytest.approx(0.0)
    # Two bins: 0.95 confident but always wrong (gap 0.95), 0.5 confident and half right (0).
    confidences = np.array([0.95, 0.95, 0.5, 0.5])
    correct = np.array([0, 0, 1, 0])
    assert expected_calibration_error(confidences, correct, bins=15) == pytest.approx(0.475)
    table = reliability_bins(confidences, correct, bins=15)
    assert table["counts"].sum() == 4 and len(table["edges"]) == 16
    # Confidence exactly 1.0 falls in the last bin, not past it.
    assert reliability_bins(np.array([1.0]), np.array([1]))["counts"][-1] == 1


def test_softmax_and_loss_agree_with_torch():
    logits = np.random.default_rng(0).normal(size=(50, 10)) * 5
    labels = np.random.default_rng(1).integers(0, 10, size=50)
    expected = F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels)).item()
    assert cross_entropy(logits, labels) == pytest.approx(expected, abs=1e-9)
    np.testing.assert_allclose(softmax(logits).sum(1), 1.0)


def test_confident_mistakes_come_first():
    probabilities = np.array([[0.9, 0.1], [0.3, 0.7], [0.6, 0.4], [0.05, 0.95]])
    labels = np.array([0, 0, 1, 0])
    np.testing.assert_array_equal(confident_mistakes(probabilities, labels), [3, 1, 2])


def test_write_report(tiny_run, splits, tmp_path):
    # As `digitrec evaluate --report` calls it: the model as loaded, with its temperature.
    model, card = load_model(tiny_run.run_dir)
    path = write_report(tiny_run.run_dir, model, card, splits, tmp_path / "r")
    assert path.name == "report.html"
    out = path.parent
    for name in ("confusion.png", "mistakes.png", "reliability.png", "training-curves.png"):
        assert (out / name).stat().st_size > 1000, name

    metrics = json.loads((out / "metrics.json").read_text())
    confusion = np.array(metrics["confusion_matrix"])
    size = len(splits.test)
    assert confusion.shape == (10, 10) and confusion.sum() == size == metrics["size"]
    assert np.trace(confusion) / size == pytest.approx(metrics["accuracy"])
    assert metrics["accuracy"] == pytest.approx(tiny_run.card["metrics"]["test_accuracy"], abs=1e-4)
    assert metrics["loss"] == pytest.approx(tiny_run.card["metrics"]["test_loss"], abs=1e-3)
    assert 0.0 <= metrics["ece"] < 0.1
    assert set(metrics["per_class"]) == {str(i) for i in range(10)}
    assert sum(row["support"] for row in metrics["per_class"].values()) == size
    assert metrics["errors"] == size - np.trace(confusion)

    page = path.read_text()
    references = re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', page)
    assert references and all(ref.startswith("data:image/png;base64,") for ref in references)
    assert "url(" not in page and "@import" not in page
    assert confusion_table(confusion, [str(i) for i in range(10)]) in page.replace("&#x27;", "'")
    assert (out / "confusion.txt").read_text().splitlines()[1].split()[1] == str(confusion[0, 0])
