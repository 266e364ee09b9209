"""Tests for digitrec.synth: drawn digits, and every kind of rendered file read back."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from digitrec import preprocess, synth

# Seeds per kind: enough to cover each kind's random choices (PNG or JPEG, EXIF turn or not,
# format, blank style) while keeping the suite fast.
SEEDS = range(6)


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


@pytest.mark.parametrize("kind", synth.KINDS)
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
