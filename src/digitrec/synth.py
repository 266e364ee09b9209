"""Realistic synthetic digit images: drawn digits and the files users would hand over.

``draw_digit`` draws a handwriting-like digit from stroke templates (jittered, slanted, with a
random pen width), so the project can make example images without MNIST. ``render`` puts digit
images onto paper, chalkboards, photos with shadows, transparent canvases and every file format
the decoder must read, and onto pages as people write them (touching digits, ruled and squared
paper, form boxes, circles and underlines, separators, several lines, far-off photos, and marks
that are not digits, all drawn by code), and returns the file bytes with the label a human
would read. All randomness comes from the ``numpy.random.Generator`` passed in.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import cv2
import numpy as np
from PIL import Image

# One digit or one row of digits standing apart on a plain background.
PLAIN_KINDS = (
    "paper",
    "chalkboard",
    "photo",
    "canvas",
    "offcenter",
    "small",
    "huge",
    "rotated",
    "row",
    "transparent",
    "formats",
    "blank",
)
# Pages as people write them: joined digits, ruled and squared paper, forms, marks around the
# digits, separators, several lines, a far-off photo, and marks that are not digits.
PAGE_KINDS = (
    "touching",
    "lined",
    "grid",
    "boxed",
    "circled",
    "underlined",
    "separators",
    "multiline",
    "lowres",
    "notdigit",
)
KINDS = PLAIN_KINDS + PAGE_KINDS
# What each page kind's label looks like (a regular expression; notdigit: nothing to read).
LABEL_PATTERNS = {
    "touching": r"\d{2,4}",
    "lined": r"\d{1,3}",
    "grid": r"\d{1,3}",
    "boxed": r"\d|\d{3,6}",
    "circled": r"\d{1,2}",
    "underlined": r"\d{1,3}",
    "separators": r"\d{1,2}\.\d{1,2}|\d{1,3},\d{3}|-\d{1,3}|\d{1,2}/\d{2}|\d{1,2}:\d{2}",
    "multiline": r"\d{1,4}(\n\d{1,4}){1,2}",
    "lowres": r"\d{1,3}",
    "notdigit": r"",
}
# Kinds whose page holds only marks that are not digits: the label is "", and a reader is right
# when it flags every mark it finds as not a digit (or finds none).
NOT_DIGIT_KINDS = frozenset({"notdigit"})
# The separators a "separators" label may hold: decimal point, thousands comma, leading minus,
# date slash, time colon.
SEPARATORS = ".,-/:"
FORMATS = (
    "png8",
    "png16",
    "palette",
    "gray_alpha",
    "jpeg",
    "cmyk_jpeg",
    "gif",
    "bmp",
    "tiff",
    "webp",
)

# Drawing happens at this many times the output size, then is area-averaged down: anti-aliasing.
SUPERSAMPLE = 4
# The digit's height in a 28 px image, as in MNIST's 20x20 box.
DIGIT_FRACTION = 20 / 28

Point = tuple[float, float]
Box = tuple[int, int, int, int]  # left, top, right, bottom (exclusive), in pixels

# How many digit images a kind can use; the rest read at most five.
_DIGITS_USED = {"boxed": 6, "separators": 6, "multiline": 12}
# A label written into a file name: "/" and a line break cannot be in one, Windows refuses ":",
# and "-" already separates the name's fields, so those are spelled out.
_FILE_NAME_SPELLING = {"\n": "_", "-": "minus", "/": "slash", ":": "colon"}


def digits_needed(kind: str) -> int:
    """How many digit images ``render`` uses at most for ``kind`` (fewer are cycled)."""
    return _DIGITS_USED.get(kind, 5)


def label_to_file_name(label: str) -> str:
    """A label as written in a file name: "none" when empty; lines joined by "_"; "-", "/" and
    ":" spelled "minus", "slash", "colon" (so "12/05" is "12slash05", "-5" is "minus5")."""
    if not label:
        return "none"
    return "".join(_FILE_NAME_SPELLING.get(character, character) for character in label)


def label_from_file_name(text: str) -> str:
    """The label that ``label_to_file_name`` wrote as ``text``."""
    if text == "none":
        return ""
    for character, spelling in _FILE_NAME_SPELLING.items():
        text = text.replace(spelling, character)
    return text


def draw_digit(digit: int, rng: np.random.Generator, size: int = 28) -> np.ndarray:
    """Draw a handwriting-like digit, white on black, as a (size, size) float32 image in [0, 1]."""
    if digit not in range(10):
        raise ValueError(f"digit must be 0..9, got {digit}")
    strokes = [np.asarray(stroke, dtype=np.float64) for stroke in _templates(digit, rng)]
    # Hand jitter: move every point a little.
    strokes = [stroke + rng.normal(0.0, 0.02, stroke.shape) for stroke in strokes]
    # Writer's slant, narrowness and a small tilt, about the centre of the unit box.
    slant = rng.uniform(-0.3, 0.3)
    narrow = rng.uniform(0.65, 1.05)
    angle = np.deg2rad(rng.uniform(-8.0, 8.0))
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    transform = rotation @ np.array([[narrow, -slant], [0.0, 1.0]])
    strokes = [(stroke - 0.5) @ transform.T for stroke in strokes]

    # Fit the strokes' bounding box into the digit box, keeping the aspect ratio.
    points = np.concatenate(strokes)
    low, high = points.min(axis=0), points.max(axis=0)
    extent = max(float((high - low).max()), 1e-6)
    canvas = size * SUPERSAMPLE
    box = DIGIT_FRACTION * canvas
    centre = (low + high) / 2
    picture = np.zeros((canvas, canvas), dtype=np.uint8)
    pen = rng.uniform(1.8, 3.2) / 28 * size * SUPERSAMPLE
    for stroke in strokes:
        pixels = (stroke - centre) / extent * box + canvas / 2
        # cv2 draws on an integer grid; 4 fractional bits keep the curves smooth.
        fixed = np.round(pixels * 16).astype(np.int32).reshape(-1, 1, 2)
        cv2.polylines(picture, [fixed], False, 255, max(1, round(pen)), cv2.LINE_AA, shift=4)
    small = cv2.resize(picture, (size, size), interpolation=cv2.INTER_AREA)
    return (small.astype(np.float32) / 255.0).clip(0.0, 1.0)


def render(
    kind: str,
    digits: Sequence[np.ndarray],
    rng: np.random.Generator,
    labels: Sequence[int] | None = None,
) -> tuple[bytes, str, str]:
    """Render digit images into one file the way a user would hand it over.

    ``digits`` are white-on-black images (28x28 or larger, uint8 or float). Single-digit kinds
    use ``digits[0]``; kinds of several digits use the first ones (up to ``digits_needed(kind)``,
    cycling if fewer are given); "blank" and "notdigit" use none.
    Returns (file bytes, extension such as ".png", expected label). The label joins ``labels``
    of the digits used; without ``labels`` each digit reads "?", so the length is still the count.
    A "separators" label keeps its separator ("3.14", "1,024", "-5", "12/05", "10:30"), a
    "multiline" label joins its lines with "\n", and "blank" and "notdigit" labels are "".
    """
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
    if kind == "blank":
        return _render_blank(rng)
    if kind == "notdigit":
        return _render_notdigit(rng)
    if not digits:
        raise ValueError(f"kind {kind!r} needs at least one digit image")
    images = [_as_float(digit) for digit in digits]
    names = [str(int(label)) for label in labels] if labels is not None else ["?"] * len(images)
    if len(names) != len(images):
        raise ValueError("labels and digits must have the same length")
    if kind == "row":
        count = int(rng.integers(2, 6))
        chosen = [index % len(images) for index in range(count)]
        data, extension = _render_row([images[index] for index in chosen], rng)
        return data, extension, "".join(names[index] for index in chosen)
    if kind in _PAGE_RENDERERS:
        return _PAGE_RENDERERS[kind](images, names, rng)
    renderer = {
        "paper": _render_paper,
        "chalkboard": _render_chalkboard,
        "photo": _render_photo,
        "canvas": _render_canvas,
        "offcenter": _render_offcenter,
        "small": _render_small,
        "huge": _render_huge,
        "rotated": _render_rotated,
        "transparent": _render_transparent,
        "formats": _render_formats,
    }[kind]
    data, extension = renderer(images[0], rng)
    return data, extension, names[0]


def make_example(kind: str, rng: np.random.Generator) -> tuple[bytes, str, str]:
    """Draw random digits with ``draw_digit`` and render them as ``kind``, with their labels."""
    labels = [int(label) for label in rng.integers(0, 10, size=digits_needed(kind))]
    digits = [draw_digit(label, rng) for label in labels]
    return render(kind, digits, rng, labels=labels)


# --- stroke templates --------------------------------------------------------------------------


def _arc(
    centre: Point, radius: tuple[float, float], start: float, end: float, steps: int = 24
) -> list[Point]:
    """Points on an ellipse from angle ``start`` to ``end`` in degrees (0 = right, 90 = down)."""
    angles = np.deg2rad(np.linspace(start, end, steps))
    return [
        (centre[0] + radius[0] * np.cos(angle), centre[1] + radius[1] * np.sin(angle))
        for angle in angles
    ]


def _templates(digit: int, rng: np.random.Generator) -> list[list[Point]]:
    """Strokes of one digit in a unit box (x right, y down), with a random style where digits
    are commonly written two ways (open or closed 4, 1 with or without a flag, 7 with a bar)."""
    style = rng.random()
    wobble = rng.uniform(-0.06, 0.06)
    if digit == 0:
        start = rng.uniform(-110.0, -70.0)
        return [_arc((0.5, 0.5), (0.3 + wobble, 0.45), start, start + 360 + rng.uniform(0, 25))]
    if digit == 1:
        stem = [(0.55, 0.05), (0.5 + wobble / 2, 0.95)]
        if style < 0.5:
            return [[(0.32, 0.25), *stem]]
        return [stem]
    if digit == 2:
        top = _arc((0.5, 0.3), (0.3, 0.25), 200, 360 + 20)
        return [[*top, (0.45, 0.65), (0.15, 0.95), (0.85 + wobble, 0.93)]]
    if digit == 3:
        upper = _arc((0.5, 0.28), (0.28, 0.23), 210, 450)
        lower = _arc((0.5, 0.72), (0.32, 0.24), 270, 500)
        return [[*upper, *lower]]
    if digit == 4:
        if style < 0.5:
            return [[(0.6, 0.05), (0.12, 0.65), (0.88, 0.65)], [(0.66, 0.3), (0.66, 0.97)]]
        return [[(0.22, 0.05), (0.18, 0.62), (0.85, 0.62)], [(0.7, 0.05), (0.72, 0.97)]]
    if digit == 5:
        belly = _arc((0.48, 0.68), (0.32, 0.27), 235, 485)
        return [[(0.3, 0.06), (0.26, 0.47), *belly], [(0.3, 0.06), (0.82 + wobble, 0.05)]]
    if digit == 6:
        loop = _arc((0.5, 0.7), (0.3, 0.25), 180, 540)
        return [[(0.75, 0.05), (0.45, 0.22), (0.25, 0.48), *loop]]
    if digit == 7:
        strokes = [[(0.12, 0.08), (0.88, 0.06), (0.42 + wobble, 0.95)]]
        if style < 0.3:
            strokes.append([(0.4, 0.5), (0.85, 0.5)])
        return strokes
    if digit == 8:
        upper = _arc((0.5, 0.27), (0.24, 0.22), 90, 450)
        lower = _arc((0.5, 0.72), (0.3, 0.24), -90, 270)
        return [[*upper, *lower]]
    # 9: a loop at the top and a stem from its right side.
    loop = _arc((0.45, 0.3), (0.28, 0.24), 0, 360)
    return [[*loop, (0.7 + wobble / 2, 0.62), (0.62, 0.96)]]


# --- page rendering ----------------------------------------------------------------------------


def _as_float(digit: np.ndarray) -> np.ndarray:
    image = np.asarray(digit)
    if image.ndim != 2:
        raise ValueError(f"digit images must be 2-D (white on black), got shape {image.shape}")
    if image.dtype == np.uint8 or (image.size and float(image.max()) > 1.0):
        return (image.astype(np.float32) / 255.0).clip(0.0, 1.0)
    return image.astype(np.float32).clip(0.0, 1.0)


def _trim(ink: np.ndarray) -> np.ndarray:
    """Crop a white-on-black image to its ink."""
    rows = np.flatnonzero(ink.max(axis=1) > 0.1)
    columns = np.flatnonzero(ink.max(axis=0) > 0.1)
    if rows.size == 0:
        return ink
    return ink[rows[0] : rows[-1] + 1, columns[0] : columns[-1] + 1]


def scaled_ink(digit: np.ndarray, height: int) -> np.ndarray:
    """The digit's ink cropped and scaled so that it is ``height`` px tall, edges re-sharpened."""
    ink = _trim(digit)
    scale = height / ink.shape[0]
    width = max(1, round(ink.shape[1] * scale))
    # Area averaging when shrinking keeps a thin pen line's full weight instead of aliasing it.
    interpolation = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_CUBIC
    big = cv2.resize(ink, (width, height), interpolation=interpolation)
    # Enlarging a 28 px digit blurs it; a contrast ramp brings back a pen-like edge.
    return np.clip((big - 0.25) / 0.5, 0.0, 1.0).astype(np.float32)


