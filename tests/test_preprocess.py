"""Tests for digitrec.preprocess: every step on synthetic images, and refusal of bad input."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from digitrec import preprocess
from digitrec.preprocess import Digit, ImageError
from digitrec.synth import draw_digit


def _page(digits: list[int], seed: int = 0, height: int = 120) -> np.ndarray:
    """Dark digits in a row on white paper, (H, W) float gray."""
    rng = np.random.default_rng(seed)
    pieces = []
    for digit in digits:
        image = cv2.resize(draw_digit(digit, rng), (height, height), interpolation=cv2.INTER_CUBIC)
        columns = np.flatnonzero(image.max(axis=0) > 0.1)
        pieces.append(image[:, columns[0] : columns[-1] + 1])
        pieces.append(np.zeros((height, height // 3), dtype=np.float32))
    ink = np.hstack([np.zeros((height, height // 2), np.float32), *pieces])
    ink = np.pad(ink, ((height // 3, height // 3), (0, 0)))
    return np.clip(0.95 - 0.85 * ink, 0.0, 1.0).astype(np.float32)


def _encode(image: Image.Image, file_format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, file_format, **options)
    return buffer.getvalue()


def _gray_image(gray: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(gray * 255 + 0.5, 0, 255).astype(np.uint8))


def _ink_mask(gray: np.ndarray) -> np.ndarray:
    return preprocess.to_ink(gray) > 0.5


# --- decode ------------------------------------------------------------------------------------


PAGE = _page([3])
RGB = Image.fromarray(np.stack([np.clip(PAGE * 255 + 0.5, 0, 255).astype(np.uint8)] * 3, -1))


def _formats() -> dict[str, bytes]:
    gray16 = Image.fromarray(np.clip(PAGE * 65535 + 0.5, 0, 65535).astype(np.uint16))
    gray_alpha = np.zeros((*PAGE.shape, 2), np.uint8)
    gray_alpha[:, :, 1] = np.clip((1 - PAGE) * 255, 0, 255).astype(np.uint8)
    return {
        "png8": _encode(RGB.convert("L"), "PNG"),
        "png16": _encode(gray16, "PNG"),
        "palette": _encode(RGB.quantize(colors=16), "PNG"),
        "gray_alpha": _encode(Image.fromarray(gray_alpha, "LA"), "PNG"),
        "jpeg": _encode(RGB, "JPEG", quality=90),
        "cmyk_jpeg": _encode(RGB.convert("CMYK"), "JPEG", quality=90),
        "gif": _encode(RGB.convert("P", palette=Image.Palette.ADAPTIVE, colors=32), "GIF"),
        "bmp": _encode(RGB, "BMP"),
        "tiff": _encode(RGB, "TIFF"),
        "webp": _encode(RGB, "WEBP", quality=90),
    }


@pytest.mark.parametrize("name", list(_formats()))
def test_decode_every_format_gives_the_page(name: str) -> None:
    gray = preprocess.decode(_formats()[name])
    assert gray.shape == PAGE.shape and gray.dtype == np.float32
    assert 0.0 <= gray.min() and gray.max() <= 1.0
    # Paper stays light and ink dark, whatever the encoding (lossy ones within a tolerance).
    assert np.mean(np.abs(gray - PAGE)) < 0.03, name
    assert (_ink_mask(gray) == _ink_mask(PAGE)).mean() > 0.98


def test_decode_16_bit_uses_the_full_range() -> None:
    values = np.full((10, 10), 65535, np.uint16)
    values[:, :5] = 32768
    gray = preprocess.decode(_encode(Image.fromarray(values), "PNG"))
    np.testing.assert_allclose(gray[0, 0], 0.5, atol=1e-3)
    np.testing.assert_allclose(gray[0, 9], 1.0, atol=1e-6)


def test_decode_alpha_only_ink_becomes_dark_on_white() -> None:
    # A transparent canvas: RGB zeros everywhere, the stroke only in alpha.
    rgba = np.zeros((*PAGE.shape, 4), np.uint8)
    rgba[:, :, 3] = np.clip((0.95 - PAGE) / 0.85 * 255, 0, 255).astype(np.uint8)
    gray = preprocess.decode(_encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    assert np.median(gray) > 0.95  # the transparent background is white paper
    assert (_ink_mask(gray) == _ink_mask(PAGE)).mean() > 0.98


def test_decode_white_ink_with_alpha_is_composited_onto_black() -> None:
    rgba = np.zeros((*PAGE.shape, 4), np.uint8)
    rgba[:, :, :3] = 255
    rgba[:, :, 3] = np.clip((0.95 - PAGE) / 0.85 * 255, 0, 255).astype(np.uint8)
    gray = preprocess.decode(_encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    assert np.median(gray) < 0.05
    assert (_ink_mask(gray) == _ink_mask(PAGE)).mean() > 0.98


def test_decode_applies_exif_orientation() -> None:
    upright = np.zeros((40, 60), np.uint8)
    upright[:10, :] = 255  # a bright band along the top edge
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)  # what a phone writes
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    gray = preprocess.decode(_encode(stored, "JPEG", quality=95, exif=exif.tobytes()))
    assert gray.shape == (40, 60)
    assert gray[:8].mean() > 0.9 and gray[12:].mean() < 0.1


def test_decode_gif_reads_the_first_frame() -> None:
    first = Image.fromarray(np.full((20, 20), 255, np.uint8)).convert("P")
    second = Image.fromarray(np.zeros((20, 20), np.uint8)).convert("P")
    data = _encode(first, "GIF", save_all=True, append_images=[second])
    assert preprocess.decode(data).min() > 0.9


# --- bad input ---------------------------------------------------------------------------------


def _png_claiming(width: int, height: int) -> bytes:
    """A valid 1x1 PNG whose IHDR is patched to claim another size, with a correct CRC."""
    data = bytearray(_encode(Image.new("L", (1, 1)), "PNG"))
    # Signature (8) + length (4) + b"IHDR" (4), then width and height, then 5 bytes, then CRC.
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def _assert_one_line(error: pytest.ExceptionInfo[ImageError]) -> None:
    message = str(error.value)
    assert message and "\n" not in message


def test_decode_refuses_a_header_claiming_too_many_pixels() -> None:
    with pytest.raises(ImageError, match="too large") as error:
        preprocess.decode(_png_claiming(40_000, 40_000))
    _assert_one_line(error)


def test_decode_refuses_by_our_pixel_limit_below_pillows() -> None:
    # 8000 x 8000 = 64 megapixels: above MAX_PIXELS, below Pillow's own warning threshold.
    with pytest.raises(ImageError, match="8000x8000 pixels") as error:
        preprocess.decode(_png_claiming(8000, 8000))
    _assert_one_line(error)


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "empty"),
        (b"hello, this is a text file named digit.png\n", "not an image"),
        (_encode(RGB, "PNG")[:200], "corrupt or truncated"),
        (_encode(RGB, "JPEG")[:300], "corrupt or truncated"),
    ],
    ids=["empty", "text", "truncated-png", "truncated-jpeg"],
)
def test_decode_refuses_bad_bytes(data: bytes, reason: str) -> None:
    with pytest.raises(ImageError, match=reason) as error:
        preprocess.decode(data)
    _assert_one_line(error)


def test_read_bytes_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "digit.png"
    path.write_bytes(b"abc")
    assert preprocess.read_bytes(path) == b"abc"
    assert preprocess.read_bytes(str(path)) == b"abc"


def test_read_bytes_refuses_bad_paths(tmp_path: Path) -> None:
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    loop = tmp_path / "loop.png"
    loop.symlink_to(loop)
    large = tmp_path / "large.png"
    with open(large, "wb") as file:
        file.truncate(preprocess.MAX_FILE_BYTES + 1)  # sparse: no real disk used
    cases = {
        tmp_path / "missing.png": "not found",
        tmp_path: "directory",
        empty: "empty",
        loop: "symbolic link loop",
        large: "too large",
    }
    for path, reason in cases.items():
        with pytest.raises(ImageError, match=reason) as error:
            preprocess.read_bytes(path)
        _assert_one_line(error)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read any file")
def test_read_bytes_refuses_an_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "secret.png"
    path.write_bytes(b"abc")
    path.chmod(0)
    with pytest.raises(ImageError, match="permission denied"):
        preprocess.read_bytes(path)


# --- to_ink ------------------------------------------------------------------------------------


def test_to_ink_is_the_same_for_both_polarities() -> None:
    dark_on_light = preprocess.to_ink(PAGE)
    light_on_dark = preprocess.to_ink(1.0 - PAGE)
    assert dark_on_light.dtype == np.float32 and dark_on_light.shape == PAGE.shape
    assert 0.0 <= dark_on_light.min() and dark_on_light.max() <= 1.0
    assert np.abs(dark_on_light - light_on_dark).mean() < 0.01
    # The strokes are the ink, the paper is zero.
    assert (dark_on_light > 0.5).mean() == pytest.approx((PAGE < 0.5).mean(), abs=0.01)
    assert np.median(dark_on_light) == 0.0


def test_to_ink_keeps_anti_aliased_grey_levels() -> None:
    ink = preprocess.to_ink(PAGE)
    greys = ((ink > 0.1) & (ink < 0.9)).sum()
    assert greys > 0.1 * (ink > 0.1).sum()


def test_to_ink_removes_a_light_gradient_and_a_shadow() -> None:
    rows, columns = np.mgrid[0 : PAGE.shape[0], 0 : PAGE.shape[1]]
    light = 0.5 + 0.5 * columns / PAGE.shape[1]
    light = light * np.where(rows > PAGE.shape[0] * 0.6, 0.7, 1.0)
    noisy = PAGE * light + np.random.default_rng(0).normal(0, 0.02, PAGE.shape)
    ink = preprocess.to_ink(np.clip(noisy, 0, 1).astype(np.float32))
    reference = preprocess.to_ink(PAGE) > 0.5
    assert ((ink > 0.5) == reference).mean() > 0.97


# --- find_digit_boxes --------------------------------------------------------------------------


def test_find_digit_boxes_splits_a_row_left_to_right() -> None:
    ink = preprocess.to_ink(_page([2, 0, 2, 4, 1]))
    boxes = preprocess.find_digit_boxes(ink)
    assert len(boxes) == 5
    lefts = [box[0] for box in boxes]
    assert lefts == sorted(lefts)
    # Boxes do not overlap and each is as tall as a digit: 120 px * 20/28 plus the pen's width.
    for (x, _, width, _), (next_x, _, _, _) in zip(boxes, boxes[1:], strict=False):
        assert x + width <= next_x
    assert all(80 < height < 110 for _, _, _, height in boxes)


def test_find_digit_boxes_keeps_a_broken_digit_whole_and_drops_specks() -> None:
    ink = np.zeros((200, 300), np.float32)
    ink[40:160, 100:108] = 1.0  # the stem of a 5
    ink[150:160, 100:150] = 1.0  # its belly, as a bar
    ink[30:36, 104:170] = 1.0  # its hat, broken off but over the digit
    ink[100:102, 250:252] = 1.0  # a speck of dust
    ink[10:12, 20:23] = 1.0  # and another
    boxes = preprocess.find_digit_boxes(ink)
    assert boxes == [(100, 30, 70, 130)]


def _far_page(faint: float, height: int = 12, gap: int = 2) -> np.ndarray:
    """An ink map of a number seen from afar: a bold 12 px bar-and-bowl digit and, ``gap``
    digits to its right, a thin 1 at ``faint`` ink, under what Otsu's threshold keeps."""
    ink = np.zeros((200, 300), np.float32)
    cv2.circle(ink, (100, 94), height // 3, 1.0, 2)  # a bold 6's bowl
    ink[88 - height // 3 : 94, 96:98] = 1.0  # and its stem
    left = 100 + gap * height
    ink[88 - height // 3 : 88 - height // 3 + height, left] = faint
    return ink


def test_find_digit_boxes_keeps_a_faint_thin_digit_beside_a_bold_one() -> None:
    ink = _far_page(faint=0.25)
    boxes = preprocess.find_digit_boxes(ink)
    # The faint 1 is a digit of its own, as tall as the bold digit, in reading order.
    assert len(boxes) == 2
    bold, thin = boxes
    assert thin[0] == 100 + 2 * 12 and thin[2] == 1 and thin[3] == 12
    # The bold digit's box is the one found without the faint stroke.
    assert [bold] == preprocess.find_digit_boxes(_far_page(faint=0.0))


@pytest.mark.parametrize(
    ("faint", "gap", "why"),
    [
        (preprocess.FAINT_INK * 0.8, 2, "under FAINT_INK: noise"),
        (0.25, 4, "beyond two digit heights of the ink: no digit of its number"),
    ],
)
def test_find_digit_boxes_leaves_out_faint_ink_that_is_no_digit(
    faint: float, gap: int, why: str
) -> None:
    assert len(preprocess.find_digit_boxes(_far_page(faint=faint, gap=gap))) == 1, why


def test_find_digit_boxes_leaves_faint_ink_beside_large_digits_out() -> None:
    # Large digits' faint ink is the trace of a ruling or a shadow, not a far-off digit.
    small = _far_page(faint=0.25)
    large = cv2.resize(small, None, fx=2.0, fy=2.0, interpolation=cv2.INTER_NEAREST)
    (bold,) = preprocess.find_digit_boxes(large)
    assert bold[3] >= preprocess.FAINT_BELOW


def test_find_digit_boxes_keeps_a_faint_digit_whole_where_specks_of_it_pass() -> None:
    ink = _far_page(faint=0.25)
    ink[88:90, 124] = 1.0  # two pixels of the faint 1 as dark as the bold digit
    boxes = preprocess.find_digit_boxes(ink)
    assert len(boxes) == 2 and boxes[1][3] == 12


@pytest.mark.parametrize("kind", ["zeros", "white", "faint-noise", "gradient-jpeg"])
def test_find_digit_boxes_finds_nothing_on_a_blank_page(kind: str) -> None:
    rng = np.random.default_rng(1)
    shape = (300, 400)
    if kind == "zeros":
        gray = np.zeros(shape, np.float32)
    elif kind == "white":
        gray = np.ones(shape, np.float32)
    elif kind == "faint-noise":
        gray = np.clip(0.9 + rng.normal(0, 0.03, shape), 0, 1).astype(np.float32)
    else:
        columns = np.linspace(0.0, 1.0, shape[1])[None, :]
        page = (0.55 + 0.4 * columns) * np.ones(shape) + rng.normal(0, 0.02, shape)
        gray = preprocess.decode(_encode(_gray_image(np.clip(page, 0, 1)), "JPEG", quality=60))
    assert preprocess.find_digit_boxes(preprocess.to_ink(gray)) == []
    data = _encode(_gray_image(gray), "PNG")
    assert preprocess.extract_digits(data) == []


# --- to_mnist ----------------------------------------------------------------------------------


def _centre_of_mass(image: np.ndarray) -> tuple[float, float]:
    moments = cv2.moments(image)
    return moments["m10"] / moments["m00"], moments["m01"] / moments["m00"]


def test_to_mnist_shape_range_and_centre_of_mass() -> None:
    ink = preprocess.to_ink(_page([7]))
    (box,) = preprocess.find_digit_boxes(ink)
    image = preprocess.to_mnist(ink, box)
    assert image.shape == (28, 28) and image.dtype == np.float32
    assert 0.0 <= image.min() and image.max() <= 1.0 and image.max() > 0.9
    centre_x, centre_y = _centre_of_mass(image)
    assert abs(centre_x - 14) < 0.5 and abs(centre_y - 14) < 0.5
    # The digit fills the 20 px box in its longer direction (height for a 7).
    rows = np.flatnonzero(image.max(axis=1) > 0.2)
    assert 18 <= rows[-1] - rows[0] + 1 <= 23


def test_to_mnist_keeps_a_thin_one_narrow() -> None:
    ink = np.zeros((400, 400), np.float32)
    ink[50:350, 198:203] = 1.0  # a 5 px wide, 300 px tall stroke
    image = preprocess.to_mnist(ink, (198, 50, 5, 300))
    columns = np.flatnonzero(image.max(axis=0) > 0.2)
    rows = np.flatnonzero(image.max(axis=1) > 0.2)
    assert 1 <= len(columns) <= 4  # not stretched into a blob
    assert 18 <= len(rows) <= 22
    assert abs(_centre_of_mass(image)[0] - 14) < 0.5


def test_to_mnist_keeps_a_one_that_shrinks_to_two_pixels_wide() -> None:
    # An 18 x 191 px stroke ends up exactly 2 px wide in the 20 px box: it must still show, at
    # the centre (cv2.moments reads a two-column array as points and answered zero).
    ink = np.zeros((300, 300), np.float32)
    ink[50:241, 140:158] = 1.0
    image = preprocess.to_mnist(ink, (140, 50, 18, 191))
    assert image.max() > 0.5
    assert abs(_centre_of_mass(image)[0] - 14) < 0.5
    assert abs(_centre_of_mass(image)[1] - 14) < 0.5


def test_to_mnist_thickens_a_thin_pen_on_a_big_canvas() -> None:
    # A 2 px pen drawing an 800 px tall 0 on a 1000 px canvas.
    canvas = np.zeros((1000, 1000), np.uint8)
    cv2.ellipse(canvas, (500, 500), (250, 400), 0, 0, 360, 255, 2, cv2.LINE_AA)
    ink = canvas.astype(np.float32) / 255
    image = preprocess.to_mnist(ink, preprocess.find_digit_boxes(ink)[0])
    # Down-scaled by 40 the stroke would fade to 0.05; thickened it reads like MNIST.
    assert image.max() > 0.8
    assert 40 < (image > 0.5).sum() < 160
    assert image[14, 14] < 0.1  # the hole of the 0 stays open


def test_to_mnist_reads_a_faint_mark_at_full_contrast() -> None:
    ink = preprocess.to_ink(_page([7]))
    (box,) = preprocess.find_digit_boxes(ink)
    dark = preprocess.to_mnist(ink, box)
    np.testing.assert_allclose(preprocess.to_mnist(0.3 * ink, box), dark, atol=1e-5)


def test_to_mnist_of_an_empty_box_is_black() -> None:
    image = preprocess.to_mnist(np.zeros((50, 50), np.float32), (10, 10, 20, 20))
    assert image.shape == (28, 28) and image.max() == 0.0


# --- extract_digits, save_stages, mnist_like ---------------------------------------------------


def test_extract_digits_finds_a_small_digit_in_a_corner_of_a_big_page() -> None:
    page = np.full((900, 1200), 0.95, np.float32)
    digit = cv2.resize(draw_digit(4, np.random.default_rng(3)), (40, 40))
    page[820:860, 1130:1170] -= 0.85 * digit
    digits = preprocess.extract_digits(_encode(_gray_image(page), "PNG"))
    assert len(digits) == 1
    x, y, width, height = digits[0].box
    assert 1130 <= x and x + width <= 1170 and 820 <= y and y + height <= 860


def test_extract_digits_reports_boxes_in_original_pixels_of_a_large_photo() -> None:
    page = cv2.resize(_page([1, 8]), None, fx=8, fy=8, interpolation=cv2.INTER_LINEAR)
    small = preprocess.find_digit_boxes(preprocess.to_ink(_page([1, 8])))
    digits = preprocess.extract_digits(_encode(_gray_image(page), "PNG"))
    assert [isinstance(digit, Digit) for digit in digits] == [True, True]
    for digit, (x, y, width, height) in zip(digits, small, strict=True):
        assert np.allclose(digit.box, (8 * x, 8 * y, 8 * width, 8 * height), atol=16)


def test_extract_digits_fills_and_saves_stages(tmp_path: Path) -> None:
    stages: dict[str, np.ndarray] = {}
    digits = preprocess.extract_digits(_encode(_gray_image(_page([5, 6])), "PNG"), stages)
    assert len(digits) == 2
    assert list(stages) == ["1-decoded", "2-ink", "3-boxes", "4-digit-0", "4-digit-1"]
    assert stages["3-boxes"].dtype == np.uint8 and stages["3-boxes"].shape[2] == 3
    paths = preprocess.save_stages(stages, tmp_path / "stages")
    assert [path.name for path in paths] == [f"{name}.png" for name in stages]
    assert Image.open(paths[3]).size == (28, 28)


def test_mnist_like_scales_uint8_and_keeps_layout() -> None:
    image = np.zeros((28, 28), np.uint8)
    image[5:20, 13:15] = 255
    image[3, 4] = 128
    result = preprocess.mnist_like(image)
    assert result.dtype == np.float32 and result.shape == (28, 28)
    assert result[10, 13] == 1.0 and result[3, 4] == pytest.approx(128 / 255)
    np.testing.assert_array_equal(preprocess.mnist_like(result), result)
    with pytest.raises(ValueError):
        preprocess.mnist_like(np.zeros((20, 20)))


def test_preprocess_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = "import sys, digitrec.preprocess, digitrec.synth; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr


@pytest.mark.parametrize("glow", [0.03, 0.06])
def test_a_small_far_away_digit_beside_a_patch_of_light_is_dark_ink(glow: float) -> None:
    # A 10 px digit, dark, on a page lit a little brighter on one side: the wide, faint
    # departure of the light must not outvote the small, strong one of the ink.
    rows, columns = np.mgrid[0:320, 0:400].astype(np.float32)
    light = np.exp(-((columns - 90) ** 2 + (rows - 80) ** 2) / (2 * 50.0**2))
    gray = (0.85 + glow * light).astype(np.float32)
    cv2.line(gray, (260, 200), (264, 210), 0.3, 1)
    cv2.line(gray, (256, 200), (264, 200), 0.3, 1)
    ink = preprocess.to_ink(gray)
    assert ink[198:212, 254:266].max() > 0.9
    assert ink[:150, :200].max() < 0.3  # the light is no ink


@pytest.mark.parametrize("size", [1, 2, 7, 20_000, 20_001])
def test_the_noise_floors_median_is_numpys(size):
    # Half the values repeat, as a page's flat paper does, and both middles of an even count.
    rng = np.random.default_rng(size)
    values = rng.normal(0.02, 0.01, size).astype(np.float32)
    values[: size // 2] = np.round(values[: size // 2], 3)
    expected = float(np.median(values))
    assert preprocess._median(values.copy()) == pytest.approx(expected, abs=1e-9)


def test_the_noise_floor_leaves_the_difference_as_it_was():
    difference = np.random.default_rng(0).normal(0.0, 0.05, (90, 120)).astype(np.float32)
    before = difference.copy()
    preprocess._noise_floor(difference)
    assert np.array_equal(difference, before)
