"""Reading pages: touching digits read by the line reader with a box each, text lines,
separators and the not-a-digit flag in the JSON, and `number` as single-line clients always read
it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from digitrec import preprocess, recognize, segment
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


def _blob_of(width: int) -> preprocess.Digit:
    return preprocess.Digit(np.zeros((28, 28)), (0, 0, width, 30), ink=np.ones((30, width)))


def _sure_of(digit: int, confidence: float) -> np.ndarray:
    probabilities = np.full(10, (1 - confidence) / 9, dtype=np.float32)
    probabilities[digit] = confidence
    return probabilities


def test_a_plain_digit_takes_the_fast_path():
    narrow, square, wide = _blob_of(20), _blob_of(30), _blob_of(60)
    # A narrow digit read surely is never handed to the line reader; a blob wide enough for
    # two touching digits is, and so is a narrow one read unsure.
    assert not recognize._may_be_touching(narrow, 0.95)
    assert recognize._may_be_touching(square, 0.999) and recognize._may_be_touching(wide, 0.999)
    assert recognize._may_be_touching(narrow, 0.5)
    # The classifier's reading stands against a line reader not very sure of several digits
    # for a narrow blob it is sure of and a square one it is very sure of (a round 0); not
    # for a square one it doubts, nor for a wide one.
    assert recognize._sure_whole(narrow, _sure_of(6, 0.95))
    assert recognize._sure_whole(square, _sure_of(0, 0.999))
    assert not recognize._sure_whole(square, _sure_of(0, 0.95))
    assert not recognize._sure_whole(wide, _sure_of(0, 0.999))


@pytest.mark.parametrize("reader_sure", [0.995, 0.98])
def test_a_blob_read_surely_as_one_digit_splits_only_for_a_very_sure_line_reader(reader_sure):
    # "16" whose 1 touches the 6: the classifier is sure of a 6, the line reader reads 1 and 6.
    blob = _blob_of(26)
    classes = [np.eye(10, dtype=np.float32)[1], np.eye(10, dtype=np.float32)[6]]
    reading = recognize.linereader.LineReading(
        digits=[(1, 1.0, 0, 8), (6, reader_sure, 9, 26)], confidence=reader_sure, classes=classes
    )
    found = recognize._line_results(blob, reading, _sure_of(6, 0.999))
    if reader_sure >= recognize.SPLIT_SURE:
        assert [d.digit for d in found] == [1, 6]
    else:
        assert found is None


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


def test_touching_digits_read_right_with_a_box_each(bundled, mnist):
    from digitrec import synth

    rng = np.random.default_rng(3)
    right = 0
    for _ in range(20):
        chosen = rng.choice(len(mnist.test_labels), size=4, replace=False)
        labels = [int(mnist.test_labels[i]) for i in chosen]
        images = [mnist.test_images[i] for i in chosen]
        data, _, label = synth.render("touching", images, rng, labels=labels)
        result = bundled.recognize(data)
        right += result.number == label
        if result.number == label:
            boxes = [d.box for d in result.digits]
            # One box per digit, left to right, side by side rather than stacked.
            pairs = zip(boxes, boxes[1:], strict=False)
            assert all(a[0] < b[0] and a[0] + a[2] <= b[0] + b[2] for a, b in pairs)
    # Their strokes join into one blob: read whole, none of these would be right. The line
    # reader reads about four in five such strings of MNIST test digits; half is a loose bound.
    assert right >= 10, right


def test_marks_that_are_not_digits_are_flagged(bundled):
    from digitrec import synth

    rng = np.random.default_rng(11)
    pages = [synth.render("notdigit", [], rng)[0] for _ in range(20)]
    flagged = [
        bool(result.digits) and all(d.not_digit for d in result.digits) and result.number == ""
        for result in bundled.recognize_many(pages)
    ]
    # Letters, symbols, scribbles, faces and stars in fonts and shapes the model never saw:
    # nine in ten are flagged on the benchmark; none would be without the flag.
    assert sum(flagged) >= 14, flagged


@pytest.mark.parametrize(
    ("height", "ink", "rejectable"),
    [
        (recognize.REJECT_MIN_HEIGHT, 1.0, True),  # tall enough to be seen for what it is
        (recognize.REJECT_MIN_HEIGHT - 8, 1.0, False),  # a far-off digit: a solid pen mark
        (recognize.REJECT_MIN_HEIGHT - 8, recognize.SOLID_INK / 2, True),  # faint residue
    ],
)
def test_an_unsure_reading_is_not_a_digit_unless_the_mark_is_small_solid_ink(
    height, ink, rejectable
):
    mark = preprocess.Digit(
        image=np.zeros((28, 28), np.float32),
        box=(5, 5, height, height),
        ink=np.full((height, height), ink, np.float32),
    )
    assert recognize._rejectable(mark) == rejectable
    # The probability spread over all ten classes, as the model gives it for a letter.
    probs = np.full(10, 0.1, dtype=np.float32)
    result = recognize._digit_result(mark.image, mark.box, probs, 0, rejectable)
    assert result.uncertain and result.not_digit == rejectable


@pytest.mark.parametrize(("reader_sure", "classifier_sure"), [(0.99, 0.6), (0.6, 0.8)])
def test_the_surer_of_the_two_models_reads_a_lone_digit(reader_sure, classifier_sure):
    # The classifier takes the blob for a 9, the line reader reads one 4 in it.
    whole = np.full(10, (1 - classifier_sure) / 9, dtype=np.float32)
    whole[9] = classifier_sure
    classes = np.full(10, (1 - reader_sure) / 9, dtype=np.float32)
    classes[4] = reader_sure
    reading = recognize.linereader.LineReading(
        digits=[(4, reader_sure, 0, 30)], confidence=reader_sure, classes=[classes]
    )
    blob = preprocess.Digit(
        image=np.zeros((28, 28), np.float32), box=(0, 0, 30, 40), ink=np.ones((40, 30), np.float32)
    )
    found = recognize._line_results(blob, reading, whole)
    if reader_sure > classifier_sure:
        assert [(d.digit, d.confidence) for d in found] == [(4, pytest.approx(reader_sure))]
    else:
        assert found is None  # the classifier's 9 stands


@pytest.mark.parametrize("in_box", [False, True])
def test_a_blob_in_one_box_of_a_form_is_one_digit(in_box):
    # The line reader reads a 3 with a piece of its box's wall beside it as "13"; in a form's
    # box, which holds one digit, the classifier's reading of the whole blob stands.
    whole = np.full(10, 0.1 / 9, dtype=np.float32)
    whole[3] = 0.9
    classes = [np.eye(10, dtype=np.float32)[1], np.eye(10, dtype=np.float32)[3]]
    reading = recognize.linereader.LineReading(
        digits=[(1, 0.99, 0, 8), (3, 0.99, 9, 40)], confidence=0.98, classes=classes
    )
    blob = preprocess.Digit(
        image=np.zeros((28, 28), np.float32),
        box=(0, 0, 40, 40),
        ink=np.ones((40, 40), np.float32),
        in_box=in_box,
    )
    found = recognize._line_results(blob, reading, whole)
    if in_box:
        assert found is None
    else:
        assert [d.digit for d in found] == [1, 3]


def test_two_parted_blobs_join_where_they_lay():
    # Two blobs found 4 working px apart at twice the original scale, the second lower by 2.
    first = preprocess.Digit(
        image=np.zeros((28, 28), np.float32),
        box=(10, 20, 5, 10),
        ink=np.ones((20, 10), np.float32),
        scale=2.0,
    )
    second = preprocess.Digit(
        image=np.zeros((28, 28), np.float32),
        box=(17, 21, 4, 10),
        ink=np.full((20, 8), 0.5, np.float32),
        scale=2.0,
    )
    both = segment.joined(first, second)
    assert both.box == (10, 20, 11, 11)
    assert both.ink.shape == (22, 22)  # rows 40..62 and columns 20..42 in working pixels
    assert both.ink[:20, :10].min() == 1.0 and both.ink[2:, 14:].min() == 0.5
    assert both.ink[:, 10:14].max() == 0.0 and both.ink[:2, 14:].max() == 0.0


@pytest.mark.parametrize(
    ("gap", "sure", "in_box", "parted"),
    [(1, 0.5, False, True), (1, 0.99, False, False), (6, 0.5, False, False), (1, 0.5, True, False)],
)
def test_blobs_nearly_touching_and_read_unsure_may_be_one_string(gap, sure, in_box, parted):
    # Blobs in the boxes of a form's comb field are one digit each, however close.
    blobs = [
        preprocess.Digit(
            np.zeros((28, 28), np.float32), (x, 0, 20, 30), ink=np.ones((30, 20)), in_box=in_box
        )
        for x in (0, 20 + gap)
    ]
    whole = np.array([[sure] + [(1 - sure) / 9] * 9] * 2)
    readings = [[digit(0, 0)], [digit(0, 20 + gap)]]
    # JOIN_GAP of the 30 px height is 3 px.
    assert recognize._may_be_parted(blobs, whole, readings, 0) == parted
