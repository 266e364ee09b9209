"""Images that are not digits, for outlier exposure: the model learns to spread its probability
over every class for them, so a letter, a symbol or a piece of a digit reads as "not a digit".

Three sources, each normalised by `preprocess.to_mnist` exactly as the recognizer normalises
what it finds on a page:

- Fashion-MNIST's clothes (28x28, white on black like MNIST);
- letters and symbols of a printed font (Pillow's own, so nothing needs installing), slanted,
  rotated and in random stroke weights; letters that people write like digits (O, I, l, S, Z,
  B, G, ...) are left out;
- shapes drawn by code: random pen scribbles, stars, crosses, arrows, ticks and faces;
- pieces of MNIST training digits: a digit cut down the middle, two digits pushed together
  into one blob, and the wrong cuts `digitrec.segment` proposes for a string of touching digits
  (a piece that straddles two digits or holds part of one). The recognizer cuts touching digits
  apart by asking which cut gives pieces the model reads surely, so a wrong cut must read unsure.

All randomness comes from the generator passed in.
"""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from digitrec.preprocess import Digit, to_mnist

# Written letters and symbols that are not read as digits by a person either.
GLYPHS = "ACEFHKMNPRUVWXYacdefhkmnprtuvwxy#@*+%?&$=<>~{}"
# How the outliers are split between the sources.
SHARES = {
    "fashion": 0.2,
    "glyphs": 0.25,
    "shapes": 0.1,
    "fragments": 0.1,
    "merged": 0.1,
    "cuts": 0.25,
}
# A proposed piece is a wrong cut when less than this share of its ink is one digit's, or when
# it holds less than this share of that digit's ink.
WRONG_CUT = 0.6
THIN_PIECE = 0.4  # width / height under which a piece may be a 1


def make_outliers(
    count: int,
    rng: np.random.Generator,
    digits: np.ndarray,
    fashion: np.ndarray | None = None,
) -> np.ndarray:
    """(count, 28, 28) uint8 non-digit images from MNIST training ``digits`` (uint8, N x 28 x
    28) and, if given, Fashion-MNIST images (its share goes to glyphs otherwise)."""
    shares = dict(SHARES)
    if fashion is None or len(fashion) == 0:
        shares["glyphs"] += shares.pop("fashion")
    counts = {name: int(round(count * share)) for name, share in shares.items()}
    counts["glyphs"] += count - sum(counts.values())
    parts = []
    if "fashion" in counts:
        chosen = rng.choice(len(fashion), size=counts["fashion"], replace=False)
        parts += [_normalise(fashion[i].astype(np.float32) / 255.0) for i in chosen]
    parts += [glyph(rng) for _ in range(counts["glyphs"])]
    parts += [shape(rng) for _ in range(counts["shapes"])]
    parts += [fragment(digits[rng.integers(len(digits))], rng) for _ in range(counts["fragments"])]
    parts += [
        merged(digits[rng.integers(len(digits))], digits[rng.integers(len(digits))], rng)
        for _ in range(counts["merged"])
    ]
    parts += wrong_cuts(counts["cuts"], digits, rng)
    images = np.stack(parts)[rng.permutation(count)]
    return np.clip(images * 255.0 + 0.5, 0, 255).astype(np.uint8)


