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
import re
import stat
import struct
import subprocess
import sys
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from digitrec import layout
from digitrec.config import available_cores

IMAGE_SIZE = 28
BOX_SIZE = 20
MAX_FILE_BYTES = 20 * 1024 * 1024
MAX_PIXELS = 50_000_000
# The formats read. Pillow opens each from its header alone; every other format is refused
# unread: ICO decodes its largest picture while opening, EPS hands the file to Ghostscript, and
# each further decoder is more code within reach of a hostile file.
FORMATS = ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP", "PPM")
FORMAT_NAMES = "PNG, JPEG, GIF, BMP, TIFF, WebP or PNM (PBM, PGM, PPM)"
# A decompression bomb is a small file that decodes to a huge picture: a 60 KB PNG of 7000x7000
# white pixels takes 1 GB and a second to read. Past a large photo's pixel count, a file must hold
# at least one byte of image data per BOMB_PIXELS_PER_BYTE pixels. Image data is what the decoder
# inflates (a PNG's IDAT chunks, a JPEG's scans), so padding in other chunks does not count. A
# blank 2000x1300 canvas is 200 pixels per byte, a phone photo under 10.
BOMB_MIN_PIXELS = 16_000_000
BOMB_PIXELS_PER_BYTE = 200
# Each scan of a progressive JPEG is one more pass over every block of the picture, so a small
# file repeating a scan hundreds of times takes minutes to decode. Encoders write about 10.
MAX_JPEG_SCANS = 50
# PNG chunks and JPEG markers are read one at a time in Python. Real files have a few thousand at
# most (a PNG with one IDAT chunk per row); a hostile one can hold millions of tiny ones.
MAX_SEGMENTS = 50_000
# Files past either size are read in a process of their own, killed at DECODE_DEADLINE_S (see
# `extract_isolated`). Below both, the header checks bound the decoding time to well under a
# second, and a process would cost more than the work.
ISOLATE_PIXELS = 16_000_000
ISOLATE_BYTES = 4 * 2**20
DECODE_DEADLINE_S = 10.0
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# The next JPEG marker: 0xFF and a code. In scan data 0xFF00 stands for a data byte 0xFF,
# 0xFFD0-0xFFD7 are restart markers within the scan, and further 0xFF bytes are fill.
JPEG_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
# Formats Pillow does not know, by signature and its offset, to name them when refusing.
OTHER_SIGNATURES = (
    (b"%PDF", 0, "PDF"),
    (b"<svg", 0, "SVG"),
    (b"\xff\x0a", 0, "JPEG XL"),
    (b"JXL ", 4, "JPEG XL"),
    (b"ftypheic", 4, "HEIF"),
    (b"ftypheix", 4, "HEIF"),
    (b"ftypmif1", 4, "HEIF"),
    (b"ftyp", 4, "ISO media (HEIF or video)"),
)

# Large photos are shrunk to this longest side before the ink and box steps: 1024 px is far more
# than a 20x20 box needs, and it keeps the morphology below a few milliseconds.
WORKING_SIZE = 1024
# A JPEG larger than that is decoded at a reduction of its DCT (1/2, 1/4, 1/8), the picture
# most of its decoding time is spent on; down to this fraction of WORKING_SIZE the reduced
# picture is worked on as it is (a 4000 px photo at 1000 px), which spares the resize too.
DRAFT_FRACTION = 0.9
# Ink whose strokes are this wide (pixels) at half the working scale is read at that scale;
# pictures whose longest side would then be under MIN_HALF_SIDE never are.
THICK_STROKE = 2.5
MIN_HALF_SIDE = 300
# Ink at least this strong is the solid core of a stroke at half the working scale.
CORE_INK = 0.9
# Side of the thumbnail on which polarity and the background illumination are estimated. Strokes
# shrink to a pixel or two there, so a morphological opening removes them and leaves the paper.
BACKGROUND_SIZE = 64
# Ink that differs from the paper by less than this (gray levels in [0, 1], above the noise) is
# faded in the ink map: photos of blank pages leave up to about 0.2 of lighting residue, while
# pen on paper differs by 0.35 or more even in a shadow.
MIN_CONTRAST = 0.3
# Side of the thumbnail on which the polarity is decided: a digit a hundredth of the picture
# tall still spans a pixel or two there. Departures from the paper smaller than
# POLARITY_SLACK (gray levels) do not vote on it.
POLARITY_SIZE = 128
POLARITY_SLACK = 0.04
# Differences from the paper below this many standard deviations of its noise are noise; the
# noise is measured on about NOISE_SAMPLE pixels spread over the picture (fewer move the ink
# map of a blank photo's band of light across the ink threshold).
NOISE_SIGMAS = 4.0
NOISE_SAMPLE = 20_000
# Lowest threshold on the ink map for the connected components: Otsu on a nearly blank page would
# otherwise split the noise in two.
MIN_INK_THRESHOLD = 0.3
# Components smaller than this fraction of the image's shorter side are specks of dust or noise.
MIN_SPECK_FRACTION = 0.02
# On a page whose tallest mark is under FAINT_BELOW px (a page seen from afar) and has no paper
# structure, a thin stroke fades to a grey that Otsu's threshold leaves out or breaks into
# specks. Ink above FAINT_INK makes a mark of its own where no piece of it over the threshold
# spans FAINT_SHARE of its height.
FAINT_BELOW = 20
FAINT_INK = 0.12
FAINT_SHARE = 0.6
# Components touching an image edge along this fraction of their extent (and at least
# EDGE_MIN_FRACTION of that image side) are page edges or shadow bands, not digits.
EDGE_CONTACT_FRACTION = 0.5
EDGE_MIN_FRACTION = 0.1
# Groups shorter than this fraction of the tallest group are specks next to real digits.
MIN_HEIGHT_RATIO = 0.3
# A piece of a line under this share of its tallest digit, narrower than tall and within
# SLIVER_GAP of the line's height beside one digit, is part of that digit (`_join_slivers`).
SLIVER_HEIGHT = 0.4
SLIVER_GAP = 0.05
# MNIST strokes are about 2.5 px wide once the digit is scaled to the 20x20 box.
TARGET_STROKE_WIDTH = 2.5


class ImageError(ValueError):
    """A file or byte string that cannot be read as an image; the message is one human line."""


@dataclass(frozen=True)
class Digit:
    """One digit found in an image."""

    image: np.ndarray  # (28, 28) float32 in [0, 1], white on black, MNIST-normalised
    box: tuple[int, int, int, int]  # x, y, width, height in original pixels (after EXIF)
    line: int = 0  # its text line, counted from 0 at the top
    # The (h, w) float32 ink crop, in working pixels, that to_mnist was given: touching digits
    # can be cut apart from it without decoding the image again.
    ink: np.ndarray | None = None
    scale: float = 1.0  # working pixels per original pixel (box = crop box / scale)
    # Written in a box of a form's comb field, which holds one digit.
    in_box: bool = False


@dataclass(frozen=True)
class Separator:
    """A mark between digits: ".", ",", "-", "/" or ":"."""

    char: str
    box: tuple[int, int, int, int]  # x, y, width, height in original pixels (after EXIF)
    line: int = 0  # its text line, counted from 0 at the top


