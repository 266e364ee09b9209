"""Recognition: image files in, digits with confidence out, batched across files and digits.

`Recognizer` runs a model through one of two backends: PyTorch (rebuilt from a safetensors run)
or ONNX Runtime (an exported `.onnx` file, no torch import at all). Both see exactly the digits
that `digitrec.preprocess` cuts out of the image.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from digitrec import linereader, preprocess, segment
from digitrec.checkpoint import ModelCard, ModelError
from digitrec.config import available_cores
from digitrec.inputs import ImageSource, as_bytes

# A calibrated confidence below this marks a digit as uncertain: on the validation split, digits
# read with less confidence are wrong far more often than the model's 99%+ accuracy suggests.
UNCERTAIN_BELOW = 0.7
# Below this calibrated confidence a mark is reported as not a digit: the model was trained to
# spread its probability over every class for letters, symbols and scribbles.
NOT_DIGIT_BELOW = 0.5
# A blob that may be touching digits is taken as the digits the line reader reads in it when
# it reads two or more and the product of their confidences is at least this; otherwise the
# classifier's reading of the whole blob stands.
LINE_SURE = 0.5
# A blob narrower than LINE_ASPECT is seldom two digits (a 1 against a 4 is): there the line
# reader must be this sure, or a digit with a leftover of a box read unsure stays one digit.
LINE_SURE_NARROW = 0.9
# Blobs at least this wide for their height are read by the line reader unless the classifier
# is SURE_WHOLE of them (a round 9 or 0 is as wide as tall), and from WIDE_ASPECT on always: two
# touching zeros read as one sure 0.
LINE_ASPECT = 0.9
SURE_WHOLE = 0.99
WIDE_ASPECT = 1.2
# The line reader reads every blob at least SPLIT_ASPECT as wide as tall, and a blob the
# classifier is sure of is taken as the two or more digits the line reader reads in it when it
# is at least SPLIT_SURE of them: a 1 touching a 6 ("16") reads as a sure 6 to the classifier.
SPLIT_ASPECT = 0.8
SPLIT_SURE = 0.99
# Two neighbouring blobs of a line at most this fraction of their height apart, one of them read
# as touching digits or unsure, are read again as one by the line reader: cutting out a page
# can part a string of touching digits in two (a stroke detached from its digit).
JOIN_GAP = 0.1
# Below this confidence of the classifier, a blob is read by the line reader too: a 1 touching
# a 4 is as narrow as one digit, but the classifier is unsure of it.
UNSURE_BELOW = 0.9
# A blob the classifier reads below UNSURE_BELOW that the line reader, trained to read letters
# and marks as nothing, reads as no digit at least this surely is reported as not a digit.
EMPTY_SURE = 0.9
# A solid pen mark (ink reaching SOLID_INK) is reported as not a digit only when it is at least
# REJECT_MIN_HEIGHT pixels tall: smaller ones (a far-off photo's digits) reach the models as a
# blur scaled up, which both read unsure or as nothing too often, so there an unsure reading is
# a digit marked uncertain. Faint small marks (a blank page's lighting residue) stay flagged.
REJECT_MIN_HEIGHT = 20
SOLID_INK = 0.5

IMAGE_SUFFIXES = frozenset(
    ".png .jpg .jpeg .gif .bmp .tif .tiff .webp .pgm .ppm .pbm .jfif".split()
)
BUNDLED_DIR = Path(__file__).parent / "pretrained"


@dataclass
class DigitResult:
    digit: int
    confidence: float
    probabilities: list[float]
    box: list[int]
    uncertain: bool = False
    not_digit: bool = False  # a mark the model does not take for any digit
    line: int = field(default=0, repr=False)
    image: np.ndarray | None = field(default=None, repr=False, compare=False)  # model input

    def to_dict(self) -> dict[str, Any]:
        return {
            "digit": self.digit,
            "confidence": self.confidence,
            "probabilities": self.probabilities,
            "box": self.box,
            "uncertain": self.uncertain,
            "not_digit": self.not_digit,
        }


@dataclass
class LineResult:
    text: str  # digits and separators left to right; marks that are not digits left out
    box: list[int]
    digits: list[DigitResult]

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "box": self.box, "digits": [d.to_dict() for d in self.digits]}


@dataclass
class ImageResult:
    path: str
    number: str | None = None  # the first line's text: what single-line clients read
    digits: list[DigitResult] = field(default_factory=list)
    error: str | None = None
    lines: list[LineResult] = field(default_factory=list)
    full_text: str | None = None  # every line's text, joined by newlines

    def to_dict(self) -> dict[str, Any]:
        if self.error is not None:
            return {"path": self.path, "error": self.error}
        return {
            "path": self.path,
            "number": self.number,
            "text": self.full_text,
            "lines": [line.to_dict() for line in self.lines],
            "digits": [d.to_dict() for d in self.digits],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), allow_nan=False)

    def text(self) -> str:
        """The article's sentence, or why there is no answer."""
        if self.error is not None:
            # The path as given: a cut path would not say which of two x.png files failed.
            return f"{self.path}: error: {self.error}"
        name = os.path.basename(self.path) or self.path
        digits = [d for d in self.digits if not d.not_digit]
        marks = len(self.digits) - len(digits)
        if not digits:
            found = (
                f" ({marks} mark{'s' * (marks != 1)} that {'is' if marks == 1 else 'are'} "
                "not a digit)"
                if marks
                else ""
            )
            return f"{name}: no digit found{found}"
        least = min(d.confidence for d in digits)
        flag = ", uncertain" if any(d.uncertain for d in digits) else ""
        if len(digits) == 1 and self.number == str(digits[0].digit):
            article = "an" if digits[0].digit == 8 else "a"
            sentence = f"{name}: The number is probably {article} {self.number} ({least:.1%}{flag})"
        else:
            sentence = (
                f"{name}: The number is probably {self.number} "
                f"(every digit at least {least:.1%} sure{flag})"
            )
        rest = [line.text for line in self.lines if line.text][1:]
        return "\n".join([sentence, *(f"    next line: {text}" for text in rest)])


