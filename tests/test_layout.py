"""Tests for digitrec.layout: paper structure out, text lines, separators, on drawn pages.

Every page is drawn here: digits from ``synth.draw_digit`` and lines, boxes, circles and marks
from OpenCV strokes, so the expected boxes, lines and characters come from the drawing.
"""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from digitrec import layout, preprocess
from digitrec.preprocess import Page
from digitrec.synth import draw_digit

Box = tuple[int, int, int, int]

HEIGHT = 48  # digit height in pixels
PEN = (25, 25, 70)  # dark blue ink, RGB
RULE = (110, 160, 235)  # light blue printed rules
MARGIN = (220, 80, 80)  # red margin line
PRINT = (60, 60, 60)  # dark grey printed form


class Sheet:
    """A white page with handwriting (``pen``) and printed structure (``paper``) drawn apart,
    as coverage maps in [0, 1], then coloured and saved as a PNG."""

    def __init__(self, height: int, width: int) -> None:
        self.pen = np.zeros((height, width), np.float32)
        self.paper = np.zeros((height, width, 3), np.float32)
        self.paper_alpha = np.zeros((height, width), np.float32)

    def write(self, digit: int, left: int, bottom: int, seed: int = 0, height: int = HEIGHT) -> Box:
        """Write ``digit`` with its ink's bottom on row ``bottom``; return the ink's box."""
        image = draw_digit(digit, np.random.default_rng(seed), size=64)
        rows = np.flatnonzero(image.max(axis=1) > 0.1)
        columns = np.flatnonzero(image.max(axis=0) > 0.1)
        image = image[rows[0] : rows[-1] + 1, columns[0] : columns[-1] + 1]
        width = max(1, round(image.shape[1] * height / image.shape[0]))
        ink = cv2.resize(image, (width, height), interpolation=cv2.INTER_CUBIC).clip(0, 1)
        top = bottom - height
        region = self.pen[top:bottom, left : left + width]
        np.maximum(region, ink, out=region)
        return (left, top, width, height)

    def stroke(self, points: list[tuple[float, float]], width: int) -> None:
        """A pen stroke through ``points`` (x, y)."""
        canvas = np.zeros(self.pen.shape, np.uint8)
        polyline = np.round(np.asarray(points) * 16).astype(np.int32).reshape(-1, 1, 2)
        cv2.polylines(canvas, [polyline], False, 255, width, cv2.LINE_AA, shift=4)
        np.maximum(self.pen, canvas / 255.0, out=self.pen)

    def dot(self, centre: tuple[float, float], radius: float) -> None:
        canvas = np.zeros(self.pen.shape, np.uint8)
        fixed = (round(centre[0] * 16), round(centre[1] * 16))
        cv2.circle(canvas, fixed, round(radius * 16), 255, -1, cv2.LINE_AA, shift=4)
        np.maximum(self.pen, canvas / 255.0, out=self.pen)

    def print(self, draw, colour: tuple[int, int, int]) -> None:
        """Print structure in ``colour``: ``draw(canvas)`` draws it in 255 on a uint8 canvas."""
        canvas = np.zeros(self.pen.shape, np.uint8)
        draw(canvas)
        alpha = canvas / 255.0
        self.paper = self.paper * (1 - alpha[..., None]) + np.float32(colour) * alpha[..., None]
        self.paper_alpha = np.maximum(self.paper_alpha, alpha)

    def png(self) -> bytes:
        white = np.full((*self.pen.shape, 3), 250.0, np.float32)
        alpha = self.paper_alpha[..., None]
        page = white * (1 - alpha) + self.paper
        page = page * (1 - self.pen[..., None]) + np.float32(PEN) * self.pen[..., None]
        buffer = io.BytesIO()
        Image.fromarray(np.clip(page + 0.5, 0, 255).astype(np.uint8)).save(buffer, "PNG")
        return buffer.getvalue()


def _row(sheet: Sheet, digits: list[int], left: int, bottom: int, gap: int = 16) -> list[Box]:
    boxes = []
    for index, digit in enumerate(digits):
        boxes.append(sheet.write(digit, left, bottom, seed=index))
        left += boxes[-1][2] + gap
    return boxes


