"""Images that are not digits, for outlier exposure: the model learns to spread its probability
over every class for them, so a letter, a symbol or a piece of a digit reads as "not a digit".

Three sources, each normalised by `preprocess.to_mnist` exactly as the recognizer normalises
what it finds on a page:

- Fashion-MNIST's clothes (28x28, white on black like MNIST);
- letters and symbols of a printed font (Pillow's own, so nothing needs installing), slanted,
  rotated and in random stroke weights; letters that people write like digits (O, I, l, S, Z,
  B, G, ...) are left out;
- pieces of MNIST training digits: a digit cut down the middle, and two digits pushed together
  into one blob. The recognizer cuts touching digits apart by asking which cut gives pieces the
  model reads surely, so a wrong cut must read unsure.

All randomness comes from the generator passed in.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from digitrec.preprocess import to_mnist

# Written letters and symbols that are not read as digits by a person either.
GLYPHS = "ACEFHKMNPRUVWXYacdefhkmnprtuvwxy#@*+%?&$=<>~{}"
# How the outliers are split between the sources.
SHARES = {"fashion": 0.3, "glyphs": 0.35, "fragments": 0.2, "merged": 0.15}


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
    parts += [fragment(digits[rng.integers(len(digits))], rng) for _ in range(counts["fragments"])]
    parts += [
        merged(digits[rng.integers(len(digits))], digits[rng.integers(len(digits))], rng)
        for _ in range(counts["merged"])
    ]
    images = np.stack(parts)[rng.permutation(count)]
    return np.clip(images * 255.0 + 0.5, 0, 255).astype(np.uint8)


def glyph(rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """A letter or symbol of the printed font, white on black, slanted and rotated a little."""
    character = GLYPHS[rng.integers(len(GLYPHS))]
    font = ImageFont.load_default(size=int(rng.integers(36, 48)))
    picture = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(picture)
    stroke = int(rng.integers(0, 3))
    draw.text((size / 2, size / 2), character, fill=255, font=font, anchor="mm",
              stroke_width=stroke, stroke_fill=255)  # fmt: skip
    slant = float(rng.uniform(-0.3, 0.3))
    angle = float(rng.uniform(-12.0, 12.0))
    picture = picture.transform(picture.size, Image.Transform.AFFINE,
                                (1, slant, -slant * size / 2, 0, 1, 0),
                                resample=Image.Resampling.BILINEAR)  # fmt: skip
    picture = picture.rotate(angle, resample=Image.Resampling.BILINEAR)
    return _normalise(np.asarray(picture, dtype=np.float32) / 255.0)


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


def _normalise(ink: np.ndarray) -> np.ndarray:
    """Fit the ink's bounding box into MNIST's 20x20 and centre it, as the recognizer does."""
    rows = np.flatnonzero(ink.max(axis=1) > 0.1)
    columns = np.flatnonzero(ink.max(axis=0) > 0.1)
    if rows.size == 0:
        return np.zeros((28, 28), dtype=np.float32)
    box = (int(columns[0]), int(rows[0]), int(columns[-1] - columns[0] + 1),
           int(rows[-1] - rows[0] + 1))  # fmt: skip
    return to_mnist(ink, box)
