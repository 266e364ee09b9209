"""Tests for digitrec.synth: drawn digits, and every kind of rendered file read back."""

from __future__ import annotations

import io
import re

import cv2
import numpy as np
import pytest
from PIL import Image

from digitrec import preprocess, synth

# Seeds per kind: enough to cover each kind's random choices (PNG or JPEG, EXIF turn or not,
# format, blank style) while keeping the suite fast.
SEEDS = range(6)
# Kinds whose digits stand apart on a plain background: the extractor finds one box per digit.
# The page kinds (touching digits, rules, boxes, marks, separators) are the benchmark's to score.
PLAIN_KINDS = synth.PLAIN_KINDS
PAGE_KINDS = synth.PAGE_KINDS
# What each page kind's label looks like.
LABEL_FORMS = synth.LABEL_PATTERNS


def test_draw_digit_shape_range_and_determinism() -> None:
    for digit in range(10):
        image = synth.draw_digit(digit, np.random.default_rng(digit))
        assert image.shape == (28, 28) and image.dtype == np.float32
        assert 0.0 <= image.min() and image.max() <= 1.0 and image.max() > 0.9
        # White on black, with the ink a minority as in MNIST (about 10-25% of the pixels).
        assert 0.05 < (image > 0.5).mean() < 0.35
        again = synth.draw_digit(digit, np.random.default_rng(digit))
        np.testing.assert_array_equal(image, again)
    assert synth.draw_digit(3, np.random.default_rng(0), size=56).shape == (56, 56)
    with pytest.raises(ValueError):
        synth.draw_digit(10, np.random.default_rng(0))


def test_draw_digit_is_varied_but_each_digit_is_closest_to_its_own_kind() -> None:
    # Same digit, different seeds: not identical. Averages per digit: each drawing correlates
    # best with its own digit's average, a cheap stand-in for "a human would read it".
    rng = np.random.default_rng(0)
    drawings = {digit: [synth.draw_digit(digit, rng) for _ in range(20)] for digit in range(10)}
    means = {digit: np.mean(images, axis=0).ravel() for digit, images in drawings.items()}
    assert not np.array_equal(drawings[5][0], drawings[5][1])
    correct = 0
    for digit, images in drawings.items():
        for image in images:
            scores = {
                other: np.corrcoef(image.ravel(), mean)[0, 1] for other, mean in means.items()
            }
            correct += max(scores, key=scores.get) == digit
    assert correct >= 0.85 * 200


@pytest.mark.parametrize("kind", PLAIN_KINDS)
def test_every_kind_renders_a_file_whose_digits_are_found(kind: str) -> None:
    for seed in SEEDS:
        rng = np.random.default_rng(seed)
        data, extension, label = synth.make_example(kind, rng)
        assert isinstance(data, bytes) and extension.startswith(".")
        assert label.isdigit() or (kind == "blank" and label == "")
        gray = preprocess.decode(data)
        assert gray.ndim == 2 and gray.size > 0
        digits = preprocess.extract_digits(data)
        assert len(digits) == len(label), (kind, seed, label, [digit.box for digit in digits])


def test_render_is_deterministic_and_labels_rows() -> None:
    digits = [synth.draw_digit(digit, np.random.default_rng(digit)) for digit in (2, 0, 2, 4, 9)]
    first = synth.render("row", digits, np.random.default_rng(7), labels=[2, 0, 2, 4, 9])
    second = synth.render("row", digits, np.random.default_rng(7), labels=[2, 0, 2, 4, 9])
    assert first == second
    data, extension, label = first
    assert 2 <= len(label) <= 5 and "20249".startswith(label)
    assert len(preprocess.extract_digits(data)) == len(label)
    # Without labels the label still says how many digits there are.
    _, _, unknown = synth.render("paper", digits, np.random.default_rng(7))
    assert unknown == "?"


@pytest.mark.parametrize("file_format", synth.FORMATS)
def test_encode_format_reads_back_the_digit(file_format: str) -> None:
    rng = np.random.default_rng(0)
    digit = synth.draw_digit(8, rng)
    data, extension = synth.encode_format(digit, file_format, rng)
    (found,) = preprocess.extract_digits(data)
    # The digit read back from the file is the one drawn, normalised the same way.
    ink = np.pad(digit, 10)
    reference = preprocess.to_mnist(ink, preprocess.find_digit_boxes(ink)[0])
    assert np.corrcoef(found.image.ravel(), reference.ravel())[0, 1] > 0.8, extension


