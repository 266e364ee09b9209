"""Page layout: paper structure out of the ink map, digits into text lines, separators found.

Real pages are seldom blank paper. Notebooks are ruled (often with a margin line), squared paper
carries a grid, forms have rows of boxes, and writers underline a number or draw a box or a
circle around a digit. Left in the ink map, these lines join digits into one component or run to
the page edge. Three pure steps, arrays in and arrays out, deal with them:

    remove_structure -> group_lines -> find_separators

``remove_structure`` finds the structure on a small copy of the ink map: straight runs much
longer than a digit, closed frames around digits (boxes and comb fields), outlines around a digit
and lines under digits. It erases them at full resolution except where a stroke crosses or
touches them, so a 7 whose bar lies on a ruling keeps its bar. ``group_lines`` orders digit boxes
into text lines, top to bottom, and ``find_separators`` reads the small marks between the digits
of a line (". , - / :"). Ink maps are (H, W) float32 with 1 = ink; boxes are (x, y, width,
height) in pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

Box = tuple[int, int, int, int]

# Structure is searched on a copy of the ink map shrunk to at most this side: ruled lines stay
# long and straight there, and the morphology costs a sixteenth of full resolution.
SEARCH_SIZE = 256
# Ink above this counts for the structure search: faint printed rules reach about 0.3.
STRUCTURE_THRESHOLD = 0.15
# A straight run over this fraction of the image side is worth a closer look as a line.
CANDIDATE_FRACTION = 0.25
# Rulings, grids and comb fields are much longer than a digit is tall; strokes are not.
LINE_TO_DIGIT = 2.5
# A run from one image edge to the other needs less: a crop of one ruled line is short.
EDGE_LINE_TO_DIGIT = 1.5
# Runs are looked for on the mask thickened by this many search pixels up and down: a line
# tilted by up to about 5 degrees still runs unbroken over a candidate's length.
TILT = 3
# Lines are thin: a band of runs thicker than this (search pixels, less the tilt allowance) and
# than THIN_RATIO of its length is the bar of a bold digit.
THIN_BAND = 4
THIN_RATIO = 0.12
# Printed lines are thin: a band thicker than this fraction of a digit is not a ruling.
MAX_THICKNESS_TO_DIGIT = 0.35
# A frame's sides and dividers run across this fraction of its width or height: a printed
# divider meets both the top and the bottom, a 1 pushed against one of them does not.
FRAME_SIDE_FRACTION = 0.95
# An outline around a digit has this fraction of its ink near its convex hull.
OUTLINE_FRACTION = 0.85
# A stroke that crosses or touches a line runs on past the line's edge for this many pixels
# more; the line's own blur and thickness wobble do not.
TOUCH_DISTANCE = 3
# Leftover pieces of an erased line are found among blobs of ink above this level.
RESIDUE_THRESHOLD = 0.35
# Pen ink this much stronger than the line it lies on is a stroke, not the line.
STRONGER_INK = 0.25
# A stroke of a digit lying on a box's wall leaves it on one side at both ends of where it lay
# (a 0 leaning on a wall of its cell): a stretch of the wall shorter than this fraction of the
# digit height between two such departures on one side is kept as the stroke.
WALL_BRIDGE = 0.8
# A printed line is there along its whole length, pen strokes over it only darken it: a run that
# reaches half its level over less than this fraction of its own columns is a digit's flat
# stroke (a 2's base) lying beside a ruling too faint to be seen, not a line.
LINE_PRESENT = 0.8

# Two digits share a text line when they overlap vertically by this fraction of the shorter.
LINE_OVERLAP = 0.5
# Pieces of one broken digit sit right above each other: a gap below this fraction of their
# joint height does not start a new line.
STACKED_GAP = 0.1
# Sizes and places of separators, as fractions of the line's digit height: a dot is a blob on
# the baseline, a comma a blob there with a tail below it, a minus a flat dash at mid-height, a
# colon two dots stacked about the middle, a slash a thin straight stroke leaning right.
DOT_SIZE = (0.08, 0.35)
COMMA_HEIGHT = (0.15, 0.55)
MINUS_WIDTH = (0.2, 1.2)
MINUS_FLATNESS = 1.8
COLON_SPACING = (0.2, 0.75)
SLASH_HEIGHT = (0.6, 1.6)
# A slash leans right and is one straight stroke; a handwritten 1 leaning as far is bent or
# flagged: its middle wanders off the line through its ends by more than SLASH_BEND of its
# length, where a quick straight stroke stays within it.
SLASH_ANGLE = (14.0, 65.0)
SLASH_THINNESS = 0.15
SLASH_BEND = 0.008
# A slash covers at most this fraction of its box: a bold pen's slash leaning only 15 degrees
# has a narrow box, which its stroke fills over a third of.
SLASH_COVER = 0.45
# A vertical line of the erased structure is a wall between cells where it crosses this
# fraction of a text line's height; a cell holds one digit when it is at most CELL_WIDTH
# digit heights wide, and pieces of a digit cut apart by erasing the walls then join again.
WALL_FRACTION = 0.6
CELL_WIDTH = 1.6
# The gaps between the walls of a row of equal cells are whole multiples of the cell's width,
# give or take this fraction of it (printing, a photo's perspective).
PITCH_TOLERANCE = 0.1
# A thin piece of ink (at most WALL_PIECE of the line's digit height wide) centred within
# WALL_OFFSET of a cell's width of a wall is a piece of the wall kept where a stroke leant on it.
WALL_PIECE = 0.15
WALL_OFFSET = 0.06
# Cells at least this many digit heights wide are a form's comb, one character in each box;
# squared paper's are narrower, a digit written over two or three of them.
COMB_PITCH = 0.8
# A box of a comb field is at least this fraction of its height wide.
MIN_CELL_ASPECT = 0.5
# A separator sits in a gap: it overlaps a digit horizontally by at most this fraction of its
# own width, and lies at most this many digit heights from the nearest digit.
GAP_OVERLAP = 0.3
GAP_DISTANCE = 1.5


def remove_structure(ink: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Erase rulings, grids, frames, outlines and underlines from an ink map.

    Returns the cleaned ink map and what was erased, both (H, W) float32. A plain page, with no
    long thin run but the strokes of its digits and nothing enclosed, is returned unchanged
    after a cheap check on a small copy.
    """
    ink = np.asarray(ink, dtype=np.float32)
    search, factor = _search_image(ink)
    found = _find_structure(search)
    if found is None:
        return ink, np.zeros(ink.shape, np.float32)
    horizontal, vertical, digit_height, enclosed = found
    clean = ink.copy()
    removed = np.zeros_like(ink)
    height_limit = MAX_THICKNESS_TO_DIGIT * digit_height * factor + 2
    # Outlines go first, while whole: the top and bottom of an ellipse around a number are long
    # enough to pass for lines, and erased as lines they would leave its sides as a "(" and ")".
    # Not where vertical lines were found: a form's comb is erased as lines, its walls kept
    # where strokes lie along them.
    if enclosed and not vertical.any():
        _erase_enclosures(clean, removed, digit_height * factor)
    # Horizontal lines first, then vertical ones on what is left: where a rule meets the margin
    # line each pass sees the other line as a crossing stroke, and the second pass, with the
    # first line already gone around the crossing, erases the crossing as well.
    bands = np.zeros(ink.shape, bool)
    _erase_lines(clean, removed, bands, horizontal, factor, (height_limit, 0))
    vertical = np.ascontiguousarray(vertical.T)
    bridge = round(WALL_BRIDGE * digit_height * factor)
    _erase_lines(clean.T, removed.T, bands.T, vertical, factor, (height_limit, bridge))
    if bands.any():
        _erase_residue(clean, removed, bands)
    if enclosed:
        _erase_enclosures(clean, removed, digit_height * factor)
    return clean, removed


