"""The evaluation report of a trained run: test metrics, figures and one self-contained HTML page.

The metrics are pure numpy functions over labels, predictions and probabilities, so they can be
checked by hand; `write_report` runs the model once over the test set and writes `report.html`
(figures embedded as data URIs, readable offline), `metrics.json`, `confusion.txt` and the PNGs.
"""

from __future__ import annotations

import html
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from digitrec import figures
from digitrec.pages import figure_html, table_html, write_html

CALIBRATION_BINS = 15
GALLERY_SIZE = 40


def softmax(logits: np.ndarray) -> np.ndarray:
    """Raw scores (N, K) -> probabilities (N, K) that sum to 1 per row."""
    shifted = logits - logits.max(axis=-1, keepdims=True)  # exp never overflows
    exps = np.exp(shifted)
    return exps / exps.sum(axis=-1, keepdims=True)


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-probability of the true class (the training loss)."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_probabilities = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return float(-log_probabilities[np.arange(len(labels)), labels].mean())


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts (num_classes, num_classes): row = true label, column = predicted label."""
    labels = np.asarray(labels, dtype=np.int64)
    predictions = np.asarray(predictions, dtype=np.int64)
    flat = np.bincount(labels * num_classes + predictions, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes)


def per_class_metrics(confusion: np.ndarray) -> list[dict[str, float]]:
    """Precision, recall, F1 and support per class from a confusion matrix (0 where undefined).

    precision = right / predicted as the class, recall = right / truly the class.
    """
    confusion = np.asarray(confusion, dtype=np.float64)
    right = np.diag(confusion)
    predicted = confusion.sum(axis=0)
    actual = confusion.sum(axis=1)
    rows = []
    for index in range(len(confusion)):
        precision = right[index] / predicted[index] if predicted[index] else 0.0
        recall = right[index] / actual[index] if actual[index] else 0.0
        total = precision + recall
        f1 = 2 * precision * recall / total if total else 0.0
        rows.append(
            {
                "precision": float(precision),
                "recall": float(recall),
                "f1": float(f1),
                "support": int(actual[index]),
            }
        )
    return rows


def reliability_bins(
    confidences: np.ndarray, correct: np.ndarray, bins: int = CALIBRATION_BINS
) -> dict[str, np.ndarray]:
    """Equal-width confidence bins (lo, hi] over [0, 1]: edges, counts, mean confidence and
    accuracy per bin (0 in an empty bin)."""
    confidences = np.asarray(confidences, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.ceil(confidences * bins).astype(np.int64) - 1, 0, bins - 1)
    counts = np.bincount(index, minlength=bins)
    safe = np.maximum(counts, 1)
    return {
        "edges": edges,
        "counts": counts,
        "confidence": np.bincount(index, weights=confidences, minlength=bins) / safe,
        "accuracy": np.bincount(index, weights=correct, minlength=bins) / safe,
    }


def expected_calibration_error(
    confidences: np.ndarray, correct: np.ndarray, bins: int = CALIBRATION_BINS
) -> float:
    """ECE: the digit-weighted mean gap between accuracy and confidence over the bins."""
    table = reliability_bins(confidences, correct, bins)
    total = table["counts"].sum()
    if total == 0:
        return 0.0
    gaps = np.abs(table["accuracy"] - table["confidence"])
    return float((table["counts"] * gaps).sum() / total)


def confident_mistakes(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Indices of misclassified digits, the most confident mistake first."""
    predictions = probabilities.argmax(axis=1)
    wrong = np.flatnonzero(predictions != labels)
    confidence = probabilities[wrong, predictions[wrong]]
    return wrong[np.argsort(-confidence, kind="stable")]


def split_metrics(
    logits: np.ndarray, labels: np.ndarray, classes: Sequence[str], bins: int = CALIBRATION_BINS
) -> dict[str, Any]:
    """Everything `metrics.json` holds, from the model's logits (N, K) and the labels (N,)."""
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    probabilities = softmax(logits)
    predictions = probabilities.argmax(axis=1)
    confidences = probabilities.max(axis=1)
    correct = predictions == labels
    confusion = confusion_matrix(labels, predictions, len(classes))
    per_class = per_class_metrics(confusion)
    table = reliability_bins(confidences, correct, bins)
    return {
        "size": int(len(labels)),
        "accuracy": float(correct.mean()) if len(labels) else 0.0,
        "loss": cross_entropy(logits, labels) if len(labels) else 0.0,
        "errors": int((~correct).sum()),
        "ece": expected_calibration_error(confidences, correct, bins),
        "calibration_bins": bins,
        "classes": list(classes),
        "confusion_matrix": confusion.tolist(),
        "per_class": {name: row for name, row in zip(classes, per_class, strict=True)},
        "macro_f1": float(np.mean([row["f1"] for row in per_class])),
        "reliability": {key: value.tolist() for key, value in table.items()},
    }


