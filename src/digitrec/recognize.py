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
from digitrec.config import available_cores

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

        from digitrec.checkpoint import ModelError

        self.path = Path(path)
        self.session = ort.InferenceSession(
            str(path), self.session_options(threads), providers=["CPUExecutionProvider"]
        )
        self.input_name = self.session.get_inputs()[0].name
        meta = self.session.get_modelmeta().custom_metadata_map
        if "digitrec_card" not in meta:
            raise ModelError(f"{path}: ONNX file without a digitrec model card")
        try:
            self.card = json.loads(meta["digitrec_card"])
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
        # laptop) spinning threads fight for the cores; measured 1.6x faster at batch 1024.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3  # errors only: no warnings about unused initializers
        return options

    def _replay_check(self, meta: dict[str, str]) -> None:
        import base64
        import hashlib

        from digitrec.checkpoint import ModelError

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


def load_model(path: str | os.PathLike) -> tuple[Any, dict[str, Any]]:
    """Rebuild a model from a run directory or .safetensors file alone: (module, card).

    Only safetensors and JSON are read (never a pickle); the weights must match the digest in
    their card and the shapes of the architecture the card names. The module includes the
    card's softmax temperature, so its softmax is calibrated.
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
    """The weights shipped inside the package (`digitrec/pretrained/model.safetensors`)."""
    return BUNDLED_DIR / "model.safetensors"


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

    from digitrec.checkpoint import ModelError

    try:
        with safe_open(str(weights), framework="numpy") as f:
            card = json.loads((f.metadata() or {}).get("digitrec_card", "{}"))
    except Exception:  # an unreadable weights file says nothing about the export
        return
    exported, own = runner.card.get("tensors_sha256"), card.get("tensors_sha256")
    if exported and own and exported != own:
        raise ModelError(
            f"{runner.path} was exported from other weights than {weights}; "
            f"run `digitrec export {weights.parent}` again"
        )


class Recognizer:
    """Reads digits in images with one model; load once, call many times."""

    def __init__(self, backend: TorchBackend | OnnxBackend, card: dict[str, Any]) -> None:
        self.backend = backend
        self.card = card

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
        from digitrec.checkpoint import ModelError

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
            return cls(runner, runner.card)
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
        # Decoding and cutting out digits dominate; the files run on every core.
        found_all = preprocess.extract_many(images, stages)
        results: list[ImageResult] = []
        crops: list[np.ndarray] = []
        owners: list[tuple[int, tuple[int, int, int, int]]] = []
        for index, (image, found) in enumerate(zip(images, found_all, strict=True)):
            name = "<bytes>" if isinstance(image, bytes | bytearray) else str(image)
            result = ImageResult(path=name)
            if isinstance(found, preprocess.ImageError):
                result.error = str(found)
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