class TorchBackend:
    """PyTorch: the model rebuilt from a safetensors run (imports torch)."""

    name = "torch"

    def __init__(self, model: Any) -> None:
        import torch

        self.torch = torch
        self.model = model.eval()

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """images (N, 28, 28) float32 0..1 -> probabilities (N, 10)."""
        with self.torch.inference_mode():
            x = self.torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))[:, None]
            return self.torch.softmax(self.model(x).float(), dim=-1).numpy()


class OnnxBackend:
    """ONNX Runtime: an exported `.onnx` file whose graph ends in the softmax. No torch import.

    Loading replays the self-check stored in the file at export time (a few digits and their
    probabilities), so a file whose weights or model card were altered is refused.
    """

    name = "onnx"

    def __init__(self, path: str | os.PathLike, threads: int | None = None) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        self.session = ort.InferenceSession(
            str(path), self.session_options(threads), providers=["CPUExecutionProvider"]
        )
        self.input_name = self.session.get_inputs()[0].name
        meta = self.session.get_modelmeta().custom_metadata_map
        if "digitrec_card" not in meta:
            raise ModelError(f"{path}: ONNX file without a digitrec model card")
        try:
            self.card = ModelCard.from_dict(json.loads(meta["digitrec_card"]))
        except json.JSONDecodeError:
            raise ModelError(f"{path}: its model card is not valid JSON") from None
        self._replay_check(meta)

    @staticmethod
    def session_options(threads: int | None = None) -> Any:
        """Full graph optimisation (batch norm folded, conv + ReLU fused), one sequential
        stream of operators, each using every core: the fastest setting for a small CNN."""
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.intra_op_num_threads = threads or available_cores()
        options.inter_op_num_threads = 1
        # Idle threads sleep instead of spinning: on a CPU shared with other work (a server, a
        # laptop) spinning threads fight for the cores (README: Performance).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3  # errors only: no warnings about unused initializers
        return options

    def _replay_check(self, meta: dict[str, str]) -> None:
        import base64
        import hashlib

        if "digitrec_check" not in meta:
            raise ModelError(f"{self.path}: ONNX file without its digitrec self-check")
        try:
            check = json.loads(meta["digitrec_check"])
            pixels = np.frombuffer(base64.b64decode(check["images_uint8"]), dtype=np.uint8)
            images = pixels.reshape(check["shape"]).astype(np.float32) / 255.0
            expected = np.asarray(check["probabilities"], dtype=np.float64)
            tolerance = float(check["tolerance"])
            card_digest = check["card_sha256"]
        except (ValueError, KeyError, TypeError):
            raise ModelError(f"{self.path}: its self-check is unreadable") from None
        if hashlib.sha256(meta["digitrec_card"].encode()).hexdigest() != card_digest:
            raise ModelError(f"{self.path}: its model card was altered after export")
        got = self.probabilities(images)
        if got.shape != expected.shape or not np.allclose(got, expected, rtol=0, atol=tolerance):
            raise ModelError(
                f"{self.path}: the model no longer gives the answers recorded at export "
                "(weights altered or corrupt file?)"
            )

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """images (N, 28, 28) float32 0..1 -> probabilities (N, 10)."""
        x = np.ascontiguousarray(images, dtype=np.float32)[:, None]  # (N, 1, 28, 28)
        return self.session.run(None, {self.input_name: x})[0]