def confusion_table(confusion: np.ndarray, classes: Sequence[str]) -> str:
    """The confusion matrix as fixed-width text: rows true, columns predicted."""
    confusion = np.asarray(confusion)
    width = max(5, len(str(confusion.max())) + 1)
    lines = ["true \\ predicted".ljust(18) + "".join(c.rjust(width) for c in classes)]
    for name, row in zip(classes, confusion, strict=True):
        lines.append(name.ljust(18) + "".join(str(v).rjust(width) for v in row))
    return "\n".join(lines) + "\n"


def read_history(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The run's per-epoch history.json, or [] when the run has none."""
    run_dir = Path(run_dir)
    folder = run_dir if run_dir.is_dir() else run_dir.parent
    path = folder / "history.json"
    if not path.is_file():
        return []
    try:
        history = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return [h for h in history if isinstance(h, dict) and "epoch" in h]


def write_report(
    run_dir: str | os.PathLike, model: Any, card: dict[str, Any], splits: Any, out_dir
) -> Path:
    """Evaluate `model` on the test split and write report.html (and friends) into `out_dir`.

    `model` returns (temperature-scaled) logits for 0..1 images; returns report.html's path.
    """
    from digitrec.evaluate import predict_logits

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    classes = list(card.classes)
    logits = predict_logits(model, splits.test.images).double().numpy()
    labels = splits.test.labels.cpu().numpy().astype(np.int64)
    metrics = split_metrics(logits, labels, classes)
    metrics["model"] = card.model
    metrics["dataset"] = card.dataset or splits.dataset
    metrics["temperature"] = card.temperature
    confusion = np.array(metrics["confusion_matrix"])
    paths = _metric_figures(metrics, confusion, classes, out_dir)
    mistakes = _mistakes_figure(softmax(logits), labels, classes, splits.test.images, out_dir)
    if mistakes is not None:
        paths["mistakes"] = mistakes
    history = read_history(run_dir)
    if history:
        paths["curves"] = figures.training_curves(history, out_dir / "training-curves.png")
    metrics["figures"] = {name: path.name for name, path in paths.items()}

    text_table = confusion_table(confusion, classes)
    (out_dir / "confusion.txt").write_text(text_table, encoding="utf-8")
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    body = _report_body(run_dir, card, metrics, paths, text_table, history)
    return write_html(out_dir / "report.html", f"digitrec report: {card.model}", body)


def _metric_figures(
    metrics: dict[str, Any], confusion: np.ndarray, classes: Sequence[str], out_dir: Path
) -> dict[str, Path]:
    """The confusion heatmap and the reliability diagram, by figure name."""
    reliability = metrics["reliability"]
    return {
        "confusion": figures.confusion_heatmap(
            confusion,
            classes,
            out_dir / "confusion.png",
            f"confusion matrix: {metrics['size']} test digits, accuracy {metrics['accuracy']:.2%}",
        ),
        "reliability": figures.reliability_diagram(
            *(np.array(reliability[k]) for k in ("edges", "accuracy", "confidence")),
            np.array(reliability["counts"]),
            metrics["ece"],
            out_dir / "reliability.png",
        ),
    }


def _mistakes_figure(
    probabilities: np.ndarray,
    labels: np.ndarray,
    classes: Sequence[str],
    images: Any,
    out_dir: Path,
) -> Path | None:
    """A gallery of the most confident mistakes, or None when there is no mistake."""
    mistakes = confident_mistakes(probabilities, labels)[:GALLERY_SIZE]
    if not len(mistakes):
        return None
    titles = [
        f"{classes[labels[i]]} → {classes[probabilities[i].argmax()]} {probabilities[i].max():.0%}"
        for i in mistakes
    ]
    return figures.digit_grid(
        list(images[mistakes, 0].cpu().numpy()),
        titles,
        out_dir / "mistakes.png",
        cmap=figures.DIGIT_CMAP,
        suptitle="most confident mistakes: true → predicted (confidence)",
    )


def _report_body(
    run_dir: Any,
    card: dict[str, Any],
    metrics: dict[str, Any],
    paths: dict[str, Path],
    text_table: str,
    history: list[dict[str, Any]],
) -> str:
    """The report page's HTML, section by section."""
    parts = _summary_parts(run_dir, card, metrics)
    parts += _per_class_parts(metrics, paths, text_table)
    parts.append("<h2>Most confident mistakes</h2>")
    parts.append(_mistakes_part(metrics, paths))
    parts.append("<h2>Training curves</h2>")
    parts.append(_curves_part(paths, history))
    parts += [
        "<h2>Calibration</h2>",
        figure_html(
            paths["reliability"],
            f"Test digits grouped into {metrics['calibration_bins']} bins by confidence (the "
            "probability of the predicted class). A calibrated model is right 90% of the time "
            "when it says 90%: its bars sit on the diagonal. The expected calibration error "
            f"(ECE) is the digit-weighted mean gap: {metrics['ece']:.4f}.",
        ),
        "<p>Files beside this page: <code>metrics.json</code> (every number here, the confusion "
        "matrix as a list of lists), <code>confusion.txt</code> and the PNG figures.</p>",
    ]
    return "\n".join(parts)


def _summary_parts(run_dir: Any, card: dict[str, Any], metrics: dict[str, Any]) -> list[str]:
    """The heading, the run's description and the test set's headline metrics."""
    esc = html.escape
    header = ["digits", "accuracy", "loss", "errors", "macro F1"]
    header.append(f"ECE ({metrics['calibration_bins']} bins)")
    row = [
        metrics["size"],
        f"{metrics['accuracy']:.4f}",
        f"{metrics['loss']:.4f}",
        metrics["errors"],
        f"{metrics['macro_f1']:.4f}",
        f"{metrics['ece']:.4f}",
    ]
    return [
        f"<h1>Evaluation report: {esc(card.model)}</h1>",
        f"<p>Run <code>{esc(str(run_dir))}</code>, dataset {esc(str(metrics['dataset']))}, "
        f"{card.parameters:,} parameters, trained {esc(card.created or '?')}"
        f", softmax temperature {metrics['temperature']:.3g}.</p>",
        "<h2>Test set</h2>",
        table_html(header, [row]),
        "<p>The loss is the mean cross-entropy of the calibrated probabilities; accuracy is the "
        "share of test digits whose most probable class is the true one.</p>",
    ]


def _per_class_parts(metrics: dict[str, Any], paths: dict[str, Path], text_table: str) -> list[str]:
    """Precision, recall and F1 per class, then the confusion matrix as a figure and text."""
    per_class = [
        [
            name,
            f"{row['precision']:.4f}",
            f"{row['recall']:.4f}",
            f"{row['f1']:.4f}",
            row["support"],
        ]
        for name, row in metrics["per_class"].items()
    ]
    return [
        "<h2>Per class</h2>",
        "<p>Precision: of the digits read as this class, the share that were. Recall: of the "
        "digits of this class, the share read as it. F1: their harmonic mean.</p>",
        table_html(["class", "precision", "recall", "F1", "support"], per_class),
        "<h2>Confusion matrix</h2>",
        figure_html(
            paths["confusion"],
            "Rows are the true labels, columns the predicted ones; "
            "the diagonal holds the right answers.",
        ),
        f"<pre>{html.escape(text_table)}</pre>",
    ]


def _mistakes_part(metrics: dict[str, Any], paths: dict[str, Path]) -> str:
    """The gallery of confident mistakes, or a line saying there were none."""
    if "mistakes" not in paths:
        return "<p>No test digit was misclassified.</p>"
    return figure_html(
        paths["mistakes"],
        f"The {min(GALLERY_SIZE, metrics['errors'])} misclassified test digits the model was "
        f"surest about, of {metrics['errors']}: true label → predicted label (confidence). "
        "Some are ambiguous even to a person; some labels look wrong.",
    )


def _curves_part(paths: dict[str, Path], history: list[dict[str, Any]]) -> str:
    """The training curves, or a note that the run kept no history."""
    if "curves" not in paths:
        return '<p class="note">This run has no history.json, so no curves.</p>'
    return figure_html(
        paths["curves"],
        f"Loss and accuracy after each of {len(history)} epochs, on the training batches "
        "and on the held-out validation split. Training figures are averaged over "
        "each epoch while the weights still change, so early on they trail validation. "
        "Validation far worse than training is "
        "overfitting; both poor is underfitting.",
    )
