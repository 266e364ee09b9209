"""The project's real-world test set and the per-kind accuracy of a recognizer on it.

MNIST's test digits are never trained on, so rendering them the way users hand digits over
(paper, chalkboards, photos, canvases, rows of digits, every file format, blank pages, ruled and
squared paper, forms, numbers with separators, several lines, marks that are not digits: see
`synth.KINDS`) gives a labelled set unlike MNIST's own clean 28x28 crops. The set is
deterministic for a seed and the versions of the libraries that draw and encode it (the report
names them: a new OpenCV draws its fonts a little differently), so two models are always
compared on the same files.

A recognizer is scored through each result's ``to_dict()``: its "text" (lines joined by "\n",
separators kept), or "number" where it has no "text", must equal the label; on a page of marks
that are not digits, every item it finds must carry ``not_digit``.
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
    label: str  # the text a person reads; "" for a blank page or marks that are not digits
    # True: the page holds only marks that are not digits, and a reader is right when every
    # item it finds is flagged not_digit (or it finds none).
    expect_not_digit: bool = False


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
            chosen = rng.choice(len(labels), size=synth.digits_needed(kind), replace=False)
            data, extension, label = synth.render(
                kind, [images[i] for i in chosen], rng, labels=[int(labels[i]) for i in chosen]
            )
            items.append(Item(kind, data, extension, label, kind in synth.NOT_DIGIT_KINDS))
    return items


def libraries() -> dict[str, str]:
    """The versions of what draws and encodes the set (numpy's generator, OpenCV, Pillow) and
    of what runs the model: other versions give other files, or other readings of them."""
    import cv2
    import onnxruntime
    import PIL

    return {
        "numpy": np.__version__,
        "opencv": cv2.__version__,
        "pillow": PIL.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def write_set(items: Sequence[Item], folder: str | Path) -> list[Path]:
    """Write the files as KIND-INDEX-LABEL.EXT, the label spelled by `synth.label_to_file_name`
    ("none" when empty, "12_34" for two lines, "12slash05" for "12/05"); returns the paths."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, item in enumerate(items):
        label = synth.label_to_file_name(item.label)
        path = out / f"{item.kind}-{index:05d}-{label}{item.extension}"
        path.write_bytes(item.data)
        paths.append(path)
    return paths


def score(recognizer: Any, items: Sequence[Item], batch: int = 256) -> dict[str, Any]:
    """Accuracy and files per second per kind, end to end, and how the not-digit flag fares.

    A file is right when the recognizer's text equals its label, or, on a page of marks that are
    not digits, when no item found is left unflagged. ``notdigit_flagged``: the share of those
    pages where marks were found and all flagged. ``digits_wrongly_flagged``: the share of the
    digits of pages with digits (label not empty) that were flagged not_digit, counting as
    digits the flags beyond the items found in excess of the label's digits. Either is None
    when the set has nothing to count.
    """
    per_kind: dict[str, dict[str, float]] = {}
    counts = dict.fromkeys(("marks_pages", "marks_flagged", "digits", "digits_flagged"), 0)
    start = time.perf_counter()
    for kind, group in _by_kind(items).items():
        kind_start = time.perf_counter()
        answers = [
            result.to_dict()
            for first in range(0, len(group), batch)
            for result in recognizer.recognize_many(
                [item.data for item in group[first : first + batch]]
            )
        ]
        seconds = time.perf_counter() - kind_start
        entry = per_kind[kind] = {"images": len(group), "correct": 0}
        for item, answer in zip(group, answers, strict=True):
            entry["correct"] += int(is_right(item, answer))
            _count_flags(counts, item, answer)
        entry["accuracy"] = entry["correct"] / entry["images"]
        entry["seconds"] = round(seconds, 3)
        entry["files_per_second"] = round(len(group) / seconds, 1) if seconds > 0 else None
    seconds = time.perf_counter() - start
    correct = sum(entry["correct"] for entry in per_kind.values())
    return {
        "images": len(items),
        "accuracy": correct / max(len(items), 1),
        "per_kind": per_kind,
        "seconds": round(seconds, 3),
        "files_per_second": round(len(items) / seconds, 1) if seconds > 0 else None,
        "notdigit_flagged": _share(counts["marks_flagged"], counts["marks_pages"]),
        "digits_wrongly_flagged": _share(counts["digits_flagged"], counts["digits"]),
    }


def is_right(item: Item, answer: dict[str, Any]) -> bool:
    """Whether one result (a ``to_dict()``) reads the file as a person would."""
    if answer.get("error") is not None:
        return False
    if item.expect_not_digit:
        return all(found.get("not_digit") for found in answer.get("digits", []))
    return answer.get("text", answer.get("number")) == item.label


def _by_kind(items: Sequence[Item]) -> dict[str, list[Item]]:
    """The items of each kind, kinds in the order they first appear: each is timed apart."""
    groups: dict[str, list[Item]] = {}
    for item in items:
        groups.setdefault(item.kind, []).append(item)
    return groups


def _count_flags(counts: dict[str, int], item: Item, answer: dict[str, Any]) -> None:
    """Add one result to the not-digit tallies."""
    found = answer.get("digits", []) if answer.get("error") is None else []
    flagged = sum(bool(digit.get("not_digit")) for digit in found)
    if item.expect_not_digit:
        counts["marks_pages"] += 1
        counts["marks_flagged"] += int(bool(found) and flagged == len(found))
    elif item.label:
        # Items found beyond the label's digits are not digits (a leftover of a ruling, a
        # speck), and flagging them is right: only flags past their number can be digits.
        digits = sum(char.isdigit() for char in item.label)
        counts["digits"] += digits
        counts["digits_flagged"] += max(0, flagged - max(0, len(found) - digits))


def _share(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def table(report: dict[str, Any]) -> str:
    lines = [f"{'kind':<12} {'images':>7} {'accuracy':>9} {'files/s':>8}"]
    for kind, entry in report["per_kind"].items():
        speed = entry.get("files_per_second")
        lines.append(
            f"{kind:<12} {entry['images']:>7} {entry['accuracy']:>9.2%} "
            f"{'-' if speed is None else speed:>8}"
        )
    lines.append(f"{'all':<12} {report['images']:>7} {report['accuracy']:>9.2%}")
    for key, meaning in (
        ("notdigit_flagged", "of pages of non-digit marks had every mark flagged not a digit"),
        ("digits_wrongly_flagged", "of the digits on pages of digits were flagged not a digit"),
    ):
        if report.get(key) is not None:
            lines.append(f"{report[key]:.2%} {meaning}")
    lines.append(f"{report['files_per_second']} files/s (decode, preprocess, model; one process)")
    return "\n".join(lines)