@dataclass(frozen=True)
class Page:
    """The digits and separators of an image, each in reading order."""

    digits: list[Digit]
    separators: list[Separator]


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
            raise ImageError(too_large_message(status.st_size))
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
        raise ImageError(too_large_message(len(data)))
    return data


def decode(data: bytes) -> np.ndarray:
    """Decode image bytes into an upright (H, W) float32 gray image in [0, 1].

    EXIF orientation is applied, 16-bit images are scaled by their full range, and transparency
    is composited onto a paper colour chosen so that ink drawn only in the alpha channel shows.
    The header is checked by `open_image` first, and any failure of a decoder is an ImageError.
    """
    gray, _ = _decode_gray(data, None)
    return _as_float(gray)


def _decode_gray(data: bytes, longest: int | None) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode image bytes into an upright (H, W) gray image, uint8 for 8-bit pictures without
    transparency and float32 in [0, 1] for the others, and the (width, height) of the whole
    upright picture.

    With ``longest``, a JPEG whose longest side is over it is decoded at a reduction of its DCT
    (see `_draft_size`): the decoder skips the fine frequencies instead of computing them for a
    resize to throw away.
    """
    _check_size(data)
    with _decoder_errors():
        image = open_image(data)
        size = image.size
        if image.format in ("JPEG", "MPO"):
            # Let the JPEG decoder keep only the luma (half the decode time, same gray), at
            # the reduction asked for.
            reduced = _draft_size(size, longest)
            if image.mode in ("RGB", "YCbCr") or reduced != size:
                image.draft("L", reduced)
        # Only the first frame of a multi-frame TIFF, GIF or MPO is decoded.
        image.load()
        decoded = image.size
        image = _exif_upright(image)
        gray = _gray_bytes(image)
        alpha = None
        if gray is None:
            gray, alpha = _gray_and_alpha(image)
    if alpha is not None:
        gray = _composite(gray, alpha)
    # A quarter turn of the EXIF orientation swaps the sides of the whole picture too.
    if image.size != decoded:
        size = (size[1], size[0])
    return gray, size


def _draft_size(size: tuple[int, int], longest: int | None) -> tuple[int, int]:
    """The size to ask of the JPEG decoder's draft mode for a picture of ``size``: the largest
    reduction (1/2, 1/4, 1/8) that keeps at least DRAFT_FRACTION of ``longest`` pixels on its
    longest side, or ``size`` itself for none.

    Pillow decodes at the largest reduction whose result is at least the size asked for.
    """
    width, height = size
    if longest is None:
        return size
    for reduction in (8, 4, 2):
        if max(width, height) >= DRAFT_FRACTION * longest * reduction:
            return (max(1, width // reduction), max(1, height // reduction))
    return size


def open_image(data: bytes) -> Image.Image:
    """Open image bytes, reading the header and layout only, and refuse them before any pixel
    is decoded: a format outside FORMATS, over MAX_PIXELS or no pixels at all, a decompression
    bomb, a JPEG of over MAX_JPEG_SCANS scans, over MAX_SEGMENTS chunks or markers.

    Raises a one-line ImageError for these and for whatever the header parser raises.
    """
    _check_size(data)
    with _decoder_errors():
        image_bytes = image_data_size(data)
        try:
            image = Image.open(io.BytesIO(data), formats=FORMATS)
        except UnidentifiedImageError:
            raise ImageError(_unidentified_message(data)) from None
        width, height = image.size
        if width * height > MAX_PIXELS:
            raise ImageError(too_many_pixels_message(width, height))
        if width == 0 or height == 0:
            raise ImageError("image has no pixels")
        bomb = decompression_bomb(width, height, image_bytes)
        if bomb is not None:
            raise ImageError(bomb)
    return image


def image_data_size(data: bytes) -> int:
    """Bytes of image data in a file, from its layout alone (nothing is decoded): a PNG's IDAT
    chunks, a JPEG's scans, the whole file for the other formats.

    Raises ImageError for a JPEG of over MAX_JPEG_SCANS scans, a PNG or JPEG of over
    MAX_SEGMENTS chunks or markers, and a WebP whose header claims over MAX_PIXELS (its decoder
    allocates the whole canvas as it opens).
    """
    if data.startswith(PNG_SIGNATURE):
        return _png_data_size(data)
    if data.startswith(b"\xff\xd8"):
        return _jpeg_data_size(data)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        size = _webp_size(data)
        if size is not None and size[0] * size[1] > MAX_PIXELS:
            raise ImageError(too_many_pixels_message(*size))
    return len(data)


def decompression_bomb(width: int, height: int, image_bytes: int) -> str | None:
    """Why a width x height image from ``image_bytes`` bytes of image data is a decompression
    bomb (see BOMB_PIXELS_PER_BYTE), or None when it is not one."""
    pixels = width * height
    if pixels <= BOMB_MIN_PIXELS or pixels <= BOMB_PIXELS_PER_BYTE * image_bytes:
        return None
    return (
        f"decompression bomb: {width}x{height} pixels from {image_bytes:,d} bytes of image data "
        f"(over {BOMB_PIXELS_PER_BYTE} pixels per byte past "
        f"{BOMB_MIN_PIXELS // 1_000_000} megapixels)"
    )


def to_ink(gray: np.ndarray) -> np.ndarray:
    """Map a gray image to an (H, W) float32 ink map: 1 = ink, 0 = background.

    The polarity comes from the background, uneven illumination is removed by subtracting a
    smooth background estimate, and noise below a few standard deviations is cut away, while the
    anti-aliased grey levels of strokes are kept.
    """
    difference, floor = _paper_difference(gray)
    return _ink_from_difference(difference, floor)


def _ink_from_difference(difference: np.ndarray, floor: float) -> np.ndarray:
    """The ink map of `to_ink` from the paper difference and its noise floor."""
    contrast = float(difference.max()) - floor
    # Strokes reach 1 a little below their peak: pen pressure and lighting vary along a stroke.
    # Below MIN_CONTRAST the map also fades with the contrast, so that a blank page's residue of
    # lighting and JPEG noise stays far below ink while faint pencil still shows.
    scale = max(contrast, MIN_CONTRAST)
    gain = min(1.0, max(contrast, 0.0) / MIN_CONTRAST) ** 2 / (0.8 * scale)
    # (difference - floor) * gain in one pass, into the difference's own memory.
    ink = cv2.addWeighted(difference, gain, difference, 0.0, -floor * gain, dst=difference)
    return np.clip(ink, 0.0, 1.0, out=ink)


def find_digit_boxes(ink: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Find the digits in an ink map as (x, y, width, height) boxes in reading order: text
    lines top to bottom, each left to right.

    Connected components of the thresholded ink are grouped into text lines, and within a line
    when they overlap horizontally (the hat of a 5, a broken 4); specks, separators and page
    edges are dropped. A blank page gives [].
    """
    lines = _read_layout(np.asarray(ink, dtype=np.float32)).lines
    return [box for boxes in lines for box in boxes]


