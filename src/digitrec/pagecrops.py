"""Training images as the reading pipeline hands them to the model: digits and marks drawn on
synthetic pages, then cut out again by `preprocess`.

A model trained on MNIST's clean crops meets other crops in use: a digit that sat on a ruling
or in a box keeps what the structure removal left of the line, a far-off digit arrives blurred
and blocky, a letter arrives normalised like a digit. Rendering pages the way `synth` does for
users' files and keeping what `preprocess.extract_page` cuts from them gives the model those
crops to learn from:

- `page_digits`: MNIST *training* digits on pages of every digit kind (the benchmark renders
  MNIST *test* digits, which never reach training); a page whose count of digits found differs
  from its label is dropped, since its crops cannot be paired with digits;
- `page_marks`: letters and symbols of Pillow's printed font and shapes drawn by code
  (`digitrec.outliers`, never the benchmark's own Hershey marks, scribbles or faces) on paper,
  photographed or not, cut out as the pipeline would: outliers for outlier exposure.

All randomness comes from the generator passed in.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from digitrec import outliers, preprocess, synth

# The kinds whose digits are read one crop each (touching digits go to the line reader whole).
DIGIT_KINDS = tuple(
    kind
    for kind in synth.KINDS
    if kind not in synth.NOT_DIGIT_KINDS and kind not in ("blank", "touching", "huge")
)


def kind_shares(weights: Mapping[str, float] | None = None) -> np.ndarray:
    """The probability of each of `DIGIT_KINDS` given relative ``weights`` (a kind not named
    weighs 1); a ValueError names a kind that is not one of them or a negative weight."""
    weights = dict(weights or {})
    unknown = sorted(set(weights) - set(DIGIT_KINDS))
    if unknown:
        raise ValueError(f"page kinds {unknown} are not among {', '.join(DIGIT_KINDS)}")
    shares = np.array([float(weights.get(kind, 1.0)) for kind in DIGIT_KINDS])
    if (shares < 0).any() or shares.sum() <= 0:
        raise ValueError(f"page kind weights must be >= 0, some > 0: {weights}")
    return shares / shares.sum()


def page_digits(
    images: np.ndarray,
    labels: np.ndarray,
    count: int,
    rng: np.random.Generator,
    weights: Mapping[str, float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """About ``count`` (N, 28, 28) uint8 crops with their labels, cut by the pipeline from pages
    of `DIGIT_KINDS`, drawn as often as ``weights`` say (`kind_shares`), with ``images`` (uint8
    MNIST training digits) and ``labels``."""
    shares = kind_shares(weights)
    crops, found = [], []
    attempts = 0
    while len(crops) < count and attempts < 4 * count:
        kind = DIGIT_KINDS[int(rng.choice(len(DIGIT_KINDS), p=shares))]
        chosen = rng.choice(len(labels), size=synth.digits_needed(kind), replace=False)
        data, _, label = synth.render(
            kind, [images[i] for i in chosen], rng, labels=[int(labels[i]) for i in chosen]
        )
        attempts += synth.digits_needed(kind)
        try:
            digits = preprocess.extract_page(data).digits
        except preprocess.ImageError:  # a format this installation's Pillow cannot write back
            continue
        text = [char for char in label if char.isdigit()]
        if len(digits) != len(text):
            continue
        crops += [digit.image for digit in digits]
        found += [int(char) for char in text]
    return _as_bytes(crops[:count]), np.array(found[:count], dtype=np.int64)


def page_marks(count: int, rng: np.random.Generator) -> np.ndarray:
    """(count, 28, 28) uint8 crops of non-digit marks drawn on pages and cut out again."""
    crops: list[np.ndarray] = []
    while len(crops) < count:
        mark = outliers.glyph(rng) if rng.random() < 0.6 else outliers.shape(rng)
        data, _ = synth.mark_on_page(mark, rng)
        crops += [digit.image for digit in preprocess.extract_page(data).digits]
    return _as_bytes(crops[:count])


def _as_bytes(crops: list[np.ndarray]) -> np.ndarray:
    if not crops:
        return np.zeros((0, 28, 28), np.uint8)
    return np.clip(np.stack(crops) * 255.0 + 0.5, 0, 255).astype(np.uint8)
