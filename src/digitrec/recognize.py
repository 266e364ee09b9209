"""Recognition: image files in, digits with confidence out, batched across files and digits.

`Recognizer` runs a model through one of two backends: PyTorch (rebuilt from a safetensors run)
or ONNX Runtime (an exported `.onnx` file, no torch import at all). Both see exactly the digits
that `digitrec.preprocess` cuts out of the image.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from digitrec import preprocess

# A calibrated confidence below this marks a digit as uncertain: on the validation split, digits
# read with less confidence are wrong far more often than the model's 99%+ accuracy suggests.
UNCERTAIN_BELOW = 0.7

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


@dataclass
class ImageResult:
    path: str
    number: str | None = None
    digits: list[DigitResult] = field(default_factory=list)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        if self.error is not None:
            return {"path": self.path, "error": self.error}
        return {
            "path": self.path,
            "number": self.number,
            "digits": [asdict(d) for d in self.digits],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    def text(self) -> str:
        """The article's sentence, or why there is no answer."""
        name = os.path.basename(self.path) or self.path
        if self.error is not None:
            return f"{name}: error: {self.error}"
        if not self.digits:
            return f"{name}: no digit found"
        if len(self.digits) == 1:
            d = self.digits[0]
            flag = ", uncertain" if d.uncertain else ""
            return f"{name}: The number is probably a {d.digit} ({d.confidence:.1%}{flag})"
        least = min(d.confidence for d in self.digits)
        flag = ", uncertain" if any(d.uncertain for d in self.digits) else ""
        return f"{name}: The number is probably {self.number} (lowest digit {least:.1%}{flag})"


class TorchBackend:
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
    name = "onnx"

    def __init__(self, path: str | os.PathLike, threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        meta = self.session.get_modelmeta().custom_metadata_map
        self.card = json.loads(meta["digitrec_card"]) if "digitrec_card" in meta else {}

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(images, dtype=np.float32)[:, None]
        return self.session.run(None, {self.input_name: x})[0]


def load_model(path: str | os.PathLike) -> tuple[Any, dict[str, Any]]:
    """Rebuild a model from a run directory or .safetensors file alone: (module, card).

    The module includes the card's softmax temperature, so its softmax is calibrated.
    """
    import torch

    from digitrec.checkpoint import ModelError, read_weights
    from digitrec.models import Calibrated, build_from_card

    arrays, card = read_weights(path)
    try:
        model = build_from_card(card)
    except (KeyError, TypeError) as error:
        raise ModelError(f"{path}: the model card names an unknown model ({error})") from None
    state = {k: torch.from_numpy(np.array(v)) for k, v in arrays.items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        first = str(error).strip().splitlines()
        raise ModelError(
            f"{path}: weights do not fit the model ({first[1 if len(first) > 1 else 0].strip()})"
        ) from None
    model.eval()
    return Calibrated(model, card.get("temperature", 1.0)).eval(), card


def bundled_model() -> Path:
    return BUNDLED_DIR / "model.safetensors"


def torch_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch") is not None


class Recognizer:
    """Reads digits in images with one model; load once, call many times."""

    def __init__(self, backend: TorchBackend | OnnxBackend, card: dict[str, Any]) -> None:
        self.backend = backend
        self.card = card

    @classmethod
    def load(cls, model: str | os.PathLike | None = None, backend: str = "auto") -> Recognizer:
        """A run directory, .safetensors or .onnx file; None means the bundled model.

        backend: "torch", "onnx", or "auto" (onnx for an .onnx file or when torch is missing).
        """
        from digitrec.checkpoint import ModelError

        path = Path(model) if model is not None else None
        if path is None:
            path = bundled_model()
            if backend == "onnx" or (backend == "auto" and not torch_available()):
                path = BUNDLED_DIR / "model.onnx"
        is_onnx = path.suffix == ".onnx"
        if backend == "auto":
            backend = "onnx" if is_onnx else "torch"
        if backend == "onnx":
            if not is_onnx:
                candidate = (path if path.is_dir() else path.parent) / "model.onnx"
                if not candidate.is_file():
                    raise ModelError(
                        f"{path}: no model.onnx here; run `digitrec export {path}` first"
                    )
                path = candidate
            if not path.is_file():
                raise ModelError(f"{path}: no such ONNX model file")
            try:
                runner = OnnxBackend(path)
            except Exception as error:  # onnxruntime raises its own exception types
                raise ModelError(f"{path}: not a usable ONNX model ({error})") from None
            return cls(runner, runner.card)
        if backend != "torch":
            raise ModelError(f"unknown backend {backend!r}; choose torch, onnx or auto")
        module, card = load_model(path)
        return cls(TorchBackend(module), card)

    def probabilities(self, images: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        """Model probabilities (N, 10) for MNIST-like digits (N, 28, 28) float32 0..1."""
        if len(images) == 0:
            return np.zeros((0, 10), dtype=np.float32)
        parts = [
            self.backend.probabilities(images[i : i + batch_size])
            for i in range(0, len(images), batch_size)
        ]
        return np.concatenate(parts)

    def recognize(
        self, image: str | os.PathLike | bytes, stages: dict | None = None
    ) -> ImageResult:
        """One image (path or bytes) -> its digits."""
        return self.recognize_many([image], stages=[stages] if stages is not None else None)[0]

    def recognize_many(
        self,
        images: Sequence[str | os.PathLike | bytes],
        stages: Sequence[dict | None] | None = None,
    ) -> list[ImageResult]:
        """Many images; one model call for all their digits. Bad files get an error result."""
        results: list[ImageResult] = []
        crops: list[np.ndarray] = []
        owners: list[tuple[int, tuple[int, int, int, int]]] = []
        for index, image in enumerate(images):
            name = "<bytes>" if isinstance(image, bytes | bytearray) else str(image)
            result = ImageResult(path=name)
            try:
                data = (
                    image if isinstance(image, bytes | bytearray) else preprocess.read_bytes(image)
                )
                found = preprocess.extract_digits(
                    bytes(data), stages=stages[index] if stages else None
                )
            except preprocess.ImageError as error:
                result.error = str(error)
                found = []
            for digit in found:
                crops.append(digit.image)
                owners.append((index, digit.box))
            results.append(result)
        probabilities = self.probabilities(np.stack(crops) if crops else np.zeros((0, 28, 28)))
        for (index, box), probs in zip(owners, probabilities, strict=True):
            label = int(np.argmax(probs))
            confidence = float(probs[label])
            results[index].digits.append(
                DigitResult(
                    digit=label,
                    confidence=round(confidence, 6),
                    probabilities=[round(float(p), 6) for p in probs],
                    box=[int(v) for v in box],
                    uncertain=confidence < UNCERTAIN_BELOW,
                )
            )
        for result in results:
            if result.error is None:
                result.number = "".join(str(d.digit) for d in result.digits)
        return results


def expand_paths(paths: Iterable[str | os.PathLike]) -> list[str]:
    """Files as given; folders replaced by the image files in them, sorted by name."""
    out: list[str] = []
    for path in paths:
        path = str(path)
        if os.path.isdir(path):
            try:
                entries = sorted(os.listdir(path))
            except OSError as error:
                out.append(path)  # read_bytes will explain
                del error
                continue
            out.extend(
                os.path.join(path, e) for e in entries
                if Path(e).suffix.lower() in IMAGE_SUFFIXES
            )  # fmt: skip
        else:
            out.append(path)
    return out