class _Layout(NamedTuple):
    """The digit boxes of each text line (lines top to bottom, boxes left to right), the
    separators as (character, box, line) in the same order, and the digit boxes that lie in
    one box of a form's comb field, which holds one digit."""

    lines: list[list[tuple[int, int, int, int]]]
    marks: list[tuple[str, tuple[int, int, int, int], int]]
    boxed: frozenset[tuple[int, int, int, int]] = frozenset()


def _read_layout(
    ink: np.ndarray, ink_bytes: np.ndarray | None = None, structure: np.ndarray | None = None
) -> _Layout:
    """The layout of the digits in ``ink``; ``ink_bytes`` as for `_ink_components`;
    ``structure``, the paper structure erased from ``ink``, if any."""
    labels, components = _ink_components(ink, ink_bytes, faint=structure is None)
    minimum_side = max(2.0, MIN_SPECK_FRACTION * min(ink.shape))
    # A speck is small in both directions; a thin 1 is narrow but tall. Specks are kept until
    # the separators are read, since a decimal point is one.
    parts = [max(box[2], box[3]) >= minimum_side and area >= 4 for _, box, area in components]
    if not any(parts):
        return _Layout([], [])
    boxes = [box for _, box, _ in components]
    lines = layout.group_lines(boxes, MIN_HEIGHT_RATIO)
    marks = layout.find_separators(labels, components, lines, MIN_HEIGHT_RATIO)
    marked = {index for _, indices in marks for index in indices}
    digit_lines: list[list[tuple[int, int, int, int]]] = []
    numbers: dict[int, int] = {}
    boxed: set[tuple[int, int, int, int]] = set()
    for line in sorted(set(lines)):
        indices = [index for index, member in enumerate(lines) if member == line and parts[index]]
        groups = _merge_overlapping([boxes[index] for index in indices if index not in marked])
        if not groups:
            continue
        if structure is not None:
            groups, in_box = _in_cells(groups, [boxes[index] for index in indices], structure)
            if in_box is not None:  # a mark in a form's box is a digit there, no separator
                marked.difference_update(indices)
                boxed |= in_box
        tallest = max(height for _, _, _, height in groups)
        groups = _join_slivers(groups, tallest)
        groups = [box for box in groups if box[3] >= MIN_HEIGHT_RATIO * tallest]
        numbers[line] = len(digit_lines)
        digit_lines.append(sorted(groups, key=lambda box: box[0]))
    separators = []
    for char, indices in marks:
        box = boxes[indices[0]]
        for index in indices[1:]:
            box = union_box(box, boxes[index])
        if lines[indices[0]] in numbers and indices[0] in marked:
            separators.append((char, box, numbers[lines[indices[0]]]))
    marks_in_order = sorted(separators, key=lambda mark: (mark[2], mark[1][0]))
    return _Layout(digit_lines, marks_in_order, frozenset(boxed))


