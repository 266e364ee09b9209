"""Reading pages: touching digits cut apart by the classifier's best path, text lines, separators
and the not-a-digit flag in the JSON, and `number` as single-line clients always read it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from digitrec import preprocess, segment
from digitrec.recognize import DigitResult, ImageResult, Recognizer, _read_lines

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").iterdir())


def blob(widths: list[int], height: int = 40, gap: int = 0) -> np.ndarray:
    """Solid bars of the given widths side by side, joined by a one-pixel bridge at mid-height."""
    ink = np.zeros((height, sum(widths) + gap * (len(widths) - 1)), np.float32)
    left = 0
    for width in widths:
        ink[:, left + 2 : left + width - 2] = 1.0
        left += width + gap
    ink[height // 2, :] = 1.0
    return ink


def test_cuts_fall_in_the_thin_columns_between_touching_parts():
    ink = blob([30, 30, 30])
    cuts = segment.candidate_cuts(ink)
    # The bridge is the only ink in columns 28..31 and 58..61: cuts must land there.
    assert any(28 <= x <= 32 for x in cuts) and any(58 <= x <= 62 for x in cuts)
    paths = segment.segmentations(ink)
    assert paths[0] == [(0, 90)]
    assert all(len(path) <= segment.MAX_DIGITS for path in paths)
    narrowest = segment.MIN_PIECE * ink.shape[0]
    assert all(right - left >= narrowest for path in paths for left, right in path)
    assert all(path[0][0] == 0 and path[-1][1] == 90 for path in paths)


def test_the_best_path_follows_the_classifier_and_penalises_wide_pieces():
    height = 40
    whole, left, right = (0, 80), (0, 40), (40, 80)
    paths = [[whole], [left, right]]
    # Equally sure of the whole and of both halves: the whole is two digits wide, so it loses.
    assert segment.best_path(paths, {whole: 1.0, left: 1.0, right: 1.0}, height) == [left, right]
    # A narrow blob read surely whole is kept whole when its halves read unsure.
    narrow = [(0, 36)], [(0, 18), (18, 36)]
    confidence = {(0, 36): 0.99, (0, 18): 0.3, (18, 36): 0.4}
    assert segment.best_path(narrow, confidence, height) == [(0, 36)]


def test_a_plain_digit_takes_the_fast_path():
    narrow = preprocess.Digit(np.zeros((28, 28)), (0, 0, 20, 30), ink=np.ones((30, 20)))
    wide = preprocess.Digit(np.zeros((28, 28)), (0, 0, 60, 30), ink=np.ones((30, 60)))
    assert not segment.is_wide(narrow) and segment.is_wide(wide)


def digit(value: int, x: int, line: int = 0, not_digit: bool = False) -> DigitResult:
    probabilities = [0.0] * 10
    probabilities[value] = 1.0
    return DigitResult(
        value, 1.0, probabilities, [x, 10 + 50 * line, 10, 20], not_digit=not_digit, line=line
    )


@pytest.mark.parametrize(
    ("values", "separators", "text"),
    [
        ([(3, 0), (1, 30), (4, 45)], [(".", 20)], "3.14"),
        ([(1, 0), (0, 30), (2, 45), (4, 60)], [(",", 20)], "1,024"),
        ([(5, 30)], [("-", 10)], "-5"),
        ([(1, 0), (2, 15), (0, 45), (5, 60)], [("/", 30)], "12/05"),
        ([(1, 0), (0, 15), (3, 45), (0, 60)], [(":", 30)], "10:30"),
    ],
)
def test_separators_join_the_line_text_in_reading_order(values, separators, text):
    digits = [digit(value, x) for value, x in values]
    marks = [preprocess.Separator(char, (x, 20, 5, 5)) for char, x in separators]
    (line,) = _read_lines(digits, marks)
    assert line.text == text
    assert [d.digit for d in line.digits] == [value for value, _ in values]  # digits only


def test_lines_read_top_down_and_marks_that_are_not_digits_are_left_out():
    digits = [
        digit(1, 0),
        digit(7, 15, not_digit=True),
        digit(2, 30),
        digit(3, 0, line=1),
        digit(4, 15, line=1),
    ]
    lines = _read_lines(digits, [])
    assert [line.text for line in lines] == ["12", "34"]
    assert lines[0].box == [0, 10, 40, 20] and lines[1].box == [0, 60, 25, 20]
    result = ImageResult("page.png", "12", digits, None, lines, "12\n34")
    data = result.to_dict()
    assert set(data) == {"path", "number", "text", "lines", "digits"}
    assert data["text"] == "12\n34" and data["number"] == "12"
    assert [d["not_digit"] for d in data["digits"]] == [False, True, False, False, False]
    assert [line["text"] for line in data["lines"]] == ["12", "34"]
    sentence = result.text().splitlines()
    assert sentence[0].startswith("page.png: The number is probably 12 (")
    assert sentence[1].strip() == "next line: 34"


def test_a_page_of_marks_that_are_not_digits_says_so():
    marks = [digit(4, 0, not_digit=True)]
    result = ImageResult("letter.png", "", marks, None, _read_lines(marks, []), "")
    assert result.text() == "letter.png: no digit found (1 mark that is not a digit)"


@pytest.fixture(scope="module")
def bundled() -> Recognizer:
    return Recognizer.load()


def test_number_is_the_first_line_and_single_line_clients_see_what_they_always_did(bundled):
    for result in bundled.recognize_many(EXAMPLES):
        digits = [d for d in result.digits if not d.not_digit]
        assert result.number == result.full_text.split("\n")[0]
        if "\n" not in result.full_text and not result.lines[1:]:
            # One line without separators: number is its digits, left to right, as before.
            if all(c.isdigit() for c in result.number):
                assert result.number == "".join(str(d.digit) for d in digits)
        for reading in result.digits:
            assert reading.image is not None and reading.image.shape == (28, 28)


def test_every_in_memory_input_reads_as_its_file(bundled):
    from PIL import Image

    path = EXAMPLES[3]  # a canvas export with transparency
    expected = bundled.recognize(path)
    image = Image.open(path)
    gray = np.asarray(image.convert("L"))
    rgb = np.asarray(image.convert("RGB"))
    with open(path, "rb") as file:
        sources = [path.read_bytes(), file, image, gray, rgb, gray.astype(np.float32) / 255]
        for source in sources:
            result = bundled.recognize(source)
            assert result.number == expected.number, type(source)
            assert [d.digit for d in result.digits] == [d.digit for d in expected.digits]
    with pytest.raises(TypeError):
        bundled.recognize(object())