def _place(page_shape: tuple[int, int], ink: np.ndarray, top: int, left: int) -> np.ndarray:
    """A page-sized alpha map with ``ink`` pasted at (top, left), clipped to the page."""
    alpha = np.zeros(page_shape, dtype=np.float32)
    height = min(ink.shape[0], page_shape[0] - top)
    width = min(ink.shape[1], page_shape[1] - left)
    alpha[top : top + height, left : left + width] = ink[:height, :width]
    return alpha


def _centred(page_shape: tuple[int, int], ink: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Paste ``ink`` near the middle of a page, with a little random offset."""
    spare_y = page_shape[0] - ink.shape[0]
    spare_x = page_shape[1] - ink.shape[1]
    top = int(spare_y / 2 + rng.uniform(-0.3, 0.3) * spare_y / 2)
    left = int(spare_x / 2 + rng.uniform(-0.3, 0.3) * spare_x / 2)
    return _place(page_shape, ink, max(top, 0), max(left, 0))


def _smooth_noise(shape: tuple[int, int], rng: np.random.Generator, cells: int) -> np.ndarray:
    """Low-frequency noise in about [-1, 1]: paper fibres, board smudges."""
    coarse = rng.normal(0.0, 1.0, (cells, cells)).astype(np.float32)
    return cv2.resize(coarse, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)


def _paper(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Off-white paper with a slight tint and texture, (H, W, 3) RGB float."""
    tint = np.array([0.95, 0.94, 0.90]) + rng.uniform(-0.03, 0.03, 3)
    texture = 0.015 * _smooth_noise(shape, rng, 12) + rng.normal(0.0, 0.008, shape)
    return np.clip(tint[None, None, :] + texture[:, :, None], 0.0, 1.0).astype(np.float32)


def _pen_colour(rng: np.random.Generator) -> np.ndarray:
    """Blue or black ballpoint/marker ink, RGB."""
    if rng.random() < 0.5:
        return np.array([0.1, 0.15, 0.55]) + rng.uniform(-0.05, 0.05, 3)
    return np.array([0.08, 0.08, 0.1]) + rng.uniform(0.0, 0.05, 3)


def _ink_on(page: np.ndarray, alpha: np.ndarray, colour: np.ndarray) -> np.ndarray:
    """Lay ink of one colour with coverage ``alpha`` onto an RGB page."""
    alpha = alpha[:, :, None]
    return page * (1.0 - alpha) + colour[None, None, :] * alpha


def _to_uint8(picture: np.ndarray) -> np.ndarray:
    return np.clip(picture * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _encode(picture: np.ndarray, extension: str, quality: int = 90, **options) -> bytes:
    """Encode an RGB or gray float picture as PNG or JPEG bytes."""
    image = Image.fromarray(_to_uint8(picture))
    buffer = io.BytesIO()
    if extension == ".jpg":
        image.save(buffer, "JPEG", quality=quality, **options)
    else:
        image.save(buffer, "PNG", **options)
    return buffer.getvalue()


def _png_or_jpeg(picture: np.ndarray, rng: np.random.Generator) -> tuple[bytes, str]:
    if rng.random() < 0.5:
        return _encode(picture, ".png"), ".png"
    quality = int(rng.integers(80, 96))
    return _encode(picture, ".jpg", quality=quality), ".jpg"


def _page_shape(ink: np.ndarray, rng: np.random.Generator, margin: float) -> tuple[int, int]:
    """A page around ``ink`` with ``margin`` to twice that of its height on each side."""
    pad = ink.shape[0] * margin
    height = int(ink.shape[0] + 2 * pad * rng.uniform(1.0, 2.0))
    width = int(ink.shape[1] + 2 * pad * rng.uniform(1.0, 2.0))
    return height, max(width, int(height * rng.uniform(0.7, 1.3)))


def _render_paper(digit: np.ndarray, rng: np.random.Generator) -> tuple[bytes, str]:
    ink = scaled_ink(digit, int(rng.integers(100, 301)))
    shape = _page_shape(ink, rng, 0.2)
    page = _ink_on(_paper(shape, rng), _centred(shape, ink, rng), _pen_colour(rng))
    return _png_or_jpeg(page, rng)


def _render_chalkboard(digit: np.ndarray, rng: np.random.Generator) -> tuple[bytes, str]:
    ink = scaled_ink(digit, int(rng.integers(100, 301)))
    shape = _page_shape(ink, rng, 0.25)
    if rng.random() < 0.5:
        board_colour = np.array([0.14, 0.26, 0.2]) + rng.uniform(-0.03, 0.03, 3)
    else:
        board_colour = np.array([0.2, 0.21, 0.22]) + rng.uniform(-0.03, 0.03, 3)
    smudge = 0.03 * _smooth_noise(shape, rng, 6) + rng.normal(0.0, 0.02, shape)
    board = np.clip(board_colour[None, None, :] + smudge[:, :, None], 0.0, 1.0)
    # Chalk skips on the board's grain: its coverage is patchy, never solid.
    alpha = _centred(shape, ink, rng)
    grain = np.clip(0.75 + 0.35 * rng.normal(0.0, 1.0, shape), 0.2, 1.0)
    alpha = cv2.GaussianBlur(alpha * grain.astype(np.float32), (3, 3), 0)
    # Old wiped-off chalk leaves a faint haze.
    haze = 0.06 * np.clip(_smooth_noise(shape, rng, 4), 0.0, 1.0)
    chalk = np.array([0.92, 0.92, 0.88])
    picture = _ink_on(_ink_on(board, haze, chalk), alpha, chalk)
    return _png_or_jpeg(picture, rng)


def _illumination(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Uneven light on a photographed page: a strong gradient and a soft shadow edge."""
    rows, columns = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
    rows /= shape[0]
    columns /= shape[1]
    angle = rng.uniform(0, 2 * np.pi)
    ramp = np.cos(angle) * columns + np.sin(angle) * rows
    ramp = (ramp - ramp.min()) / max(float(ramp.max() - ramp.min()), 1e-6)
    light = rng.uniform(0.45, 0.65) + rng.uniform(0.3, 0.45) * ramp
    # A shadow (a hand, a phone) crossing the page with a blurred edge.
    shadow_angle = rng.uniform(0, 2 * np.pi)
    offset = rng.uniform(-0.3, 0.3)
    side = np.cos(shadow_angle) * (columns - 0.5) + np.sin(shadow_angle) * (rows - 0.5) - offset
    shadow = 1.0 - rng.uniform(0.2, 0.4) / (1.0 + np.exp(-side / 0.05))
    return np.clip(light * shadow, 0.05, 1.0).astype(np.float32)


# EXIF orientation tag -> the rotation that, applied to upright pixels, gives the stored pixels
# (the inverse of what an EXIF-aware viewer applies).
_EXIF_STORED = {
    3: Image.Transpose.ROTATE_180,
    6: Image.Transpose.ROTATE_90,
    8: Image.Transpose.ROTATE_270,
}


def _photo_of(page: np.ndarray, rng: np.random.Generator) -> tuple[bytes, str]:
    """Photograph a page: uneven light, slight blur, sensor noise, JPEG, maybe an EXIF turn."""
    picture = page * _illumination(page.shape[:2], rng)[:, :, None]
    sigma = rng.uniform(0.6, 1.2)
    picture = cv2.GaussianBlur(picture.astype(np.float32), (0, 0), sigma)
    picture = picture + rng.normal(0.0, rng.uniform(0.015, 0.035), picture.shape)
    image = Image.fromarray(_to_uint8(picture))
    options = {}
    if rng.random() < 0.5:
        orientation = int(rng.choice(list(_EXIF_STORED)))
        image = image.transpose(_EXIF_STORED[orientation])
        exif = Image.Exif()
        exif[0x0112] = orientation
        options["exif"] = exif.tobytes()
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=int(rng.integers(60, 86)), **options)
    return buffer.getvalue(), ".jpg"


def _render_photo(digit: np.ndarray, rng: np.random.Generator) -> tuple[bytes, str]:
    ink = scaled_ink(digit, int(rng.integers(120, 301)))
    shape = _page_shape(ink, rng, 0.3)
    page = _ink_on(_paper(shape, rng), _centred(shape, ink, rng), _pen_colour(rng))
    return _photo_of(page, rng)


def _thin(mask: np.ndarray) -> np.ndarray:
    """Zhang-Suen thinning of a binary mask to a one-pixel, connected skeleton."""
    skeleton = np.pad(mask.astype(bool), 1)
    while True:
        changed = False
        for step in (0, 1):
            p = skeleton
            # Neighbours P2..P9, clockwise from north.
            north, south = np.roll(p, 1, 0), np.roll(p, -1, 0)
            east, west = np.roll(p, -1, 1), np.roll(p, 1, 1)
            north_east, north_west = np.roll(north, -1, 1), np.roll(north, 1, 1)
            south_east, south_west = np.roll(south, -1, 1), np.roll(south, 1, 1)
            ring = [north, north_east, east, south_east, south, south_west, west, north_west]
            neighbours = sum(ring[index].astype(np.uint8) for index in range(8))
            transitions = sum(
                (~ring[index] & ring[(index + 1) % 8]).astype(np.uint8) for index in range(8)
            )
            if step == 0:
                first = ~(north & east & south)
                second = ~(east & south & west)
            else:
                first = ~(north & east & west)
                second = ~(north & south & west)
            remove = p & (neighbours >= 2) & (neighbours <= 6) & (transitions == 1) & first & second
            if remove.any():
                skeleton = p & ~remove
                changed = True
        if not changed:
            return skeleton[1:-1, 1:-1]


def _thin_stroke(digit: np.ndarray, height: int, width: int) -> np.ndarray:
    """Redraw a digit as a pen line ``width`` px wide and ``height`` px tall, anti-aliased."""
    ink = scaled_ink(digit, height)
    skeleton = _thin(ink > 0.5).astype(np.uint8)
    # Dilate twice as large, then area-average down: an anti-aliased edge.
    big = cv2.resize(skeleton, None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST)
    side = max(1, 2 * width) | 1
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (side, side))
    big = cv2.dilate(big * 255, kernel).astype(np.float32) / 255.0
    big = cv2.GaussianBlur(big, (3, 3), 0)
    stroke = cv2.resize(big, (ink.shape[1], ink.shape[0]), interpolation=cv2.INTER_AREA)
    return np.clip(stroke, 0.0, 1.0)


def _render_canvas(digit: np.ndarray, rng: np.random.Generator) -> tuple[bytes, str]:
    side = int(rng.integers(400, 801))
    stroke = _thin_stroke(digit, int(side * rng.uniform(0.4, 0.75)), int(rng.integers(3, 9)))
    shape = (side, int(side * rng.uniform(0.8, 1.3)))
    alpha = _centred(shape, stroke, rng)
    picture = 1.0 - alpha
    return _encode(picture, ".png"), ".png"


def _render_offcenter(digit: np.ndarray, rng: np.random.Generator) -> tuple[bytes, str]:
    shape = (int(rng.integers(800, 1201)), int(rng.integers(800, 1201)))
    ink = scaled_ink(digit, int(rng.integers(80, 151)))
    # One of the four corners, a few percent in from the edges.
    corner_y, corner_x = rng.integers(0, 2, size=2)
    inset_y = int(shape[0] * rng.uniform(0.02, 0.1))
    inset_x = int(shape[1] * rng.uniform(0.02, 0.1))
    top = inset_y if corner_y == 0 else shape[0] - ink.shape[0] - inset_y
    left = inset_x if corner_x == 0 else shape[1] - ink.shape[1] - inset_x
    page = _ink_on(_paper(shape, rng), _place(shape, ink, top, left), _pen_colour(rng))
    return _png_or_jpeg(page, rng)


def _render_small(digit: np.ndarray, rng: np.random.Generator) -> tuple[bytes, str]:
    shape = (200, int(rng.integers(180, 241)))
    # Shrinking a 28 px digit to about 15 px leaves the 1-2 px pen line of a small written digit.
    ink = scaled_ink(digit, int(rng.integers(14, 19)))
    top = int(rng.integers(10, shape[0] - ink.shape[0] - 10))
    left = int(rng.integers(10, shape[1] - ink.shape[1] - 10))
    page = _ink_on(_paper(shape, rng), _place(shape, ink, top, left), _pen_colour(rng))
    return _encode(page, ".png"), ".png"


def _render_huge(digit: np.ndarray, rng: np.random.Generator) -> tuple[bytes, str]:
    side = int(rng.integers(1500, 2001))
    ink = scaled_ink(digit, int(side * rng.uniform(0.8, 0.9)))
    shape = (side, max(side, ink.shape[1] + 20))
    page = _ink_on(_paper(shape, rng), _centred(shape, ink, rng), _pen_colour(rng))
    if rng.random() < 0.5:
        return _encode(page, ".png", compress_level=1), ".png"
    return _encode(page, ".jpg", quality=85), ".jpg"


def _render_rotated(digit: np.ndarray, rng: np.random.Generator) -> tuple[bytes, str]:
    ink = scaled_ink(digit, int(rng.integers(100, 251)))
    # Pad so the corners do not clip, then rotate by 5..15 degrees either way.
    pad = ink.shape[0] // 3
    ink = np.pad(ink, pad)
    angle = rng.uniform(5.0, 15.0) * rng.choice([-1.0, 1.0])
    centre = (ink.shape[1] / 2, ink.shape[0] / 2)
    matrix = cv2.getRotationMatrix2D(centre, angle, 1.0)
    ink = cv2.warpAffine(ink, matrix, (ink.shape[1], ink.shape[0]), flags=cv2.INTER_LINEAR)
    ink = _trim(ink)
    shape = _page_shape(ink, rng, 0.2)
    page = _ink_on(_paper(shape, rng), _centred(shape, ink, rng), _pen_colour(rng))
    return _png_or_jpeg(page, rng)


def _render_row(digits: list[np.ndarray], rng: np.random.Generator) -> tuple[bytes, str]:
    height = int(rng.integers(60, 161))
    inks = [scaled_ink(digit, int(height * rng.uniform(0.85, 1.1))) for digit in digits]
    # Gaps vary from a tight fifth of the digit height to more than half of it.
    gaps = [int(height * rng.uniform(0.15, 0.6)) for _ in inks[1:]]
    margin = int(height * rng.uniform(0.3, 0.8))
    tallest = max(ink.shape[0] for ink in inks)
    shape = (tallest + 2 * margin, sum(ink.shape[1] for ink in inks) + sum(gaps) + 2 * margin)
    alpha = np.zeros(shape, dtype=np.float32)
    left = margin
    for index, ink in enumerate(inks):
        # Handwriting wanders up and down a little.
        top = (
            margin
            + (tallest - ink.shape[0]) // 2
            + int(rng.integers(-margin // 4, margin // 4 + 1))
        )
        alpha = np.maximum(alpha, _place(shape, ink, max(0, top), left))
        left += ink.shape[1] + (gaps[index] if index < len(gaps) else 0)
    page = _ink_on(_paper(shape, rng), alpha, _pen_colour(rng))
    return _png_or_jpeg(page, rng)


def _render_transparent(digit: np.ndarray, rng: np.random.Generator) -> tuple[bytes, str]:
    side = int(rng.integers(280, 561))
    if rng.random() < 0.5:
        ink = _thin_stroke(digit, int(side * rng.uniform(0.5, 0.8)), int(rng.integers(4, 12)))
    else:
        ink = scaled_ink(digit, int(side * rng.uniform(0.5, 0.8)))
    alpha = _centred((side, side), ink, rng)
    # The drawing app leaves RGB at zero everywhere: the ink is only in the alpha channel.
    rgba = np.zeros((side, side, 4), dtype=np.uint8)
    rgba[:, :, 3] = _to_uint8(alpha)
    buffer = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buffer, "PNG")
    return buffer.getvalue(), ".png"


def _render_formats(digit: np.ndarray, rng: np.random.Generator) -> tuple[bytes, str]:
    """The same kind of page in one of the formats the decoder reads, chosen by ``rng``."""
    file_format = FORMATS[int(rng.integers(0, len(FORMATS)))]
    return encode_format(digit, file_format, rng)


def encode_format(
    digit: np.ndarray, file_format: str, rng: np.random.Generator
) -> tuple[bytes, str]:
    """A dark-on-paper page of ``digit`` encoded as one of ``FORMATS``; (bytes, extension)."""
    ink = scaled_ink(_as_float(digit), int(rng.integers(80, 201)))
    shape = _page_shape(ink, rng, 0.25)
    alpha = _centred(shape, ink, rng)
    page = _ink_on(_paper(shape, rng), alpha, _pen_colour(rng))
    rgb = Image.fromarray(_to_uint8(page))
    buffer = io.BytesIO()
    if file_format == "png8":
        rgb.convert("L").save(buffer, "PNG")
        extension = ".png"
    elif file_format == "png16":
        gray = page @ np.array([0.299, 0.587, 0.114])
        values = np.clip(gray * 65535.0 + 0.5, 0, 65535).astype(np.uint16)
        Image.fromarray(values).save(buffer, "PNG")
        extension = ".png"
    elif file_format == "palette":
        rgb.quantize(colors=int(rng.integers(8, 64))).save(buffer, "PNG")
        extension = ".png"
    elif file_format == "gray_alpha":
        # Black ink whose coverage is in alpha, on a transparent (white) background.
        gray_alpha = np.zeros((*shape, 2), dtype=np.uint8)
        gray_alpha[:, :, 1] = _to_uint8(alpha)
        Image.fromarray(gray_alpha, "LA").save(buffer, "PNG")
        extension = ".png"
    elif file_format == "jpeg":
        rgb.save(buffer, "JPEG", quality=int(rng.integers(70, 95)))
        extension = ".jpg"
    elif file_format == "cmyk_jpeg":
        rgb.convert("CMYK").save(buffer, "JPEG", quality=int(rng.integers(70, 95)))
        extension = ".jpg"
    elif file_format == "gif":
        rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=32).save(buffer, "GIF")
        extension = ".gif"
    elif file_format == "bmp":
        rgb.save(buffer, "BMP")
        extension = ".bmp"
    elif file_format == "tiff":
        rgb.save(buffer, "TIFF")
        extension = ".tif"
    elif file_format == "webp":
        rgb.save(buffer, "WEBP", quality=int(rng.integers(70, 95)))
        extension = ".webp"
    else:
        raise ValueError(f"unknown format {file_format!r}; expected one of {', '.join(FORMATS)}")
    return buffer.getvalue(), extension


def _render_blank(rng: np.random.Generator) -> tuple[bytes, str, str]:
    """Blank paper, a blank white canvas or a noisy photo of blank paper; the label is ""."""
    choice = int(rng.integers(0, 3))
    shape = (int(rng.integers(200, 601)), int(rng.integers(200, 601)))
    if choice == 0:
        data, extension = _png_or_jpeg(_paper(shape, rng), rng)
    elif choice == 1:
        data, extension = _encode(np.ones(shape, dtype=np.float32), ".png"), ".png"
    else:
        data, extension = _photo_of(_paper(shape, rng), rng)
    return data, extension, ""


# --- pages as people write them ----------------------------------------------------------------


def _cycled(
    images: list[np.ndarray], names: list[str], count: int
) -> tuple[list[np.ndarray], list[str]]:
    """The first ``count`` digits and their names, starting again when too few are given."""
    chosen = [index % len(images) for index in range(count)]
    return [images[index] for index in chosen], [names[index] for index in chosen]


def _pen_width(height: float, rng: np.random.Generator) -> float:
    """A pen line as wide as the strokes of a digit ``height`` px tall, so marks drawn beside
    MNIST digits look written with the same pen."""
    return max(1.0, height * rng.uniform(0.07, 0.12))


def _stroke(
    alpha: np.ndarray, points: np.ndarray, width: float, closed: bool = False
) -> np.ndarray:
    """``alpha`` with an anti-aliased pen line through ``points`` (x, y in px) drawn on it."""
    canvas = np.zeros(alpha.shape, dtype=np.uint8)
    # 4 fractional bits: sub-pixel positions keep small marks smooth.
    fixed = np.round(np.asarray(points, dtype=np.float64) * 16).astype(np.int32).reshape(-1, 1, 2)
    cv2.polylines(canvas, [fixed], closed, 255, max(1, round(width)), cv2.LINE_AA, shift=4)
    return np.maximum(alpha, canvas.astype(np.float32) / 255.0)


def _dot(alpha: np.ndarray, centre: Point, radius: float, strength: float = 1.0) -> np.ndarray:
    """``alpha`` with a filled, anti-aliased dot of ``radius`` px at ``centre`` (x, y)."""
    canvas = np.zeros(alpha.shape, dtype=np.uint8)
    fixed = (round(centre[0] * 16), round(centre[1] * 16))
    cv2.circle(canvas, fixed, max(1, round(radius * 16)), 255, -1, cv2.LINE_AA, shift=4)
    return np.maximum(alpha, canvas.astype(np.float32) / 255.0 * strength)


def _lines(
    shape: tuple[int, int], positions: np.ndarray, horizontal: bool, width: int
) -> np.ndarray:
    """Straight lines from edge to edge at ``positions`` px (rows if horizontal, else columns)."""
    canvas = np.zeros(shape, dtype=np.uint8)
    for position in positions:
        at = round(float(position) * 16)
        if horizontal:
            ends = ((0, at), (shape[1] * 16, at))
        else:
            ends = ((at, 0), (at, shape[0] * 16))
        cv2.line(canvas, *ends, 255, width, cv2.LINE_AA, shift=4)
    return canvas.astype(np.float32) / 255.0


def _row(
    inks: list[np.ndarray], gaps: list[int], drops: list[int], pad: int
) -> tuple[np.ndarray, list[Box]]:
    """Inks left to right, ``gaps`` px apart (negative: overlapping), bottoms on one baseline
    moved down by ``drops`` px, with ``pad`` px of empty canvas around them for marks.
    Returns the alpha map and each ink's box in it."""
    lefts = [0]
    for ink, gap in zip(inks[:-1], gaps, strict=True):
        lefts.append(lefts[-1] + ink.shape[1] + gap)
    tops = [drop - ink.shape[0] for ink, drop in zip(inks, drops, strict=True)]
    origin_x, origin_y = min(lefts) - pad, min(tops) - pad
    width = max(left + ink.shape[1] for left, ink in zip(lefts, inks, strict=True)) + pad - origin_x
    height = max(top + ink.shape[0] for top, ink in zip(tops, inks, strict=True)) + pad - origin_y
    alpha = np.zeros((height, width), dtype=np.float32)
    boxes = []
    for ink, left, top in zip(inks, lefts, tops, strict=True):
        x, y = left - origin_x, top - origin_y
        region = alpha[y : y + ink.shape[0], x : x + ink.shape[1]]
        np.maximum(region, ink, out=region)
        boxes.append((x, y, x + ink.shape[1], y + ink.shape[0]))
    return alpha, boxes


def _written_row(
    images: list[np.ndarray], height: int, rng: np.random.Generator, pad: int
) -> tuple[np.ndarray, list[Box]]:
    """Digits written side by side about ``height`` px tall: sizes, gaps and baseline wander."""
    inks = [scaled_ink(image, max(4, round(height * rng.uniform(0.9, 1.08)))) for image in images]
    gaps = [round(height * rng.uniform(0.15, 0.45)) for _ in inks[1:]]
    wander = max(1, round(height * 0.05))
    drops = [int(rng.integers(-wander, wander + 1)) for _ in inks]
    return _row(inks, gaps, drops, pad)


def _union(boxes: list[Box]) -> Box:
    return (
        min(box[0] for box in boxes),
        min(box[1] for box in boxes),
        max(box[2] for box in boxes),
        max(box[3] for box in boxes),
    )


def _framed(
    layers: list[np.ndarray], rng: np.random.Generator, low: int, high: int
) -> tuple[list[np.ndarray], tuple[int, int]]:
    """Crop same-sized layers to their joint ink and pad each side by ``low`` to ``high`` px.
    Returns the page layers and (dx, dy), the move from canvas to page coordinates."""
    ink = np.maximum.reduce(layers)
    rows = np.flatnonzero(ink.max(axis=1) > 0.05)
    columns = np.flatnonzero(ink.max(axis=0) > 0.05)
    top, bottom, left, right = (int(rng.integers(low, max(low, high) + 1)) for _ in range(4))
    crop = (slice(rows[0], rows[-1] + 1), slice(columns[0], columns[-1] + 1))
    pages = [np.pad(layer[crop], ((top, bottom), (left, right))) for layer in layers]
    return pages, (left - int(columns[0]), top - int(rows[0]))


def mark_on_page(mark: np.ndarray, rng: np.random.Generator) -> tuple[bytes, str]:
    """A mark (white on black, 0..1, such as a letter) written 40 to 160 px tall on paper, as
    PNG or JPEG: what a page of something that is not a digit looks like to the reader."""
    height = int(rng.integers(40, 161))
    (page,), _ = _framed([scaled_ink(mark, height)], rng, height // 4, height)
    return _on_paper(page, rng)


def _on_paper(alpha: np.ndarray, rng: np.random.Generator) -> tuple[bytes, str]:
    """Ink of one pen with coverage ``alpha`` on paper, as PNG or JPEG."""
    page = _ink_on(_paper(alpha.shape, rng), alpha, _pen_colour(rng))
    return _png_or_jpeg(page, rng)


def _camera(page: np.ndarray, rng: np.random.Generator, blur: float) -> np.ndarray:
    """A phone's picture of a flat page in fair light: a gentle falloff, blur, sensor noise."""
    rows, columns = np.mgrid[0 : page.shape[0], 0 : page.shape[1]].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = np.cos(angle) * columns / page.shape[1] + np.sin(angle) * rows / page.shape[0]
    ramp = (ramp - ramp.min()) / max(float(ramp.max() - ramp.min()), 1e-6)
    picture = page * (1.0 - rng.uniform(0.05, 0.2) * ramp)[:, :, None]
    picture = cv2.GaussianBlur(picture.astype(np.float32), (0, 0), blur)
    return picture + rng.normal(0.0, rng.uniform(0.005, 0.02), picture.shape)


def _render_touching(
    images: list[np.ndarray], names: list[str], rng: np.random.Generator
) -> tuple[bytes, str, str]:
    """2 to 4 digits written so close that neighbouring strokes join or overlap."""
    images, names = _cycled(images, names, int(rng.integers(2, 5)))
    height = int(rng.integers(60, 141))
    inks = [scaled_ink(image, round(height * rng.uniform(0.8, 1.1))) for image in images]
    wander = height // 10
    drops = [int(rng.integers(-wander, wander + 1)) for _ in inks]
    overlaps = [int(rng.integers(1, max(2, height // 8))) for _ in inks[1:]]
    (page,), _ = _framed([touching_row(inks, drops, overlaps)], rng, height // 3, height)
    return (*_on_paper(page, rng), "".join(names))


def touching_row(inks: list[np.ndarray], drops: list[int], overlaps: list[int]) -> np.ndarray:
    """Inks left to right, each slid left until its ink meets the ink before it and then
    ``overlaps`` px further, so that neighbouring strokes join."""
    spread = max(abs(drop) for drop in drops)
    tallest = max(ink.shape[0] for ink in inks)
    alpha = np.zeros((tallest + 2 * spread, sum(ink.shape[1] for ink in inks)), dtype=np.float32)
    far = 10**6
    reach = np.full(alpha.shape[0], -far)  # the rightmost solid column in each row so far
    previous_centre, previous_width = 0.0, 0
    for index, ink in enumerate(inks):
        height, width = ink.shape
        top = spread + tallest + drops[index] - height
        solid = ink > 0.5
        inked = solid.any(axis=1)
        lead = np.where(inked, solid.argmax(axis=1), far)  # the leftmost solid column per row
        left = 0
        if index:
            contact = int((reach[top : top + height] - lead).max())
            # Reading order holds: each digit's centre stays a quarter width right of the last.
            floor = previous_centre + min(previous_width, width) / 4 - width / 2
            left = max(contact - overlaps[index - 1], int(np.ceil(floor)), 0)
        region = alpha[top : top + height, left : left + width]
        np.maximum(region, ink, out=region)
        trail = left + width - 1 - solid[:, ::-1].argmax(axis=1)
        rows = reach[top : top + height]
        reach[top : top + height] = np.where(inked, np.maximum(rows, trail), rows)
        previous_centre, previous_width = left + width / 2, width
    return alpha


def _render_lined(
    images: list[np.ndarray], names: list[str], rng: np.random.Generator
) -> tuple[bytes, str, str]:
    """1 to 3 digits on ruled notebook paper, sitting on a rule: taller than the rules'
    spacing, and the rule runs through their bottoms or the one above through their tops."""
    images, names = _cycled(images, names, int(rng.integers(1, 4)))
    spacing = rng.uniform(26.0, 48.0)
    height = round(spacing * rng.uniform(1.1, 1.6))
    alpha, boxes = _written_row(images, height, rng, pad=height)
    (page,), (dx, dy) = _framed([alpha], rng, round(spacing * 1.5), round(spacing * 4))
    baseline = float(np.median([box[3] for box in boxes])) + dy
    first = (baseline - rng.uniform(0.0, 0.2) * spacing) % spacing
    rules = _lines(page.shape, np.arange(first, page.shape[0], spacing), True, 1)
    rule_colour = np.array([0.55, 0.7, 0.92]) + rng.uniform(-0.05, 0.05, 3)
    paper = _ink_on(_paper(page.shape, rng), rules * rng.uniform(0.5, 0.9), rule_colour)
    if rng.random() < 0.5:  # the red margin line, left of the writing
        margin = min(box[0] for box in boxes) + dx - rng.uniform(0.3, 1.0) * spacing
        line = _lines(page.shape, np.array([margin]), False, int(rng.integers(1, 3)))
        paper = _ink_on(paper, line * 0.8, np.array([0.88, 0.35, 0.35]))
    page = _ink_on(paper, page, _pen_colour(rng))
    return (*_png_or_jpeg(_camera(page, rng, rng.uniform(0.4, 0.8)), rng), "".join(names))


def _render_grid(
    images: list[np.ndarray], names: list[str], rng: np.random.Generator
) -> tuple[bytes, str, str]:
    """1 to 3 digits on squared paper, over one to three cells so grid lines cross them."""
    images, names = _cycled(images, names, int(rng.integers(1, 4)))
    cell = rng.uniform(18.0, 36.0)
    height = round(cell * rng.uniform(1.3, 2.6))
    alpha, _ = _written_row(images, height, rng, pad=height)
    (page,), _ = _framed([alpha], rng, round(cell), round(cell * 3))
    phase_y, phase_x = rng.uniform(0.0, cell, 2)
    grid = np.maximum(
        _lines(page.shape, np.arange(phase_y, page.shape[0], cell), True, 1),
        _lines(page.shape, np.arange(phase_x, page.shape[1], cell), False, 1),
    )
    if rng.random() < 0.5:
        grid_colour = np.full(3, rng.uniform(0.55, 0.75))
    else:
        grid_colour = np.array([0.6, 0.75, 0.92]) + rng.uniform(-0.05, 0.05, 3)
    paper = _ink_on(_paper(page.shape, rng), grid * rng.uniform(0.5, 0.9), grid_colour)
    page = _ink_on(paper, page, _pen_colour(rng))
    return (*_png_or_jpeg(_camera(page, rng, rng.uniform(0.4, 0.8)), rng), "".join(names))


def _render_boxed(
    images: list[np.ndarray], names: list[str], rng: np.random.Generator
) -> tuple[bytes, str, str]:
    """A form's comb field of 3 to 6 printed boxes side by side, one digit in each, some digits
    touching a box's edge; sometimes a single box around one digit."""
    count = 1 if rng.random() < 0.25 else int(rng.integers(3, 7))
    images, names = _cycled(images, names, count)
    box_height = int(rng.integers(60, 131))
    box_width = round(box_height * rng.uniform(0.75, 1.05))
    pad = box_height
    shape = (box_height + 2 * pad, count * box_width + 2 * pad)
    form = np.zeros(shape, dtype=np.uint8)
    thickness = int(rng.integers(1, 4))
    alpha = np.zeros(shape, dtype=np.float32)
    for index, image in enumerate(images):
        box = (pad + index * box_width, pad, pad + (index + 1) * box_width, pad + box_height)
        cv2.rectangle(form, box[:2], box[2:], 255, thickness, cv2.LINE_AA)
        ink = scaled_ink(image, round(box_height * rng.uniform(0.6, 0.88)))
        if ink.shape[1] > 0.9 * box_width:  # a wide digit is written smaller to fit
            ink = scaled_ink(image, max(4, int(ink.shape[0] * 0.9 * box_width / ink.shape[1])))
        alpha = np.maximum(alpha, _place(shape, ink, *_in_box(ink.shape, box, rng)))
    (lines, page), _ = _framed([form.astype(np.float32) / 255.0, alpha], rng, pad // 4, pad)
    printed = [np.full(3, 0.1), np.full(3, 0.45), np.array([0.3, 0.4, 0.75])]
    paper = _ink_on(_paper(page.shape, rng), lines, printed[int(rng.integers(0, 3))])
    page = _ink_on(paper, page, _pen_colour(rng))
    return (*_png_or_jpeg(page, rng), "".join(names))


def _in_box(ink_shape: tuple[int, int], box: Box, rng: np.random.Generator) -> tuple[int, int]:
    """(top, left) of a digit in a form's box: about the middle, or pushed onto an edge."""
    left, top, right, bottom = box
    spare_y, spare_x = bottom - top - ink_shape[0], right - left - ink_shape[1]
    y = top + spare_y // 2 + int(rng.integers(-(spare_y // 4), spare_y // 4 + 1))
    x = left + spare_x // 2 + int(rng.integers(-(spare_x // 4), spare_x // 4 + 1))
    if rng.random() < 0.3:
        push = int(rng.integers(0, 4))  # how far the ink runs over the edge
        side = int(rng.integers(0, 4))
        if side == 0:
            y = bottom - ink_shape[0] + push
        elif side == 1:
            y = top - push
        elif side == 2:
            x = left - push
        else:
            x = right - ink_shape[1] + push
    return y, x


def _hand_loop(centre: np.ndarray, radius: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Points of an ellipse drawn by hand: wobbly and tilted, its end overshooting the start
    or stopping short of it, and drifting in or out so the ends do not meet exactly."""
    along = np.linspace(0.0, 1.0, 120)
    angle = rng.uniform(0, 2 * np.pi) + np.deg2rad(rng.uniform(320.0, 400.0)) * along
    wobble = 1.0 + sum(
        rng.uniform(-0.025, 0.025) * np.sin(harmonic * angle + rng.uniform(0, 2 * np.pi))
        for harmonic in (2, 3)
    )
    scale = wobble * (1.0 + rng.uniform(-0.06, 0.06) * along)
    points = np.stack([radius[0] * np.cos(angle), radius[1] * np.sin(angle)], axis=1)
    tilt = np.deg2rad(rng.uniform(-15.0, 15.0))
    rotation = np.array([[np.cos(tilt), -np.sin(tilt)], [np.sin(tilt), np.cos(tilt)]])
    return centre + (points * scale[:, None]) @ rotation.T


def _render_circled(
    images: list[np.ndarray], names: list[str], rng: np.random.Generator
) -> tuple[bytes, str, str]:
    """One digit, sometimes two, with a pen circle around them (not always closed)."""
    images, names = _cycled(images, names, 1 if rng.random() < 0.7 else 2)
    height = int(rng.integers(60, 161))
    alpha, boxes = _written_row(images, height, rng, pad=2 * height)
    left, top, right, bottom = _union(boxes)
    half = np.array([(right - left) / 2, (bottom - top) / 2])
    # Wide enough that the ink's corners stay inside even where the loop wobbles inwards.
    radius = half * rng.uniform(1.6, 1.85, 2)
    radius[0] = max(radius[0], 0.6 * radius[1])
    pen = _pen_width(height, rng)
    centre = np.array([(left + right) / 2, (top + bottom) / 2]) + rng.uniform(-0.05, 0.05, 2) * half
    alpha = _stroke(alpha, _hand_loop(centre, radius + pen, rng), pen)
    (page,), _ = _framed([alpha], rng, height // 5, height * 2 // 3)
    return (*_on_paper(page, rng), "".join(names))


def _render_underlined(
    images: list[np.ndarray], names: list[str], rng: np.random.Generator
) -> tuple[bytes, str, str]:
    """1 to 3 digits with a pen line under them, sometimes touching their bottoms."""
    images, names = _cycled(images, names, int(rng.integers(1, 4)))
    height = int(rng.integers(60, 161))
    alpha, boxes = _written_row(images, height, rng, pad=height)
    left, _, right, bottom = _union(boxes)
    pen = _pen_width(height, rng)
    if rng.random() < 0.4:
        level = bottom - pen * rng.uniform(0.0, 0.8)
    else:
        level = bottom + pen / 2 + height * rng.uniform(0.06, 0.25)
    along = np.linspace(0.0, 1.0, 24)
    start = left - height * rng.uniform(0.0, 0.25)
    end = right + height * rng.uniform(0.0, 0.25)
    ys = (
        level
        + height * rng.uniform(-0.05, 0.05) * (along - 0.5)  # the line rises or falls
        + height * rng.uniform(-0.03, 0.03) * np.sin(np.pi * along)  # and bows a little
        + rng.normal(0.0, 0.004 * height, along.size)
    )
    alpha = _stroke(alpha, np.stack([start + (end - start) * along, ys], axis=1), pen)
    (page,), _ = _framed([alpha], rng, height // 4, height)
    return (*_on_paper(page, rng), "".join(names))


# Separator, and the least and most digits before and after it.
_SEPARATOR_STYLES = (
    (".", (1, 2), (1, 2)),  # 3.14
    (",", (1, 3), (3, 3)),  # 1,024
    ("-", (0, 0), (1, 3)),  # -5
    ("/", (1, 2), (2, 2)),  # 12/05
    (":", (1, 2), (2, 2)),  # 10:30
)


def _render_separators(
    images: list[np.ndarray], names: list[str], rng: np.random.Generator
) -> tuple[bytes, str, str]:
    """A number with a pen-drawn separator (decimal point, thousands comma, leading minus,
    date slash, time colon), and on some pages specks of dirt away from it."""
    mark, before_range, after_range = _SEPARATOR_STYLES[int(rng.integers(0, 5))]
    before = int(rng.integers(before_range[0], before_range[1] + 1))
    after = int(rng.integers(after_range[0], after_range[1] + 1))
    images, names = _cycled(images, names, before + after)
    height = int(rng.integers(60, 141))
    inks = [scaled_ink(image, round(height * rng.uniform(0.9, 1.05))) for image in images]
    wander = max(1, height // 25)
    drops = [int(rng.integers(-wander, wander + 1)) for _ in inks]
    sign, sign_drop = _separator(mark, height, _pen_width(height, rng), rng)
    inks.insert(before, sign)
    drops.insert(before, sign_drop)
    gaps = [round(height * rng.uniform(0.1, 0.3)) for _ in inks[1:]]
    alpha, boxes = _row(inks, gaps, drops, pad=height)
    (page,), (dx, dy) = _framed([alpha], rng, height * 2 // 3, height * 2)
    left, top, right, bottom = _union(boxes)
    keep_clear = round(0.4 * height)
    number = (
        left + dx - keep_clear,
        top + dy - keep_clear,
        right + dx + keep_clear,
        bottom + dy + keep_clear,
    )
    dirt = _specks(page.shape, number, rng) if rng.random() < 0.5 else np.zeros_like(page)
    paper = _ink_on(_paper(page.shape, rng), dirt, np.array([0.35, 0.3, 0.25]))
    page = _ink_on(paper, page, _pen_colour(rng))
    label = "".join(names[:before]) + mark + "".join(names[before:])
    return (*_png_or_jpeg(page, rng), label)


def _separator(
    mark: str, height: int, pen: float, rng: np.random.Generator
) -> tuple[np.ndarray, int]:
    """A separator drawn with the pen beside digits ``height`` px tall, as its own ink image,
    and how far its bottom sits below the digits' baseline (negative: above), for ``_row``."""
    baseline, middle = 1.5 * height, float(height)
    alpha = np.zeros((2 * height, 2 * height), dtype=np.float32)
    radius = pen * rng.uniform(0.5, 0.75)
    if mark in ".,":  # on the baseline; a comma's tail hangs below it
        alpha = _dot(alpha, (middle, baseline - radius), radius)
        if mark == ",":
            tail = height * rng.uniform(0.12, 0.22)
            points = [
                (middle + radius * 0.5, baseline - radius),
                (middle - tail * 0.45, baseline + tail),
            ]
            alpha = _stroke(alpha, np.array(points), pen * 0.8)
    elif mark == "-":  # at mid-height
        length, level = height * rng.uniform(0.3, 0.5), baseline - height * rng.uniform(0.42, 0.58)
        tilt = height * rng.uniform(-0.04, 0.04)
        points = [(middle - length / 2, level + tilt), (middle + length / 2, level - tilt)]
        alpha = _stroke(alpha, np.array(points), pen)
    elif mark == "/":  # slanted, as tall as the digits
        tall = height * rng.uniform(0.9, 1.1)
        lean = tall * np.tan(np.deg2rad(rng.uniform(15.0, 30.0)))
        points = [(middle - lean / 2, baseline), (middle + lean / 2, baseline - tall)]
        alpha = _stroke(alpha, np.array(points), pen)
    else:  # ":", two dots in the lower and upper thirds
        low = baseline - radius - height * rng.uniform(0.05, 0.2)
        high = low - height * rng.uniform(0.3, 0.45)
        alpha = _dot(alpha, (middle, low), radius)
        alpha = _dot(alpha, (middle + height * rng.uniform(-0.04, 0.04), high), radius)
    rows = np.flatnonzero(alpha.max(axis=1) > 0.05)
    columns = np.flatnonzero(alpha.max(axis=0) > 0.05)
    ink = alpha[rows[0] : rows[-1] + 1, columns[0] : columns[-1] + 1]
    return ink, int(rows[-1] + 1 - baseline)


def _specks(shape: tuple[int, int], avoid: Box, rng: np.random.Generator) -> np.ndarray:
    """1 to 5 specks of dust or dirt, smaller than a pen dot, outside the box ``avoid``."""
    alpha = np.zeros(shape, dtype=np.float32)
    for _ in range(int(rng.integers(1, 6))):
        for _attempt in range(20):
            x, y = rng.uniform(0, shape[1]), rng.uniform(0, shape[0])
            if not (avoid[0] <= x <= avoid[2] and avoid[1] <= y <= avoid[3]):
                alpha = _dot(alpha, (x, y), rng.uniform(0.6, 1.8), rng.uniform(0.3, 0.8))
                break
    return alpha


def _render_multiline(
    images: list[np.ndarray], names: list[str], rng: np.random.Generator
) -> tuple[bytes, str, str]:
    """2 or 3 lines of 1 to 4 digits, one under the other, left-aligned or ragged."""
    counts = [int(rng.integers(1, 5)) for _ in range(int(rng.integers(2, 4)))]
    images, names = _cycled(images, names, sum(counts))
    height = int(rng.integers(50, 121))
    # Lines at least a third of a digit apart: the baseline wander never makes them meet.
    pitch = height * rng.uniform(1.4, 1.9)
    ragged = rng.random() < 0.5
    lines, texts, first = [], [], 0
    for count in counts:
        alpha, _ = _written_row(images[first : first + count], height, rng, pad=0)
        indent = height * (rng.uniform(0.0, 1.5) if ragged else rng.uniform(0.0, 0.08))
        lines.append((alpha, round(indent)))
        texts.append("".join(names[first : first + count]))
        first += count
    shape = (
        round(pitch * (len(lines) - 1)) + max(alpha.shape[0] for alpha, _ in lines),
        max(alpha.shape[1] + indent for alpha, indent in lines),
    )
    canvas = np.zeros(shape, dtype=np.float32)
    for index, (alpha, indent) in enumerate(lines):
        canvas = np.maximum(canvas, _place(shape, alpha, round(index * pitch), indent))
    (page,), _ = _framed([canvas], rng, height // 3, height)
    return (*_on_paper(page, rng), "\n".join(texts))


def _render_lowres(
    images: list[np.ndarray], names: list[str], rng: np.random.Generator
) -> tuple[bytes, str, str]:
    """1 to 3 digits only 8 to 16 px tall on a larger page, photographed from across a desk:
    blurred, noisy and saved as a low-quality JPEG."""
    images, names = _cycled(images, names, int(rng.integers(1, 4)))
    height = int(rng.integers(8, 17))
    inks = [scaled_ink(image, height) for image in images]
    gaps = [max(2, round(height * rng.uniform(0.25, 0.6))) for _ in inks[1:]]
    alpha, _ = _row(inks, gaps, [int(rng.integers(-1, 2)) for _ in inks], pad=0)
    shape = (int(rng.integers(180, 361)), int(rng.integers(240, 481)))
    top = int(rng.integers(shape[0] // 5, shape[0] * 4 // 5 - alpha.shape[0]))
    left = int(rng.integers(shape[1] // 5, shape[1] * 4 // 5 - alpha.shape[1]))
    page = _ink_on(_paper(shape, rng), _place(shape, alpha, top, left), _pen_colour(rng))
    picture = _camera(page, rng, rng.uniform(0.5, 0.9))
    return _encode(picture, ".jpg", quality=int(rng.integers(30, 61))), ".jpg", "".join(names)


# Capital letters and symbols that no one would read as a digit; Hershey fonts are OpenCV's
# printed-style vector fonts (the script ones are left out: they imitate handwriting).
_LETTERS = "ABEFHKMNPRTWX"
_SYMBOLS = "#@*+%?&"
_HERSHEY_FONTS = (
    cv2.FONT_HERSHEY_SIMPLEX,
    cv2.FONT_HERSHEY_DUPLEX,
    cv2.FONT_HERSHEY_COMPLEX,
    cv2.FONT_HERSHEY_TRIPLEX,
    cv2.FONT_HERSHEY_PLAIN,
)


def _render_notdigit(rng: np.random.Generator) -> tuple[bytes, str, str]:
    """One mark that is not a digit: a capital letter, a symbol, a scribble, a smiley or a star.
    The label is "": a reader should flag the mark as not a digit, or find nothing."""
    height = int(rng.integers(80, 201))
    pen = _pen_width(height, rng)
    choice = int(rng.integers(0, 5))
    if choice == 0:
        mark = _printed_mark(_LETTERS[int(rng.integers(0, len(_LETTERS)))], height, pen, rng)
    elif choice == 1:
        mark = _printed_mark(_SYMBOLS[int(rng.integers(0, len(_SYMBOLS)))], height, pen, rng)
    elif choice == 2:
        mark = _scribble(height, pen, rng)
    elif choice == 3:
        mark = _smiley(height, pen, rng)
    else:
        mark = _star(height, pen, rng)
    (page,), _ = _framed([mark], rng, height // 4, height)
    return (*_on_paper(page, rng), "")


def _hand_tilt(alpha: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``alpha`` slanted and turned a little about its centre, as a hand would write it."""
    angle = np.deg2rad(rng.uniform(-12.0, 12.0))
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    linear = rotation @ np.array([[1.0, rng.uniform(-0.25, 0.25)], [0.0, 1.0]])
    centre = np.array([alpha.shape[1] / 2, alpha.shape[0] / 2])
    matrix = np.hstack([linear, (centre - linear @ centre)[:, None]])
    return cv2.warpAffine(alpha, matrix, (alpha.shape[1], alpha.shape[0]), flags=cv2.INTER_LINEAR)


def _printed_mark(character: str, height: int, pen: float, rng: np.random.Generator) -> np.ndarray:
    """``character`` in a Hershey vector font about ``height`` px tall, drawn pen-wide."""
    font = _HERSHEY_FONTS[int(rng.integers(0, len(_HERSHEY_FONTS)))]
    if rng.random() < 0.3:
        font |= cv2.FONT_ITALIC
    (width, tall), _ = cv2.getTextSize(character, font, 1.0, 1)
    scale = height / max(tall, 1)
    canvas = np.zeros((3 * height, round(width * scale) + 2 * height), dtype=np.uint8)
    origin = (height, 2 * height)
    cv2.putText(canvas, character, origin, font, scale, 255, max(1, round(pen)), cv2.LINE_AA)
    return _trim(_hand_tilt(canvas.astype(np.float32) / 255.0, rng))


def _scribble(height: int, pen: float, rng: np.random.Generator) -> np.ndarray:
    """A random smooth curve: a tangle of 7 to 12 points rounded by corner cutting."""
    points = rng.uniform(0.0, 1.0, (int(rng.integers(7, 13)), 2))
    for _ in range(3):  # Chaikin's corner cutting: each pass rounds every corner
        starts, ends = points[:-1], points[1:]
        points = np.stack([0.75 * starts + 0.25 * ends, 0.25 * starts + 0.75 * ends], axis=1)
        points = points.reshape(-1, 2)
    size = np.array([height * rng.uniform(0.8, 1.4), height])
    canvas = np.zeros((2 * height, round(size[0]) + height), dtype=np.float32)
    return _trim(_stroke(canvas, points * size + height / 2, pen))


def _smiley(height: int, pen: float, rng: np.random.Generator) -> np.ndarray:
    """A face: a hand-drawn circle, two dots for eyes and an arc for a mouth."""
    radius = height / 2
    centre = np.array([height, height], dtype=np.float64)
    canvas = np.zeros((2 * height, 2 * height), dtype=np.float32)
    face = _hand_loop(centre, np.array([radius, radius * rng.uniform(0.9, 1.1)]), rng)
    canvas = _stroke(canvas, face, pen)
    for side in (-1, 1):
        eye = centre + radius * np.array([side * rng.uniform(0.28, 0.4), -rng.uniform(0.2, 0.35)])
        canvas = _dot(canvas, (eye[0], eye[1]), pen * rng.uniform(0.6, 0.9))
    mouth_centre = (centre[0], centre[1] + radius * rng.uniform(0.0, 0.1))
    mouth = _arc(mouth_centre, (radius * 0.55, radius * rng.uniform(0.35, 0.5)), 25, 155)
    return _trim(_stroke(canvas, np.array(mouth), pen))


def _star(height: int, pen: float, rng: np.random.Generator) -> np.ndarray:
    """A five-pointed star: its outline, or the one-stroke pentagram people doodle."""
    outer = height / 2
    centre = np.array([height, height], dtype=np.float64)
    canvas = np.zeros((2 * height, 2 * height), dtype=np.float32)
    turn = -np.pi / 2 + rng.uniform(-0.3, 0.3)
    if rng.random() < 0.5:
        angles = turn + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, outer, outer * rng.uniform(0.38, 0.5))
    else:
        angles = turn + np.array([0, 2, 4, 1, 3]) * 2 * np.pi / 5
        radii = np.full(5, outer)
    points = centre + radii[:, None] * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    points = points + rng.normal(0.0, 0.03 * outer, points.shape)
    return _trim(_stroke(canvas, points, pen, closed=True))


_PAGE_RENDERERS = {
    "touching": _render_touching,
    "lined": _render_lined,
    "grid": _render_grid,
    "boxed": _render_boxed,
    "circled": _render_circled,
    "underlined": _render_underlined,
    "separators": _render_separators,
    "multiline": _render_multiline,
    "lowres": _render_lowres,
}


# The bundled examples/ folder: one file per situation a user meets, each named after its answer
# (no huge file, which would only weigh on the repository; two files in other formats).
EXAMPLE_KINDS = (
    *(kind for kind in PLAIN_KINDS if kind not in ("huge", "formats", "blank")),
    "formats",
    "formats",
    "blank",
    *PAGE_KINDS,
)


def write_examples(folder: str, seed: int = 2024) -> list[str]:
    """Write the example images (deterministic for a seed); returns the file paths.

    Each is named INDEX-KIND-LABEL.EXT, its label spelled by ``label_to_file_name`` ("none" for
    nothing to read, "12_34" for two lines, "12slash05" for "12/05"); ``label_from_file_name``
    reads it back.
    """
    from pathlib import Path

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for index, kind in enumerate(EXAMPLE_KINDS, start=1):
        data, extension, label = make_example(kind, rng)
        path = out / f"{index:02d}-{kind}-{label_to_file_name(label)}{extension}"
        path.write_bytes(data)
        paths.append(str(path))
    return paths


if __name__ == "__main__":
    import sys

    for written in write_examples(sys.argv[1] if len(sys.argv) > 1 else "examples"):
        print(written)