def _ink_components(
    ink: np.ndarray, ink_bytes: np.ndarray | None = None, faint: bool = False
) -> tuple[np.ndarray, list[tuple[int, tuple[int, int, int, int], int]]]:
    """Label the thresholded ink map; return the labels and the (label, box, area) of every
    component of two pixels or more that does not lie along an image edge. ``ink_bytes`` is
    the ink map in 0..255 (`_ink_bytes`) when the caller has it already; with ``faint``, the
    faint marks of a page of small digits are components too (`_with_faint_marks`)."""
    if ink_bytes is None:
        ink_bytes = _ink_bytes(ink)
    if int(ink_bytes.max()) < MIN_INK_THRESHOLD * 255:
        return np.zeros(ink.shape, np.int32), []
    otsu, mask = cv2.threshold(ink_bytes, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    # Otsu's own mask serves unless his threshold is under MIN_INK_THRESHOLD (on bytes,
    # cv2.threshold keeps what lies above the whole part of a threshold: 76 and 76.5 agree).
    if otsu < int(MIN_INK_THRESHOLD * 255):
        _, mask = cv2.threshold(ink_bytes, MIN_INK_THRESHOLD * 255, 255, cv2.THRESH_BINARY)
    count, labels, statistics = _label(mask)
    if faint:
        with_faint = _with_faint_marks(ink_bytes, mask, labels, statistics)
        if with_faint is not None:
            count, labels, statistics = _label(with_faint)
    # How many pixels of each component lie on each image edge: top, bottom, left, right.
    edges = [labels[0, :], labels[-1, :], labels[:, 0], labels[:, -1]]
    contacts = [np.bincount(edge, minlength=count) for edge in edges]
    image_height, image_width = ink.shape
    components = []
    for label in range(1, count):
        x, y, width, height, area = (int(value) for value in statistics[label])
        if area < 2:
            continue
        # Ink lying along an image edge for most of its length is the page edge, the table, or
        # a shadow band at the border, not a digit; a digit cut by the border only crosses it.
        # So is a sliver a pixel or two thick along an edge, however short (a scan's border).
        spans = (width, width, height, height)
        sides = (image_width, image_width, image_height, image_height)
        thick = (height, height, width, width)
        if any(
            contact[label] >= EDGE_CONTACT_FRACTION * max(span, EDGE_MIN_FRACTION * side)
            or (depth <= 2 and contact[label] >= EDGE_CONTACT_FRACTION * span)
            for contact, span, side, depth in zip(contacts, spans, sides, thick, strict=True)
        ):
            continue
        components.append((label, (x, y, width, height), area))
    return labels, components


def _with_faint_marks(
    ink_bytes: np.ndarray, mask: np.ndarray, labels: np.ndarray, statistics: np.ndarray
) -> np.ndarray | None:
    """``mask`` with the faint marks near its ink added, on a page whose tallest component
    (``labels`` and ``statistics`` of `_label`) is under FAINT_BELOW px; None when there are
    none. A faint mark is a component of the ink over FAINT_INK that no component of ``mask``
    spans FAINT_SHARE of the height of: a thin digit beside bold ones, or one broken in specks."""
    heights = statistics[1:, cv2.CC_STAT_HEIGHT]
    tallest = int(heights.max(initial=0))
    if not 0 < tallest < FAINT_BELOW:
        return None
    # Only near the ink: a mark more than two digits away from it is no digit of its number.
    x, y, width, height = cv2.boundingRect(mask)
    top, left = max(y - 2 * tallest, 0), max(x - 2 * tallest, 0)
    window = (slice(top, y + height + 2 * tallest), slice(left, x + width + 2 * tallest))
    _, low = cv2.threshold(ink_bytes[window], FAINT_INK * 255, 255, cv2.THRESH_BINARY)
    count, low_labels, low_statistics, _ = cv2.connectedComponentsWithStats(
        low, connectivity=8, ltype=cv2.CV_32S
    )
    # Each component of the mask lies inside one of the fainter ink; the reach of a faint
    # component is the height of the tallest component of the mask inside it.
    strong = labels[window]
    inked = strong > 0
    low_of = np.zeros(len(statistics), np.int64)
    low_of[strong[inked]] = low_labels[inked]
    reach = np.zeros(count, np.int64)
    np.maximum.at(reach, low_of[1:], heights)
    faint = reach < FAINT_SHARE * low_statistics[:, cv2.CC_STAT_HEIGHT]
    faint[0] = False
    if not faint.any():
        return None
    merged = mask.copy()
    merged[window][faint[low_labels]] = 255
    return merged


def _ink_bytes(ink: np.ndarray) -> np.ndarray:
    """An ink map in [0, 1] as uint8 0..255, rounded, in one pass."""
    return cv2.addWeighted(ink, 255.0, ink, 0.0, 0.0, dtype=cv2.CV_8U)


def _label(mask: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """cv2.connectedComponentsWithStats of a non-empty mask with 8-connectivity: the count,
    the labels and the statistics.

    Only the bounding box of the ink is labelled: a drawing on a blank canvas fills a fraction
    of it. Labels fit in 16 bits while the mask has fewer ink pixels than that holds, and
    OpenCV labels into 16 bits three times as fast as into 32.
    """
    x, y, width, height = cv2.boundingRect(mask)
    window = mask[y : y + height, x : x + width]
    small = width * height < 2**16 - 1 or cv2.countNonZero(window) < 2**16 - 1
    count, window_labels, statistics, _ = cv2.connectedComponentsWithStats(
        window, connectivity=8, ltype=cv2.CV_16U if small else cv2.CV_32S
    )
    labels = np.zeros(mask.shape, window_labels.dtype)
    labels[y : y + height, x : x + width] = window_labels
    statistics[1:, :2] += (x, y)
    return count, labels, statistics


def to_mnist(ink: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """Crop one digit, fit it into 20x20 keeping its aspect ratio, centre it by mass in 28x28.

    Thin strokes are thickened before shrinking so that they end up about as wide as MNIST's.
    """
    ink = np.asarray(ink, dtype=np.float32)
    x, y, width, height = (int(value) for value in box)
    crop = ink[max(y, 0) : y + height, max(x, 0) : x + width]
    peak = float(crop.max()) if crop.size else 0.0
    if peak <= 0.0:
        return np.zeros((IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    if peak < 1.0:  # a faint mark reads as well as a dark one
        crop = crop / peak
    height, width = crop.shape
    scale = BOX_SIZE / max(height, width)

    stroke_width = _stroke_width(crop)
    wanted_width = TARGET_STROKE_WIDTH / scale
    if stroke_width < wanted_width:
        # Thicken before shrinking, or a 2 px pen on a 1000 px canvas fades to nothing in 20 px.
        # Dilation is a max filter, so the anti-aliased edge keeps its grey levels.
        grow = int(round((wanted_width - stroke_width) / 2))
        if grow > 0:
            crop = _thicken(crop, grow)
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
    """Decode image bytes and return every digit in it in reading order: text lines top to
    bottom, each left to right.

    If ``stages`` is a dict it is filled with a picture of each step: "1-decoded", "2-ink",
    then, if the page had ruled lines, a grid, boxes or the like, "2b-structure" (what was
    erased) and "2c-ink" (the ink without it), then "3-boxes" (RGB uint8) and "4-digit-0",
    "4-digit-1", ...
    """
    return extract_page(data, stages).digits


def extract_page(data: bytes, stages: dict[str, np.ndarray] | None = None) -> Page:
    """Decode image bytes and return its digits and the separators between them (". , - / :"),
    both in reading order; ``stages`` as for `extract_digits`."""
    gray, (width, height) = _decode_gray(data, WORKING_SIZE)
    # Work on at most WORKING_SIZE px a side, or on the JPEG decoder's reduction a little under
    # that; boxes are scaled back to the original pixels.
    scale = min(1.0, WORKING_SIZE / max(height, width), max(gray.shape) / max(height, width))
    reading = _read_at_stroke_scale(gray, (width, height), scale)
    clean, scale = reading.clean, reading.scale
    digits = [
        Digit(
            image=to_mnist(clean, box),
            box=_scale_box(box, scale, width, height),
            line=line,
            ink=clean[max(box[1], 0) : box[1] + box[3], max(box[0], 0) : box[0] + box[2]].copy(),
            scale=scale,
            in_box=box in reading.boxed,
        )
        for line, boxes in enumerate(reading.lines)
        for box in boxes
    ]
    separators = [
        Separator(char=char, box=_scale_box(box, scale, width, height), line=line)
        for char, box, line in reading.marks
    ]
    if stages is not None:
        stages["1-decoded"] = _as_float(reading.working)
        stages["2-ink"] = reading.ink
        if reading.structure.any():
            stages["2b-structure"] = reading.structure
            stages["2c-ink"] = clean
        boxes = [box for line in reading.lines for box in line]
        stages["3-boxes"] = _draw_boxes(clean, boxes, reading.marks)
        for index, digit in enumerate(digits):
            stages[f"4-digit-{index}"] = digit.image
    return Page(digits=digits, separators=separators)


class _Reading(NamedTuple):
    """A page read at one scale: the steps of `extract_page` up to the boxes."""

    scale: float  # working pixels per original pixel
    working: np.ndarray  # (H, W) gray, uint8 or float32 in [0, 1]
    ink: np.ndarray  # (H, W) float32 ink map
    clean: np.ndarray  # the ink map with paper structure erased
    structure: np.ndarray  # what was erased
    lines: list[list[tuple[int, int, int, int]]]  # digit boxes of each text line
    marks: list[tuple[str, tuple[int, int, int, int], int]]  # separators: char, box, line
    boxed: frozenset[tuple[int, int, int, int]]  # digit boxes in one box of a form's comb


def _read_at_stroke_scale(gray: np.ndarray, size: tuple[int, int], scale: float) -> _Reading:
    """Read the decoded ``gray`` of a picture of ``size`` (width, height) at ``scale``, or at
    half of it where that loses nothing, for a quarter of the cost.

    Strokes several pixels wide hold no more than strokes half as wide, so one plain digit in
    thick strokes (a drawing on a canvas, a photo of one digit) is read at half the scale. On
    a page of several digits, narrow gaps between them would close there and dots fade, so
    it is read at the full scale.
    """
    width, height = size
    half = scale / 2
    if max(width, height) * half >= MIN_HALF_SIDE:
        working = _resize_gray(gray, (max(1, round(width * half)), max(1, round(height * half))))
        ink = _ink_from_difference(*_paper_difference(working))
        if _stroke_width(ink) >= THICK_STROKE:
            reading = _read_ink(working, ink, half)
            if _one_plain_digit(reading):
                return reading
    working = _resize_gray(gray, (max(1, round(width * scale)), max(1, round(height * scale))))
    return _read_ink(working, _ink_from_difference(*_paper_difference(working)), scale)


def _read_ink(working: np.ndarray, ink: np.ndarray, scale: float) -> _Reading:
    """Erase the paper structure from an ink map and read its digit boxes and separators."""
    clean, structure = layout.remove_structure(ink)
    # The components are found on the bytes of the ink map unless structure was erased from it.
    if clean is ink:
        found = _read_layout(clean, _ink_bytes(ink))
    else:
        found = _read_layout(clean, None, structure)
    return _Reading(scale, working, ink, clean, structure, *found)


def _one_plain_digit(reading: _Reading) -> bool:
    """Whether a reading found one digit, no wider than tall, no separator and no paper
    structure to erase, and the digit is one solid stroke: two strokes that only come close
    (a 7 and a 1 drawn 3 px apart) meet at half the scale in the grey of their blurred
    edges, below CORE_INK."""
    boxes = [box for line in reading.lines for box in line]
    plain = reading.clean is reading.ink and not reading.marks
    if not (plain and len(boxes) == 1 and boxes[0][2] <= boxes[0][3]):
        return False
    _, core = cv2.threshold(_ink_bytes(reading.ink), CORE_INK * 255, 255, cv2.THRESH_BINARY)
    if not core.any():
        return False
    _, _, statistics = _label(core)
    tall = statistics[1:, cv2.CC_STAT_HEIGHT] >= MIN_HEIGHT_RATIO * boxes[0][3]
    return int(tall.sum()) == 1


def _resize_gray(gray: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A gray image from `_decode_gray` at ``size`` (width, height), in its own type: bytes stay
    bytes, a quarter of the memory to touch. Area averaging shrinks it; a JPEG's reduction may
    fall a pixel short of the size, which is made up by interpolation."""
    if gray.shape[::-1] == size:
        return gray
    interpolation = cv2.INTER_AREA if size[0] < gray.shape[1] else cv2.INTER_LINEAR
    return cv2.resize(gray, size, interpolation=interpolation)


def extract_or_error(
    source: str | os.PathLike[str] | bytes, stages: dict | None = None, page: bool = False
) -> list[Digit] | Page | ImageError:
    """`extract_digits` of a file or its bytes (`extract_page` with ``page``), with a bad file's
    error returned, not raised.

    A file over ISOLATE_BYTES or ISOLATE_PIXELS is read by `extract_isolated`, under a deadline.
    """
    try:
        data = bytes(source) if isinstance(source, bytes | bytearray) else read_bytes(source)
        if _is_large(data):
            found = extract_isolated(data, stages)
            return found if page else found.digits
        if page:
            return extract_page(data, stages=stages)
        return extract_digits(data, stages=stages)
    except ImageError as error:
        return error
    except Exception as error:  # a fault that one file meets must not abort a batch or a server
        return ImageError(f"internal error while reading the image ({type(error).__name__})")


def extract_isolated(
    data: bytes, stages: dict | None = None, deadline_s: float = DECODE_DEADLINE_S
) -> Page:
    """`extract_page` in a Python process of its own, killed if it runs past ``deadline_s``.

    A decoder busy in C cannot be stopped from Python (a signal waits for it to return, a thread
    cannot be killed), so a process is the only sure deadline. But starting one means a fresh
    interpreter importing numpy, OpenCV and Pillow, 0.3 s on two busy cores: thirty times the
    whole work for a typical file, which would cut a batch of small files to a tenth of its
    speed. So only large files pay it (see ISOLATE_PIXELS), where it about doubles the time of
    a 20-megapixel photo; smaller ones are bounded by the checks of `open_image` instead. The
    answer comes back as an .npz of plain arrays, never a pickle, so even a decoder subverted by
    its input cannot reach this process; a decoder that crashes takes only its own process down.
    """
    command = [sys.executable, "-c", "import digitrec.preprocess as p; p._isolated_main()"]
    if stages is not None:
        command.append("--stages")
    # The child finds this very package even when it is run from a source tree.
    package_root = str(Path(__file__).resolve().parent.parent)
    paths = [package_root, os.environ.get("PYTHONPATH", "")]
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(path for path in paths if path)}
    try:
        done = subprocess.run(
            command, input=data, capture_output=True, timeout=deadline_s, env=environment
        )
    except subprocess.TimeoutExpired:  # run() has killed the process
        raise ImageError(f"took over {deadline_s:g} s to read (the deadline per image)") from None
    except OSError as error:
        raise ImageError(f"cannot start a process to read the image ({error})") from None
    if done.returncode < 0:
        raise ImageError(f"the image decoder crashed (signal {-done.returncode})")
    if done.returncode != 0:
        last = (done.stderr.decode(errors="replace").strip().splitlines() or ["no message"])[-1]
        raise ImageError(f"reading failed in its own process ({last[:200]})")
    return _unpack_page(done.stdout, stages)


def _is_large(data: bytes) -> bool:
    """Whether ``data`` is read in a process of its own; files refused from their header raise
    ImageError here, before any process starts."""
    _check_size(data)
    if len(data) > ISOLATE_BYTES:
        return True
    with open_image(data) as image:
        width, height = image.size
    return width * height > ISOLATE_PIXELS


def _isolated_main() -> None:
    """The process started by `extract_isolated`: image bytes in on stdin, an .npz out."""
    stages: dict | None = {} if "--stages" in sys.argv else None
    try:
        page = extract_page(sys.stdin.buffer.read(), stages=stages)
    except ImageError as error:
        arrays = {"error": np.array(str(error))}
    else:
        arrays = {**_pack(page.digits, "digit"), **_pack(page.separators, "separator")}
        for name, picture in (stages or {}).items():
            arrays[f"stage.{name}"] = np.asarray(picture)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    sys.stdout.buffer.write(buffer.getvalue())


def _pack(items: Sequence[Digit | Separator], group: str) -> dict[str, np.ndarray]:
    """Dataclass items as named arrays ``group.INDEX.FIELD``: no pickle needed to send them."""
    arrays = {f"{group}.count": np.array(len(items))}
    for index, item in enumerate(items):
        for field in fields(item):
            value = getattr(item, field.name)
            if value is not None:
                suffix = ".tuple" if isinstance(value, tuple) else ""
                arrays[f"{group}.{index}.{field.name}{suffix}"] = np.asarray(value)
    return arrays


def _unpack(arrays: dict[str, np.ndarray], group: str, kind: type) -> list:
    """The items `_pack` made of the dataclass ``kind``; ValueError for anything else."""
    known = {field.name for field in fields(kind)}
    values: list[dict] = [{} for _ in range(int(arrays[f"{group}.count"]))]
    for key, array in arrays.items():
        parts = key.split(".")
        if parts[0] != group or len(parts) < 3:
            continue
        index, name = int(parts[1]), parts[2]
        if name not in known or not 0 <= index < len(values):
            raise ValueError(f"unexpected array {key}")
        if parts[3:] == ["tuple"]:
            values[index][name] = tuple(element.item() for element in array)
        else:
            values[index][name] = array.item() if array.ndim == 0 else array
    return [kind(**value) for value in values]


def _unpack_page(payload: bytes, stages: dict | None) -> Page:
    """The page (and stage pictures, into ``stages``) that `_isolated_main` sent back."""
    try:
        with np.load(io.BytesIO(payload), allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
        if "error" in arrays:
            message = str(arrays["error"]).replace("\n", " ")[:300]
        else:
            message = None
            page = Page(_unpack(arrays, "digit", Digit), _unpack(arrays, "separator", Separator))
    except (ValueError, TypeError, OSError, EOFError, KeyError):
        raise ImageError("unreadable answer from the process reading the image") from None
    if message is not None:
        raise ImageError(message)
    if stages is not None:
        for name, picture in arrays.items():
            if name.startswith("stage."):
                stages[name.removeprefix("stage.")] = picture
    return page


def extract_many(
    sources: Sequence[str | os.PathLike[str] | bytes],
    stages: Sequence[dict | None] | None = None,
    workers: int | None = None,
    page: bool = False,
) -> list[list[Digit] | Page | ImageError]:
    """`extract_or_error` for many files, on `workers` threads (default: one per core); with
    ``stages``, one dict (or None) per file to fill with its step pictures; with ``page``, a
    `Page` per file.

    Pillow's decoders and OpenCV release the GIL while they work, so threads run the files in
    parallel without the start-up cost, pickling and main-module rules of worker processes.
    """
    stages = list(stages) if stages is not None else [None] * len(sources)
    workers = available_cores() if workers is None else workers
    if workers <= 1 or len(sources) < 2 * workers:
        return [
            extract_or_error(source, s, page=page)
            for source, s in zip(sources, stages, strict=True)
        ]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda source, s: extract_or_error(source, s, page), sources, stages))


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


def stages_folder(root: str | os.PathLike[str], index: int, path: str | os.PathLike[str]) -> Path:
    """``root/NNNN-stem``: the stage pictures' folder for the index-th input file.

    The index keeps two files with one stem apart, and the stem keeps only letters, digits,
    "_", "-" and inner dots, so no name ("..png", "a/../../b.png") can leave ``root``.
    """
    stem = "".join(c if c.isalnum() or c in "_-." else "_" for c in Path(path).stem)
    stem = stem.strip(".")[:80] or "image"
    return Path(root) / f"{index:04d}-{stem}"


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
    """Ink-bright difference from the estimated paper, (H, W) float32, and its noise floor.
    ``gray`` is float32 in [0, 1] or uint8.

    The paper is estimated on a thumbnail and only its smooth estimate is brought back to full
    size. A full-size array is fresh memory, whose first touch costs more than the arithmetic
    on it, so the subtraction writes into the paper's array.
    """
    gray = np.asarray(gray)
    if gray.ndim != 2 or gray.size == 0:
        raise ValueError(f"expected a non-empty (H, W) gray image, got shape {gray.shape}")
    height, width = gray.shape
    smooth = _blur(gray)
    detail = _thumbnail(smooth, POLARITY_SIZE)
    # From the full image, not from ``detail``: shrinking twice moves the estimate a little,
    # and read the benchmark's files a little worse.
    thumb = _thumbnail(smooth, BACKGROUND_SIZE)
    dark_ink = _dark_ink(detail, thumb)
    # The paper under the ink, as seen with the ink bright: dark ink is flipped for the estimate
    # and the paper flipped back, so the full image is never flipped.
    paper = 1.0 - _background(1.0 - thumb) if dark_ink else _background(thumb)
    paper = cv2.resize(paper, (width, height), interpolation=cv2.INTER_LINEAR)
    first, second = (paper, smooth) if dark_ink else (smooth, paper)
    difference = cv2.subtract(first, second, dst=paper)
    return difference, _noise_floor(difference)


def _blur(gray: np.ndarray) -> np.ndarray:
    """A light 3x3 Gaussian blur, as float32 in [0, 1]: it takes the edge off sensor and JPEG
    noise, and a 2 px stroke survives it.

    Bytes are blurred straight into floats, the scaling to [0, 1] folded into the kernel: one
    pass and one array, where converting first would take two of each. (Blurring into bytes
    would round the gray, and low-contrast pages turn on such details.)
    """
    if gray.dtype != np.uint8:
        return cv2.GaussianBlur(gray.astype(np.float32, copy=False), (3, 3), 0)
    kernel = np.float32([0.25, 0.5, 0.25])
    return cv2.sepFilter2D(gray, cv2.CV_32F, kernel / np.float32(255.0), kernel)


def _thumbnail(smooth: np.ndarray, side: int) -> np.ndarray:
    """The image area-averaged down to ``side`` pixels on its longest side (never enlarged):
    strokes shrink to a few pixels and the noise averages away."""
    height, width = smooth.shape
    scale = min(1.0, side / max(height, width))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(smooth, size, interpolation=cv2.INTER_AREA)


def _dark_ink(detail: np.ndarray, thumb: np.ndarray) -> bool:
    """Whether the ink is darker than the paper, from two thumbnails of the picture: ``detail``
    and the smaller ``thumb``.

    The darkest and lightest departures from the local paper are compared. The paper here is a
    large median, which ignores strokes (a minority of any window) yet follows gradients and
    shadow edges, so on a photo the lit side of the page does not pass for ink; it is as
    smooth as the lighting, so it is taken on the smaller thumbnail and enlarged.
    """
    thumb_bytes = np.clip(thumb * 255.0 + 0.5, 0, 255).astype(np.uint8)
    median_side = max(3, (max(thumb.shape) // 2) | 1)
    paper = cv2.medianBlur(thumb_bytes, median_side).astype(np.float32) / 255.0
    paper = cv2.resize(paper, detail.shape[::-1], interpolation=cv2.INTER_LINEAR)
    departure = detail - paper
    # Sums rather than extremes: where strokes crowd a window (a huge bold digit) the median
    # mistakes a small patch of paper for ink, but the strokes themselves still outweigh it.
    # Squared, so that a few strong departures (small digits far away) outweigh the many
    # faint ones of mottled paper and uneven light.
    darker = float(np.square(np.maximum(-departure - POLARITY_SLACK, 0.0)).sum())
    lighter = float(np.square(np.maximum(departure - POLARITY_SLACK, 0.0)).sum())
    return darker > lighter


def _background(thumb: np.ndarray) -> np.ndarray:
    """The background under bright ink on a thumbnail.

    An opening removes bright strokes narrower than its kernel and keeps gradients and shadow
    edges, which are wider. The kernel is a sixth of the thumbnail, to follow the lighting
    closely, or wider than the thickest blob of ink (the junction of a bold marker's 4), found
    from the distance transform of an Otsu ink mask.
    """
    thumb_bytes = np.clip(thumb * 255.0 + 0.5, 0, 255).astype(np.uint8)
    _, strong = cv2.threshold(thumb_bytes, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    distance = cv2.distanceTransform(strong, cv2.DIST_L2, 3)
    longest_side = max(thumb.shape)
    kernel_side = max(longest_side // 6, int(2.0 * float(distance.max())) + 3)
    kernel_side = max(3, min(kernel_side, longest_side // 2) | 1)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (kernel_side, kernel_side))
    # Reflecting at the border keeps a shadow's wedge at the edge from looking like a stroke.
    return cv2.morphologyEx(thumb, cv2.MORPH_OPEN, kernel, borderType=cv2.BORDER_REFLECT)


def _noise_floor(difference: np.ndarray) -> float:
    """The level below which a difference from the paper is noise, from a subsample: median
    and median absolute deviation ignore the ink."""
    step = max(1, int(np.sqrt(difference.size / NOISE_SAMPLE)))
    sample = np.array(difference[::step, ::step], dtype=np.float32).ravel()  # a copy
    centre = _median(sample)
    noise = 1.4826 * _median(np.abs(sample - np.float32(centre), out=sample))
    return max(centre + NOISE_SIGMAS * noise, 0.0)


def _median(values: np.ndarray) -> float:
    """The median of a flat float32 array of finite values, which it reorders in place: what
    np.median gives, from one partition and without its checks, which cost more than the
    partition itself on a page's noise sample."""
    half = values.size // 2
    if values.size % 2:
        values.partition(half)
        return float(values[half])
    values.partition((half - 1, half))
    return float((values[half - 1] + values[half]) / np.float32(2))


def too_large_message(size: int) -> str:
    return f"file too large ({size / 2**20:.1f} MiB, limit {MAX_FILE_BYTES // 2**20} MiB)"


def too_many_pixels_message(width: int, height: int) -> str:
    return f"image too large ({width}x{height} pixels, limit {MAX_PIXELS // 1_000_000} megapixels)"


def _check_size(data: bytes) -> None:
    if not data:
        raise ImageError("empty file")
    if len(data) > MAX_FILE_BYTES:
        raise ImageError(too_large_message(len(data)))


@contextmanager
def _decoder_errors() -> Iterator[None]:
    """Turn whatever Pillow raises while opening or decoding into a one-line ImageError.

    Pillow warns (and past twice its limit, raises) about decompression bombs; both mean the file
    is too large for us, so the warning is raised as an error here.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
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
    except Exception as error:
        # Whatever else a decoder raises is this file's failure, not the batch's or the server's.
        raise ImageError(f"cannot decode image ({type(error).__name__})") from None


def _unidentified_message(data: bytes) -> str:
    """Why Pillow would not open ``data`` as one of FORMATS, naming the format its first bytes
    announce. Only signatures are compared: no decoder outside FORMATS ever sees the file."""
    prefix = data[:16]
    for name in list(Image.ID):  # a copy: another thread may be registering Pillow's plugins
        accept = Image.OPEN[name][1]
        try:
            announced = accept is not None and bool(accept(prefix))
        except Exception:  # a signature test that trips on a short prefix announces nothing
            announced = False
        if announced:
            if name in FORMATS:
                return f"corrupt or truncated {name} header"
            return f"unsupported image format {name}; use {FORMAT_NAMES}"
    for signature, offset, name in OTHER_SIGNATURES:
        if data[offset : offset + len(signature)] == signature:
            return f"unsupported image format {name}; use {FORMAT_NAMES}"
    return "not an image (unrecognised format)"


def _png_data_size(data: bytes) -> int:
    """Total length of a PNG's IDAT chunks, from the chunk headers (nothing is inflated)."""
    total, position, chunks = 0, len(PNG_SIGNATURE), 0
    while position + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, position)
        chunks += 1
        if chunks > MAX_SEGMENTS:
            raise ImageError(f"too many PNG chunks (over {MAX_SEGMENTS:,d})")
        if kind == b"IDAT":
            # A chunk cut short by the end of the file holds only what is there.
            total += min(length, len(data) - position - 8)
        elif kind == b"IEND":
            break
        position += 12 + length
    return total


def _jpeg_data_size(data: bytes) -> int:
    """Total length of a JPEG's scans, walking its markers as the decoder does (nothing is
    decoded); refuses over MAX_JPEG_SCANS scans or MAX_SEGMENTS markers.

    A marker segment is skipped by its length. Scan data has no length: it runs to the next
    marker, found by JPEG_MARKER, which passes over what the entropy-coded data may hold.
    """
    total = scans = segments = 0
    position = 2  # past the start-of-image marker
    while (found := JPEG_MARKER.search(data, position)) is not None:
        marker, position = data[found.start() + 1], found.end()
        segments += 1
        if segments > MAX_SEGMENTS:
            raise ImageError(f"too many JPEG markers (over {MAX_SEGMENTS:,d})")
        if marker == 0xD9:  # end of image: the decoder reads nothing after it
            break
        if marker in (0x01, 0xD8):  # markers without a length
            continue
        position += int.from_bytes(data[position : position + 2], "big")
        if marker == 0xDA:  # start of scan: its header, then the entropy-coded data
            scans += 1
            if scans > MAX_JPEG_SCANS:
                raise ImageError(
                    f"too many JPEG scans (over {MAX_JPEG_SCANS}; a progressive photo has about 10)"
                )
            following = JPEG_MARKER.search(data, position)
            end = following.start() if following is not None else len(data)
            total += end - found.start()
            position = end
    return total


def _webp_size(data: bytes) -> tuple[int, int] | None:
    """A WebP's canvas size from the header of its first chunk; None if it is not there."""
    kind = data[12:16]
    if kind == b"VP8X" and len(data) >= 30:
        width, height = data[24:27], data[27:30]
        return int.from_bytes(width, "little") + 1, int.from_bytes(height, "little") + 1
    if kind == b"VP8L" and len(data) >= 25 and data[20] == 0x2F:
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if kind == b"VP8 " and len(data) >= 30 and data[23:26] == b"\x9d\x01\x2a":
        width, height = data[26:28], data[28:30]
        return int.from_bytes(width, "little") & 0x3FFF, int.from_bytes(height, "little") & 0x3FFF
    return None


def _exif_upright(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation tag; a damaged EXIF block is ignored rather than fatal."""
    try:
        # Without a turn or flip to apply, exif_transpose would only copy the pixels.
        if image.getexif().get(ExifTags.Base.Orientation, 1) not in range(2, 9):
            return image
        upright = ImageOps.exif_transpose(image)
    except Exception:  # EXIF parsing fails in many ways; the pixels are still fine
        return image
    return upright if upright is not None else image


def _gray_bytes(image: Image.Image) -> np.ndarray | None:
    """The (H, W) uint8 gray of an 8-bit picture without transparency; None for the others,
    which `_gray_and_alpha` reads. Bytes halve the memory traffic of the resize to the
    working size and of everything before it."""
    if image.mode not in ("1", "L", "RGB", "CMYK", "YCbCr") or "transparency" in image.info:
        return None
    gray = image if image.mode == "L" else image.convert("L")
    return np.asarray(gray, dtype=np.uint8)


def _as_float(gray: np.ndarray) -> np.ndarray:
    """A gray image from `_decode_gray` as float32 in [0, 1]."""
    if gray.dtype == np.uint8:
        return np.divide(gray, np.float32(255.0), dtype=np.float32)
    return gray.astype(np.float32, copy=False)


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
        # A float image (PFM) may hold NaN or infinities: no paper or ink level, so 0.
        values = np.asarray(image).astype(np.float32)
        values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
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
                result[-1] = union_box(result[-1], box)
                merged = True
            else:
                result.append(box)
        groups = sorted(result)
    return groups


def _join_slivers(
    groups: list[tuple[int, int, int, int]], tallest: int
) -> list[tuple[int, int, int, int]]:
    """``groups`` (a line's digit boxes) with each sliver (a piece under SLIVER_HEIGHT of the
    line's ``tallest`` digit and narrower than tall) that lies beside one digit, within
    SLIVER_GAP of the line's height of its side and its middle within its rows, joined to that
    digit: the tail of a 2 parted from its stroke by a thin pen read as a 1 of its own."""
    reach = max(2.0, SLIVER_GAP * tallest)
    slivers = [box[3] < SLIVER_HEIGHT * tallest and box[2] < box[3] for box in groups]
    whole = [box for box, sliver in zip(groups, slivers, strict=True) if not sliver]
    joined = list(whole)
    for box in (box for box, sliver in zip(groups, slivers, strict=True) if sliver):
        beside = [
            index
            for index, digit in enumerate(whole)
            if _gap_between(box, digit) <= reach
            and digit[1] <= box[1] + box[3] / 2 <= digit[1] + digit[3]
        ]
        if len(beside) == 1:
            joined[beside[0]] = union_box(joined[beside[0]], box)
        else:
            joined.append(box)
    return sorted(joined)


def _gap_between(first: tuple[int, ...], second: tuple[int, ...]) -> int:
    """The columns between two boxes side by side (negative where they overlap)."""
    return max(first[0], second[0]) - min(first[0] + first[2], second[0] + second[2])


def _in_cells(
    groups: list[tuple[int, int, int, int]],
    every: list[tuple[int, int, int, int]],
    structure: np.ndarray,
) -> tuple[list[tuple[int, int, int, int]], set[tuple[int, int, int, int]] | None]:
    """The digit boxes of a line (``groups``, left to right) once the cells of a form's comb
    or a grid that the line crosses are known, and when the cells are a comb's, each wide
    enough for one digit, the boxes that lie in one cell (else None). In a comb every piece
    of ink in the line (``every``, separators' marks included) belongs to the digit of its
    cell."""
    top = min(box[1] for box in groups)
    bottom = max(box[1] + box[3] for box in groups)
    walls = layout.walls_across(structure, top, bottom)
    if walls.size < 2:
        return groups, None
    left, right = groups[0][0], max(box[0] + box[2] for box in groups)
    walls = layout.regular_walls(walls, left, right)
    tallest = max(box[3] for box in groups)
    pitch, slack = _pitch_and_slack(walls)
    if pitch < layout.COMB_PITCH * tallest:
        return _merge_in_cells(groups, walls, tallest), None
    groups = _merge_in_cells(_merge_overlapping(every), walls, tallest)
    boxed = set()
    for box in groups:
        cell = np.searchsorted(walls, box[0] + box[2] / 2)
        one = 0 < cell < walls.size and walls[cell] - walls[cell - 1] < 1.5 * pitch
        if one and walls[cell - 1] - slack <= box[0] <= box[0] + box[2] <= walls[cell] + slack:
            boxed.add(box)
    return groups, boxed


def _pitch_and_slack(walls: np.ndarray) -> tuple[float, float]:
    """The usual width of the cells between ``walls``, and how far past a wall a stroke pushed
    over it, or a piece of the wall left by the erasure, may lie."""
    pitch = float(np.median(np.diff(walls)))
    return pitch, max(3.0, layout.WALL_OFFSET * pitch)


def _merge_in_cells(
    groups: list[tuple[int, int, int, int]], walls: np.ndarray, height: int
) -> list[tuple[int, int, int, int]]:
    """Join the pieces of a line (sorted left to right) that lie in one cell between
    ``walls``, a cell no wider than layout.CELL_WIDTH digit heights: erasing the cell's walls
    cuts a digit that leans on them in two, and a cell holds one digit. Thin pieces of the
    walls themselves, kept where a stroke leant on them, are left out."""
    centres = np.array([box[0] + box[2] / 2 for box in groups])
    nearest = np.abs(centres[:, None] - walls[None, :]).min(axis=1)
    thin = np.array([box[2] for box in groups]) <= layout.WALL_PIECE * height
    piece = thin & (nearest <= _pitch_and_slack(walls)[1])
    groups = [box for box, drop in zip(groups, piece, strict=True) if not drop]
    if not groups:
        return groups
    cells = np.searchsorted(walls, centres[~piece])
    joined = [groups[0]]
    for box, cell, previous in zip(groups[1:], cells[1:], cells[:-1], strict=True):
        inside = 0 < cell < walls.size
        narrow = inside and walls[cell] - walls[cell - 1] <= layout.CELL_WIDTH * height
        if cell == previous and narrow:
            joined[-1] = union_box(joined[-1], box)
        else:
            joined.append(box)
    return joined


def _overlap_horizontally(first: tuple[int, ...], second: tuple[int, ...]) -> bool:
    overlap = -_gap_between(first, second)
    # Half the narrower width: slanted neighbours in a row touch a little and must stay apart.
    return overlap > 0 and overlap >= 0.5 * min(first[2], second[2])


def union_box(first: tuple[int, ...], second: tuple[int, ...]) -> tuple[int, int, int, int]:
    """The smallest (x, y, width, height) box that holds both boxes."""
    left = min(first[0], second[0])
    top = min(first[1], second[1])
    right = max(first[0] + first[2], second[0] + second[2])
    bottom = max(first[1] + first[3], second[1] + second[3])
    return (left, top, right - left, bottom - top)


def _thicken(crop: np.ndarray, grow: int) -> np.ndarray:
    """Dilate an ink crop by a disk of radius ``grow``, padded by ``grow`` on every side.

    The max filter runs on bytes: it picks one of the values it is given, so only their
    rounding to 1/255 changes. And the disk is the union of a few centred rectangles, so the
    dilation is the maximum of their dilations, each of them separable: a row pass and a
    column pass instead of a pass per pixel of the disk.
    """
    crop_bytes = cv2.copyMakeBorder(
        _ink_bytes(crop), grow, grow, grow, grow, cv2.BORDER_CONSTANT, value=0
    )
    side = 2 * grow + 1
    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (side, side))
    thick = np.zeros_like(crop_bytes)
    for half_width, half_height in _disk_rectangles(disk):
        rectangle = np.ones((2 * half_height + 1, 2 * half_width + 1), np.uint8)
        np.maximum(thick, cv2.dilate(crop_bytes, rectangle), out=thick)
    return _as_float(thick)


def _disk_rectangles(disk: np.ndarray) -> list[tuple[int, int]]:
    """Centred rectangles (half width, half height) whose union is a convex, centred kernel:
    for each width of its rows, the tallest rectangle of rows at least that wide."""
    radius = disk.shape[0] // 2
    tallest: dict[int, int] = {}
    for row, count in enumerate(np.count_nonzero(disk, axis=1)):
        half_width = (int(count) - 1) // 2
        tallest[half_width] = max(tallest.get(half_width, 0), abs(row - radius))
    return sorted(tallest.items())


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


def _draw_boxes(
    ink: np.ndarray,
    boxes: list[tuple[int, int, int, int]],
    separators: Sequence[tuple[str, tuple[int, int, int, int], int]] = (),
) -> np.ndarray:
    """An RGB uint8 picture of the ink map with each digit box drawn in red and numbered in
    reading order, and each separator's box in green with its character."""
    gray = np.clip(ink * 255.0 + 0.5, 0, 255).astype(np.uint8)
    picture = np.ascontiguousarray(np.stack([gray, gray, gray], axis=-1))
    thickness = max(1, max(ink.shape) // 300)
    labelled = [(str(index), box, (255, 0, 0)) for index, box in enumerate(boxes)]
    labelled += [(char, box, (0, 200, 0)) for char, box, _ in separators]
    for text, (x, y, width, height), colour in labelled:
        cv2.rectangle(picture, (x, y), (x + width - 1, y + height - 1), colour, thickness)
        cv2.putText(
            picture,
            text,
            (x, max(0, y - 3)),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.4 * thickness,
            colour,
            thickness,
        )
    return picture