def _assert_boxes(found: list[Box], drawn: list[Box], slack: int = 4) -> None:
    """Each found box is its drawn digit's box, give or take ``slack`` pixels a side (the
    anti-aliased edge, and a stub of a line kept where a stroke touches it)."""
    assert len(found) == len(drawn), (found, drawn)
    for box, expected in zip(found, drawn, strict=True):
        x, y, width, height = box
        ex, ey, ewidth, eheight = expected
        assert abs(x - ex) <= slack and abs(y - ey) <= slack, (box, expected)
        assert abs(x + width - ex - ewidth) <= slack, (box, expected)
        assert abs(y + height - ey - eheight) <= slack, (box, expected)


def _digit_boxes(page: Page) -> list[Box]:
    return [digit.box for digit in page.digits]


CELL, TOP, LEFT = 66, 60, 70  # a comb field's box side and its top left corner


def _comb_lines(canvas: np.ndarray, boxes: int) -> None:
    """Draw a comb field of ``boxes`` boxes in 255 on ``canvas``."""
    cv2.rectangle(canvas, (LEFT, TOP), (LEFT + boxes * CELL, TOP + CELL), 255, 2)
    for index in range(1, boxes):
        x = LEFT + index * CELL
        cv2.line(canvas, (x, TOP), (x, TOP + CELL), 255, 2)


def _comb(sheet: Sheet, boxes: int, digits: dict[int, int]) -> list[Box]:
    """Print a comb field of ``boxes`` boxes and write ``digits`` (box: digit) in them, each
    near the middle of its box; return the digits' boxes."""

    sheet.print(lambda canvas: _comb_lines(canvas, boxes), PRINT)
    return [
        sheet.write(digit, LEFT + index * CELL + 18, TOP + CELL - 9, seed=index)
        for index, digit in digits.items()
    ]


# --- paper structure -----------------------------------------------------------------------------


def test_ruled_page_with_a_margin_line_loses_its_rules() -> None:
    sheet = Sheet(360, 520)
    rules = list(range(50, 360, 40))

    def draw(canvas: np.ndarray) -> None:
        for y in rules:
            cv2.line(canvas, (0, y), (519, y), 255, 2, cv2.LINE_AA)
        cv2.line(canvas, (70, 0), (70, 359), 255, 2, cv2.LINE_AA)

    sheet.print(draw, RULE)
    # Taller than the rules' spacing: the rule above runs through every digit.
    drawn = _row(sheet, [2, 5, 7, 1], left=110, bottom=172)
    stages: dict[str, np.ndarray] = {}
    page = preprocess.extract_page(sheet.png(), stages)
    _assert_boxes(_digit_boxes(page), drawn)
    assert page.separators == []
    assert list(stages)[:4] == ["1-decoded", "2-ink", "2b-structure", "2c-ink"]
    # Away from the writing, rules and margin are gone from the ink and found in the structure.
    clean, structure = stages["2c-ink"], stages["2b-structure"]
    for y in rules:
        assert clean[y - 3 : y + 4, 400:500].max() < 0.1
        assert structure[y - 3 : y + 4, 400:500].max(axis=0).min() > 0.3
    assert clean[250:350, 66:76].max() < 0.1


def test_ruled_page_photographed_askew_loses_its_rules() -> None:
    sheet = Sheet(400, 600)

    def draw(canvas: np.ndarray) -> None:
        for y in range(40, 400, 45):
            cv2.line(canvas, (0, y), (599, y), 255, 2, cv2.LINE_AA)

    sheet.print(draw, RULE)
    drawn = _row(sheet, [3, 9, 4, 6], left=180, bottom=222)
    # Turned by 3 degrees about the page's centre, as a phone held a little askew.
    turn = cv2.getRotationMatrix2D((300, 200), 3, 1.0)
    picture = np.asarray(Image.open(io.BytesIO(sheet.png())))
    picture = cv2.warpAffine(picture, turn, (600, 400), borderValue=(250, 250, 250))
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, "PNG")
    page = preprocess.extract_page(buffer.getvalue())
    assert len(page.digits) == len(drawn)
    for digit, (x, y, width, height) in zip(page.digits, drawn, strict=True):
        centre_x, centre_y = turn @ np.array([x + width / 2, y + height / 2, 1.0])
        left, top, found_width, found_height = digit.box
        assert left <= centre_x <= left + found_width and top <= centre_y <= top + found_height
        assert abs(found_height - height) <= 8


