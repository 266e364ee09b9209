"""Turn any image a user hands over into MNIST-like 28x28 digits.

MNIST digits are white ink on black, size-normalised into a 20x20 box keeping their aspect
ratio, pasted into a 28x28 field so that their centre of mass sits at the centre, with values in
[0, 1]. Users hand over photos with shadows and noise, phone JPEGs with EXIF rotation, CMYK JPEGs,
transparent canvases whose ink lives only in the alpha channel, 16-bit and palette PNGs, GIFs,
chalk on a dark board, several digits in a row, or blank pages. Each step below is a pure function,
array in and array out:

    read_bytes -> decode -> to_ink -> find_digit_boxes -> to_mnist

and ``extract_digits`` wires them together. Images are (H, W) float32 arrays in [0, 1]; boxes
are (x, y, width, height) in pixels.
"""

from __future__ import annotations

import errno
import io
import os
import stat
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from digitrec.config import available_cores

IMAGE_SIZE = 28
BOX_SIZE = 20
MAX_FILE_BYTES = 20 * 1024 * 1024
MAX_PIXELS = 50_000_000

# Large photos are shrunk to this longest side before the ink and box steps: 1024 px is far more
# than a 20x20 box needs, and it keeps the morphology below a few milliseconds.
WORKING_SIZE = 1024
# Side of the thumbnail on which polarity and the background illumination are estimated. Strokes
# shrink to a pixel or two there, so a morphological opening removes them and leaves the paper.
BACKGROUND_SIZE = 64
# Ink that differs from the paper by less than this (gray levels in [0, 1], above the noise) is
# faded in the ink map: photos of blank pages leave up to about 0.2 of lighting residue, while
# pen on paper differs by 0.35 or more even in a shadow.
MIN_CONTRAST = 0.3
# Departures from the paper smaller than this (gray levels) do not vote on the polarity.
POLARITY_SLACK = 0.02
# Differences from the paper below this many standard deviations of its noise are noise.
NOISE_SIGMAS = 4.0
# Lowest threshold on the ink map for the connected components: Otsu on a nearly blank page would
# otherwise split the noise in two.
MIN_INK_THRESHOLD = 0.3
# Components smaller than this fraction of the image's shorter side are specks of dust or noise.
MIN_SPECK_FRACTION = 0.03
# Components touching an image edge along this fraction of their extent (and at least
# EDGE_MIN_FRACTION of that image side) are page edges or shadow bands, not digits.
EDGE_CONTACT_FRACTION = 0.5
EDGE_MIN_FRACTION = 0.1
# Groups shorter than this fraction of the tallest group are specks next to real digits.
MIN_HEIGHT_RATIO = 0.3
# MNIST strokes are about 2.5 px wide once the digit is scaled to the 20x20 box.
TARGET_STROKE_WIDTH = 2.5


class ImageError(ValueError):
    """A file or byte string that cannot be read as an image; the message is one human line."""


@dataclass(frozen=True)
class Digit:
    """One digit found in an image."""

    image: np.ndarray  # (28, 28) float32 in [0, 1], white on black, MNIST-normalised
    box: tuple[int, int, int, int]  # x, y, width, height in original pixels (after EXIF)


def read_bytes(path: str | os.PathLike[str]) -> bytes:
    """Read an image file, refusing what is not a readable, non-empty file of sane size."""
    try:
        # stat follows symlinks, so a loop or a dangling link fails here, before any open().
        status = os.stat(path)
        if stat.S_ISDIR(status.st_mode):
            raise ImageError("is a directory, not an image file")
        if not stat.S_ISREG(status.st_mode):
            # A FIFO or device would block or never end.
            raise ImageError("not a regular file")
        if status.st_size > MAX_FILE_BYTES:
            raise ImageError(_too_large_message(status.st_size))
        with open(path, "rb") as file:
            # Read one byte past the limit in case the file grew since stat().
            data = file.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise ImageError("file not found") from None
    except IsADirectoryError:
        raise ImageError("is a directory, not an image file") from None
    except PermissionError:
        raise ImageError("permission denied") from None
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise ImageError("symbolic link loop") from None
        raise ImageError(f"cannot read file ({error.strerror or type(error).__name__})") from None
    if not data:
        raise ImageError("empty file")
    if len(data) > MAX_FILE_BYTES:
        raise ImageError(_too_large_message(len(data)))
    return data