def bundled_model() -> Path:
    """The weights shipped inside the package (`digitrec/pretrained/model.safetensors`)."""
    return BUNDLED_DIR / "model.safetensors"


def _bundled_line_reader(threads: int | None) -> linereader.LineReader | None:
    """The line reader shipped with the package, or None in an installation without one."""
    folder = linereader.bundled_line_reader()
    if not (folder / linereader.ONNX_FILE).is_file():
        return None
    return linereader.LineReader.load(folder, threads)


def model_or_bundled(path: str | os.PathLike | None) -> Path:
    """``path``, or the bundled model's weights when it is None (an error if not installed)."""
    if path is not None:
        return Path(path)
    if not bundled_model().is_file():
        raise ModelError("no bundled model in this installation; pass --model RUN_DIR")
    return bundled_model()


def torch_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch") is not None


BACKENDS = ("auto", "torch", "onnx")


def resolve_model(
    model: str | os.PathLike | None, backend: str = "auto"
) -> tuple[Path, str, Path | None]:
    """(file to load, "torch" or "onnx", weights the ONNX file must have been exported from).

    - an `.onnx` file runs through ONNX Runtime;
    - a run directory or `.safetensors` file runs through PyTorch, or through the `model.onnx`
      exported beside it with backend "onnx" (or "auto" when torch is not installed);
    - None is the bundled model: its `model.onnx` when there is one (torch-free, and checked
      against PyTorch when it was exported), else its safetensors weights.
    A `model.onnx` used in place of weights beside it must have been exported from them.
    """
    from digitrec.checkpoint import WEIGHTS_FILE, ModelError

    if backend not in BACKENDS:
        raise ModelError(f"unknown backend {backend!r}; choose {', '.join(BACKENDS)}")
    if model is None:
        onnx_file, weights = BUNDLED_DIR / "model.onnx", bundled_model()
        if not onnx_file.is_file() and not weights.is_file():
            raise ModelError(
                f"no bundled model in this installation ({BUNDLED_DIR} has no model.safetensors "
                "or model.onnx); pass --model RUN_DIR, or train one with `digitrec train`"
            )
        if backend == "torch" or (backend == "auto" and not onnx_file.is_file()):
            if not weights.is_file():
                raise ModelError(f"{weights}: the bundled model has no weights for PyTorch")
            if not torch_available():
                raise ModelError("the PyTorch backend needs torch: pip install 'digitrec[train]'")
            return weights, "torch", None
        if not onnx_file.is_file():
            raise ModelError(
                f"the bundled model has no model.onnx; run `digitrec export {BUNDLED_DIR}` first"
            )
        return onnx_file, "onnx", weights if weights.is_file() else None

    path = Path(model)
    if path.suffix == ".onnx":
        if backend == "torch":
            raise ModelError(f"{path}: an .onnx file runs with --backend onnx, not torch")
        if not path.is_file():
            raise ModelError(f"{path}: no such ONNX model file")
        return path, "onnx", None
    if backend == "auto":
        backend = "torch" if torch_available() else "onnx"
    if backend == "torch":
        if not torch_available():
            raise ModelError("the PyTorch backend needs torch: pip install 'digitrec[train]'")
        return path, "torch", None
    folder = path if path.is_dir() else path.parent
    if not path.exists():
        raise ModelError(f"{path}: no model here (train one with `digitrec train`)")
    candidate = folder / "model.onnx"
    if not candidate.is_file():
        raise ModelError(f"{path}: no model.onnx here; run `digitrec export {path}` first")
    weights = path if path.is_file() else path / WEIGHTS_FILE
    return candidate, "onnx", weights if weights.is_file() else None


