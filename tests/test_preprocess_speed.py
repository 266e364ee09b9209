"""The cheap paths of digitrec.preprocess against the full-resolution ones they stand in for.

`extract_page` decodes a large JPEG at a reduction of its DCT, keeps 8-bit pictures as bytes
until the ink map, finds the components on the ink map's bytes and thickens thin pens as bytes.
Each test here reads one drawn page both ways and asks for the same digits, the same boxes (to
a working pixel or two) and nearly the same 28x28 crops.
"""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from digitrec import layout, preprocess
from digitrec.synth import draw_digit

DIGITS = (3, 5, 8)


def _page(width: int, height: int, seed: int = 0) -> tuple[np.ndarray, list[tuple[int, ...]]]:
    """A photo of dark digits on unevenly lit paper with sensor noise, (H, W) float32 in
    [0, 1], and the square (x, y, side, side) each digit was drawn in."""
    rng = np.random.default_rng(seed)
    side, step = min(width // 5, height // 4), width // 4
    ink = np.zeros((height, width), np.float32)
    corners = []
    for index, digit in enumerate(DIGITS):
        x, y = width // 10 + index * step, height // 3
        glyph = cv2.resize(draw_digit(digit, rng, size=64), (side, side))
        np.maximum(ink[y : y + side, x : x + side], glyph, out=ink[y : y + side, x : x + side])
        corners.append((x, y, side, side))
    rows, columns = np.mgrid[0:height, 0:width].astype(np.float32)
    light = 0.9 - 0.2 * ((columns / width - 0.4) ** 2 + (rows / height - 0.6) ** 2)
    noise = rng.normal(0.0, 0.015, (height, width)).astype(np.float32)
    return np.clip(light * (1.0 - 0.8 * ink) + noise, 0.0, 1.0), corners


def _encode(gray: np.ndarray, format: str, orientation: int = 1) -> bytes:
    pixels = np.clip(gray * 255.0 + 0.5, 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    options: dict = {"compress_level": 1} if format == "PNG" else {"quality": 90}
    if orientation != 1:
        exif = Image.Exif()
        exif[0x0112] = orientation
        options["exif"] = exif.tobytes()
    buffer = io.BytesIO()
    image.save(buffer, format, **options)
    return buffer.getvalue()


def _assert_same_page(page: preprocess.Page, reference: preprocess.Page) -> None:
    """Same digits; boxes within two working pixels (plus rounding); crops nearly equal."""
    assert len(page.digits) == len(reference.digits) == len(DIGITS)
    for digit, expected in zip(page.digits, reference.digits, strict=True):
        slack = 2 / min(digit.scale, expected.scale) + 1
        assert np.abs(np.subtract(digit.box, expected.box)).max() <= slack, (digit, expected)
        assert float(np.abs(digit.image - expected.image).mean()) < 0.02


# Quarter turns of the EXIF orientation: the picture is stored turned the other way.
STORED = {1: lambda a: a, 6: lambda a: np.rot90(a, 1), 8: lambda a: np.rot90(a, -1)}


@pytest.mark.parametrize(
    "width, height, orientation",
    [(4000, 3000, 1), (2400, 1800, 1), (2400, 1800, 6), (1800, 2400, 8)],
    ids=["12MP-quarter", "4MP-half", "exif-6", "exif-8"],
)
def test_a_large_jpeg_decoded_in_draft_reads_as_decoded_in_full(
    width: int, height: int, orientation: int
) -> None:
    upright, squares = _page(width, height)
    data = _encode(np.ascontiguousarray(STORED[orientation](upright)), "JPEG", orientation)
    page = preprocess.extract_page(data)
    # The reference: the same JPEG fully decoded, then read from a lossless copy, which takes
    # the full-resolution decode and the area resize to the working size.
    full = preprocess.decode(data)
    assert full.shape == (height, width)
    reference = preprocess.extract_page(_encode(full, "PNG"))
    assert reference.digits[0].scale == pytest.approx(preprocess.WORKING_SIZE / max(full.shape))
    _assert_same_page(page, reference)
    # And each box lies in the square its digit was drawn in on the upright page.
    for digit, (x, y, side, _) in zip(page.digits, squares, strict=True):
        left, top, box_width, box_height = digit.box
        slack = 0.02 * side
        assert x - slack <= left and left + box_width <= x + side + slack, (digit.box, x)
        assert y - slack <= top and top + box_height <= y + side + slack, (digit.box, y)


def test_a_12_megapixel_jpeg_is_worked_on_at_its_quarter_decode() -> None:
    gray, _ = _page(4000, 3000)
    data = _encode(gray, "JPEG")
    stages: dict = {}
    page = preprocess.extract_page(data, stages)
    assert stages["1-decoded"].shape == (750, 1000)
    assert all(digit.scale == 0.25 for digit in page.digits)


@pytest.mark.parametrize(
    "size, expected",
    [
        ((4000, 3000), (1000, 750)),
        ((4031, 3023), (1007, 755)),
        ((2400, 1800), (1200, 900)),
        ((8000, 6000), (1000, 750)),
        ((1100, 800), (1100, 800)),
    ],
)
def test_draft_sizes(size: tuple[int, int], expected: tuple[int, int]) -> None:
    assert preprocess._draft_size(size, preprocess.WORKING_SIZE) == expected
    assert preprocess._draft_size(size, None) == size


def test_an_odd_sized_jpeg_needs_no_resize_after_its_draft() -> None:
    gray, _ = _page(4031, 3023)
    stages: dict = {}
    preprocess.extract_page(_encode(gray, "JPEG"), stages)
    # Pillow rounds the quarter up: 4031 / 4 -> 1008.
    assert stages["1-decoded"].shape == (756, 1008)


@pytest.mark.parametrize("format", ["PNG", "JPEG"])
def test_the_byte_paths_give_what_the_public_float_steps_give(format: str) -> None:
    # Under the working size nothing is reduced: extract_page's bytes (gray, ink) must find
    # the boxes and crops of decode -> to_ink -> remove_structure -> find_digit_boxes, but for
    # float rounding (the bytes are blurred straight into floats).
    gray, _ = _page(960, 720)
    data = _encode(gray, format)
    page = preprocess.extract_page(data)
    clean, _ = layout.remove_structure(preprocess.to_ink(preprocess.decode(data)))
    boxes = preprocess.find_digit_boxes(clean)
    assert [digit.box for digit in page.digits] == boxes and len(boxes) == len(DIGITS)
    for digit, box in zip(page.digits, boxes, strict=True):
        np.testing.assert_allclose(digit.image, preprocess.to_mnist(clean, box), atol=1e-4)


def test_a_large_png_reads_as_its_float_resize() -> None:
    # Shrunk as bytes to the working size, against the float resize of the full decode.
    gray, _ = _page(2400, 1800)
    data = _encode(gray, "PNG")
    page = preprocess.extract_page(data)
    full = preprocess.decode(data)
    working = cv2.resize(full, (1024, 768), interpolation=cv2.INTER_AREA)
    clean, _ = layout.remove_structure(preprocess.to_ink(working))
    boxes = preprocess.find_digit_boxes(clean)
    assert len(page.digits) == len(boxes) == len(DIGITS)
    for digit, box in zip(page.digits, boxes, strict=True):
        scaled = preprocess._scale_box(box, digit.scale, 2400, 1800)
        assert np.abs(np.subtract(digit.box, scaled)).max() <= 2 / digit.scale + 1
        image = preprocess.to_mnist(clean, box)
        assert float(np.abs(digit.image - image).mean()) < 0.01


def _float_thicken(crop: np.ndarray, grow: int) -> np.ndarray:
    """The reference: the float max filter by a disk, on the crop padded by ``grow``."""
    side = 2 * grow + 1
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (side, side))
    return cv2.dilate(np.pad(crop, grow), kernel)


def test_thin_pen_thickening_in_bytes_matches_the_float_max_filter(monkeypatch) -> None:
    # A 2 px pen on a 400 px digit: to_mnist grows it by a disk of radius about 20.
    ink = np.zeros((440, 360), np.float32)
    canvas = np.zeros(ink.shape, np.uint8)
    points = np.array([[60, 40], [300, 40], [150, 400]], np.int32).reshape(-1, 1, 2)
    cv2.polylines(canvas, [points], False, 255, 2, cv2.LINE_AA)
    ink[:] = canvas / 255.0
    box = (50, 30, 260, 380)
    crop = ink[30:410, 50:310]
    for grow in (1, 7, 20):
        thick = preprocess._thicken(crop, grow)
        assert thick.shape == (crop.shape[0] + 2 * grow, crop.shape[1] + 2 * grow)
        assert float(np.abs(thick - _float_thicken(crop, grow)).max()) <= 0.5 / 255 + 1e-6
    image = preprocess.to_mnist(ink, box)
    monkeypatch.setattr(preprocess, "_thicken", _float_thicken)
    reference = preprocess.to_mnist(ink, box)
    assert float(reference.max()) > 0.9
    assert float(np.abs(image - reference).max()) < 0.01


def test_decode_still_returns_the_whole_upright_picture() -> None:
    gray, _ = _page(2400, 1800)
    decoded = preprocess.decode(_encode(np.rot90(gray, 1).copy(), "JPEG", orientation=6))
    assert decoded.shape == (1800, 2400) and decoded.dtype == np.float32
    assert 0.0 <= float(decoded.min()) and float(decoded.max()) <= 1.0


def _drawing(number: str, pen: int, gap: int = 0) -> bytes:
    """A drawing as the page's canvas sends it, 607x741 px: a 7, or a 7 and a 1 whose ink is
    ``gap`` px apart, 340 px tall in dark strokes ``pen`` px wide on white."""
    canvas = np.full((741, 607), 255, np.uint8)
    top, bottom, left, right = 200, 540, 150, 370
    strokes = [[(left, top), (right, top), (left + 70, bottom)]]
    if number == "71":
        one = right + gap + pen
        strokes.append([(one, top), (one, bottom)])
    for points in strokes:
        polyline = np.array(points, np.int32).reshape(-1, 1, 2)
        cv2.polylines(canvas, [polyline], False, 0, pen, cv2.LINE_AA)
    return _encode(canvas / 255.0, "PNG")


def test_one_thick_digit_is_read_at_half_scale_as_at_full_scale(monkeypatch) -> None:
    data = _drawing("7", pen=8)
    page = preprocess.extract_page(data)
    assert [digit.scale for digit in page.digits] == [0.5]
    monkeypatch.setattr(preprocess, "MIN_HALF_SIDE", 10**6)
    reference = preprocess.extract_page(data)
    assert [digit.scale for digit in reference.digits] == [1.0]
    (digit,), (expected,) = page.digits, reference.digits
    assert np.abs(np.subtract(digit.box, expected.box)).max() <= 3
    assert float(np.abs(digit.image - expected.image).mean()) < 0.02


@pytest.mark.parametrize("number, pen", [("71", 8), ("7", 2)], ids=["two-digits", "thin-pen"])
def test_rows_and_thin_pens_are_read_at_full_scale(number: str, pen: int) -> None:
    # The 7 and the 1, 3 px apart, would touch at half the scale; a 2 px pen would fade.
    page = preprocess.extract_page(_drawing(number, pen=pen, gap=3))
    assert len(page.digits) == len(number)
    assert all(digit.scale == 1.0 for digit in page.digits)


def test_a_thin_sliver_along_the_border_is_not_a_digit():
    # A scan's edge leaves a line a pixel wide along the border: short, it is still no digit.
    page = np.full((300, 300), 0.92, np.float32)
    page[140:146, 0] = 0.1
    assert preprocess.extract_digits(_encode(page, "PNG")) == []
    page[100:160, 140:143] = 0.1  # a 1 of the same stroke, away from the border, is one
    assert len(preprocess.extract_digits(_encode(page, "PNG"))) == 1
