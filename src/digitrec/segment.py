"""Touching digits: the pieces of a blob.

Connected components cannot separate digits whose strokes touch or overlap ("00" is one blob).
The line reader (`digitrec.linereader`) reads such a blob whole and says which columns hold each
digit; `piece` turns those columns into the digit's 28x28 model input and its box on the page.
`segmentations` proposes the ways one could cut a blob at the thin columns of its ink profile:
the wrong cuts among them teach the classifier that a piece of a digit is not a digit
(`digitrec.outliers`).
"""

from __future__ import annotations

import itertools

import numpy as np

from digitrec.linereader import joined_ink
from digitrec.preprocess import Digit, to_mnist, union_box

# Narrowest piece, as a fraction of the blob's height: a 1 is thin, but not thinner.
MIN_PIECE = 0.12
MAX_DIGITS = 4
# Cut positions tried: the thinnest columns of the profile plus even spacing.
MAX_CUTS = 8
INK = 0.3

Span = tuple[int, int]  # [left, right) columns of the blob's ink crop


def candidate_cuts(ink: np.ndarray) -> list[int]:
    """Columns where a cut is plausible: local minima of the ink profile and even divisions."""
    height, width = ink.shape
    profile = (ink > INK).sum(axis=0).astype(np.float32)
    smooth = np.convolve(profile, np.ones(3, np.float32) / 3, mode="same")
    margin = max(1, int(MIN_PIECE * height))
    minima = [
        x
        for x in range(margin, width - margin)
        if smooth[x] <= smooth[x - 1] and smooth[x] <= smooth[x + 1]
    ]
    minima.sort(key=lambda x: smooth[x])
    cuts: list[int] = []
    digits = max(2, min(MAX_DIGITS, round(width / (0.6 * height))))
    even = [round(width * j / k) for k in range(2, digits + 1) for j in range(1, k)]
    for x in minima[: MAX_CUTS // 2] + even + minima[MAX_CUTS // 2 :]:
        if all(abs(x - other) > margin // 2 for other in cuts):
            cuts.append(x)
        if len(cuts) == MAX_CUTS:
            break
    return sorted(cuts)


def segmentations(ink: np.ndarray) -> list[list[Span]]:
    """Every way to cut the blob into 1..MAX_DIGITS pieces at the candidate cuts; first: whole."""
    height, width = ink.shape
    cuts = candidate_cuts(ink)
    narrowest = MIN_PIECE * height
    paths: list[list[Span]] = [[(0, width)]]
    for count in range(1, MAX_DIGITS):
        for chosen in itertools.combinations(cuts, count):
            edges = (0, *chosen, width)
            spans = list(itertools.pairwise(edges))
            if all(right - left >= narrowest for left, right in spans):
                paths.append(spans)
    return paths


def piece(digit: Digit, span: Span) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """The 28x28 model input and the original-pixel box of columns ``span`` of a blob."""
    ink = digit.ink
    left, right = span
    rows = np.flatnonzero((ink[:, left:right] > INK).any(axis=1))
    top, bottom = (int(rows[0]), int(rows[-1]) + 1) if rows.size else (0, ink.shape[0])
    crop_box = (left, top, right - left, bottom - top)
    x, y, _, _ = digit.box
    scale = digit.scale
    box = (
        x + int(round(left / scale)),
        y + int(round(top / scale)),
        max(1, int(round((right - left) / scale))),
        max(1, int(round((bottom - top) / scale))),
    )
    return to_mnist(ink, crop_box), box


def joined(first: Digit, second: Digit) -> Digit:
    """Two blobs of one line as one: their ink crops laid where they were found, on one crop
    spanning both boxes (a string of touching digits that the page's cut-out parted in two)."""
    scale = first.scale
    corners = [(round(d.box[0] * scale), round(d.box[1] * scale)) for d in (first, second)]
    ink = joined_ink([first.ink, second.ink], corners)
    return Digit(
        image=to_mnist(ink, (0, 0, ink.shape[1], ink.shape[0])),
        box=union_box(first.box, second.box),
        line=first.line,
        ink=ink,
        scale=scale,
    )
