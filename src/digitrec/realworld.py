"""The project's real-world test set and the per-kind accuracy of a recognizer on it.

MNIST's test digits are never trained on, so rendering them the way users hand digits over
(paper, chalkboards, photos, canvases, rows of digits, every file format, blank pages: see
`synth.KINDS`) gives a labelled set unlike MNIST's own clean 28x28 crops. The set is
deterministic for a seed, so two models are always compared on the same files.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from digitrec import synth


@dataclass(frozen=True)
class Item:
    kind: str
    data: bytes
    extension: str
    label: str  # the number a person reads; "" for a blank page


def make_set(
    images: np.ndarray,
    labels: np.ndarray,
    per_kind: int = 100,
    seed: int = 0,
    kinds: Sequence[str] = synth.KINDS,
) -> list[Item]:
    """`per_kind` files of each kind, rendered from randomly drawn (image, label) pairs."""
    rng = np.random.default_rng(seed)
    items = []
    for kind in kinds:
        for _ in range(per_kind):
            chosen = rng.choice(len(labels), size=5, replace=False)
            data, extension, label = synth.render(
                kind, [images[i] for i in chosen], rng, labels=[int(labels[i]) for i in chosen]
            )
            items.append(Item(kind, data, extension, label))
    return items


def write_set(items: Sequence[Item], folder: str | Path) -> list[Path]:
    """Write the files as KIND-INDEX-LABEL.EXT (label "none" for blanks); returns the paths."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, item in enumerate(items):
        path = out / f"{item.kind}-{index:05d}-{item.label or 'none'}{item.extension}"
        path.write_bytes(item.data)
        paths.append(path)
    return paths


def score(recognizer: Any, items: Sequence[Item], batch: int = 256) -> dict[str, Any]:
    """Accuracy per kind (the whole number must match) and files per second, end to end."""
    per_kind: dict[str, dict[str, float]] = {}
    start = time.perf_counter()
    for first in range(0, len(items), batch):
        chunk = items[first : first + batch]
        results = recognizer.recognize_many([item.data for item in chunk])
        for item, result in zip(chunk, results, strict=True):
            entry = per_kind.setdefault(item.kind, {"images": 0, "correct": 0})
            entry["images"] += 1
            entry["correct"] += int(result.error is None and result.number == item.label)
    seconds = time.perf_counter() - start
    for entry in per_kind.values():
        entry["accuracy"] = entry["correct"] / entry["images"]
    correct = sum(entry["correct"] for entry in per_kind.values())
    return {
        "images": len(items),
        "accuracy": correct / max(len(items), 1),
        "per_kind": per_kind,
        "seconds": round(seconds, 3),
        "files_per_second": round(len(items) / seconds, 1) if seconds > 0 else None,
    }


def table(report: dict[str, Any]) -> str:
    lines = [f"{'kind':<12} {'images':>7} {'accuracy':>9}"]
    for kind, entry in report["per_kind"].items():
        lines.append(f"{kind:<12} {entry['images']:>7} {entry['accuracy']:>9.2%}")
    lines.append(f"{'all':<12} {report['images']:>7} {report['accuracy']:>9.2%}")
    lines.append(f"{report['files_per_second']} files/s (decode, preprocess, model; one process)")
    return "\n".join(lines)