def _find_structure(search: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, bool] | None:
    """The horizontal and vertical lines to erase (uint8 masks of the search image), the digit
    height in search pixels, and whether outlines or underlines may be there; None if there is
    nothing to erase."""
    horizontal = _thin_runs(search, _candidate_length(search.shape[1]))
    blobs = _outer_boxes(search)
    # Outer blobs only: a digit inside a box is no blob of its own, the box frames it.
    enclosed = _encloses_or_underlines(blobs) or _framed(search, blobs)
    # Vertical lines are erased where they meet a horizontal one, or where one runs alone from
    # the top of the page to the bottom: other pages need no search for them.
    spans = bool((cv2.dilate(search[:1], np.ones((1, 5), np.uint8)) & search[-1:]).any())
    runs = _outer_boxes(horizontal)
    stacked = _stacked(runs)
    if not enclosed and not spans and not stacked and _inside_digits(runs, blobs):
        return None
    vertical = _thin_runs(search.T, _candidate_length(search.shape[0])).T
    margins = _lone_margins(vertical, blobs)
    # Digits are measured without the runs that are surely structure (families of rulings and
    # grid lines, a margin): cutting every long run out would cut a thin-pen 9 into crumbs.
    rulings = _families(horizontal)
    grid = _families(np.ascontiguousarray(vertical.T)).T
    digit_height = _digit_height(search, rulings | grid | margins)
    horizontal = _confirm_horizontal(horizontal, search, digit_height) | rulings
    # A row of thin-pen 1s is a family of vertical runs too, but it meets no ruling.
    vertical = _confirm_vertical(vertical, horizontal, digit_height)
    vertical |= _meeting(grid, horizontal) | margins
    if enclosed or stacked:
        frame_horizontal, frame_vertical = _frame_sides(search, digit_height)
        horizontal |= frame_horizontal
        vertical |= frame_vertical
    if not horizontal.any() and not vertical.any() and not enclosed:
        return None
    return horizontal, vertical, digit_height, enclosed


