"""The real-world set: deterministic, labelled like a person reads it, scored per kind."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from digitrec import synth
from digitrec.bench import realworld
from digitrec.cli import main
from digitrec.recognize import Recognizer

# What a page kind's label looks like (notdigit: empty, checked apart).
PAGE_LABELS = {kind: form for kind, form in synth.LABEL_PATTERNS.items() if form}


def test_the_set_is_deterministic_and_labelled(mnist, tmp_path):
    first = realworld.make_set(mnist.test_images, mnist.test_labels, per_kind=2, seed=3)
    again = realworld.make_set(mnist.test_images, mnist.test_labels, per_kind=2, seed=3)
    assert [item.data for item in first] == [item.data for item in again]
    assert [item.kind for item in first] == [kind for kind in synth.KINDS for _ in range(2)]
    for item in first:
        assert item.expect_not_digit == (item.kind == "notdigit")
        if item.kind in ("blank", "notdigit"):
            assert item.label == ""
        elif item.kind == "row":
            assert 2 <= len(item.label) <= 5 and item.label.isdigit()
        elif item.kind in PAGE_LABELS:
            assert re.fullmatch(PAGE_LABELS[item.kind], item.label), (item.kind, item.label)
        else:
            assert len(item.label) == 1 and item.label.isdigit()
    paths = realworld.write_set(first, tmp_path)
    assert len(paths) == len(first) and all(path.stat().st_size > 0 for path in paths)
    assert paths[0].name.startswith("paper-00000-")
    # Labels with line breaks and separators still make one file each, named so they read back.
    for path, item in zip(paths, first, strict=True):
        kind, _, label = path.name.rsplit(".", 1)[0].split("-")
        assert kind == item.kind and synth.label_from_file_name(label) == item.label


def test_the_plain_kinds_files_are_drawn_as_before(mnist):
    # The set as it was drawn before the page kinds: five test digits per file, then render.
    # The plain kinds must give the same files so that earlier benchmark numbers still compare.
    plain = ("paper", "row", "formats", "blank")
    items = realworld.make_set(
        mnist.test_images, mnist.test_labels, per_kind=3, seed=5, kinds=plain
    )
    rng = np.random.default_rng(5)
    for index, kind in enumerate(kind for kind in plain for _ in range(3)):
        chosen = rng.choice(len(mnist.test_labels), size=5, replace=False)
        expected = synth.render(
            kind,
            [mnist.test_images[i] for i in chosen],
            rng,
            labels=[int(mnist.test_labels[i]) for i in chosen],
        )
        assert (items[index].data, items[index].extension, items[index].label) == expected


def test_score_counts_whole_numbers_per_kind(mnist, tiny_run):
    items = realworld.make_set(
        mnist.test_images, mnist.test_labels, per_kind=4, kinds=("paper", "blank")
    )
    report = realworld.score(Recognizer.load(tiny_run.run_dir), items)
    assert report["images"] == 8
    assert set(report["per_kind"]) == {"paper", "blank"}
    # A blank page is never read as a digit; a trained model reads most clean paper digits.
    assert report["per_kind"]["blank"]["accuracy"] == 1.0
    assert report["per_kind"]["paper"]["correct"] >= 3
    assert report["files_per_second"] > 0
    assert "all" in realworld.table(report)


def test_bench_realworld_writes_its_json(mnist, data_cache, tiny_run, monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(data_cache.parent))
    out = tmp_path / "realworld.json"
    code = main(
        [
            "bench",
            "realworld",
            "--model",
            str(tiny_run.run_dir),
            "--per-kind",
            "1",
            "--out",
            str(out),
            "--write",
            str(tmp_path / "files"),
        ]
    )
    assert code == 0
    report = json.loads(out.read_text())
    assert report["images"] == len(synth.KINDS)
    assert set(report["per_kind"]) == set(synth.KINDS)
    assert len(list((tmp_path / "files").iterdir())) == len(synth.KINDS)
    # The libraries that drew the files are named: another OpenCV draws other files.
    assert report["libraries"]["opencv"] == cv2.__version__
    assert report["libraries"]["numpy"] == np.__version__


def test_bench_realworld_kinds(mnist, data_cache, tiny_run, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(data_cache.parent))
    out = tmp_path / "realworld.json"
    code = main(
        [
            "bench",
            "realworld",
            "--model",
            str(tiny_run.run_dir),
            "--per-kind",
            "2",
            "--kinds",
            "paper,blank",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    report = json.loads(out.read_text())
    assert report["images"] == 4 and set(report["per_kind"]) == {"paper", "blank"}
    assert report["seed"] == 0
    # Another seed renders other files of the same kinds.
    written = tmp_path / "files"
    base = ["bench", "realworld", "--model", str(tiny_run.run_dir), "--per-kind", "2"]
    base += ["--kinds", "paper", "--out", str(out)]
    assert main([*base, "--write", str(written / "0")]) == 0
    assert main([*base, "--seed", "1", "--write", str(written / "1")]) == 0
    assert json.loads(out.read_text())["seed"] == 1
    first, other = (sorted(p.read_bytes() for p in (written / s).iterdir()) for s in "01")
    assert len(first) == len(other) == 2 and first != other
    assert main(["bench", "realworld", "--kinds", "paper,napkin"]) == 2
    assert "unknown: napkin" in capsys.readouterr().err


@dataclass
class CannedResult:
    answer: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return self.answer


class CannedRecognizer:
    """Answers each file (its bytes name it) with a prepared result, in batches like the real
    one, so scoring is tested against answers worked out by hand."""

    def __init__(self, answers: dict[bytes, dict[str, Any]]):
        self.answers = answers
        self.batches: list[int] = []

    def recognize_many(self, files: list[bytes]) -> list[CannedResult]:
        self.batches.append(len(files))
        return [CannedResult(self.answers[data]) for data in files]


def _digits(*flags: bool) -> list[dict[str, Any]]:
    return [{"digit": 1, "confidence": 0.9, "not_digit": flag} for flag in flags]


def test_score_reads_text_and_counts_not_digit_flags():
    cases = [
        # kind, label, answer, right?
        ("paper", "7", {"number": "7", "digits": _digits(False)}, True),  # no text: the number
        ("paper", "7", {"path": "x", "error": "not an image"}, False),
        # An item found beyond the label's one digit is a leftover: flagging it is right.
        ("paper", "7", {"number": "7", "digits": _digits(False, True)}, True),
        (
            "multiline",
            "12\n34",
            {"text": "12\n34", "number": "12", "digits": _digits(*[False] * 4)},
            True,
        ),
        (
            "multiline",
            "12\n34",
            {"text": "1234", "number": "1234", "digits": _digits(*[False] * 4)},
            False,
        ),
        ("separators", "3.14", {"text": "3.14", "digits": _digits(False, False, False)}, True),
        # A flagged item is one of the digits wrongly taken for a mark.
        ("separators", "-5", {"text": "", "digits": _digits(True)}, False),
        ("notdigit", "", {"text": "", "digits": _digits(True, True)}, True),
        ("notdigit", "", {"text": "", "digits": []}, True),
        ("notdigit", "", {"text": "4", "digits": _digits(True, False)}, False),
        # Marks found on a blank page are not digits: flagging them is never wrong.
        ("blank", "", {"text": "", "digits": _digits(True)}, True),
    ]
    items = [
        realworld.Item(kind, str(index).encode(), ".png", label, kind == "notdigit")
        for index, (kind, label, _, _) in enumerate(cases)
    ]
    recognizer = CannedRecognizer(
        {item.data: case[2] for item, case in zip(items, cases, strict=True)}
    )
    report = realworld.score(recognizer, items, batch=1)
    for item, (_, _, answer, right) in zip(items, cases, strict=True):
        assert realworld.is_right(item, answer) == right, (item.kind, answer)
    assert report["images"] == len(cases) and report["accuracy"] == 7 / 11
    assert {kind: entry["correct"] for kind, entry in report["per_kind"].items()} == {
        "paper": 2,
        "multiline": 1,
        "separators": 1,
        "notdigit": 2,
        "blank": 1,
    }
    assert report["per_kind"]["notdigit"]["accuracy"] == 2 / 3
    assert all(entry["files_per_second"] > 0 for entry in report["per_kind"].values())
    assert report["files_per_second"] > 0 and report["seconds"] >= 0
    # Found and all flagged: one notdigit page of three (the empty answer flagged nothing).
    assert report["notdigit_flagged"] == 1 / 3
    # The labels' digits: 1 + 1 + 1 + 4 + 4 + 3 + 1; the "-5" page's flag is a digit's, the
    # second paper page's is the leftover's.
    assert report["digits_wrongly_flagged"] == 1 / 15
    assert recognizer.batches == [1] * len(cases)
    printed = realworld.table(report)
    assert "files/s" in printed and "33.33% of pages of non-digit marks" in printed
    assert "6.67% of the digits on pages of digits" in printed


def test_score_without_not_digit_pages_reports_no_rate():
    items = [realworld.Item("paper", bytes([index]), ".png", "1") for index in range(5)]
    answers = {item.data: {"number": "1", "digits": _digits(False)} for item in items}
    recognizer = CannedRecognizer(answers)
    report = realworld.score(recognizer, items, batch=2)
    assert recognizer.batches == [2, 2, 1]
    assert report["accuracy"] == 1.0 and report["notdigit_flagged"] is None
    assert report["digits_wrongly_flagged"] == 0.0
    assert "non-digit" not in realworld.table(report)
