"""ONNX export, checked against PyTorch before the file is kept.

The exported graph takes `images` float32 (N, 1, 28, 28), pixels / 255, white digit on black,
and returns `probabilities` float32 (N, 10): standardisation, the calibration temperature and
the softmax are all inside it, so a runtime only has to feed pixels. The batch size is dynamic.

Export pairs with a check: ONNX Runtime and PyTorch must agree on 1,000 real MNIST test digits
(max |p_onnx - p_torch| <= 1e-5, identical labels) or the export is refused and nothing is left
at the destination. The model card travels in the file's metadata (`digitrec_card`), with a
small self-check (`digitrec_check`) that `recognize.OnnxBackend` replays when it loads the file.

Torch and onnx are imported inside the functions that need them.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from digitrec.checkpoint import ModelCard, ModelError, write_atomic

ONNX_FILE = "model.onnx"
# Opset 17 runs as fast as any other through ONNX Runtime's full optimisation, and every
# runtime from onnxruntime 1.13 on reads it.
OPSET = 17
PARITY_IMAGES = 1000
PARITY_TOLERANCE = 1e-5
CHECK_IMAGES = 4  # digits stored in the file for the load-time self-check
INPUT_NAME = "images"
OUTPUT_NAME = "probabilities"
INPUT_DESCRIPTION = "images float32 (N, 1, 28, 28): pixels / 255 (0..1), white digit on black"
OUTPUT_DESCRIPTION = (
    "probabilities float32 (N, 10): softmax of the calibrated logits (temperature included)"
)


def default_path(run: str | os.PathLike) -> Path:
    """RUN_DIR/model.onnx, or model.onnx next to a .safetensors file."""
    run = Path(run)
    return (run if run.is_dir() else run.parent) / ONNX_FILE


def parity_images(
    count: int = PARITY_IMAGES, data_dir: str | os.PathLike | None = None
) -> np.ndarray:
    """The first `count` MNIST test digits, float32 (count, 28, 28) scaled to 0..1."""
    from digitrec import data

    return data.load("mnist", data_dir=data_dir).test_images[:count].astype(np.float32) / 255.0


def probability_graph(module: Any) -> Any:
    """The module with the softmax appended: what the ONNX graph computes."""
    import torch

    class WithSoftmax(torch.nn.Module):
        def __init__(self, model: torch.nn.Module) -> None:
            super().__init__()
            self.model = model

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return torch.softmax(self.model(images).float(), dim=-1)  # (N, 10)

    return WithSoftmax(module).eval()


def to_onnx_bytes(module: Any, opset: int = OPSET) -> bytes:
    """Trace `module` (0..1 pixels -> logits) into an ONNX graph with the softmax included.

    The classic TorchScript exporter gives a small graph with batch norm folded into the
    convolutions (the module is in eval mode), and needs nothing beyond torch itself.
    """
    import torch

    example = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}
    return traced_onnx(probability_graph(module), example, (INPUT_NAME, OUTPUT_NAME), axes, opset)


def traced_onnx(
    graph: Any, example: Any, names: tuple[str, str], dynamic_axes: dict, opset: int = OPSET
) -> bytes:
    """ONNX bytes of ``graph`` (eval mode) traced on ``example``, with (input, output)
    ``names`` and the ``dynamic_axes`` the runtime may vary."""
    import io

    import torch

    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # the legacy exporter announces its deprecation
        torch.onnx.export(
            graph,
            (example,),
            buffer,
            dynamo=False,
            opset_version=opset,
            input_names=[names[0]],
            output_names=[names[1]],
            dynamic_axes=dynamic_axes,
            do_constant_folding=True,
        )
    return buffer.getvalue()


def torch_probabilities(module: Any, images: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """The reference: softmax of the PyTorch module's output, (N, 28, 28) -> (N, 10)."""
    from digitrec.recognize import TorchBackend

    backend = TorchBackend(module)
    return np.concatenate(
        [
            backend.probabilities(images[i : i + batch_size])
            for i in range(0, len(images), batch_size)
        ]
    )


def compare(onnx: np.ndarray, reference: np.ndarray) -> dict[str, Any]:
    """How far ONNX Runtime's probabilities are from PyTorch's."""
    return {
        "parity_images": int(len(reference)),
        "max_abs_diff": float(np.abs(onnx - reference).max()) if len(reference) else 0.0,
        "labels_identical": bool(np.array_equal(onnx.argmax(1), reference.argmax(1))),
    }


def _session(model: bytes | str, threads: int | None = None) -> Any:
    import onnxruntime as ort

    from digitrec.recognize import OnnxBackend

    return ort.InferenceSession(
        model, OnnxBackend.session_options(threads), providers=["CPUExecutionProvider"]
    )