def glyph(rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """A letter or symbol of the printed font, white on black, slanted and rotated a little."""
    character = GLYPHS[rng.integers(len(GLYPHS))]
    font = ImageFont.load_default(size=int(rng.integers(36, 48)))
    picture = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(picture)
    stroke = int(rng.integers(0, 3))
    draw.text(
        (size / 2, size / 2),
        character,
        fill=255,
        font=font,
        anchor="mm",
        stroke_width=stroke,
        stroke_fill=255,
    )
    slant = float(rng.uniform(-0.3, 0.3))
    angle = float(rng.uniform(-12.0, 12.0))
    picture = picture.transform(
        picture.size,
        Image.Transform.AFFINE,
        (1, slant, -slant * size / 2, 0, 1, 0),
        resample=Image.Resampling.BILINEAR,
    )
    picture = picture.rotate(angle, resample=Image.Resampling.BILINEAR)
    return _normalise(np.asarray(picture, dtype=np.float32) / 255.0)


def shape(rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """A pen mark that is no character: a scribble, a star, a cross, an arrow, a tick or a face."""
    picture = np.zeros((size, size), np.uint8)
    pen = int(rng.integers(2, 6))
    kind = int(rng.integers(6))
    centre, radius = size / 2, size * rng.uniform(0.3, 0.45)
    if kind == 0:  # scribble: a smooth random walk
        steps = rng.normal(0, size / 8, (int(rng.integers(6, 14)), 2)).cumsum(axis=0)
        points = [steps - steps.mean(axis=0) + centre]
    elif kind == 1:  # star of five or more points, drawn in one stroke
        corners = int(rng.choice([5, 7]))
        angles = np.pi * 2 * np.arange(corners + 1) * (corners // 2) / corners
        points = [np.stack([centre + radius * np.sin(angles), centre - radius * np.cos(angles)], 1)]
    elif kind == 2:  # cross or plus
        a = rng.uniform(0, np.pi / 2)
        ends = [(np.cos(a + k * np.pi / 2), np.sin(a + k * np.pi / 2)) for k in range(4)]
        points = [np.array([ends[k], ends[k + 2]]) * radius + centre for k in (0, 1)]
    elif kind == 3:  # arrow
        shaft = np.array([[-1.0, 0.0], [1.0, 0.0]]) * radius
        head = np.array([[0.5, -0.4], [1.0, 0.0], [0.5, 0.4]]) * radius
        points = [shaft + centre, head + centre]
    elif kind == 4:  # tick
        points = [np.array([[-0.8, 0.0], [-0.2, 0.7], [0.9, -0.8]]) * radius + centre]
    else:  # face: a circle, two eyes, a mouth
        face = np.linspace(0, 2 * np.pi, 40)
        mouth = np.linspace(0.2 * np.pi, 0.8 * np.pi, 12)
        points = [
            np.stack([np.cos(face), np.sin(face)], 1) * radius + centre,
            np.stack([np.cos(mouth), np.sin(mouth)], 1) * radius * 0.55 + centre,
            np.array([[-0.35, -0.3], [-0.33, -0.25]]) * radius + centre,
            np.array([[0.35, -0.3], [0.33, -0.25]]) * radius + centre,
        ]
    turn = rng.uniform(-np.pi, np.pi)
    rotation = np.array([[np.cos(turn), -np.sin(turn)], [np.sin(turn), np.cos(turn)]])
    points = [(stroke - centre) @ rotation.T + centre for stroke in points]
    for stroke in points:
        cv2.polylines(picture, [np.round(stroke).astype(np.int32)], False, 255, pen, cv2.LINE_AA)
    return _normalise(picture.astype(np.float32) / 255.0)


def fragment(digit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The left or right 30-60% of a digit's ink, as a wrong cut of a blob leaves it."""
    ink = digit.astype(np.float32) / 255.0
    columns = np.flatnonzero(ink.max(axis=0) > 0.3)
    if columns.size < 6:  # a thin 1: any piece of it is still a 1
        return glyph(rng)
    left, right = int(columns[0]), int(columns[-1]) + 1
    cut = left + int(round((right - left) * rng.uniform(0.3, 0.6)))
    piece = ink.copy()
    if rng.random() < 0.5:
        piece[:, cut:] = 0.0
    else:
        piece[:, : left + right - cut] = 0.0
    return _normalise(piece)


def merged(first: np.ndarray, second: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Two digits side by side, overlapping a little, squeezed into one blob."""
    a, b = first.astype(np.float32) / 255.0, second.astype(np.float32) / 255.0
    overlap = int(rng.integers(2, 9))
    page = np.zeros((28, 56 - overlap), dtype=np.float32)
    page[:, :28] = a
    page[:, 28 - overlap :] = np.maximum(page[:, 28 - overlap :], b)
    return _normalise(page)


def wrong_cuts(count: int, digits: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    """``count`` pieces that `digitrec.segment` proposes for strings of two or three touching
    digits and that are not one of the digits: most of their ink is not one digit's, or they
    hold too little of it."""
    from digitrec import segment

    pieces: list[np.ndarray] = []
    while len(pieces) < count:
        chosen = rng.integers(len(digits), size=int(rng.integers(2, 4)))
        layers = touching_string(digits[chosen], rng)
        ink = layers.max(axis=0)
        blob = Digit(np.zeros((28, 28), np.float32), (0, 0, ink.shape[1], ink.shape[0]), ink=ink)
        proposed = sorted({span for path in segment.segmentations(ink) for span in path})
        # A thin slice of any stroke is a fair 1 and stays one: only wider pieces are wrong.
        wrong = [
            span
            for span in proposed
            if _is_wrong_cut(layers, span) and span[1] - span[0] >= THIN_PIECE * ink.shape[0]
        ]
        for index in rng.permutation(len(wrong))[: min(4, count - len(pieces))]:
            pieces.append(segment.piece(blob, wrong[index])[0])
    return pieces


def touching_string(string: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """MNIST digits (uint8, K x 28 x 28) side by side, each pushed into the one before until
    their ink overlaps by 0 to 3 columns: one float32 ink layer per digit, (K, H, W)."""
    height, width = 28 + 6, 28 * len(string)
    layers = np.zeros((len(string), height, width), np.float32)
    right = 0
    for index, digit in enumerate(string):
        ink = digit.astype(np.float32) / 255.0
        columns = np.flatnonzero(ink.max(axis=0) > 0.3)
        ink = ink[:, columns[0] : columns[-1] + 1] if columns.size else ink
        left = max(0, right - int(rng.integers(0, 4)))
        top = int(rng.integers(0, 7))
        layers[index, top : top + 28, left : left + ink.shape[1]] = ink
        right = left + ink.shape[1]
    rows = np.flatnonzero(layers.max(axis=(0, 2)) > 0.3)
    return layers[:, rows[0] : rows[-1] + 1, :right]


def _is_wrong_cut(layers: np.ndarray, span: tuple[int, int]) -> bool:
    """A piece is a wrong cut when most of its ink is not one digit's, or when it holds less
    than WRONG_CUT of its main digit's ink."""
    inside = layers[:, :, span[0] : span[1]].sum(axis=(1, 2))
    total = layers.sum(axis=(1, 2))
    main = int(np.argmax(inside))
    share = inside[main] / max(float(inside.sum()), 1e-6)
    coverage = inside[main] / max(float(total[main]), 1e-6)
    return share < WRONG_CUT or coverage < WRONG_CUT


def _normalise(ink: np.ndarray) -> np.ndarray:
    """Fit the ink's bounding box into MNIST's 20x20 and centre it, as the recognizer does."""
    rows = np.flatnonzero(ink.max(axis=1) > 0.1)
    columns = np.flatnonzero(ink.max(axis=0) > 0.1)
    if rows.size == 0:
        return np.zeros((28, 28), dtype=np.float32)
    box = (
        int(columns[0]),
        int(rows[0]),
        int(columns[-1] - columns[0] + 1),
        int(rows[-1] - rows[0] + 1),
    )
    return to_mnist(ink, box)