def test_squared_grid_is_removed_around_digits() -> None:
    sheet = Sheet(300, 400)

    def draw(canvas: np.ndarray) -> None:
        for position in range(12, 400, 24):
            cv2.line(canvas, (position, 0), (position, 299), 255, 1, cv2.LINE_AA)
            cv2.line(canvas, (0, position), (399, position), 255, 1, cv2.LINE_AA)

    sheet.print(draw, (150, 150, 150))
    drawn = _row(sheet, [3, 8, 6], left=100, bottom=190, gap=20)
    page = preprocess.extract_page(sheet.png())
    _assert_boxes(_digit_boxes(page), drawn)


@pytest.mark.parametrize("gap", [6, 0], ids=["apart", "touching"])
def test_underline_is_removed(gap: int) -> None:
    sheet = Sheet(240, 400)
    drawn = _row(sheet, [4, 9, 2], left=100, bottom=140)
    pen = 5
    level = 140 + gap + pen // 2
    sheet.stroke([(85, level), (300, level)], pen)
    stages: dict[str, np.ndarray] = {}
    page = preprocess.extract_page(sheet.png(), stages)
    # Where a stroke touches the line the line is kept under it (a stroke is never cut), so a
    # digit standing on its underline keeps a foot as thick as the line.
    foot = pen + 2 if gap == 0 else 0
    found = [(x, y, width, height - foot) for x, y, width, height in _digit_boxes(page)]
    _assert_boxes(found, drawn)
    # Between the digits and past them the underline is gone.
    clean = stages["2c-ink"]
    for start, end in [(85, 98), (drawn[0][0] + drawn[0][2] + 3, drawn[1][0] - 3), (240, 300)]:
        assert clean[level - 4 : level + 5, start:end].max() < 0.1


def test_box_around_one_digit_is_removed() -> None:
    sheet = Sheet(240, 240)
    drawn = [sheet.write(6, 100, 150)]
    sheet.print(lambda canvas: cv2.rectangle(canvas, (80, 82), (160, 166), 255, 2), PRINT)
    page = preprocess.extract_page(sheet.png())
    _assert_boxes(_digit_boxes(page), drawn)


@pytest.mark.parametrize("bottom", [150, 162], ids=["inside", "touching-the-box"])
def test_box_narrower_than_tall_around_one_digit_is_removed(bottom: int) -> None:
    # A form's single box, taller than wide, the digit in it alone or standing on its side.
    sheet = Sheet(240, 240)
    drawn = [sheet.write(3, 108, bottom, height=60)]
    sheet.print(lambda canvas: cv2.rectangle(canvas, (100, 78), (154, 162), 255, 2), PRINT)
    page = preprocess.extract_page(sheet.png())
    _assert_boxes(_digit_boxes(page), drawn)


def test_comb_field_of_four_boxes_gives_four_digits() -> None:
    sheet = Sheet(220, 420)
    drawn = _comb(sheet, 4, {0: 3, 1: 0, 2: 7, 3: 9})
    page = preprocess.extract_page(sheet.png())
    _assert_boxes(_digit_boxes(page), drawn)


def test_a_zero_leaning_on_a_wall_of_its_box_keeps_its_side() -> None:
    sheet = Sheet(220, 340)
    wall = LEFT + 2 * CELL
    drawn = _comb(sheet, 3, {0: 4, 2: 7})
    # A 0 pressed against the wall: its right side runs down it for most of its height.
    angles = np.radians(np.arange(0, 361, 6))
    centre = (wall - 14, TOP + CELL / 2)
    outline = [(min(centre[0] + 20 * np.cos(a), wall), centre[1] + 24 * np.sin(a)) for a in angles]
    sheet.stroke(outline, 3)
    page = preprocess.extract_page(sheet.png())
    assert len(page.digits) == 3
    zero = page.digits[1].ink
    side = (zero[:, -4:] > 0.5).any(axis=1)
    assert side.mean() >= 0.5, side.mean()  # the side is there, not only the arcs' ends
    assert page.digits[0].box[0] == pytest.approx(drawn[0][0], abs=4)