def _run(session: Any, images: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """ONNX Runtime's probabilities for (N, 28, 28) digits, fed as (B, 1, 28, 28) batches."""
    parts = []
    for i in range(0, len(images), batch_size):
        batch = np.ascontiguousarray(images[i : i + batch_size])[:, None]
        parts.append(session.run(None, {INPUT_NAME: batch})[0])
    return np.concatenate(parts)


def _normalisation(module: Any) -> dict[str, str]:
    """Flat metadata keys saying what the graph does to the pixels before the network."""
    from digitrec.models import Standardize

    pairs = sorted({(m.mean, m.std) for m in module.modules() if isinstance(m, Standardize)})
    if not pairs:
        return {"normalisation": "none: the network reads the 0..1 pixels as they are"}
    means, stds = zip(*pairs, strict=True)
    return {
        "normalisation": "inside the graph: (images - mean) / std",
        "normalisation_mean": ",".join(str(m) for m in means),
        "normalisation_std": ",".join(str(s) for s in stds),
    }


def self_check(images: np.ndarray, probabilities: np.ndarray, card_json: str) -> dict[str, Any]:
    """A few digits and their expected probabilities, replayed by OnnxBackend at load time.

    A file whose weights or card were altered after export no longer reproduces them.
    """
    pixels = np.clip(np.rint(images * 255.0), 0, 255).astype(np.uint8)  # (K, 28, 28)
    return {
        "images_uint8": base64.b64encode(pixels.tobytes()).decode("ascii"),
        "shape": list(pixels.shape),
        "probabilities": np.round(probabilities.astype(np.float64), 7).tolist(),
        "tolerance": 1e-4,
        "card_sha256": hashlib.sha256(card_json.encode()).hexdigest(),
    }


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def metadata(
    module: Any, card: ModelCard, opset: int, parity: dict[str, Any], check_images: np.ndarray
) -> dict[str, str]:
    """The ONNX metadata_props: the model card (with an `export` section), flat keys, check."""
    typed, card = card, card.to_dict()
    card["export"] = {
        "format": "onnx",
        "opset": opset,
        "input": INPUT_DESCRIPTION,
        "output": OUTPUT_DESCRIPTION,
        "softmax_included": True,
        "parity": {**parity, "tolerance": PARITY_TOLERANCE},
    }
    card_json = json.dumps(card, default=lambda v: v.item() if isinstance(v, np.generic) else v)
    # The check stores uint8 pixels, so its expected answers are for exactly those pixels.
    check_images = np.clip(np.rint(check_images * 255.0), 0, 255).astype(np.float32) / 255.0
    expected = torch_probabilities(module, check_images)
    # Every accuracy the card records (MNIST test, real-world set, ...) as its own flat key.
    accuracies = {
        key: str(value)
        for key, value in typed.metrics.items()
        if "accuracy" in key and _is_number(value)
    }
    for section, value in card.items():  # e.g. "realworld": {"accuracy": 0.985, ...}
        if isinstance(value, dict) and _is_number(value.get("accuracy")):
            accuracies[f"{section}_accuracy"] = str(value["accuracy"])
    return {
        "digitrec_card": card_json,
        "digitrec_check": json.dumps(self_check(check_images, expected, card_json)),
        "model": typed.model,
        "input": INPUT_DESCRIPTION,
        "output": OUTPUT_DESCRIPTION,
        "labels": ",".join(typed.classes),
        "temperature": str(typed.temperature),
        **({"command": typed.command} if typed.command else {}),
        "test_accuracy": accuracies.get("test_accuracy", ""),
        **accuracies,
        **_normalisation(module),
    }


def export_module(
    module: Any,
    card: ModelCard,
    out: str | os.PathLike,
    images: np.ndarray,
    opset: int = OPSET,
) -> dict[str, Any]:
    """Export a loaded model (0..1 pixels -> calibrated logits), check it, then write `out`.

    images: the parity digits, float32 (N, 28, 28) in 0..1 (uint8 is scaled by 1/255).
    Raises ModelError, leaving nothing at `out`, when ONNX Runtime and PyTorch disagree.
    """
    import onnx

    images = np.asarray(images)
    if images.dtype == np.uint8:
        images = images.astype(np.float32) / 255.0
    images = np.ascontiguousarray(images, dtype=np.float32).reshape(-1, 28, 28)
    if len(images) == 0:
        raise ModelError("export needs at least one parity image")
    out = Path(out)
    module = module.eval()

    graph_bytes = to_onnx_bytes(module, opset)
    reference = torch_probabilities(module, images)
    parity = compare(_run(_session(graph_bytes), images), reference)
    if parity["max_abs_diff"] > PARITY_TOLERANCE or not parity["labels_identical"]:
        raise ModelError(
            f"{out}: ONNX export refused: ONNX Runtime and PyTorch disagree on "
            f"{parity['parity_images']} MNIST test digits (max |diff| "
            f"{parity['max_abs_diff']:.2e} > {PARITY_TOLERANCE:.0e} or labels differ)"
        )

    proto = onnx.load_from_string(graph_bytes)
    proto.producer_name = "digitrec"
    proto.doc_string = f"digit recognizer: {INPUT_DESCRIPTION} -> {OUTPUT_DESCRIPTION}"
    for key, value in metadata(module, card, opset, parity, images[:CHECK_IMAGES]).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)

    def write(tmp: str) -> None:
        onnx.save(proto, tmp)
        # The file as written must load (its self-check included) and answer as checked.
        from digitrec.recognize import OnnxBackend

        written = OnnxBackend(tmp).probabilities(images)
        again = compare(written, reference)
        if again["max_abs_diff"] > PARITY_TOLERANCE or not again["labels_identical"]:
            raise ModelError(f"{out}: ONNX export refused: the written file fails its parity check")

    write_atomic(out, write)
    return {
        "path": str(out),
        **parity,
        "opset": opset,
        "bytes": out.stat().st_size,
        "model": card.model,
    }


def export_onnx(
    run: str | os.PathLike,
    out: str | os.PathLike | None = None,
    images: np.ndarray | None = None,
    opset: int = OPSET,
    data_dir: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Export a run directory or .safetensors file to ONNX, checked against PyTorch.

    out: default RUN_DIR/model.onnx. images: parity digits (N, 28, 28) 0..1; default the first
    1,000 MNIST test digits. Returns path, parity_images, max_abs_diff, labels_identical, opset,
    bytes and model.
    """
    from digitrec.models import load_model

    module, card = load_model(run)
    if images is None:
        images = parity_images(data_dir=data_dir)
    return export_module(module, card, out if out is not None else default_path(run), images, opset)