@pytest.mark.parametrize("kind", ["paper", "photo", "chalkboard", "transparent", "rotated"])
def test_single_digit_kinds_read_back_the_digit(kind: str) -> None:
    rng = np.random.default_rng(1)
    digit = synth.draw_digit(2, rng)
    ink = np.pad(digit, 10)
    reference = preprocess.to_mnist(ink, preprocess.find_digit_boxes(ink)[0])
    for _ in range(3):
        data, _, label = synth.render(kind, [digit], rng, labels=[2])
        (found,) = preprocess.extract_digits(data)
        # An EXIF turn ignored, or the wrong polarity, would drop this well below 0.5.
        limit = 0.5 if kind == "rotated" else 0.7
        assert np.corrcoef(found.image.ravel(), reference.ravel())[0, 1] > limit, kind


def test_render_accepts_uint8_mnist_like_digits() -> None:
    digit = np.zeros((28, 28), np.uint8)
    cv2.line(digit, (14, 4), (13, 23), 255, 2)  # a 1
    data, _, label = synth.render("paper", [digit], np.random.default_rng(0), labels=[1])
    assert label == "1" and len(preprocess.extract_digits(data)) == 1


def test_render_refuses_unknown_kind_and_missing_digits() -> None:
    with pytest.raises(ValueError):
        synth.render("poster", [np.zeros((28, 28))], np.random.default_rng(0))
    with pytest.raises(ValueError):
        synth.render("paper", [], np.random.default_rng(0))


def test_page_kinds_come_after_the_plain_ones_and_use_five_digits_like_them() -> None:
    # The real-world set draws digits for each file in KINDS order: the plain kinds' files stay
    # the same only if they still come first and still draw five digits each.
    assert synth.KINDS[: len(PLAIN_KINDS)] == PLAIN_KINDS
    assert set(LABEL_FORMS) == set(PAGE_KINDS)
    assert all(synth.digits_needed(kind) == 5 for kind in PLAIN_KINDS)
    assert synth.digits_needed("multiline") == 12


def test_plain_kinds_draw_the_same_random_numbers_as_before() -> None:
    # Labels and the generator's state after a run through every plain kind, recorded before the
    # page kinds were added: any change in what a plain kind draws shifts them.
    rng = np.random.default_rng(11)
    labels = [synth.make_example(kind, rng)[2] for kind in PLAIN_KINDS]
    assert labels == ["1", "6", "2", "8", "7", "8", "5", "8", "44674", "4", "0", ""]
    assert int(rng.integers(0, 2**30)) == 37973065


def _drawn(labels: list[int]) -> list[np.ndarray]:
    return [
        synth.draw_digit(label, np.random.default_rng(index)) for index, label in enumerate(labels)
    ]


LABELS = [2, 0, 7, 4, 9, 1, 3, 5, 8, 6, 2, 7]


@pytest.mark.parametrize("kind", PAGE_KINDS)
def test_page_kinds_render_a_readable_file_labelled_in_their_form(kind: str) -> None:
    digits = _drawn(LABELS)
    for seed in SEEDS:
        data, extension, label = synth.render(kind, digits, np.random.default_rng(seed), LABELS)
        assert re.fullmatch(LABEL_FORMS[kind], label), (kind, seed, label)
        # The label's digits are the digits given, in order.
        written = "".join(character for character in label if character.isdigit())
        assert written == "".join(str(digit) for digit in LABELS[: len(written)]), (kind, label)
        gray = preprocess.decode(data)
        assert gray.ndim == 2 and min(gray.shape) >= 40 and extension in (".png", ".jpg")
        # Something is drawn on every page, marks that are not digits included.
        assert gray.min() < gray.max() - 0.3, (kind, seed)
        again = synth.render(kind, digits, np.random.default_rng(seed), LABELS)
        assert again == (data, extension, label)


def test_page_kinds_without_labels_still_show_the_form() -> None:
    _, _, label = synth.render("multiline", _drawn([1, 2]), np.random.default_rng(0))
    assert re.fullmatch(r"\?{1,4}(\n\?{1,4}){1,2}", label)
    _, _, label = synth.render("notdigit", [], np.random.default_rng(0))
    assert label == ""


