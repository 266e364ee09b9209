"""Read a blob of touching digits as a digit string, without cutting it apart first.

Touching or overlapping digits ("00" whose strokes join) reach us as one blob of ink. Instead
of guessing cuts and asking the digit classifier about each piece (`digitrec.segment`), a small
line reader (a CRNN trained with CTC, `digitrec.linereader_train`) reads the whole blob: the
blob is scaled to a fixed height, the network gives class probabilities for each frame (a slice
of STRIDE input columns), and greedy CTC decoding turns the frames into digits. Where a digit
fires in the frames says which columns of the blob are that digit.

    ink crop -> to_line_input -> ONNX Runtime (N, T, 11) probabilities -> greedy_decode -> spans

Inference needs only numpy, OpenCV and ONNX Runtime: torch is for training alone.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from digitrec.checkpoint import ModelError

# Every blob is scaled to this height (px), ink inside a MARGIN px frame of background: a digit
# stroke stays two or three px wide, which the first convolutions see whole.
LINE_HEIGHT = 32
MARGIN = 2
# Wider blobs are squeezed to this many heights: five digits fit, and a page's long rule or a
# scribble cannot make one input as wide as the page.
MAX_ASPECT = 8
# Input columns per output frame: the network halves the width once. A thin 1 overlapping its
# neighbour spans a few columns; it needs frames of its own and a blank between it and a
# repeat of the same digit, which a frame per four columns did not leave.
STRIDE = 2
MIN_WIDTH = 16
BLANK = 0  # CTC's "no digit here" class; digit d is class d + 1
NUM_CLASSES = 11
# Pixels darker than this are background when a generated blob is cropped to its ink, as
# `preprocess` crops what it finds (its threshold is at least 0.3).
INK = 0.3

WEIGHTS_FILE = "linereader.safetensors"
CARD_FILE = "linereader.json"
ONNX_FILE = "linereader.onnx"
INPUT_NAME = "lines"
OUTPUT_NAME = "probabilities"
MAX_BATCH = 64

Digit = tuple[int, float, int, int]  # (digit, confidence, left column, right column)


@dataclass(frozen=True)
class LineReading:
    """The digits read in one blob, left to right, with columns in the blob's ink crop."""

    digits: list[Digit]
    # Product of the digits' confidences; for an empty reading, how surely every frame is
    # blank (the least blank probability), so a letter read as nothing can still be trusted.
    confidence: float
    frames: np.ndarray | None = field(default=None, repr=False, compare=False)  # (T, 11)
    # For each digit, the ten digit classes' probabilities (blank left out, summing to 1) at
    # the frame where it fired most surely.
    classes: list[np.ndarray] = field(default_factory=list, repr=False, compare=False)

    @property
    def text(self) -> str:
        return "".join(str(digit) for digit, _, _, _ in self.digits)


def bundled_line_reader() -> Path:
    """The folder holding the line reader shipped inside the package."""
    return Path(__file__).parent / "pretrained"