def _check_same_weights(runner: OnnxBackend, weights: Path) -> None:
    """Refuse a model.onnx exported from other weights than the run's own (a stale export)."""
    from safetensors import safe_open

    try:
        with safe_open(str(weights), framework="numpy") as f:
            card = json.loads((f.metadata() or {}).get("digitrec_card", "{}"))
    except Exception:  # an unreadable weights file says nothing about the export
        return
    exported, own = runner.card.tensors_sha256, card.get("tensors_sha256")
    if exported and own and exported != own:
        raise ModelError(
            f"{runner.path} was exported from other weights than {weights}; "
            f"run `digitrec export {weights.parent}` again"
        )


class Recognizer:
    """Reads digits in images with one model; load once, call many times."""

    def __init__(
        self,
        backend: TorchBackend | OnnxBackend,
        card: ModelCard,
        line_reader: linereader.LineReader | None = None,
    ) -> None:
        self.backend = backend
        self.card = card
        self.line_reader = line_reader

    @classmethod
    def load(
        cls,
        model: str | os.PathLike | None = None,
        backend: str = "auto",
        threads: int | None = None,
    ) -> Recognizer:
        """A run directory, .safetensors or .onnx file; None means the bundled model.

        backend: "torch", "onnx", or "auto" (see `resolve_model`). threads: ONNX Runtime's
        intra-op threads (default: every core this process may use).
        """
        path, chosen, exported_from = resolve_model(model, backend)
        if chosen == "onnx":
            try:
                runner = OnnxBackend(path, threads=threads)
            except ModelError:
                raise
            except Exception as error:  # onnxruntime raises its own exception types
                first = str(error).strip().splitlines()[0] if str(error).strip() else error
                raise ModelError(f"{path}: not a usable ONNX model ({first})") from None
            if exported_from is not None:
                _check_same_weights(runner, exported_from)
            return cls(runner, runner.card, _bundled_line_reader(threads))
        from digitrec.models import load_model

        module, card = load_model(path)
        return cls(TorchBackend(module), card, _bundled_line_reader(threads))

    def probabilities(self, images: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        """Model probabilities (N, 10) for MNIST-like digits (N, 28, 28) float32 0..1."""
        if len(images) == 0:
            return np.zeros((0, 10), dtype=np.float32)
        from digitrec.checkpoint import check_finite

        parts = [
            self.backend.probabilities(images[i : i + batch_size])
            for i in range(0, len(images), batch_size)
        ]
        # A NaN must never reach an answer: JSON cannot carry it and "0 at NaN" reads as sure.
        return check_finite(np.concatenate(parts), self.card.model)

    def recognize(self, image: ImageSource, stages: dict | None = None) -> ImageResult:
        """One image -> its digits: a path, bytes, a binary file object, a PIL image or a numpy
        array (gray or RGB, uint8 or float 0..1)."""
        return self.recognize_many([image], stages=[stages] if stages is not None else None)[0]

    def recognize_many(
        self,
        images: Sequence[ImageSource],
        stages: Sequence[dict | None] | None = None,
    ) -> list[ImageResult]:
        """Many images (any form `recognize` takes); one model call for all their digits (and
        one line reader call for the blobs that may be touching digits). Bad files get an error
        result; a picture in memory that cannot be encoded raises ImageError."""
        # Paths stay paths, so a file's own errors (not found, too large) name it.
        images = [
            image if isinstance(image, str | os.PathLike | bytes) else as_bytes(image)
            for image in images
        ]
        # Decoding and cutting out digits dominate; the files run on every core.
        pages = preprocess.extract_many(images, stages, page=True)
        found = [page.digits for page in pages if not isinstance(page, preprocess.ImageError)]
        digits = [digit for page_digits in found for digit in page_digits]
        size = preprocess.IMAGE_SIZE
        crops = (
            np.stack([d.image for d in digits]) if digits else np.zeros((0, size, size), np.float32)
        )
        whole = self.probabilities(crops)
        read_as_line = self._read_as_lines(digits, whole)
        readings = [
            line or [_digit_result(digit.image, digit.box, probs, digit.line, _rejectable(digit))]
            for digit, probs, line in zip(digits, whole, read_as_line, strict=True)
        ]
        page_of = [index for index, page_digits in enumerate(found) for _ in page_digits]
        readings = iter(self._join_parted(digits, page_of, whole, readings))
        results = []
        for image, page in zip(images, pages, strict=True):
            name = "<bytes>" if isinstance(image, bytes | bytearray) else str(image)
            if isinstance(page, preprocess.ImageError):
                results.append(ImageResult(path=name, error=str(page)))
                continue
            read = [reading for _ in page.digits for reading in next(readings)]
            lines = _read_lines(read, page.separators)
            number = next((line.text for line in lines if line.text), "")
            full_text = "\n".join(line.text for line in lines if line.text)
            results.append(ImageResult(name, number, read, None, lines, full_text))
        return results

    def _join_parted(
        self,
        digits: list[preprocess.Digit],
        page_of: list[int],
        whole: np.ndarray,
        readings: list[list[DigitResult]],
    ) -> list[list[DigitResult]]:
        """The readings, where two neighbouring blobs read as one by the line reader (one call
        for all pairs) read more surely than apart: the pair's digits on the first of the two,
        nothing on the second."""
        if self.line_reader is None:
            return readings
        pairs = [
            index
            for index in range(len(digits) - 1)
            if page_of[index] == page_of[index + 1]
            and _may_be_parted(digits, whole, readings, index)
        ]
        if not pairs:
            return readings
        both = [segment.joined(digits[index], digits[index + 1]) for index in pairs]
        found = self.line_reader.read([blob.ink for blob in both])
        readings = list(readings)
        taken = -1
        for index, blob, reading in zip(pairs, both, found, strict=True):
            apart = readings[index] + readings[index + 1]
            sure_apart = float(np.prod([result.confidence for result in apart]))
            if index <= taken or reading.confidence <= sure_apart:
                continue
            probs = np.maximum(whole[index], whole[index + 1])
            results = _line_results(blob, reading, probs)
            if results is not None and len(results) >= 2:
                readings[index], readings[index + 1] = results, []
                taken = index + 1
        return readings

    def _read_as_lines(
        self, digits: list[preprocess.Digit], whole: np.ndarray
    ) -> list[list[DigitResult] | None]:
        """For each blob that may be touching digits, the digits the line reader reads in it
        (one call for all), when it reads them surely; None for every other blob."""
        chosen = [
            index
            for index, (digit, probs) in enumerate(zip(digits, whole, strict=True))
            if self.line_reader is not None and _may_be_touching(digit, float(probs.max()))
        ]
        found: list[list[DigitResult] | None] = [None] * len(digits)
        if not chosen:
            return found
        readings = self.line_reader.read([digits[index].ink for index in chosen])
        for index, reading in zip(chosen, readings, strict=True):
            found[index] = _line_results(digits[index], reading, whole[index])
        return found


def _may_be_parted(
    digits: list[preprocess.Digit],
    whole: np.ndarray,
    readings: list[list[DigitResult]],
    index: int,
) -> bool:
    """Whether blob ``index`` and the next may be one string of touching digits parted in two:
    on one line, nearly touching, and one of them read as several digits or unsure."""
    first, second = digits[index], digits[index + 1]
    if first.line != second.line or first.ink is None or second.ink is None:
        return False
    if first.in_box and second.in_box:  # each in a box of a form's comb, one digit in each
        return False
    gap = second.box[0] - (first.box[0] + first.box[2])
    if gap > JOIN_GAP * max(first.box[3], second.box[3]):
        return False
    several = len(readings[index]) > 1 or len(readings[index + 1]) > 1
    return several or min(whole[index].max(), whole[index + 1].max()) < UNSURE_BELOW


def _may_be_touching(digit: preprocess.Digit, confidence: float) -> bool:
    """Whether the line reader should read a blob: one the classifier reads unsure, and one
    wide enough to hold two touching digits (a 1 against another digit is barely wider than
    that digit); `_sure_whole` says how sure it must then be."""
    if digit.ink is None:
        return False
    height, width = digit.ink.shape
    return confidence < UNSURE_BELOW or width >= SPLIT_ASPECT * height


def _sure_whole(digit: preprocess.Digit, whole: np.ndarray) -> bool:
    """Whether the classifier's reading of a blob stands unless the line reader is very sure
    of several digits in it: the classifier is sure of it, and the blob is narrow for two
    digits or the classifier is very sure (a round 0 is as wide as tall)."""
    if digit.ink is None:
        return True
    height, width = digit.ink.shape
    confidence = float(whole.max())
    if confidence < UNSURE_BELOW or width >= WIDE_ASPECT * height:
        return False
    return width < LINE_ASPECT * height or confidence >= SURE_WHOLE


def _line_results(
    digit: preprocess.Digit, reading: linereader.LineReading, whole: np.ndarray
) -> list[DigitResult] | None:
    """The digits of a blob as the line reader read them, each with the classes' probabilities
    at the frame where it fired most surely; the blob itself flagged not a digit when the
    classifier is unsure of it and the line reader sure it holds none; else None."""
    if reading.confidence < LINE_SURE:
        return None
    if _sure_whole(digit, whole) and (len(reading.digits) < 2 or reading.confidence < SPLIT_SURE):
        return None
    empty = not reading.digits and reading.confidence >= EMPTY_SURE
    if empty and whole.max() < UNSURE_BELOW and _rejectable(digit):
        return [replace(_digit_result(digit.image, digit.box, whole, digit.line), not_digit=True)]
    if len(reading.digits) == 1 and reading.confidence > whole.max():
        # One digit, which the line reader is surer of than the classifier: a second opinion
        # from a model that saw the digit among its neighbours' leftovers (a box's walls).
        classes = reading.classes[0]
        return [_digit_result(digit.image, digit.box, classes, digit.line, _rejectable(digit))]
    height, width = digit.ink.shape
    narrow = width < LINE_ASPECT * height
    if len(reading.digits) < 2 or (narrow and reading.confidence < LINE_SURE_NARROW):
        return None
    if digit.in_box:  # one box of a form holds one digit, with a leftover of its wall
        return None
    results = []
    for (_, _, left, right), classes in zip(reading.digits, reading.classes, strict=True):
        crop, box = segment.piece(digit, (left, right))
        results.append(_digit_result(crop, box, classes, digit.line, _rejectable(digit)))
    return results


def _rejectable(digit: preprocess.Digit) -> bool:
    """Whether an unsure reading of the blob may call it not a digit: it is tall enough to be
    seen, or too faint to be a pen's digit."""
    if digit.box[3] >= REJECT_MIN_HEIGHT or digit.ink is None:
        return True
    return float(digit.ink.max()) < SOLID_INK


def _digit_result(
    crop: np.ndarray, box: Any, probs: np.ndarray, line: int, rejectable: bool = True
) -> DigitResult:
    label = int(np.argmax(probs))
    confidence = float(probs[label])
    return DigitResult(
        digit=label,
        confidence=round(confidence, 6),
        probabilities=[round(float(p), 6) for p in probs],
        box=[int(v) for v in box],
        uncertain=confidence < UNCERTAIN_BELOW,
        not_digit=confidence < NOT_DIGIT_BELOW and rejectable,
        line=line,
        image=crop,
    )


def _read_lines(
    digits: list[DigitResult], separators: Sequence[preprocess.Separator]
) -> list[LineResult]:
    """Group digits and separators by text line; each line's text reads left to right."""
    numbers = sorted({d.line for d in digits} | {s.line for s in separators})
    lines = []
    for number in numbers:
        members = [d for d in digits if d.line == number]
        marks = [s for s in separators if s.line == number]
        items = [(d.box[0], str(d.digit)) for d in members if not d.not_digit]
        items += [(s.box[0], s.char) for s in marks]
        boxes = [d.box for d in members] + [list(s.box) for s in marks]
        left = min(b[0] for b in boxes)
        top = min(b[1] for b in boxes)
        right = max(b[0] + b[2] for b in boxes)
        bottom = max(b[1] + b[3] for b in boxes)
        text = "".join(char for _, char in sorted(items, key=lambda item: item[0]))
        lines.append(LineResult(text, [left, top, right - left, bottom - top], members))
    return lines


# Files people keep beside their images, and what to do with them instead.
NOT_IMAGES = {
    ".pdf": "a PDF document; convert its pages to PNG first (e.g. pdftoppm -png FILE page)",
    ".svg": "an SVG drawing; export it to PNG first",
    ".heic": "a HEIC photo, which is not supported; save it as JPEG first",
    ".heif": "a HEIF photo, which is not supported; save it as JPEG first",
}


def scan_paths(paths: Iterable[str | os.PathLike]) -> tuple[list[str], list[tuple[str, str]]]:
    """(files to read, [(skipped file, why)]): files as given; folders replaced by the image
    files in them, sorted by name, with every other entry of the folder skipped and why."""
    found: list[str] = []
    skipped: list[tuple[str, str]] = []
    for path in map(str, paths):
        if not os.path.isdir(path):
            found.append(path)
            continue
        try:
            entries = sorted(os.listdir(path))
        except OSError:
            found.append(path)  # read_bytes will explain
            continue
        for entry in entries:
            full = os.path.join(path, entry)
            suffix = Path(entry).suffix.lower()
            if suffix in IMAGE_SUFFIXES and not os.path.isdir(full):
                found.append(full)
            elif os.path.isdir(full):
                skipped.append((full, "a folder inside a folder (not searched)"))
            else:
                why = NOT_IMAGES.get(suffix, f"not an image file ({suffix or 'no extension'})")
                skipped.append((full, why))
    return found, skipped


def expand_paths(paths: Iterable[str | os.PathLike]) -> list[str]:
    """Files as given; folders replaced by the image files in them, sorted by name."""
    return scan_paths(paths)[0]