def decode(data: bytes) -> np.ndarray:
    """Decode image bytes into an upright (H, W) float32 gray image in [0, 1].

    EXIF orientation is applied, 16-bit images are scaled by their full range, and transparency
    is composited onto a paper colour chosen so that ink drawn only in the alpha channel shows.
    """
    if not data:
        raise ImageError("empty file")
    if len(data) > MAX_FILE_BYTES:
        raise ImageError(_too_large_message(len(data)))
    try:
        # Pillow warns (and past twice its limit, raises) about decompression bombs; both mean the
        # file is too large for us, so the warning is raised as an error here.
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            # Image.open reads only the header: refuse by pixel count before anything is decoded.
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise ImageError(_too_many_pixels_message(width, height))
            if width == 0 or height == 0:
                raise ImageError("image has no pixels")
            if image.format == "JPEG" and image.mode in ("RGB", "YCbCr"):
                # Let the JPEG decoder keep only the luma: half the decode time, same gray.
                image.draft("L", image.size)
            image.load()
            image = _exif_upright(image)
            gray, alpha = _gray_and_alpha(image)
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError("not an image (unrecognised format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError("image too large (decompression bomb guard)") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, TypeError):
        # Pillow reports truncated or damaged data through a mix of exception types.
        raise ImageError("corrupt or truncated image") from None
    except MemoryError:
        raise ImageError("image too large to decode") from None
    if alpha is not None:
        gray = _composite(gray, alpha)
    return gray


def to_ink(gray: np.ndarray) -> np.ndarray:
    """Map a gray image to an (H, W) float32 ink map: 1 = ink, 0 = background.

    The polarity comes from the background, uneven illumination is removed by subtracting a
    smooth background estimate, and noise below a few standard deviations is cut away, while the
    anti-aliased grey levels of strokes are kept.
    """
    difference, floor = _paper_difference(gray)
    contrast = float(difference.max()) - floor
    # Strokes reach 1 a little below their peak: pen pressure and lighting vary along a stroke.
    # Below MIN_CONTRAST the map also fades with the contrast, so that a blank page's residue of
    # lighting and JPEG noise stays far below ink while faint pencil still shows.
    scale = max(contrast, MIN_CONTRAST)
    gain = min(1.0, max(contrast, 0.0) / MIN_CONTRAST) ** 2 / (0.8 * scale)
    ink = (difference - floor) * gain
    return np.clip(ink, 0.0, 1.0).astype(np.float32)


def find_digit_boxes(ink: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Find the digits in an ink map as (x, y, width, height) boxes, left to right.

    Connected components of the thresholded ink are grouped when they overlap horizontally (the
    hat of a 5, a broken 4); specks are dropped. A blank page gives [].
    """
    ink = np.asarray(ink, dtype=np.float32)
    ink_bytes = np.clip(ink * 255.0 + 0.5, 0, 255).astype(np.uint8)
    if int(ink_bytes.max()) < MIN_INK_THRESHOLD * 255:
        return []
    otsu, _ = cv2.threshold(ink_bytes, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    threshold = max(otsu, MIN_INK_THRESHOLD * 255)
    _, mask = cv2.threshold(ink_bytes, threshold, 255, cv2.THRESH_BINARY)
    count, labels, statistics, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    minimum_side = max(2.0, MIN_SPECK_FRACTION * min(ink.shape))
    # How many pixels of each component lie on each image edge: top, bottom, left, right.
    edges = [labels[0, :], labels[-1, :], labels[:, 0], labels[:, -1]]
    contacts = [np.bincount(edge, minlength=count) for edge in edges]
    image_height, image_width = ink.shape
    boxes = []
    for label in range(1, count):
        x, y, width, height, area = (int(value) for value in statistics[label])
        # A speck is small in both directions; a thin 1 is narrow but tall.
        if max(width, height) < minimum_side or area < 4:
            continue
        # Ink lying along an image edge for most of its length is the page edge, the table, or
        # a shadow band at the border, not a digit; a digit cut by the border only crosses it.
        spans = (width, width, height, height)
        sides = (image_width, image_width, image_height, image_height)
        if any(
            contact[label] >= EDGE_CONTACT_FRACTION * max(span, EDGE_MIN_FRACTION * side)
            for contact, span, side in zip(contacts, spans, sides, strict=True)
        ):
            continue
        boxes.append((x, y, width, height))
    groups = _merge_overlapping(boxes)
    if not groups:
        return []
    tallest = max(height for _, _, _, height in groups)
    groups = [box for box in groups if box[3] >= MIN_HEIGHT_RATIO * tallest]
    return sorted(groups, key=lambda box: box[0])


def to_mnist(ink: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """Crop one digit, fit it into 20x20 keeping its aspect ratio, centre it by mass in 28x28.

    Thin strokes are thickened before shrinking so that they end up about as wide as MNIST's.
    """
    ink = np.asarray(ink, dtype=np.float32)
    x, y, width, height = (int(value) for value in box)
    crop = ink[max(y, 0) : y + height, max(x, 0) : x + width]
    if crop.size == 0 or float(crop.max()) <= 0.0:
        return np.zeros((IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    height, width = crop.shape
    scale = BOX_SIZE / max(height, width)

    stroke_width = _stroke_width(crop)
    wanted_width = TARGET_STROKE_WIDTH / scale
    if stroke_width < wanted_width:
        # Thicken before shrinking, or a 2 px pen on a 1000 px canvas fades to nothing in 20 px.
        # Dilation is a max filter, so the anti-aliased edge keeps its grey levels.
        grow = int(round((wanted_width - stroke_width) / 2))
        if grow > 0:
            crop = np.pad(crop, grow)
            side = 2 * grow + 1
            kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (side, side))
            crop = cv2.dilate(crop, kernel)
            height, width = crop.shape
            scale = BOX_SIZE / max(height, width)

    new_width = max(1, round(width * scale))
    new_height = max(1, round(height * scale))
    interpolation = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_LINEAR
    fitted = cv2.resize(crop, (new_width, new_height), interpolation=interpolation)
    fitted = np.clip(fitted, 0.0, 1.0)

    # Paste at the centre of the 28x28 field, then shift so the centre of mass lands on (14, 14)
    # as in MNIST. The shift is sub-pixel; the bilinear warp spreads it over neighbours.
    # The centre of mass in numpy: cv2.moments takes an array one or two pixels wide (a thin 1)
    # for a list of points and answers zero.
    mass = float(fitted.sum())
    if mass <= 0:
        return np.zeros((IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    rows, columns = np.indices(fitted.shape, dtype=np.float64)
    centre_x = float((columns * fitted).sum()) / mass
    centre_y = float((rows * fitted).sum()) / mass
    shift = np.float32([[1, 0, IMAGE_SIZE / 2 - centre_x], [0, 1, IMAGE_SIZE / 2 - centre_y]])
    field = cv2.warpAffine(
        fitted,
        shift,
        (IMAGE_SIZE, IMAGE_SIZE),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0.0,
    )
    return np.clip(field, 0.0, 1.0).astype(np.float32)


def extract_digits(data: bytes, stages: dict[str, np.ndarray] | None = None) -> list[Digit]:
    """Decode image bytes and return every digit in it, left to right.

    If ``stages`` is a dict it is filled with a picture of each step: "1-decoded", "2-ink",
    "3-boxes" (RGB uint8) and "4-digit-0", "4-digit-1", ...
    """
    gray = decode(data)
    height, width = gray.shape
    # Work on at most WORKING_SIZE px a side; boxes are scaled back to the original pixels.
    scale = min(1.0, WORKING_SIZE / max(height, width))
    if scale < 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        working = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
    else:
        working = gray
    ink = to_ink(working)
    boxes = find_digit_boxes(ink)
    digits = []
    for box in boxes:
        digits.append(Digit(image=to_mnist(ink, box), box=_scale_box(box, scale, width, height)))
    if stages is not None:
        stages["1-decoded"] = working
        stages["2-ink"] = ink
        stages["3-boxes"] = _draw_boxes(ink, boxes)
        for index, digit in enumerate(digits):
            stages[f"4-digit-{index}"] = digit.image
    return digits


def extract_or_error(
    source: str | os.PathLike[str] | bytes, stages: dict | None = None
) -> list[Digit] | ImageError:
    """`extract_digits` of a file or its bytes, with a bad file's error returned, not raised."""
    try:
        data = source if isinstance(source, bytes | bytearray) else read_bytes(source)
        return extract_digits(bytes(data), stages=stages)
    except ImageError as error:
        return error


def extract_many(
    sources: Sequence[str | os.PathLike[str] | bytes],
    stages: Sequence[dict | None] | None = None,
    workers: int | None = None,
) -> list[list[Digit] | ImageError]:
    """`extract_or_error` for many files, on `workers` threads (default: one per core); with
    ``stages``, one dict (or None) per file to fill with its step pictures.

    Pillow's decoders and OpenCV release the GIL while they work, so threads run the files in
    parallel without the start-up cost, pickling and main-module rules of worker processes.
    """
    stages = list(stages) if stages is not None else [None] * len(sources)
    workers = available_cores() if workers is None else workers
    if workers <= 1 or len(sources) < 2 * workers:
        return [extract_or_error(source, s) for source, s in zip(sources, stages, strict=True)]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(extract_or_error, sources, stages))


def save_stages(stages: dict[str, np.ndarray], directory: str | os.PathLike[str]) -> list[Path]:
    """Write each stage picture as ``<directory>/<name>.png`` and return the paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, picture in stages.items():
        picture = np.asarray(picture)
        if picture.dtype != np.uint8:
            picture = np.clip(picture.astype(np.float32) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        path = directory / f"{name}.png"
        Image.fromarray(picture).save(path)
        paths.append(path)
    return paths


def mnist_like(image28: np.ndarray) -> np.ndarray:
    """Return an already MNIST-normalised 28x28 digit (uint8 or float) as float32 in [0, 1]."""
    image = np.asarray(image28)
    if image.shape != (IMAGE_SIZE, IMAGE_SIZE):
        raise ValueError(f"expected a ({IMAGE_SIZE}, {IMAGE_SIZE}) image, got {image.shape}")
    if image.dtype == np.uint8 or (image.size and float(image.max()) > 1.0):
        # uint8 pixels, or a float copy of them.
        return (image.astype(np.float32) / 255.0).clip(0.0, 1.0)
    return image.astype(np.float32).clip(0.0, 1.0)


def _paper_difference(gray: np.ndarray) -> tuple[np.ndarray, float]:
    """Ink-bright difference from the estimated paper, (H, W) float32, and its noise floor."""
    gray = np.asarray(gray, dtype=np.float32)
    if gray.ndim != 2 or gray.size == 0:
        raise ValueError(f"expected a non-empty (H, W) gray image, got shape {gray.shape}")
    height, width = gray.shape
    # A light 3x3 blur takes the edge off sensor and JPEG noise; a 2 px stroke survives it.
    smooth = cv2.GaussianBlur(gray, (3, 3), 0)

    # Thumbnail for the paper estimate: area averaging shrinks strokes to a few pixels and
    # averages the noise away.
    scale = min(1.0, BACKGROUND_SIZE / max(height, width))
    thumb_size = (max(1, round(width * scale)), max(1, round(height * scale)))
    thumb = cv2.resize(smooth, thumb_size, interpolation=cv2.INTER_AREA)
    # Polarity: compare the darkest and lightest departures from the local paper. The paper here
    # is a large median, which ignores strokes (a minority of any window) yet follows gradients
    # and shadow edges, so on a photo the lit side of the page does not pass for ink.
    thumb_bytes = np.clip(thumb * 255.0 + 0.5, 0, 255).astype(np.uint8)
    median_side = max(3, (max(thumb.shape) // 2) | 1)
    paper = cv2.medianBlur(thumb_bytes, median_side).astype(np.float32) / 255.0
    departure = thumb - paper
    # Sums rather than extremes: where strokes crowd a window (a huge bold digit) the median
    # mistakes a small patch of paper for ink, but the strokes themselves still outweigh it.
    darker = float(np.maximum(-departure - POLARITY_SLACK, 0.0).sum())
    lighter = float(np.maximum(departure - POLARITY_SLACK, 0.0).sum())
    if darker > lighter:
        # Dark ink on light paper: flip so that ink is bright, as in MNIST.
        smooth = 1.0 - smooth
        thumb = 1.0 - thumb
        departure = -departure
    # The background under the (now bright) ink: an opening removes bright strokes narrower than
    # its kernel and keeps gradients and shadow edges, which are wider. The kernel is a sixth of
    # the thumbnail, to follow the lighting closely, or wider than the thickest blob of ink (the
    # junction of a bold marker's 4), found from the distance transform of an Otsu ink mask.
    thumb_bytes = np.clip(thumb * 255.0 + 0.5, 0, 255).astype(np.uint8)
    _, strong = cv2.threshold(thumb_bytes, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    distance = cv2.distanceTransform(strong, cv2.DIST_L2, 3)
    longest_side = max(thumb.shape)
    kernel_side = max(longest_side // 6, int(2.0 * float(distance.max())) + 3)
    kernel_side = max(3, min(kernel_side, longest_side // 2) | 1)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (kernel_side, kernel_side))
    # Reflecting at the border keeps a shadow's wedge at the edge from looking like a stroke.
    background = cv2.morphologyEx(thumb, cv2.MORPH_OPEN, kernel, borderType=cv2.BORDER_REFLECT)
    background = cv2.resize(background, (width, height), interpolation=cv2.INTER_LINEAR)
    difference = smooth - background

    # Noise of the paper from a subsample: median and median absolute deviation ignore the ink.
    step = max(1, int(np.sqrt(difference.size / 20_000)))
    sample = difference[::step, ::step]
    centre = float(np.median(sample))
    noise = 1.4826 * float(np.median(np.abs(sample - centre)))
    floor = max(centre + NOISE_SIGMAS * noise, 0.0)
    return difference, floor


def _too_large_message(size: int) -> str:
    return f"file too large ({size / 2**20:.1f} MiB, limit {MAX_FILE_BYTES // 2**20} MiB)"


def _too_many_pixels_message(width: int, height: int) -> str:
    return f"image too large ({width}x{height} pixels, limit {MAX_PIXELS // 1_000_000} megapixels)"


def _exif_upright(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation tag; a damaged EXIF block is ignored rather than fatal."""
    try:
        upright = ImageOps.exif_transpose(image)
    except Exception:  # EXIF parsing fails in many ways; the pixels are still fine
        return image
    return upright if upright is not None else image


def _gray_and_alpha(image: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    """Gray (H, W) float32 in [0, 1] and, if the image has transparency, alpha likewise."""
    mode = image.mode
    if mode.startswith("I;16") or mode == "I":
        values = np.asarray(image).astype(np.float32)
        # 16-bit images span 0..65535; 32-bit integer images are scaled by their own maximum.
        peak = float(values.max()) if values.size else 0.0
        full_scale = 65535.0 if peak <= 65535.0 else peak
        return np.clip(values / full_scale, 0.0, 1.0), None
    if mode == "F":
        values = np.asarray(image).astype(np.float32)
        if values.size and float(values.max()) > 1.0:
            values = values / 255.0
        return np.clip(values, 0.0, 1.0), None
    if mode in ("P", "PA") or "transparency" in image.info:
        image = image.convert("RGBA")
        mode = image.mode
    if mode in ("RGBA", "LA", "RGBa", "La"):
        gray_alpha = np.asarray(image.convert("LA"), dtype=np.float32) / 255.0
        alpha = gray_alpha[:, :, 1]
        if float(alpha.min()) >= 1.0:
            return gray_alpha[:, :, 0], None
        return gray_alpha[:, :, 0], alpha
    try:
        gray_image = image.convert("L")
    except ValueError:
        gray_image = image.convert("RGB").convert("L")
    return np.asarray(gray_image, dtype=np.float32) / 255.0, None


def _composite(gray: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Composite a gray image with alpha onto the paper colour that makes its ink visible."""
    opaque = alpha > 0.5
    coverage = float(opaque.mean())
    weight = float(alpha.sum())
    if coverage >= 0.5:
        # Mostly opaque: the opaque part is the paper itself, so fill the holes with its colour.
        paper = float(np.median(gray[opaque]))
    elif weight > 0:
        # Mostly transparent: what is opaque is the ink (often with arbitrary or zero RGB), so
        # put it on the opposite paper: dark ink on white, light ink on black.
        ink_level = float((gray * alpha).sum() / weight)
        paper = 1.0 if ink_level < 0.5 else 0.0
    else:
        paper = 1.0
    return (gray * alpha + paper * (1.0 - alpha)).astype(np.float32)


def _merge_overlapping(boxes: list[tuple[int, int, int, int]]) -> list[tuple[int, int, int, int]]:
    """Merge boxes whose horizontal extents overlap by half of the narrower one, until stable."""
    groups = sorted(boxes)
    merged = True
    while merged:
        merged = False
        result: list[tuple[int, int, int, int]] = []
        for box in groups:
            if result and _overlap_horizontally(result[-1], box):
                result[-1] = _union(result[-1], box)
                merged = True
            else:
                result.append(box)
        groups = sorted(result)
    return groups


def _overlap_horizontally(first: tuple[int, ...], second: tuple[int, ...]) -> bool:
    overlap = min(first[0] + first[2], second[0] + second[2]) - max(first[0], second[0])
    # Half the narrower width: slanted neighbours in a row touch a little and must stay apart.
    return overlap > 0 and overlap >= 0.5 * min(first[2], second[2])


def _union(first: tuple[int, ...], second: tuple[int, ...]) -> tuple[int, int, int, int]:
    left = min(first[0], second[0])
    top = min(first[1], second[1])
    right = max(first[0] + first[2], second[0] + second[2])
    bottom = max(first[1] + first[3], second[1] + second[3])
    return (left, top, right - left, bottom - top)


def _stroke_width(crop: np.ndarray) -> float:
    """Estimate the stroke width in pixels as area / (half the boundary length)."""
    mask = (crop > 0.5).astype(np.uint8)
    area = int(mask.sum())
    if area == 0:
        return 0.0
    eroded = cv2.erode(mask, np.ones((3, 3), np.uint8), borderType=cv2.BORDER_CONSTANT)
    boundary = area - int(eroded.sum())
    # A long stroke of width w has about two boundary pixels per unit of length.
    return 2.0 * area / max(boundary, 1)


def _scale_box(
    box: tuple[int, int, int, int], scale: float, width: int, height: int
) -> tuple[int, int, int, int]:
    """Map a box from working pixels back to original pixels, clipped to the image."""
    if scale >= 1.0:
        return tuple(int(value) for value in box)  # type: ignore[return-value]
    x, y, box_width, box_height = box
    left = max(0, int(np.floor(x / scale)))
    top = max(0, int(np.floor(y / scale)))
    right = min(width, int(np.ceil((x + box_width) / scale)))
    bottom = min(height, int(np.ceil((y + box_height) / scale)))
    return (left, top, right - left, bottom - top)


def _draw_boxes(ink: np.ndarray, boxes: list[tuple[int, int, int, int]]) -> np.ndarray:
    """An RGB uint8 picture of the ink map with each box drawn in red and numbered."""
    gray = np.clip(ink * 255.0 + 0.5, 0, 255).astype(np.uint8)
    picture = np.ascontiguousarray(np.stack([gray, gray, gray], axis=-1))
    thickness = max(1, max(ink.shape) // 300)
    for index, (x, y, width, height) in enumerate(boxes):
        cv2.rectangle(picture, (x, y), (x + width - 1, y + height - 1), (255, 0, 0), thickness)
        cv2.putText(
            picture,
            str(index),
            (x, max(0, y - 3)),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.4 * thickness,
            (255, 0, 0),
            thickness,
        )
    return picture