def input_geometry(shape: tuple[int, int]) -> tuple[float, float, int]:
    """(vertical scale, horizontal scale, input width) for an ink crop of ``shape`` (h, w).

    The height fits LINE_HEIGHT - 2 MARGIN; the width keeps the aspect unless the blob is wider
    than MAX_ASPECT heights, and is padded up to a whole number of frames.
    """
    height, width = max(int(shape[0]), 1), max(int(shape[1]), 1)
    scale = (LINE_HEIGHT - 2 * MARGIN) / height
    inner = min(max(1, round(width * scale)), MAX_ASPECT * LINE_HEIGHT - 2 * MARGIN)
    padded = max(MIN_WIDTH, -(-(inner + 2 * MARGIN) // STRIDE) * STRIDE)
    return scale, inner / width, padded


def to_line_input(ink: np.ndarray) -> np.ndarray:
    """A blob's (h, w) ink crop (white on black, 0..1) as the reader's (LINE_HEIGHT, W) float32
    input: scaled to the fixed height keeping its aspect, in a MARGIN px border, W a multiple of
    STRIDE. The one normalisation of training and reading."""
    ink = np.nan_to_num(np.asarray(ink, dtype=np.float32)).clip(0.0, 1.0)
    line = np.zeros((LINE_HEIGHT, input_geometry(ink.shape)[2]), np.float32)
    if ink.size == 0:
        return line
    _, horizontal, _ = input_geometry(ink.shape)
    inner_height = LINE_HEIGHT - 2 * MARGIN
    inner_width = max(1, round(ink.shape[1] * horizontal))
    # Area averaging when shrinking keeps thin strokes' weight instead of aliasing them away.
    shrinking = ink.shape[0] > inner_height
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    fitted = cv2.resize(ink, (inner_width, inner_height), interpolation=interpolation)
    line[MARGIN : MARGIN + inner_height, MARGIN : MARGIN + inner_width] = fitted.clip(0.0, 1.0)
    return line


def joined_ink(inks: Sequence[np.ndarray], origins: Sequence[tuple[int, int]]) -> np.ndarray:
    """Blobs of one text line put back together as one ink crop: each (h, w) crop pasted at its
    (x, y) origin in working pixels, relative to the union of their boxes.

    A string of touching digits sometimes reaches us as two blobs (a stroke did not quite join,
    or one digit is in two pieces); read as one, the reader sees every digit whole.
    """
    left = min(x for x, _ in origins)
    top = min(y for _, y in origins)
    right = max(x + ink.shape[1] for ink, (x, _) in zip(inks, origins, strict=True))
    bottom = max(y + ink.shape[0] for ink, (_, y) in zip(inks, origins, strict=True))
    canvas = np.zeros((bottom - top, right - left), np.float32)
    for ink, (x, y) in zip(inks, origins, strict=True):
        region = canvas[y - top : y - top + ink.shape[0], x - left : x - left + ink.shape[1]]
        np.maximum(region, ink, out=region)
    return canvas


def frame_count(input_width: int) -> int:
    """Output frames for an input this wide: the network pools the width by STRIDE."""
    return input_width // STRIDE


def greedy_decode(frames: np.ndarray) -> list[tuple[int, float, int, int]]:
    """Best path decoding of (T, 11) frame probabilities: the most likely class per frame,
    repeats collapsed, blanks dropped. Returns (digit, confidence, first frame, last frame) per
    digit, confidence being the highest probability of the digit in its run of frames."""
    best = frames.argmax(axis=1)
    digits: list[tuple[int, float, int, int]] = []
    previous = BLANK
    for index, label in enumerate(best.tolist()):
        if label != BLANK and label == previous:
            digit, confidence, first, _ = digits[-1]
            digits[-1] = (digit, max(confidence, float(frames[index, label])), first, index)
        elif label != BLANK:
            digits.append((label - 1, float(frames[index, label]), index, index))
        previous = label
    return digits


def frame_spans(runs: Sequence[tuple[int, int]], frames: int) -> list[tuple[float, float]]:
    """[left, right) spans in frames for digits firing in frame runs (first, last): each span
    reaches half-way to its neighbours' runs, the first from 0 and the last to ``frames``, so
    the spans tile the line."""
    if not runs:
        return []
    edges = [0.0]
    for (_, last), (first, _) in zip(runs[:-1], runs[1:], strict=True):
        edges.append((last + 1 + first) / 2)
    edges.append(float(frames))
    return list(zip(edges[:-1], edges[1:], strict=True))


def to_ink_columns(span: tuple[float, float], shape: tuple[int, int]) -> tuple[int, int]:
    """A span in frames as [left, right) columns of the ink crop of ``shape``, inside it."""
    _, horizontal, _ = input_geometry(shape)
    width = int(shape[1])

    def column(frame: float) -> int:
        return int(np.clip(round((frame * STRIDE - MARGIN) / horizontal), 0, width))

    left, right = column(span[0]), column(span[1])
    return left, max(right, min(left + 1, width))


def reading(frames: np.ndarray, shape: tuple[int, int]) -> LineReading:
    """The LineReading of one blob of ``shape`` from its (T, 11) frames (padding cut off)."""
    decoded = greedy_decode(frames)
    spans = frame_spans([(first, last) for _, _, first, last in decoded], len(frames))
    digits = [
        (digit, confidence, *to_ink_columns(span, shape))
        for (digit, confidence, _, _), span in zip(decoded, spans, strict=True)
    ]
    classes = []
    for digit, _, first, last in decoded:
        peak = frames[first + int(np.argmax(frames[first : last + 1, digit + 1])), 1:]
        classes.append(peak / peak.sum())
    if digits:
        confidence = float(np.prod([confidence for _, confidence, _, _ in digits]))
    else:
        confidence = float(frames[:, BLANK].min()) if len(frames) else 1.0
    return LineReading(digits=digits, confidence=confidence, frames=frames, classes=classes)


def width_batches(widths: Sequence[int]) -> list[list[int]]:
    """Indices grouped into batches of equal input width, at most MAX_BATCH each. Equal, not
    merely similar: the recurrent layer would read a padded blob differently."""
    groups: dict[int, list[int]] = {}
    for index, width in enumerate(widths):
        groups.setdefault(int(width), []).append(index)
    return [
        group[start : start + MAX_BATCH]
        for _, group in sorted(groups.items())
        for start in range(0, len(group), MAX_BATCH)
    ]


def pad_batch(lines: Sequence[np.ndarray]) -> np.ndarray:
    """(N, 1, LINE_HEIGHT, W) float32: the lines padded with background to the widest (in
    training; the reader batches only lines of one width)."""
    width = max(line.shape[1] for line in lines)
    batch = np.zeros((len(lines), 1, LINE_HEIGHT, width), np.float32)
    for index, line in enumerate(lines):
        batch[index, 0, :, : line.shape[1]] = line
    return batch


class LineReader:
    """The line reader run by ONNX Runtime: no torch needed."""

    def __init__(self, onnx: bytes, card: dict, threads: int | None = 1) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(onnx, options, providers=["CPUExecutionProvider"])
        self.card = card

    @classmethod
    def load(cls, folder: str | os.PathLike | None = None, threads: int | None = 1) -> LineReader:
        """The reader in ``folder`` (linereader.onnx and linereader.json); None: the bundled."""
        folder = Path(folder) if folder is not None else bundled_line_reader()
        try:
            card = json.loads((folder / CARD_FILE).read_text())
            onnx = (folder / ONNX_FILE).read_bytes()
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ModelError(f"{folder}: no readable line reader ({error})") from None
        made_for = (card.get("input_height"), card.get("stride"), card.get("num_classes"))
        if made_for != (LINE_HEIGHT, STRIDE, NUM_CLASSES):
            raise ModelError(f"{folder / CARD_FILE}: made for other inputs than this reader's")
        # The card names the file it was saved with: a changed byte is refused, not run.
        if hashlib.sha256(onnx).hexdigest() != card.get("onnx_sha256"):
            raise ModelError(f"{folder / ONNX_FILE}: does not match its card's onnx_sha256")
        return cls(onnx, card, threads)

    def frames(self, lines: Sequence[np.ndarray]) -> list[np.ndarray]:
        """(T_i, 11) frame probabilities for each line input, batched by width."""
        out: list[np.ndarray] = [np.zeros((0, NUM_CLASSES), np.float32)] * len(lines)
        for batch in width_batches([line.shape[1] for line in lines]):
            probabilities = self.session.run(
                [OUTPUT_NAME], {INPUT_NAME: pad_batch([lines[index] for index in batch])}
            )[0]
            for row, index in enumerate(batch):
                out[index] = probabilities[row, : frame_count(lines[index].shape[1])]
        return out

    def read(self, inks: Sequence[np.ndarray]) -> list[LineReading]:
        """Read each blob's ink crop ((h, w) float32, white ink on black, 0..1)."""
        lines = [to_line_input(ink) for ink in inks]
        return [
            reading(frames, np.asarray(ink).shape)
            for frames, ink in zip(self.frames(lines), inks, strict=True)
        ]