@pytest.mark.parametrize("lying", [0.9, 0.2])
def test_a_wall_is_kept_between_two_departures_only_where_a_stroke_lies_on_it(lying) -> None:
    # A stroke leaves the wall on one side at columns 10 and 40. Along a 0's side lying on the
    # wall there is ink just past the wall's edge most of the way; a 3 touching the wall with
    # both bows turns away between them, leaving the bare wall.
    leaving = np.zeros(60, bool)
    leaving[[10, 40]] = True
    along = np.zeros(60, bool)
    along[11 : 11 + round(lying * 29)] = True
    kept = layout._bridged(leaving, along, bridge=40)
    assert kept[11:40].all() if lying > 0.5 else not kept.any()
    # Departures further apart than the bridge are two strokes, whatever lies between.
    assert not layout._bridged(leaving, np.ones(60, bool), bridge=20).any()


@pytest.mark.parametrize(("cell", "joined"), [(60, True), (120, False)])
def test_pieces_in_one_narrow_cell_join(cell: int, joined: bool) -> None:
    # Walls of a comb field erased from the page, `cell` px apart, digits 50 px tall; two
    # pieces of a digit cut apart in the first cell, one digit in the next.
    structure = np.zeros((100, 20 + 3 * cell), np.float32)
    for wall in range(3):
        structure[10:90, 20 + wall * cell] = 1.0
    pieces = [(25, 25, 10, 50), (40, 25, 12, 50), (25 + cell, 25, 20, 50)]
    groups, _ = preprocess._in_cells(pieces, pieces, structure)
    first = [preprocess.union_box(pieces[0], pieces[1])] if joined else pieces[:2]
    assert groups == [*first, pieces[2]]


@pytest.mark.parametrize(
    ("walls", "ends", "expected"),
    [
        # One wall missed inside the row: put back halfway.
        ([43, 169, 232, 295], (50, 300), [43, 106, 169, 232, 295]),
        # The first wall missed: the row carried on to its left end.
        ([194, 304, 414, 524], (83, 500), [84, 194, 304, 414, 524]),
        # Gaps that are no multiples of one cell, or too few walls: as they are.
        ([40, 100, 190, 230], (40, 230), [40, 100, 190, 230]),
        ([40, 100], (0, 300), [40, 100]),
    ],
)
def test_regular_walls_put_missed_walls_back(walls, ends, expected) -> None:
    found = layout.regular_walls(np.array(walls, np.float64), *ends)
    np.testing.assert_allclose(found, expected, atol=1.0)


def test_thin_pieces_on_a_wall_are_no_digits() -> None:
    # Digits 50 px tall in cells 60 px wide; a 3 px piece of a wall kept on the wall at 80,
    # and a thin 1 in the middle of its cell, which stays.
    walls = np.array([20.0, 80.0, 140.0, 200.0])
    digits = [(35, 25, 30, 50), (79, 30, 3, 40), (108, 25, 5, 50), (155, 25, 30, 50)]
    pieces = [*digits[:1], *digits[2:]]
    assert preprocess._merge_in_cells(digits, walls, 50) == pieces


def test_a_one_reaching_the_top_and_bottom_of_its_box_is_no_wall() -> None:
    # A tall upright 1 as long as a divider, in the middle of its box: off the comb's pitch.
    sheet = Sheet(220, 420)
    drawn = _comb(sheet, 4, {0: 3, 2: 0, 3: 9})
    x = LEFT + CELL + CELL // 2
    sheet.stroke([(x, TOP + 2), (x, TOP + CELL - 2)], 6)
    page = preprocess.extract_page(sheet.png())
    boxes = _digit_boxes(page)
    assert len(boxes) == 4
    _assert_boxes([boxes[index] for index in (0, 2, 3)], drawn)
    one = boxes[1]
    assert abs(one[0] + one[2] / 2 - x) <= 3 and one[3] >= CELL - 12


def test_a_leaning_one_in_a_forms_box_is_a_digit_not_a_slash() -> None:
    sheet = Sheet(220, 420)
    drawn = _comb(sheet, 4, {0: 3, 2: 0, 3: 9})
    bottom = TOP + CELL - 9
    # One straight stroke leaning 25 degrees in the second box: on a plain page between
    # digits it would be a slash.
    x = LEFT + CELL + 33
    sheet.stroke([(x - 11, bottom), (x + 11, bottom - 47)], 4)
    page = preprocess.extract_page(sheet.png())
    assert page.separators == []
    assert len(page.digits) == 4
    assert all(digit.in_box for digit in page.digits)
    _assert_boxes([_digit_boxes(page)[index] for index in (0, 2, 3)], drawn)