def test_separator_labels_parse_and_every_separator_is_drawn() -> None:
    digits = _drawn(LABELS)
    seen = set()
    for seed in range(30):
        _, _, label = synth.render("separators", digits, np.random.default_rng(seed), LABELS)
        (mark,) = [character for character in label if not character.isdigit()]
        seen.add(mark)
        if mark == ".":
            assert float(label) > 0
        elif mark == ",":
            whole, thousands = label.split(",")
            assert int(whole + thousands) >= 0 and len(thousands) == 3
        elif mark == "-":
            assert int(label) <= 0 and label.startswith("-")
        else:
            first, second = label.split(mark)
            assert first.isdigit() and len(second) == 2 and second.isdigit()
    assert seen == set(synth.SEPARATORS)


def _ink_parts(data: bytes) -> int:
    """Connected pieces of ink, ignoring specks under 5% of the largest."""
    gray = np.round(preprocess.decode(data) * 255).astype(np.uint8)
    _, ink = cv2.threshold(gray, 0, 255, cv2.THRESH_BINARY_INV + cv2.THRESH_OTSU)
    _, _, stats, _ = cv2.connectedComponentsWithStats(ink)
    areas = stats[1:, cv2.CC_STAT_AREA]
    return int((areas > 0.05 * areas.max()).sum())


def test_touching_digits_are_joined_into_one_piece_of_ink() -> None:
    for seed in SEEDS:
        data, _, label = synth.make_example("touching", np.random.default_rng(seed))
        assert len(label) >= 2 and _ink_parts(data) == 1, (seed, label)


def _full_lines(data: bytes, vertical: bool) -> int:
    """Lines across the whole page: rows (or columns) darker than their neighbours 3 px away
    in at least 80% of their length, measured in red, which blue rules and gray lines darken."""
    red = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float32)[:, :, 0]
    red = red.T / 255.0 if vertical else red / 255.0
    above, below = np.roll(red, 3, axis=0), np.roll(red, -3, axis=0)
    darker = (red < above - 0.04) & (red < below - 0.04)
    return int((darker.mean(axis=1) > 0.8)[3:-3].sum())


def test_ruled_and_squared_paper_have_lines_from_edge_to_edge() -> None:
    for seed in SEEDS:
        lined, _, _ = synth.make_example("lined", np.random.default_rng(seed))
        grid, _, _ = synth.make_example("grid", np.random.default_rng(seed))
        plain, _, _ = synth.make_example("paper", np.random.default_rng(seed))
        assert _full_lines(lined, vertical=False) >= 2
        assert _full_lines(grid, vertical=False) >= 1 and _full_lines(grid, vertical=True) >= 1
        assert _full_lines(plain, vertical=False) == 0


def test_lowres_digits_are_small_in_a_low_quality_jpeg() -> None:
    for seed in SEEDS:
        data, extension, label = synth.make_example("lowres", np.random.default_rng(seed))
        gray = preprocess.decode(data)
        rows = np.flatnonzero((gray < np.median(gray) - 0.25).any(axis=1))
        assert extension == ".jpg" and 1 <= len(label) <= 3
        assert 0 < rows[-1] - rows[0] + 1 <= 22 and gray.shape[0] >= 180, (seed, rows)
        # Quality 30 to 60: the luminance table's first step is at least 8 (it is 2 at 95).
        quantization = Image.open(io.BytesIO(data)).quantization[0]
        assert quantization[0] >= 8


def test_labels_round_trip_through_file_names() -> None:
    for label in ["7", "", "3.14", "1,024", "-5", "12/05", "10:30", "12\n34\n5"]:
        name = synth.label_to_file_name(label)
        assert not set(name) & set("/:\n-") and name
        assert synth.label_from_file_name(name) == label
    assert synth.label_to_file_name("12/05") == "12slash05"
    assert synth.label_to_file_name("12\n34") == "12_34"


def test_write_examples_names_each_file_after_its_label(tmp_path) -> None:
    paths = synth.write_examples(str(tmp_path))
    assert len(paths) == len(synth.EXAMPLE_KINDS) and set(PAGE_KINDS) <= set(synth.EXAMPLE_KINDS)
    for path, kind in zip(paths, synth.EXAMPLE_KINDS, strict=True):
        stem = path.rsplit("/", 1)[-1].rsplit(".", 1)[0]
        index, named_kind, label = stem.split("-")
        assert named_kind == kind
        label = synth.label_from_file_name(label)
        assert re.fullmatch(LABEL_FORMS.get(kind, r"\d{1,5}|"), label), (path, label)
