"""Realistic synthetic digit images: drawn digits and the files users would hand over.

``draw_digit`` draws a handwriting-like digit from stroke templates (jittered, slanted, with a
random pen width), so the project can make example images without MNIST. ``render`` puts digit
images onto paper, chalkboards, photos with shadows, transparent canvases and every file format
the decoder must read, and returns the file bytes with the label a human would read. All
randomness comes from the ``numpy.random.Generator`` passed in.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import cv2
import numpy as np
from PIL import Image

KINDS = (
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
    use ``digits[0]``; "row" uses the first 2 to 5 (cycling if fewer are given); "blank" uses none.
    Returns (file bytes, extension such as ".png", expected label). The label joins ``labels``
    of the digits used; without ``labels`` each digit reads "?", so the length is still the count.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
    if kind == "blank":
        return _render_blank(rng)
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
    labels = [int(label) for label in rng.integers(0, 10, size=5)]
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


def _scaled_ink(digit: np.ndarray, height: int) -> np.ndarray:
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
    ink = _scaled_ink(digit, int(rng.integers(100, 301)))
    shape = _page_shape(ink, rng, 0.2)
    page = _ink_on(_paper(shape, rng), _centred(shape, ink, rng), _pen_colour(rng))
    return _png_or_jpeg(page, rng)


def _render_chalkboard(digit: np.ndarray, rng: np.random.Generator) -> tuple[bytes, str]:
    ink = _scaled_ink(digit, int(rng.integers(100, 301)))
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
    ink = _scaled_ink(digit, int(rng.integers(120, 301)))
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
    ink = _scaled_ink(digit, height)
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
    ink = _scaled_ink(digit, int(rng.integers(80, 151)))
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
    ink = _scaled_ink(digit, int(rng.integers(14, 19)))
    top = int(rng.integers(10, shape[0] - ink.shape[0] - 10))
    left = int(rng.integers(10, shape[1] - ink.shape[1] - 10))
    page = _ink_on(_paper(shape, rng), _place(shape, ink, top, left), _pen_colour(rng))
    return _encode(page, ".png"), ".png"


def _render_huge(digit: np.ndarray, rng: np.random.Generator) -> tuple[bytes, str]:
    side = int(rng.integers(1500, 2001))
    ink = _scaled_ink(digit, int(side * rng.uniform(0.8, 0.9)))
    shape = (side, max(side, ink.shape[1] + 20))
    page = _ink_on(_paper(shape, rng), _centred(shape, ink, rng), _pen_colour(rng))
    if rng.random() < 0.5:
        return _encode(page, ".png", compress_level=1), ".png"
    return _encode(page, ".jpg", quality=85), ".jpg"


def _render_rotated(digit: np.ndarray, rng: np.random.Generator) -> tuple[bytes, str]:
    ink = _scaled_ink(digit, int(rng.integers(100, 251)))
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
    inks = [_scaled_ink(digit, int(height * rng.uniform(0.85, 1.1))) for digit in digits]
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
        ink = _scaled_ink(digit, int(side * rng.uniform(0.5, 0.8)))
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
    ink = _scaled_ink(_as_float(digit), int(rng.integers(80, 201)))
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


# The bundled examples/ folder: one file per situation a user meets, each named after its answer.
EXAMPLE_KINDS = (
    "paper", "chalkboard", "photo", "canvas", "offcenter", "small",
    "rotated", "row", "transparent", "formats", "formats", "blank",
)  # fmt: skip


def write_examples(folder: str, seed: int = 2024) -> list[str]:
    """Write the example images (deterministic for a seed); returns the file paths."""
    from pathlib import Path

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for index, kind in enumerate(EXAMPLE_KINDS, start=1):
        data, extension, label = make_example(kind, rng)
        path = out / f"{index:02d}-{kind}-{label or 'none'}{extension}"
        path.write_bytes(data)
        paths.append(str(path))
    return paths


if __name__ == "__main__":
    import sys

    for written in write_examples(sys.argv[1] if len(sys.argv) > 1 else "examples"):
        print(written)