def test_circle_around_a_digit_is_removed() -> None:
    sheet = Sheet(260, 260)
    drawn = [sheet.write(5, 112, 154)]
    sheet.stroke(
        [
            (130 + 62 * np.cos(angle), 130 + 50 * np.sin(angle))
            for angle in np.linspace(0, 2 * np.pi * 0.97, 60)
        ],
        4,
    )
    page = preprocess.extract_page(sheet.png())
    _assert_boxes(_digit_boxes(page), drawn)


def test_a_wide_ellipse_around_a_number_is_removed_whole() -> None:
    # An ellipse around 25 three times as wide as tall: its top and bottom are long enough to
    # pass for lines, and its sides must not be left behind as a "(" and a ")".
    sheet = Sheet(240, 420)
    drawn = _row(sheet, [2, 5], left=150, bottom=145, gap=20)
    centre_x = (drawn[0][0] + drawn[1][0] + drawn[1][2]) / 2
    sheet.stroke(
        [
            (centre_x + 150 * np.cos(angle), 120 + 55 * np.sin(angle))
            for angle in np.linspace(0, 2 * np.pi, 90)
        ],
        4,
    )
    page = preprocess.extract_page(sheet.png())
    _assert_boxes(_digit_boxes(page), drawn)


@pytest.mark.parametrize(
    "colour, offset", [(RULE, 0), (PEN, -3)], ids=["on-a-blue-rule", "on-a-dark-rule"]
)
def test_sevens_bar_lying_on_a_ruling_survives(colour: tuple[int, int, int], offset: int) -> None:
    # A 7 drawn by hand with its bar along a ruling: on a light rule the bar is darker than it,
    # on a rule as dark as the pen the bar rests on it and stands out above it.
    sheet = Sheet(200, 400)
    rule, pen = 80, 6
    sheet.print(lambda canvas: cv2.line(canvas, (0, rule), (399, rule), 255, 2), colour)
    bar = rule + offset
    sheet.stroke([(150, bar), (196, bar), (166, bar + 56)], pen)
    page = preprocess.extract_page(sheet.png())
    (digit,) = page.digits
    x, y, width, _ = digit.box
    assert digit.ink is not None and digit.scale == 1.0
    # Every column of the bar, away from its ends, keeps the bar's whole thickness.
    bar_rows = digit.ink[max(0, bar - pen - y) : bar + pen + 1 - y, 155 - x : 192 - x]
    assert (bar_rows > 0.5).sum(axis=0).min() >= pen - 1
    # And the ruling is gone away from the digit: the box is the 7's.
    assert 140 <= x and x + width <= 205


def test_flat_bases_on_a_faint_ruling_are_kept() -> None:
    # Rules so faint that only the flat bases of two 2s written along one of them, with the
    # faint rule between, make a run long enough to be looked at: that run is strokes, not a
    # printed line, and the bases stay.
    sheet = Sheet(240, 400)
    rules, base, pen = range(30, 240, 38), 144, 5
    sheet.print(
        lambda canvas: [cv2.line(canvas, (0, y), (399, y), 255, 1, cv2.LINE_AA) for y in rules],
        (200, 215, 240),
    )
    lefts = (120, 200)
    for left in lefts:
        curve = [(left, 110), (left + 12, 98), (left + 30, 100), (left + 34, 112)]
        sheet.stroke([*curve, (left, base), (left + 44, base)], pen)
    page = preprocess.extract_page(sheet.png())
    assert len(page.digits) == len(lefts)
    for digit, left in zip(page.digits, lefts, strict=True):
        x, y, _, _ = digit.box
        assert digit.ink is not None
        # Every column of the base, away from its ends, keeps the stroke's thickness.
        rows = digit.ink[base - pen - y : base + pen + 1 - y, left + 5 - x : left + 40 - x]
        assert (rows > 0.5).sum(axis=0).min() >= pen - 1


@pytest.mark.parametrize(("rule", "erased"), [(0.1, False), (0.6, True)])
def test_a_line_is_erased_only_where_it_runs_along_most_of_its_length(rule, erased) -> None:
    # A rule at row 50 and, lying on it, two flat strokes 7 px thick over 70% of the columns
    # where the line was found: with a faint rule (too faint to count as ink) that run is
    # the strokes, which stay; with a rule as dark as ink, the rule goes.
    ink = np.zeros((100, 200), np.float32)
    ink[50, :] = rule
    ink[47:54, 20:52] = 1.0
    ink[47:54, 68:100] = 1.0
    clean, removed, bands = ink.copy(), np.zeros_like(ink), np.zeros(ink.shape, bool)
    columns = np.arange(200)
    own = (columns >= 15) & (columns < 107)
    centres = np.full(200, 50.0)
    layout._erase_line(clean, removed, bands, (columns, own), centres, (12, 4), (20.0, 0))
    if erased:
        assert clean[50, 120:200].max() == 0.0 and removed[50, 120:200].min() == rule
    else:
        assert (clean == ink).all() and not removed.any()