def _search_image(ink: np.ndarray) -> tuple[np.ndarray, int]:
    """A uint8 0/1 mask of the ink shrunk by a whole factor to at most SEARCH_SIZE a side, and
    that factor (search pixels to ink pixels)."""
    height, width = ink.shape
    factor = max(1, int(np.ceil(max(height, width) / SEARCH_SIZE)))
    # A strip narrower than one block is searched as it is.
    if factor == 1 or min(height, width) < factor:
        return (ink > STRUCTURE_THRESHOLD).astype(np.uint8), 1
    # Area averaging by a whole factor is a plain block mean, ten times cheaper than by a
    # fractional one; the few pixels past the last whole block are left out of the search.
    # A 1 px line stays as a faint one, so the threshold shrinks with the factor.
    blocks = ink[: height - height % factor, : width - width % factor]
    size = (blocks.shape[1] // factor, blocks.shape[0] // factor)
    small = cv2.resize(blocks, size, interpolation=cv2.INTER_AREA)
    return (small > STRUCTURE_THRESHOLD / factor).astype(np.uint8), factor


def _candidate_length(side: int) -> int:
    # Odd, so that the box filters in _thin_runs are centred.
    return max(9, int(np.ceil(CANDIDATE_FRACTION * side)) | 1)


def _thin_runs(mask: np.ndarray, length: int) -> np.ndarray:
    """Pixels of thin horizontal runs at least ``length`` (odd) long, as a uint8 0/1 mask.

    The mask is first thickened by TILT pixels up and down, so that a line tilted by a few
    degrees, or broken into steps by the shrinking, still has an unbroken run. A band of runs
    thicker than THIN_BAND and than THIN_RATIO of its length is the bar of a bold digit; a pen
    line under a number is as thick, but much longer.
    """
    if mask.shape[1] < length:
        return np.zeros_like(mask)
    mask = np.ascontiguousarray(mask)
    thick = cv2.dilate(mask, np.ones((2 * TILT + 1, 1), np.uint8))
    # The erosion by a long kernel as a box filter, whose cost does not grow with the kernel:
    # the sum over ``length`` pixels is ``length`` exactly where all of them are ink.
    centres = (_box_sum(thick, (length, 1)) > length - 0.5).astype(np.uint8)
    if not centres.any():
        return np.zeros_like(mask)
    thin = np.zeros_like(centres)
    for contour in _outer_contours(centres):
        _, _, width, _ = cv2.boundingRect(contour)
        # The mean thickness: a stroke lying on the line for part of its length (the base of a
        # 2 on an underline) thickens it only there.
        thickness = cv2.contourArea(contour) / width + 1 - 2 * TILT
        if thickness <= max(THIN_BAND, THIN_RATIO * (width + length - 1)):
            cv2.drawContours(thin, [contour], -1, 1, thickness=cv2.FILLED)
    runs = _box_sum(thin & centres, (length, 1)) > 0.5
    return (runs & (mask > 0)).astype(np.uint8)


def _box_sum(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Sum of a 0/1 mask over a centred (width, height) box at each pixel, as float32."""
    return cv2.boxFilter(
        mask.astype(np.uint8), cv2.CV_32F, size, normalize=False, borderType=cv2.BORDER_CONSTANT
    )


def _outer_contours(mask: np.ndarray) -> list[np.ndarray]:
    """The outer boundary of every blob of a 0/1 mask, blobs inside another's hole included:
    far cheaper than labelling the components."""
    contours, hierarchy = cv2.findContours(mask, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if hierarchy is None:
        return []
    # With RETR_CCOMP, outer boundaries have no parent; holes have one.
    return [contour for contour, links in zip(contours, hierarchy[0], strict=True) if links[3] < 0]


def _outer_boxes(mask: np.ndarray) -> np.ndarray:
    """(N, 4) int boxes (x, y, width, height) of the blobs of a 0/1 mask."""
    boxes = [cv2.boundingRect(contour) for contour in _outer_contours(mask)]
    return np.array(boxes, np.int64).reshape(-1, 4)


def _encloses_or_underlines(boxes: np.ndarray) -> bool:
    """Whether a blob's box holds another sizable one (a box or circle around a digit), or a
    flat blob lies under another (an underline): both need the closer look."""
    boxes = boxes[boxes[:, 2] * boxes[:, 3] >= 4]
    if len(boxes) < 2:
        return False
    x, y, width, height = (boxes[:, index] for index in range(4))
    right = x + width
    flat = (width >= 3 * height) & (width >= 4)
    overlap = np.minimum(right[:, None], right[None, :]) - np.maximum(x[:, None], x[None, :])
    # Row i is flat and starts below the middle of blob j, which it overlaps.
    under = (
        flat[:, None]
        & (overlap > 0.5 * np.minimum(width[:, None], width[None, :]))
        & (y[:, None] >= y[None, :] + height[None, :] // 2)
        & (height[None, :] > 2 * height[:, None])
    )
    return bool(_contains(boxes).any() or under.any())


def _framed(search: np.ndarray, blobs: np.ndarray) -> bool:
    """Whether a blob's outer rows and columns are ink along FRAME_SIDE_FRACTION of them: it
    may be a printed box with the digit it holds touching it."""
    for x, y, width, height in blobs:
        if width < 6 or height < 6:
            continue
        crop = search[y : y + height, x : x + width]
        # Side by side, so that a digit's blob is let go at its first side.
        sides = ((slice(0, 3), 0), (slice(-3, None), 0))
        sides += ((np.s_[:, :3], 1), (np.s_[:, -3:], 1))
        if all(crop[edge].max(axis=axis).mean() >= FRAME_SIDE_FRACTION for edge, axis in sides):
            return True
    return False


def _inside_digits(runs: np.ndarray, blobs: np.ndarray) -> bool:
    """Whether every run is a stroke of the blob it lies in: shorter than EDGE_LINE_TO_DIGIT
    times the blob's height, not across a blob too wide for a digit, and no member of a family
    of rulings (a margin line joins them all into one tall blob). The common page of a few
    digits is settled here, before any vertical search."""
    if len(runs) == 0:
        return True
    holds = (
        (blobs[None, :, 0] <= runs[:, None, 0])
        & (blobs[None, :, 1] <= runs[:, None, 1])
        & (blobs[None, :, 0] + blobs[None, :, 2] >= runs[:, None, 0] + runs[:, None, 2])
        & (blobs[None, :, 1] + blobs[None, :, 3] >= runs[:, None, 1] + runs[:, None, 3])
    )
    if not holds.any(axis=1).all():
        return False
    # The smallest blob around each run is the one it belongs to.
    areas = np.where(holds, blobs[None, :, 2] * blobs[None, :, 3], np.iinfo(np.int64).max)
    owner = np.argmin(areas, axis=1)
    if not (runs[:, 2] < EDGE_LINE_TO_DIGIT * blobs[owner, 3]).all():
        return False
    # A run across the whole of a blob wider than a digit: a line under digits that touch it.
    across = (runs[:, 2] >= 0.9 * blobs[owner, 2]) & (blobs[owner, 2] >= 1.2 * blobs[owner, 3])
    return not across.any() and not _in_family(runs).any()


def _stacked(boxes: np.ndarray) -> bool:
    """Whether two runs lie one above the other with the same ends: the top and bottom of a
    printed frame, or two rulings (the loops of a thin-pen 0 or 8 have ends that differ)."""
    x, y, width, _ = (boxes[:, index] for index in range(4))
    right = x + width
    slack = np.maximum(2, 0.05 * np.maximum(width, width[:, None]))
    same_ends = (np.abs(x - x[:, None]) <= slack) & (np.abs(right - right[:, None]) <= slack)
    return bool((same_ends & (np.abs(y - y[:, None]) >= 3)).any())


def _digit_height(search: np.ndarray, lines: np.ndarray) -> float:
    """Typical height of the ink that is not a known line, in search pixels (0 if none)."""
    around = cv2.dilate(lines, np.ones((3, 3), np.uint8))
    boxes = _outer_boxes(search & (1 - around))
    boxes = boxes[boxes[:, 2] * boxes[:, 3] >= 3]
    if len(boxes) == 0:
        return 0.0
    # Half the tallest and above: digits, not the crumbs the lines cut off them, nor a circle
    # around them.
    heights = boxes[~_contains(boxes).any(axis=1), 3]
    return float(np.median(heights[heights >= 0.5 * heights.max()]))


def _confirm_horizontal(
    candidates: np.ndarray, search: np.ndarray | None, digit_height: float
) -> np.ndarray:
    """Keep the candidate runs that are paper structure rather than a stroke: much longer than
    a digit, from edge to edge of the image, or (given the search mask) under two digits or
    more."""
    kept = np.zeros_like(candidates)
    width = candidates.shape[1]
    for contour in _outer_contours(candidates):
        box = cv2.boundingRect(contour)
        x, _, length, _ = box
        edge_to_edge = x <= 1 and x + length >= width - 1
        if (
            length >= LINE_TO_DIGIT * digit_height
            or (edge_to_edge and length >= EDGE_LINE_TO_DIGIT * digit_height)
            or (search is not None and _underlines(box, search, digit_height))
        ):
            cv2.drawContours(kept, [contour], -1, 1, thickness=cv2.FILLED)
    return kept & candidates


def _underlines(run: tuple[int, int, int, int], search: np.ndarray, digit_height: float) -> bool:
    """Whether a run lies along the bottoms of two digits or more, touching them or not: the
    ink above it, with the run taken out, holds two blobs of about a digit's height whose
    bottoms reach down to it, or one too wide to be a single digit."""
    x, y, width, height = run
    if width < digit_height:
        return False
    top = max(0, int(y - 1.5 * digit_height))
    above = search[top : max(top, y - 1), x : x + width]
    boxes = _outer_boxes(np.ascontiguousarray(above))
    standing = (boxes[:, 3] >= 0.5 * digit_height) & (
        top + boxes[:, 1] + boxes[:, 3] >= y - 1 - 0.3 * digit_height
    )
    # Two digits, or one blob too wide for one digit: digits that touch each other.
    wide = boxes[standing, 2] >= 1.2 * boxes[standing, 3]
    return int(standing.sum()) >= 2 or bool(wide.any())


def _families(runs: np.ndarray) -> np.ndarray:
    """The runs that belong to a family of rulings or grid lines (see _in_family)."""
    contours = _outer_contours(runs)
    kept = np.zeros_like(runs)
    boxes = np.array([cv2.boundingRect(contour) for contour in contours], np.int64)
    for contour, member in zip(contours, _in_family(boxes.reshape(-1, 4)), strict=True):
        if member:
            cv2.drawContours(kept, [contour], -1, 1, thickness=cv2.FILLED)
    return kept & runs


def _in_family(boxes: np.ndarray) -> np.ndarray:
    """Which runs belong to a family of three or more parallel runs with the same ends, much
    longer than they lie apart: rulings and grid lines. A digit has at most three such strokes
    (the loops of an 8), and they are about as far apart as they are long."""
    member = np.zeros(len(boxes), bool)
    if len(boxes) < 3:
        return member
    x, y, width, height = (boxes[:, index].astype(np.float64) for index in range(4))
    right = x + width
    slack = 0.1 * np.maximum(width, width[:, None])
    same_ends = (np.abs(x - x[:, None]) <= slack) & (np.abs(right - right[:, None]) <= slack)
    for index in range(len(boxes)):
        members = np.flatnonzero(same_ends[index])
        if len(members) >= 3:
            spacing = float(np.median(np.diff(np.sort(y[members] + height[members] / 2))))
            member[index] = width[index] >= 3 * spacing
    return member


def _confirm_vertical(
    candidates: np.ndarray, horizontal: np.ndarray, digit_height: float
) -> np.ndarray:
    """Vertical runs that are long and meet a confirmed horizontal line: margins and grids.

    A 1 is a long vertical run too, but it meets no ruling from end to end of a page.
    """
    long_enough = _confirm_horizontal(np.ascontiguousarray(candidates.T), None, digit_height).T
    return _meeting(long_enough, horizontal)


def _meeting(vertical: np.ndarray, horizontal: np.ndarray) -> np.ndarray:
    """The vertical runs that touch or cross a horizontal run, as a uint8 0/1 mask."""
    kept = np.zeros(vertical.shape, np.uint8)
    if not horizontal.any():
        return kept
    for contour in _outer_contours(np.ascontiguousarray(vertical)):
        x, y, width, height = cv2.boundingRect(contour)
        if horizontal[max(0, y - 2) : y + height + 2, max(0, x - 2) : x + width + 2].any():
            cv2.drawContours(kept, [contour], -1, 1, thickness=cv2.FILLED)
    return kept & vertical


def _lone_margins(vertical: np.ndarray, blobs: np.ndarray) -> np.ndarray:
    """Vertical runs from the top of the image to the bottom, with no ruling to meet, that
    are a margin line: at least three times as tall as the tallest other blob, and there is
    other ink of some size. A tight crop of a 1 has no other ink beside it."""
    kept = np.zeros(vertical.shape, np.uint8)
    height = vertical.shape[0]
    for contour in _outer_contours(np.ascontiguousarray(vertical)):
        x, y, width, length = cv2.boundingRect(contour)
        if y > 1 or y + length < height - 1:
            continue
        # The blobs apart from the one the run belongs to.
        apart = (blobs[:, 0] + blobs[:, 2] <= x) | (blobs[:, 0] >= x + width)
        tallest = int(blobs[apart, 3].max()) if apart.any() else 0
        if max(4, 0.1 * length) <= tallest <= length / 3:
            cv2.drawContours(kept, [contour], -1, 1, thickness=cv2.FILLED)
    return kept & vertical


def _frame_sides(search: np.ndarray, digit_height: float) -> tuple[np.ndarray, np.ndarray]:
    """Sides and dividers of closed rectilinear frames with ink inside: a printed box around a
    digit or a comb field of boxes, which may be too short to pass for a ruling.

    A frame's straight sides span its whole width and height; a digit drawn with straight
    sides (a boxy 0, a seven-segment 8) has no other ink inside it, so it is no frame.
    """
    _, labels, statistics, _ = cv2.connectedComponentsWithStats(search, connectivity=8)
    horizontal = np.zeros_like(search)
    vertical = np.zeros_like(search)
    # A box holds a digit, which is seldom less than half as wide as tall.
    smallest = max(6.0, 0.8 * digit_height)
    for label in range(1, len(statistics)):
        x, y, width, height, _ = (int(value) for value in statistics[label])
        if width < max(6.0, 0.5 * digit_height) or height < smallest:
            continue
        crop = (labels[y : y + height, x : x + width] == label).astype(np.uint8)
        across = _thin_runs(crop, _side_length(width))
        down = _regular_dividers(_thin_runs(np.ascontiguousarray(crop.T), _side_length(height)).T)
        closed = across[:3].any() and across[-3:].any() and down[:, :3].any() and down[:, -3:].any()
        if not closed:
            continue
        inside = search[y + 3 : y + height - 3, x + 3 : x + width - 3]
        sides = (across | down)[3:-3, 3:-3]
        rows = np.flatnonzero((inside & (1 - sides)).any(axis=1))
        if rows.size == 0 or rows[-1] - rows[0] + 1 < 0.3 * (height - 6):
            continue
        horizontal[y : y + height, x : x + width] |= across
        vertical[y : y + height, x : x + width] |= down
    return horizontal, vertical


def _regular_dividers(down: np.ndarray) -> np.ndarray:
    """A frame's vertical runs (a uint8 mask of its crop) less those off the regular pitch of
    its cells: a comb field's boxes are equal, so a run between two dividers is a digit's
    stroke (a 1 reaching the box's top and bottom), and so is a shorter run. Unchanged when
    no pitch fits."""
    height = down.shape[0]
    _, labels, statistics, centroids = cv2.connectedComponentsWithStats(down, connectivity=8)
    tall = np.flatnonzero(statistics[:, cv2.CC_STAT_HEIGHT] >= _side_length(height))
    tall = tall[tall > 0]
    if len(tall) < 3:
        return down
    centres = centroids[tall, 0]
    left, right = centres.min(), centres.max()
    best, on_pitch = 0, np.zeros(len(tall), bool)
    for cells in range(1, len(tall)):
        pitch = (right - left) / cells
        if pitch < MIN_CELL_ASPECT * height:
            break
        offset = np.abs((centres - left) / pitch - np.round((centres - left) / pitch)) * pitch
        matched = offset <= max(2.0, PITCH_TOLERANCE * pitch)
        if matched.sum() > best:
            best, on_pitch = int(matched.sum()), matched
    if best == 0:
        return down
    return np.isin(labels, tall[on_pitch]).astype(np.uint8) & down


def _side_length(side: int) -> int:
    """The odd run length that a frame's side of ``side`` pixels must reach."""
    length = int(FRAME_SIDE_FRACTION * side)
    return length if length % 2 else length - 1


def _erase_lines(
    clean: np.ndarray,
    removed: np.ndarray,
    bands: np.ndarray,
    lines: np.ndarray,
    factor: int,
    limits: tuple[float, int],
) -> None:
    """Erase each horizontal line of the search mask ``lines`` from ``clean`` (in place), noting
    the erased ink in ``removed`` and the lines' bands in ``bands``. Vertical lines come
    through transposed views. ``limits``: the thickest line erased, and the longest stretch
    kept between two strokes leaving the line on one side (0: none is kept)."""
    height_limit, bridge = limits
    if not lines.any():
        return
    count, labels, statistics, _ = cv2.connectedComponentsWithStats(lines, connectivity=8)
    length = clean.shape[1]
    extend = _candidate_length(lines.shape[1])
    # Far enough to see the line after the coarse estimate of its centre, its own thickness, and
    # the band beyond it where crossing strokes are looked for.
    reach = int(np.ceil(factor + height_limit / 2)) + TOUCH_DISTANCE + 3
    # The centre from the search image is off by up to a search pixel.
    window = min(reach, factor + 3)
    runs = {label: _run_centre(labels, statistics, label) for label in range(1, count)}
    beside = _beside_longer(statistics, runs)
    for label in range(1, count):
        if beside[label]:
            continue
        x, _, width, _, _ = (int(value) for value in statistics[label])
        # The line's centre in each search column, then in each ink column.
        search_columns = (runs[label][0] + 0.5) * factor - 0.5
        search_centres = (runs[label][1] + 0.5) * factor - 0.5
        # A tilted line's last stretch, shorter than a candidate run, is not in ``lines``: the
        # erasure goes on along the line's direction, and stops where its ink does.
        first = max(0, (x - extend) * factor)
        last = min(length, (x + width + extend) * factor)
        ink_columns = np.arange(first, last)
        centres = _along(ink_columns, search_columns, search_centres)
        own = (ink_columns >= x * factor) & (ink_columns < (x + width) * factor)
        _erase_line(clean, removed, bands, (ink_columns, own), centres, (reach, window), limits)


def _beside_longer(
    statistics: np.ndarray, runs: dict[int, tuple[np.ndarray, np.ndarray]]
) -> np.ndarray:
    """Which runs (rows of connected-component ``statistics``, the first the background;
    ``runs``: each run's columns and centre rows, from `_run_centre`) lie beside a longer run,
    within its columns and, column by column, at most TILT rows off its edge: a stroke lying
    just off a line (a 7's bar under a box's top), which the line's own erasure deals with.
    Erased as a line of its own, carried on past its ends, it would take what lies level with
    it (a 5's hat in the next box). The centres, not the boxes, are compared: the boxes of a
    page's rules photographed askew overlap."""
    x, y, width, height, area = (statistics[:, index].astype(np.int64) for index in range(5))
    right, bottom = x + width, y + height
    within = (x[:, None] >= x[None, :]) & (right[:, None] <= right[None, :])
    near = (y[:, None] <= bottom[None, :] + TILT) & (bottom[:, None] + TILT >= y[None, :])
    # A line's thickness, tilted or not.
    thickness = area / np.maximum(width, 1)
    pairs = within & near & (width[:, None] < width[None, :])
    pairs[:, 0] = pairs[0, :] = False
    beside = np.zeros(len(statistics), bool)
    for label, other in zip(*np.nonzero(pairs), strict=True):
        if beside[label]:
            continue
        (columns, rows), along = runs[label], runs[other]
        offset = rows - np.interp(columns, along[0], along[1])
        reach = TILT + (thickness[label] + thickness[other]) / 2
        beside[label] = np.abs(offset).max() <= reach
    return beside


def _run_centre(
    labels: np.ndarray, statistics: np.ndarray, label: int
) -> tuple[np.ndarray, np.ndarray]:
    """A run's columns and its centre row in each, in the coordinates of ``labels``."""
    x, y, width, height = (int(value) for value in statistics[label, :4])
    present, centre = _column_medians(labels[y : y + height, x : x + width] == label)
    return present + x, centre + y


def _column_medians(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The columns of a mask that hold pixels, and the median row of each: a line's centre,
    which a stroke beside the line shifts less than it would the mean."""
    rows, columns = np.nonzero(mask)
    order = np.lexsort((rows, columns))
    counts = np.bincount(columns)
    present = np.flatnonzero(counts)
    starts = np.concatenate([[0], np.cumsum(counts[present])[:-1]])
    return present, rows[order][starts + (counts[present] - 1) // 2].astype(np.float64)


def _along(columns: np.ndarray, known: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """A line's centre in each of ``columns``, from the centres in the ``known`` columns: a
    straight line, or a gentle curve for a long one (a page that bows), fitted while the
    columns furthest from it (a stroke beside the line pulls their centre) are left out, and
    carried on past the ends."""
    if len(known) < 3:
        return np.interp(columns, known, centres)
    degree = 2 if known[-1] - known[0] > 40 * (known[1] - known[0]) else 1
    keep = np.ones(len(known), bool)
    for _ in range(3):
        fit = np.polyfit(known[keep], centres[keep], degree)
        residual = np.abs(np.polyval(fit, known) - centres)
        # Within half a search pixel of blur or a step of the shrinking.
        tolerance = max(1.5 * (known[1] - known[0]), float(np.median(residual[keep])) * 3)
        if (residual <= tolerance).sum() < 3:
            break
        keep = residual <= tolerance
    return np.polyval(fit, columns)


def _erase_line(
    clean: np.ndarray,
    removed: np.ndarray,
    bands: np.ndarray,
    columns_and_own: tuple[np.ndarray, np.ndarray],
    centres: np.ndarray,
    reach_and_window: tuple[int, int],
    limits: tuple[float, int],
) -> None:
    """Erase one roughly horizontal line, given its approximate centre row in each column
    (found within ``window`` rows of it; the band looked at reaches ``reach`` rows) and which
    of the columns the line was found in (the others carry it on past its ends).

    The band around the line is straightened (one row per offset from the centre) and the
    line's rows read from it. A column is erased only where no ink runs on past the line's
    edge and the ink is no stronger than the line's: elsewhere a stroke crosses or touches the
    line, or lies on it.
    """
    reach, window = reach_and_window
    height_limit, bridge = limits
    columns, own = columns_and_own
    centres = _refine_centres(clean, columns, centres, window)
    offsets = np.arange(-reach, reach + 1)
    rows = np.clip(np.round(centres).astype(np.intp)[None, :] + offsets[:, None], 0, None)
    rows = np.minimum(rows, clean.shape[0] - 1)
    band = clean[rows, columns[None, :]]  # (2 reach + 1, columns): the line, straightened
    found = _line_rows(band, reach)
    if found is None or found[1] - found[0] + 1 > height_limit:
        return
    top, bottom, level = found
    # A stroke that touches or crosses the line is ink running on from its edge; ink a little
    # apart from the line is a stroke that only comes near it. The first pixel past the edge
    # is left out: the line's own blurred edge may fall there where its centre is a pixel off.
    touch = max(STRUCTURE_THRESHOLD, 0.35 * level)
    above = band[max(0, top - 1 - TOUCH_DISTANCE) : max(0, top - 1)]
    below = band[bottom + 2 : bottom + 2 + TOUCH_DISTANCE]
    touched_above, touched_below = (above >= touch).all(axis=0), (below >= touch).all(axis=0)
    line = band[top : bottom + 1].max(axis=0)
    present = line >= 0.5 * level
    if present[own].mean() < LINE_PRESENT:
        return
    erase = present & ~(touched_above | touched_below) & (line <= level + STRONGER_INK)
    if bridge > 0:
        # Ink just past the edge: where a stroke lies along the line, not the bare line.
        lying_above = band[max(0, top - 1)] >= touch
        lying_below = band[min(2 * reach, bottom + 1)] >= touch
        erase &= ~_bridged(touched_above & ~touched_below, lying_above, bridge)
        erase &= ~_bridged(touched_below & ~touched_above, lying_below, bridge)
    # The line's rows and two more each side, where its blurred edge lies.
    span = slice(max(0, top - 2), min(2 * reach + 1, bottom + 3))
    band_rows = rows[span][:, present]
    bands[band_rows, np.broadcast_to(columns[present], band_rows.shape)] = True
    if not erase.any():
        return
    erase_rows = rows[span][:, erase]
    erase_columns = np.broadcast_to(columns[erase], erase_rows.shape)
    removed[erase_rows, erase_columns] = np.maximum(
        removed[erase_rows, erase_columns], band[span][:, erase]
    )
    clean[erase_rows, erase_columns] = 0.0


def _bridged(leaving: np.ndarray, lying: np.ndarray, bridge: int) -> np.ndarray:
    """The columns between two columns of ``leaving`` at most ``bridge`` apart, when ink lies
    along the line on that side (``lying``) for most of the way: where a stroke that leaves
    the line at both ends lies on it (a 0's side), not where a stroke touches the line twice
    and turns away between (a 3's back)."""
    kept = np.zeros_like(leaving)
    ends = np.flatnonzero(leaving)
    for start, stop in zip(ends[:-1], ends[1:], strict=True):
        if 1 < stop - start <= bridge and lying[start + 1 : stop].mean() >= 0.5:
            kept[start + 1 : stop] = True
    return kept


def _line_rows(band: np.ndarray, reach: int) -> tuple[int, int, float] | None:
    """The first and last row of the line in its straightened band, and its ink level, read
    from the plain columns only (None if there is no line)."""
    plain = _plain_columns(band)
    if not plain.any():
        return None
    profile = np.median(band[:, plain], axis=1)
    peak = reach - 2 + int(np.argmax(profile[reach - 2 : reach + 3]))
    level = float(profile[peak])
    if level < STRUCTURE_THRESHOLD:
        return None
    top, bottom = peak, peak
    while top > 0 and profile[top - 1] >= 0.5 * level:
        top -= 1
    while bottom < 2 * reach and profile[bottom + 1] >= 0.5 * level:
        bottom += 1
    return top, bottom, level


def _plain_columns(values: np.ndarray) -> np.ndarray:
    """The columns of a straightened band where only the line is: those with ink whose count
    of ink rows is near the least. A stroke lying along a short line for most of its length
    (a 1 pushed against a box's side) would otherwise pass for the line itself."""
    counts = (values >= STRUCTURE_THRESHOLD).sum(axis=0)
    present = counts > 0
    if not present.any():
        return present
    return present & (counts <= np.percentile(counts[present], 25) + 2)


def _erase_residue(clean: np.ndarray, removed: np.ndarray, bands: np.ndarray) -> None:
    """Erase the blobs of ink that lie wholly within the bands of erased lines: pieces of a
    line kept where a stroke touched it, then cut loose from the stroke by the crossing line.
    A dot sitting on a ruling stands out of the band and stays."""
    # Pieces are told apart at a stroke's level of ink: a faint blurred pixel or two may still
    # bridge a piece to the stroke it was cut from.
    mask = (clean > RESIDUE_THRESHOLD).astype(np.uint8)
    count, labels = cv2.connectedComponents(mask, connectivity=8)
    if count < 2:
        return
    total = np.bincount(labels.ravel(), minlength=count)
    within = np.bincount(labels[bands], minlength=count)
    residue = within == total
    residue[0] = False
    if not residue.any():
        return
    # With the faint blurred edge around each piece.
    erase = cv2.dilate(residue[labels].astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    erase &= bands | (clean < RESIDUE_THRESHOLD)
    removed[erase] = np.maximum(removed[erase], clean[erase])
    clean[erase] = 0.0


def _refine_centres(
    clean: np.ndarray, columns: np.ndarray, centres: np.ndarray, window: int
) -> np.ndarray:
    """Move a line's estimated centre onto its ink, column by column.

    The estimate from the search image is off by up to ``window`` rows. The ink's centroid
    near it is exact where only the line is there; other columns take the centre of their plain
    neighbours, and a running median along the line smooths what is left.
    """
    offsets = np.arange(-window, window + 1)
    rows = np.round(centres).astype(np.intp)[None, :] + offsets[:, None]
    rows = np.clip(rows, 0, clean.shape[0] - 1)
    values = clean[rows, columns[None, :]]
    plain = _plain_columns(values)
    if not plain.any():
        return centres
    weights = np.where(values[:, plain] >= STRUCTURE_THRESHOLD, values[:, plain], 0.0)
    shift = (weights * offsets[:, None]).sum(axis=0) / weights.sum(axis=0)
    shift = np.interp(np.arange(len(columns)), np.flatnonzero(plain), shift)
    half = min(8, (len(shift) - 1) // 2)
    if half > 0:
        padded = np.pad(shift, half, mode="edge")
        shift = np.median(np.lib.stride_tricks.sliding_window_view(padded, 2 * half + 1), axis=1)
    return centres + shift


def walls_across(structure: np.ndarray, top: int, bottom: int) -> np.ndarray:
    """The x positions of the vertical lines of ``structure`` (what `remove_structure` erased)
    that cross the band of rows [top, bottom) for WALL_FRACTION of it: a form's box walls, or
    a grid's lines. Each wall's centre column, left to right."""
    band = structure[max(top, 0) : max(bottom, top + 1)] > STRUCTURE_THRESHOLD
    if band.size == 0:
        return np.zeros(0, dtype=np.float64)
    columns = np.flatnonzero(band.sum(axis=0) >= WALL_FRACTION * band.shape[0])
    if columns.size == 0:
        return np.zeros(0, dtype=np.float64)
    runs = np.split(columns, np.flatnonzero(np.diff(columns) > 1) + 1)
    return np.array([run.mean() for run in runs], dtype=np.float64)


def regular_walls(walls: np.ndarray, left: float, right: float) -> np.ndarray:
    """The walls of a row of equal cells (a comb field, a grid) with those that ``walls``
    misses put back: where a stroke leaning on a wall kept most of it, or at an end of the
    row. Three walls or more whose gaps are whole multiples of one cell's width (the usual of
    the narrowest gaps) set the pitch; the row is filled in between and carried on to ``left``
    and ``right`` where ink reaches half a cell past its end. Other walls are returned as they
    are."""
    if walls.size < 3:
        return walls
    gaps = np.diff(walls)
    pitch = float(np.median(gaps[gaps < 1.5 * gaps.min()]))
    steps = gaps / pitch
    if pitch <= 0 or np.abs(steps - np.round(steps)).max() > PITCH_TOLERANCE:
        return walls
    pitch = float((walls[-1] - walls[0]) / np.round(steps).sum())
    first = walls[0] - pitch * max(0.0, np.floor((walls[0] - left) / pitch + 0.5))
    last = walls[-1] + pitch * max(0.0, np.floor((right - walls[-1]) / pitch + 0.5))
    return np.linspace(first, last, round((last - first) / pitch) + 1)


def _erase_enclosures(clean: np.ndarray, removed: np.ndarray, digit_height: float) -> None:
    """Erase outlines drawn around a digit and lines drawn under digits (in place)."""
    mask = (clean > STRUCTURE_THRESHOLD).astype(np.uint8)
    count, labels, statistics, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if count < 3:
        return
    boxes = statistics[1:, :4].astype(np.int64)
    inside = _contains(boxes)
    for index in range(count - 1):
        inner = boxes[inside[index]]
        outline = inner.size > 0 and _is_outline(labels, index + 1, boxes[index], inner)
        if outline or _is_underline(boxes, index, digit_height):
            _erase_component(clean, removed, labels, index + 1, boxes[index])


def _contains(boxes: np.ndarray) -> np.ndarray:
    """(N, N) bool: box i strictly contains box j, which is at least a quarter as tall."""
    x, y, width, height = (boxes[:, index] for index in range(4))
    right, bottom = x + width, y + height
    return (
        (x[:, None] < x[None, :])
        & (y[:, None] < y[None, :])
        & (right[:, None] > right[None, :])
        & (bottom[:, None] > bottom[None, :])
        & (height[None, :] >= 0.25 * height[:, None])
    )


def _is_outline(labels: np.ndarray, label: int, box: np.ndarray, inner: np.ndarray) -> bool:
    """Whether a component is a thin closed or nearly closed outline (a box, a circle, an
    ellipse) around the boxes ``inner``: its ink lies along its convex hull and covers little
    of the area inside, and an inner box's centre lies inside the hull."""
    x, y, width, height = (int(value) for value in box)
    crop = (labels[y : y + height, x : x + width] == label).astype(np.uint8)
    area = int(crop.sum())
    points = cv2.findNonZero(crop)
    hull = cv2.convexHull(points)
    if area > 0.4 * cv2.contourArea(hull):
        return False
    eroded = cv2.erode(crop, np.ones((3, 3), np.uint8), borderType=cv2.BORDER_CONSTANT)
    stroke = 2.0 * area / max(area - int(eroded.sum()), 1)
    near = np.zeros_like(crop)
    cv2.polylines(near, [hull], True, 1, 2 * max(2, round(2 * stroke)) + 1)
    if (crop & near).sum() < OUTLINE_FRACTION * area:
        return False
    centres = inner[:, :2] + inner[:, 2:] / 2 - (x, y)
    return any(cv2.pointPolygonTest(hull, (float(cx), float(cy)), False) > 0 for cx, cy in centres)


def _is_underline(boxes: np.ndarray, index: int, digit_height: float) -> bool:
    """Whether a flat component lies under digits: under two or more, or wider than the one."""
    x, y, width, height = boxes[index]
    if width < 4 * height or height > 0.3 * digit_height:
        return False
    others = boxes[boxes[:, 3] >= 0.5 * digit_height]
    overlap = _shared_columns(x, width, others)
    bottoms = others[:, 1] + others[:, 3]
    over = others[
        (overlap >= 0.5 * others[:, 2])
        & (y >= others[:, 1] + 0.85 * others[:, 3])
        & (y - bottoms <= 0.6 * others[:, 3])
    ]
    return len(over) >= 2 or (len(over) == 1 and width >= 1.3 * over[0, 2])


def _erase_component(
    clean: np.ndarray, removed: np.ndarray, labels: np.ndarray, label: int, box: np.ndarray
) -> None:
    """Erase one component and the faint, blurred edge around it (in place)."""
    x, y, width, height = (int(value) for value in box)
    top, left = max(0, y - 1), max(0, x - 1)
    window = (slice(top, y + height + 1), slice(left, x + width + 1))
    component = (labels[window] == label).astype(np.uint8)
    edge = cv2.dilate(component, np.ones((3, 3), np.uint8)) > 0
    erase = (component > 0) | (edge & (clean[window] < STRUCTURE_THRESHOLD))
    removed[window][erase] = np.maximum(removed[window][erase], clean[window][erase])
    clean[window][erase] = 0.0


# --- text lines --------------------------------------------------------------------------------


def group_lines(boxes: Sequence[Box], anchor_ratio: float) -> list[int]:
    """The text line of each box, lines numbered top to bottom.

    Boxes at least ``anchor_ratio`` times as tall as the tallest are digits and found the lines:
    two are on one line when they overlap vertically by LINE_OVERLAP of the shorter, or when one
    sits right above the other (the halves of a broken 8), and lines are chains of such pairs,
    so a slanted row stays one line. A chain of small boxes that reaches into the band of a
    line of much taller ones (a long comma under a number) is no line of its own. Every box
    left over (a loose hat of a 5, a decimal point) joins the line nearest to it vertically.
    """
    if len(boxes) == 0:
        return []
    array = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    anchors = np.flatnonzero(array[:, 3] >= anchor_ratio * array[:, 3].max())
    if _one_line(array[anchors]):
        return [0] * len(array)
    chains = _chains(_linked(array[anchors]))
    anchors, chains = _drop_small_chains(array[anchors], anchors, chains)
    # Number the lines by the median centre of their anchors, top to bottom.
    centres = array[anchors, 1] + array[anchors, 3] / 2
    order = np.argsort([np.median(centres[chains == chain]) for chain in range(chains.max() + 1)])
    line_of_chain = np.empty_like(order)
    line_of_chain[order] = np.arange(len(order))
    anchor_lines = line_of_chain[chains]
    tops, bottoms = _bands(array[anchors], anchor_lines, len(order))
    # Everything else: the line whose band is nearest to the box's centre.
    middles = array[:, 1] + array[:, 3] / 2
    distance = np.maximum(tops[None, :] - middles[:, None], middles[:, None] - bottoms[None, :])
    lines = np.argmin(np.maximum(distance, 0) + 1e-6 * np.abs(distance), axis=1)
    lines[anchors] = anchor_lines
    return [int(line) for line in lines]


def _bands(boxes: np.ndarray, lines: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The top and bottom of each of ``count`` lines, from the boxes on it."""
    tops = np.full(count, np.inf)
    bottoms = np.full(count, -np.inf)
    np.minimum.at(tops, lines, boxes[:, 1])
    np.maximum.at(bottoms, lines, boxes[:, 1] + boxes[:, 3])
    return tops, bottoms


def _drop_small_chains(
    boxes: np.ndarray, anchors: np.ndarray, chains: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Take out the chains whose tallest box is under 0.6 of the tallest box of a chain whose
    band theirs overlaps, and number the rest 0, 1, ..."""
    count = int(chains.max()) + 1
    tops, bottoms = _bands(boxes, chains, count)
    tallest = np.zeros(count)
    np.maximum.at(tallest, chains, boxes[:, 3])
    overlap = np.minimum(bottoms, bottoms[:, None]) - np.maximum(tops, tops[:, None])
    # Row c, column d: chain c is small beside chain d, which it reaches into.
    small = (overlap > 0) & (tallest[:, None] < 0.6 * tallest[None, :])
    keep = ~small.any(axis=1)[chains]
    return anchors[keep], np.unique(chains[keep], return_inverse=True)[1]


def _one_line(boxes: np.ndarray) -> bool:
    """Whether every digit box overlaps the tallest one enough to share its line: the common
    page of one row, settled without pairing every box with every other."""
    top, bottom = boxes[:, 1], boxes[:, 1] + boxes[:, 3]
    tallest = int(np.argmax(boxes[:, 3]))
    overlap = np.minimum(bottom, bottom[tallest]) - np.maximum(top, top[tallest])
    return bool((overlap >= LINE_OVERLAP * boxes[:, 3]).all())


def _linked(boxes: np.ndarray) -> np.ndarray:
    """(N, N) bool: two digit boxes belong to one line."""
    x, y, width, height = (boxes[:, index] for index in range(4))
    vertical = np.minimum(y + height, (y + height)[:, None]) - np.maximum(y, y[:, None])
    horizontal = np.minimum(x + width, (x + width)[:, None]) - np.maximum(x, x[:, None])
    shorter = np.minimum(height, height[:, None])
    narrower = np.minimum(width, width[:, None])
    same_line = vertical >= LINE_OVERLAP * shorter
    union = np.maximum(y + height, (y + height)[:, None]) - np.minimum(y, y[:, None])
    stacked = (horizontal >= 0.5 * narrower) & (-vertical <= STACKED_GAP * union)
    return same_line | stacked


def _chains(linked: np.ndarray) -> np.ndarray:
    """Connected components of a symmetric link matrix, numbered 0, 1, ... in first-seen order."""
    labels = np.arange(len(linked))
    while True:
        # Each node takes the smallest label among its neighbours until nothing changes.
        smallest = np.where(linked, labels[None, :], len(labels)).min(axis=1)
        updated = np.minimum(labels, smallest)
        if np.array_equal(updated, labels):
            break
        labels = updated
    return np.unique(labels, return_inverse=True)[1]


# --- separators --------------------------------------------------------------------------------


def find_separators(
    labels: np.ndarray,
    components: Sequence[tuple[int, Box, int]],
    lines: Sequence[int],
    anchor_ratio: float,
) -> list[tuple[str, tuple[int, ...]]]:
    """Read the separators between the digits of each text line.

    ``components`` are (label in ``labels``, box, area), specks included, and ``lines`` their
    text lines from ``group_lines``. Returns (character, indices of its components) for each
    separator found; a colon has two components. Only marks of the right size at the right
    height in a gap between digits count, so dirt off the line is no separator.
    """
    boxes = np.asarray([box for _, box, _ in components], dtype=np.float64).reshape(-1, 4)
    if len(boxes) == 0:
        return []
    anchors = boxes[:, 3] >= anchor_ratio * boxes[:, 3].max()
    lines = np.asarray(lines)
    found: list[tuple[str, tuple[int, ...]]] = []
    for line in np.unique(lines):
        members = np.flatnonzero(lines == line)
        # A lone digit with nothing beside it has no separator.
        if len(members) < 2 or not anchors[members].any():
            continue
        height = float(np.median(boxes[members[anchors[members]], 3]))
        # A comma can be nearly a third of the tallest digit: marks are measured by the line.
        tall = members[boxes[members, 3] >= 0.6 * height]
        marks = members[boxes[members, 3] < 0.6 * height]
        height = float(np.median(boxes[tall, 3]))
        base = float(np.median(boxes[tall, 1] + boxes[tall, 3]))
        metrics = (base - height, base, height)
        slashes = [
            int(index)
            for index in tall
            if _slash_on_line(boxes[index], metrics)
            and _in_gap(boxes[index], boxes[tall[tall != index]], height, digit_before=True)
            and _is_slash(labels, components[index])
        ]
        slashes = _date_like(slashes, [int(i) for i in tall if i not in slashes], boxes)
        found.extend(("/", (index,)) for index in slashes)
        digits = boxes[[index for index in tall if index not in slashes]]
        marks = [int(index) for index in marks if _in_gap(boxes[index], digits, height, False)]
        if marks:
            found.extend(_read_marks(labels, components, boxes, marks, digits, metrics))
    return found


def _date_like(slashes: list[int], digits: list[int], boxes: np.ndarray) -> list[int]:
    """The slashes, if they split the line's digits as a date or a fraction does: groups of 1
    or 2 digits, the last one also of 4 ("12/05/2024", "3/4"); else none. A 1 leaning far
    enough to pass for a slash is common in handwriting, so a slash must also read as one in
    its number."""
    if not slashes:
        return slashes
    centres = boxes[:, 0] + boxes[:, 2] / 2
    edges = [-np.inf, *sorted(centres[slashes]), np.inf]
    digit_centres = centres[digits]
    groups = [
        int(((digit_centres > left) & (digit_centres < right)).sum())
        for left, right in zip(edges[:-1], edges[1:], strict=True)
    ]
    if all(count in (1, 2) for count in groups[:-1]) and groups[-1] in (1, 2, 4):
        return slashes
    return []


def _read_marks(
    labels: np.ndarray,
    components: Sequence[tuple[int, Box, int]],
    boxes: np.ndarray,
    marks: list[int],
    digits: np.ndarray,
    metrics: tuple[float, float, float],
) -> list[tuple[str, tuple[int, ...]]]:
    """Colons (pairs of dots), then single commas, dots and minus signs among small marks."""
    cap, base, height = metrics
    found: list[tuple[str, tuple[int, ...]]] = []
    used: set[int] = set()
    dots = [index for index in marks if _is_blob(components[index], height)]
    for first in dots:
        for second in dots:
            if first in used or second in used or first == second:
                continue
            if _is_colon(boxes[first], boxes[second], metrics):
                found.append((":", (first, second)))
                used.update((first, second))
    for index in marks:
        if index in used:
            continue
        box = boxes[index]
        between = _in_gap(box, digits, height, digit_before=True)
        if between and _is_comma(box, base, height):
            found.append((",", (index,)))
        elif index in dots and between and _on_baseline(box, base, height):
            found.append((".", (index,)))
        elif _is_minus(box, cap, base, height) and not _under_or_over(index, marks, boxes, height):
            found.append(("-", (index,)))
    return found


def _under_or_over(index: int, marks: list[int], boxes: np.ndarray, height: float) -> bool:
    """Whether another mark at least DOT_SIZE[0] of the digit height across lies above or
    below mark ``index``, over GAP_OVERLAP of its columns: the bar of a 3 broken in pieces, not
    a minus sign, which has its gap to itself."""
    x, _, width, _ = boxes[index]
    others = boxes[[other for other in marks if other != index]]
    if len(others) == 0:
        return False
    sized = np.maximum(others[:, 2], others[:, 3]) >= DOT_SIZE[0] * height
    overlap = _shared_columns(x, width, others)
    return bool((sized & (overlap > GAP_OVERLAP * width)).any())


def _shared_columns(x: float, width: float, boxes: np.ndarray) -> np.ndarray:
    """How many columns the span from ``x``, ``width`` wide, shares with each of ``boxes``
    (negative: how far apart they are)."""
    return np.minimum(x + width, boxes[:, 0] + boxes[:, 2]) - np.maximum(x, boxes[:, 0])


def _in_gap(box: np.ndarray, digits: np.ndarray, height: float, digit_before: bool) -> bool:
    """Whether a mark lies in a gap of its line: beside, not on, the digits, with a digit close
    after it and, if ``digit_before``, one close before it."""
    x, _, width, _ = box
    right = digits[:, 0] + digits[:, 2]
    overlap = _shared_columns(x, width, digits)
    if (overlap > GAP_OVERLAP * width).any():
        return False
    centre = x + width / 2
    after = digits[digits[:, 0] >= centre, 0] - (x + width)
    before = x - right[right <= centre]
    reach = GAP_DISTANCE * height
    close_after = after.size > 0 and float(after.min()) <= reach
    close_before = before.size > 0 and float(before.min()) <= reach
    return close_after and (close_before or not digit_before)


def _is_blob(component: tuple[int, Box, int], height: float) -> bool:
    """A dot: small, round and filled, between DOT_SIZE of the digit height across."""
    _, (_, _, width, box_height), area = component
    low, high = DOT_SIZE[0] * height, DOT_SIZE[1] * height
    if not (low <= width <= high and low <= box_height <= high):
        return False
    if max(width, box_height) > 2.2 * min(width, box_height):
        return False
    return area >= 0.45 * width * box_height


def _on_baseline(box: np.ndarray, base: float, height: float) -> bool:
    centre = box[1] + box[3] / 2
    return base - 0.3 * height <= centre <= base + 0.15 * height


def _is_comma(box: np.ndarray, base: float, height: float) -> bool:
    """A comma: starts at about the baseline, reaches below it, taller than wide."""
    _, y, width, box_height = box
    bottom = y + box_height
    tall_enough = COMMA_HEIGHT[0] * height <= box_height <= COMMA_HEIGHT[1] * height
    return (
        tall_enough
        and width <= DOT_SIZE[1] * height
        and box_height >= 1.2 * width
        and y >= base - 0.35 * height
        and base + 0.08 * height <= bottom <= base + 0.6 * height
    )


def _is_minus(box: np.ndarray, cap: float, base: float, height: float) -> bool:
    """A minus sign: a flat dash of MINUS_WIDTH of the digit height about mid-height."""
    _, y, width, box_height = box
    middle = (cap + base) / 2
    return (
        MINUS_WIDTH[0] * height <= width <= MINUS_WIDTH[1] * height
        and width >= MINUS_FLATNESS * box_height
        and box_height <= 0.3 * height
        and abs(y + box_height / 2 - middle) <= 0.25 * height
    )


def _is_colon(first: np.ndarray, second: np.ndarray, metrics: tuple[float, float, float]) -> bool:
    """Two dots one above the other, about the middle of the line."""
    cap, base, height = metrics
    upper, lower = (first, second) if first[1] < second[1] else (second, first)
    overlap = min(upper[0] + upper[2], lower[0] + lower[2]) - max(upper[0], lower[0])
    spacing = (lower[1] + lower[3] / 2) - (upper[1] + upper[3] / 2)
    middle = ((upper[1] + upper[3] / 2) + (lower[1] + lower[3] / 2)) / 2
    return (
        overlap >= 0.3 * min(upper[2], lower[2])
        and COLON_SPACING[0] * height <= spacing <= COLON_SPACING[1] * height
        and cap + 0.25 * height <= middle <= base - 0.1 * height
    )


def _is_slash(labels: np.ndarray, component: tuple[int, Box, int]) -> bool:
    """A slash: one thin straight stroke leaning right by SLASH_ANGLE from the vertical.

    A 1 is thin and straight too, but it leans less (and often carries a flag at its top,
    which makes it less thin).
    """
    label, (x, y, width, height), area = component
    # A thin diagonal stroke covers little of its box; a digit as wide, with its loops and
    # bars, covers more. A cheap test before the pixels are looked at.
    if area > SLASH_COVER * width * height:
        return False
    rows, columns = np.nonzero(labels[y : y + height, x : x + width] == label)
    if rows.size < 3:
        return False
    points = np.stack([columns, rows]).astype(np.float64)
    covariance = np.cov(points)
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    if eigenvalues[1] <= 0 or np.sqrt(max(eigenvalues[0], 0.0) / eigenvalues[1]) > SLASH_THINNESS:
        return False
    along_x, along_y = eigenvectors[:, 1]
    # Leaning right: the top is further right, so x falls as y (downwards) grows.
    if along_x * along_y >= 0:
        return False
    angle = np.degrees(np.arctan2(abs(along_x), abs(along_y)))
    if not SLASH_ANGLE[0] <= angle <= SLASH_ANGLE[1]:
        return False
    centred = points - points.mean(axis=1, keepdims=True)
    return _bend(eigenvectors[:, 1] @ centred, eigenvectors[:, 0] @ centred) <= SLASH_BEND


def _bend(along: np.ndarray, across: np.ndarray, pieces: int = 8) -> float:
    """How far a stroke's middle line wanders sideways, as a fraction of its length: the spread
    of the mean ``across`` offset over ``pieces`` equal stretches ``along`` it."""
    length = float(np.ptp(along))
    if length <= 0:
        return np.inf
    piece = np.minimum((along - along.min()) * (pieces / length), pieces - 1).astype(np.intp)
    counts = np.bincount(piece, minlength=pieces)
    sums = np.bincount(piece, weights=across, minlength=pieces)
    middles = sums[counts > 0] / counts[counts > 0]
    return float(np.ptp(middles)) / length


def _slash_on_line(box: np.ndarray, metrics: tuple[float, float, float]) -> bool:
    """A slash spans about the line's height, overlaps its band, and leans far enough to be
    wide: a cheap test before its pixels are looked at."""
    cap, base, height = metrics
    overlap = min(box[1] + box[3], base) - max(box[1], cap)
    tall_enough = SLASH_HEIGHT[0] * height <= box[3] <= SLASH_HEIGHT[1] * height
    wide_enough = box[2] >= 0.8 * np.tan(np.radians(SLASH_ANGLE[0])) * box[3]
    return tall_enough and wide_enough and overlap >= 0.5 * height