# --- text lines ----------------------------------------------------------------------------------


def test_two_lines_are_read_top_to_bottom_each_left_to_right() -> None:
    sheet = Sheet(260, 260)
    # "12" above "34", the 1 right above the 3 and the 2 above the 4.
    top_row = [sheet.write(1, 80, 100, seed=1), sheet.write(2, 130, 102, seed=2)]
    bottom_row = [sheet.write(3, 80, 180, seed=3), sheet.write(4, 130, 178, seed=4)]
    page = preprocess.extract_page(sheet.png())
    _assert_boxes(_digit_boxes(page), top_row + bottom_row)
    assert [digit.line for digit in page.digits] == [0, 0, 1, 1]
    assert preprocess.find_digit_boxes(preprocess.to_ink(preprocess.decode(sheet.png()))) == [
        digit.box for digit in page.digits
    ]


def test_group_lines_from_boxes() -> None:
    boxes = [(10, 10, 20, 40), (40, 12, 20, 40), (10, 80, 20, 40), (40, 82, 20, 38)]
    # A decimal point joins the line whose band holds it, a hat floating above its 5 too.
    boxes += [(64, 45, 5, 5), (12, 2, 16, 5)]
    assert layout.group_lines(boxes, 0.3) == [0, 0, 1, 1, 0, 0]
    # The halves of a broken 8 stacked right above each other stay one line.
    assert layout.group_lines([(10, 10, 20, 20), (11, 32, 20, 20)], 0.3) == [0, 0]


# --- separators ----------------------------------------------------------------------------------


def _number_with(mark: str) -> tuple[bytes, list[Box], Box]:
    """Digits 3 and 5 on one baseline, ``mark`` drawn between them (a minus before them); the
    digit boxes and the mark's box as drawn."""
    sheet = Sheet(200, 320)
    base, top = 130, 130 - HEIGHT
    middle = base - HEIGHT / 2
    first = 140 if mark == "-" else 80
    boxes = [sheet.write(3, first, base, seed=3)]
    gap_left = boxes[0][0] + boxes[0][2]
    centre = gap_left + 16
    if mark == ".":
        sheet.dot((centre, base - 4), 4)
        mark_box = (centre - 4, base - 8, 9, 9)
    elif mark == ",":
        sheet.dot((centre, base - 4), 4)
        sheet.stroke([(centre + 2, base - 4), (centre - 4, base + 9)], 3)
        mark_box = (centre - 6, base - 8, 11, 19)
    elif mark == "/":
        sheet.stroke([(centre - 14, base), (centre + 14, top)], 3)
        mark_box = (centre - 16, top - 2, 33, HEIGHT + 4)
    elif mark == ":":
        sheet.dot((centre, base - 12), 4)
        sheet.dot((centre, base - 32), 4)
        mark_box = (centre - 4, base - 36, 9, 29)
    else:
        sheet.stroke([(first - 40, middle), (first - 14, middle)], 4)
        mark_box = (first - 42, round(middle) - 2, 31, 5)
        gap_left, centre = boxes[0][0] + boxes[0][2], 0
    left = gap_left + 16 if mark == "-" else centre + 20 + (10 if mark == "/" else 0)
    boxes.append(sheet.write(5, left, base, seed=5))
    return sheet.png(), boxes, mark_box


@pytest.mark.parametrize("mark", [".", ",", "-", "/", ":"])
def test_separator_is_read_in_its_place(mark: str) -> None:
    data, drawn, mark_box = _number_with(mark)
    page = preprocess.extract_page(data)
    _assert_boxes(_digit_boxes(page), drawn)
    (separator,) = page.separators
    assert separator.char == mark and separator.line == 0
    _assert_boxes([separator.box], [mark_box], slack=3)
    # extract_digits reads the same digits, without the mark.
    assert [digit.box for digit in preprocess.extract_digits(data)] == _digit_boxes(page)


def test_specks_of_dirt_are_no_separators() -> None:
    sheet = Sheet(260, 360)
    drawn = _row(sheet, [2, 7, 4], left=80, bottom=150, gap=26)
    gap = drawn[0][0] + drawn[0][2] + 13
    sheet.dot((gap, 60), 4)  # a dot's size, far above the line
    sheet.dot((330, 146), 4)  # on the baseline, but far past the last digit
    sheet.dot((gap + drawn[1][2] + 26, 100), 4)  # in a gap, but at mid-height
    page = preprocess.extract_page(sheet.png())
    _assert_boxes(_digit_boxes(page), drawn)
    assert page.separators == []


def test_the_bar_of_a_3_broken_in_pieces_is_no_minus() -> None:
    # 4, then a 3 written in three strokes that do not touch (each too short to be a digit on
    # its own), then 7: the 3's flat bar at mid-height has the shape of a minus sign.
    sheet = Sheet(200, 320)
    base, top = 130, 130 - HEIGHT
    middle = base - HEIGHT / 2
    drawn = [sheet.write(4, 60, base, seed=4)]
    left = drawn[0][0] + drawn[0][2] + 18
    sheet.stroke([(left, top + 4), (left + 20, top + 2), (left + 22, top + 14)], 4)
    sheet.stroke([(left + 4, middle), (left + 22, middle)], 4)
    sheet.stroke([(left + 24, middle + 8), (left + 22, base - 2), (left, base - 2)], 4)
    drawn.append((left - 2, top, 28, HEIGHT + 1))
    drawn.append(sheet.write(7, left + 44, base, seed=7))
    page = preprocess.extract_page(sheet.png())
    assert page.separators == []
    _assert_boxes(_digit_boxes(page), drawn, slack=5)


def _stroke_between_digits(degrees: float, flag: bool, bow: float = 0.0, pen: int = 4) -> list[str]:
    """The separators read in 4?7, where ? is a stroke as tall as the digits leaning right by
    ``degrees``, with a 1's flag at its top if ``flag``, its middle pushed ``bow`` px to the
    left of the straight line, drawn ``pen`` px wide."""
    sheet = Sheet(200, 320)
    drawn = [sheet.write(4, 80, 130, seed=4)]
    lean = HEIGHT * np.tan(np.radians(degrees))
    left = drawn[0][0] + drawn[0][2] + 16
    top = (left + 2 + lean, 84)
    across = np.radians(degrees)
    middle = (left + 2 + lean / 2 - bow * np.cos(across), 106 - bow * np.sin(across))
    sheet.stroke([(left + 2, 128), middle, top], pen)
    if flag:
        sheet.stroke([top, (top[0] - 9, top[1] + 8)], 4)
    sheet.write(7, left + round(lean) + 22, 130, seed=7)
    return [separator.char for separator in preprocess.extract_page(sheet.png()).separators]


@pytest.mark.parametrize(("degrees", "flag"), [(8, False), (20, True), (30, True)])
def test_slanted_one_is_a_digit_not_a_slash(degrees: float, flag: bool) -> None:
    # Upright enough for a 1 in italic hand, or bent by the flag at its top.
    assert _stroke_between_digits(degrees, flag) == []


def test_a_one_bowed_by_under_a_pixel_is_a_digit_not_a_slash() -> None:
    # The straightest handwritten 1s, scaled up from a small photo, bow this little.
    assert _stroke_between_digits(20, flag=False, bow=0.8) == []


@pytest.mark.parametrize(("degrees", "pen"), [(18, 4), (30, 4), (18, 6)])
def test_one_straight_leaning_stroke_is_a_slash(degrees: float, pen: int) -> None:
    # A bold pen's slash leaning little fills a third of its narrow box.
    assert _stroke_between_digits(degrees, flag=False, pen=pen) == ["/"]


# --- results -------------------------------------------------------------------------------------


def test_plain_row_passes_through_unchanged() -> None:
    sheet = Sheet(160, 400)
    _row(sheet, [7, 1, 4, 5], left=60, bottom=110)
    ink = preprocess.to_ink(preprocess.decode(sheet.png()))
    clean, removed = layout.remove_structure(ink)
    assert np.array_equal(clean, ink) and not removed.any()


def test_digits_carry_their_ink_crop_and_scale() -> None:
    # Twice the working size: boxes are in original pixels, crops in working pixels.
    sheet = Sheet(1200, 2400)
    drawn = _row(sheet, [8, 3], left=900, bottom=700)
    page = preprocess.extract_page(sheet.png())
    assert len(page.digits) == 2
    for digit, (x, y, _, _) in zip(page.digits, drawn, strict=True):
        assert digit.scale == pytest.approx(preprocess.WORKING_SIZE / 2400)
        crop_height, crop_width = digit.ink.shape
        assert abs(crop_height / digit.scale - digit.box[3]) <= 2 / digit.scale
        assert abs(crop_width / digit.scale - digit.box[2]) <= 2 / digit.scale
        assert abs(digit.box[0] - x) <= 6 and abs(digit.box[1] - y) <= 6


def test_extract_many_and_extract_or_error_give_pages() -> None:
    data, _, _ = _number_with(".")
    (page,) = preprocess.extract_many([data], page=True)
    assert isinstance(page, Page) and [s.char for s in page.separators] == ["."]
    assert isinstance(preprocess.extract_or_error(data, page=True), Page)
    assert isinstance(preprocess.extract_or_error(data), list)
    error = preprocess.extract_or_error(b"not an image", page=True)
    assert isinstance(error, preprocess.ImageError)


@pytest.mark.parametrize(
    ("groups", "kept"),
    [
        ((2, 2), True),
        ((1, 2, 4), True),
        ((1, 1), True),
        ((1, 3), False),
        ((4, 1), False),
        ((0, 2), False),
        ((2, 5), False),
    ],
)
def test_a_slash_must_split_its_number_like_a_date_or_a_fraction(groups, kept):
    # Digits 10 px wide at 20 px steps; a slash candidate between each group.
    boxes, digits, slashes, x = [], [], [], 0
    for number, count in enumerate(groups):
        if number:
            slashes.append(len(boxes))
            boxes.append((x, 0, 6, 20))
            x += 20
        for _ in range(count):
            digits.append(len(boxes))
            boxes.append((x, 0, 10, 20))
            x += 20
    found = layout._date_like(slashes, digits, np.asarray(boxes, dtype=np.float64))
    assert found == (slashes if kept else [])


def test_a_bar_just_under_a_boxs_top_takes_nothing_level_with_it_in_the_next_box() -> None:
    # A 7's bar a few px under the comb's top line, in the second box; level with it in the
    # first box, a 5's hat. Erased as a line of its own, the bar would be carried on past its
    # ends and take the hat with it.
    sheet = Sheet(220, 340)
    right = LEFT + 2 * CELL
    sheet.stroke(
        [(LEFT + CELL + 12, TOP + 6), (right - 10, TOP + 6), (right - 30, TOP + CELL - 8)], 5
    )
    hat = TOP + 12
    sheet.stroke([(LEFT + 24, hat), (LEFT + CELL - 10, hat)], 5)
    sheet.stroke([(LEFT + 24, hat), (LEFT + 22, TOP + 34)], 5)
    sheet.stroke([(LEFT + 22, TOP + 34), (LEFT + 44, TOP + 44), (LEFT + 20, TOP + CELL - 8)], 5)
    sheet.print(lambda canvas: _comb_lines(canvas, 3), PRINT)
    page = preprocess.extract_page(sheet.png())
    assert len(page.digits) == 2
    five, seven = page.digits
    assert five.box[1] <= hat - 1 and five.box[0] + five.box[2] >= LEFT + CELL - 12, five.box
    assert seven.box[1] <= TOP + 6, seven.box


@pytest.mark.parametrize("offset, joined", [(4, True), (30, False)])
def test_a_sliver_just_beside_a_digit_is_part_of_it(offset: int, joined: bool) -> None:
    # A short thin stroke 2 px right of a 2 (its tail parted by a thin pen) joins the 2; the
    # same stroke far from any digit stays a mark of its own.
    sheet = Sheet(160, 260)
    two, eight = _row(sheet, [2, 8], left=40, bottom=110, gap=40)
    x = two[0] + two[2] + offset
    sheet.stroke([(x, 110 - 14), (x, 110 - 2)], 3)
    tail = (x - 2, 110 - 16, 5, 16)  # the stroke's ink, its round caps and blur included
    found = _digit_boxes(preprocess.extract_page(sheet.png()))
    if joined:
        _assert_boxes(found, [preprocess.union_box(two, tail), eight])
    else:
        _assert_boxes(found, [two, tail, eight])
