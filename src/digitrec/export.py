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
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from digitrec.checkpoint import ModelError, write_atomic

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
    import io

    import torch

    graph = probability_graph(module)
    example = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # the legacy exporter announces its deprecation
        torch.onnx.export(
            graph,
            (example,),
            buffer,
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
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
    module: Any, card: dict[str, Any], opset: int, parity: dict[str, Any], check_images: np.ndarray
) -> dict[str, str]:
    """The ONNX metadata_props: the model card (with an `export` section), flat keys, check."""
    card = dict(card)
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
    labels = card.get("classes") or [str(i) for i in range(10)]
    # Every accuracy the card records (MNIST test, real-world set, ...) as its own flat key.
    accuracies = {
        key: str(value)
        for key, value in (card.get("metrics") or {}).items()
        if "accuracy" in key and _is_number(value)
    }
    for section, value in card.items():  # e.g. "realworld": {"accuracy": 0.985, ...}
        if isinstance(value, dict) and _is_number(value.get("accuracy")):
            accuracies[f"{section}_accuracy"] = str(value["accuracy"])
    return {
        "digitrec_card": card_json,
        "digitrec_check": json.dumps(self_check(check_images, expected, card_json)),
        "model": str(card.get("model", "")),
        "input": INPUT_DESCRIPTION,
        "output": OUTPUT_DESCRIPTION,
        "labels": ",".join(str(label) for label in labels),
        "temperature": str(card.get("temperature", 1.0)),
        **({"command": str(card["command"])} if card.get("command") else {}),
        "test_accuracy": accuracies.get("test_accuracy", ""),
        **accuracies,
        **_normalisation(module),
    }


def export_module(
    module: Any,
    card: dict[str, Any],
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
        "model": card.get("model"),
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
    from digitrec.recognize import load_model

    module, card = load_model(run)
    if images is None:
        images = parity_images(data_dir=data_dir)
    return export_module(module, card, out if out is not None else default_path(run), images, opset)


def throughput(
    probabilities: Callable[[np.ndarray], np.ndarray],
    batch: int = 1024,
    seconds: float = 3.0,
    images: np.ndarray | None = None,
) -> float:
    """Digits per second of `probabilities` ((N, 28, 28) float32 -> (N, 10)) at one batch size.

    One warm-up call, then calls until `seconds` have passed. The weights do not change the
    speed, so random pixels serve unless `images` are given.
    """
    if images is None:
        images = np.random.default_rng(0).random((batch, 28, 28), dtype=np.float32)
    images = np.ascontiguousarray(images[:batch], dtype=np.float32)
    probabilities(images)
    calls, start = 0, time.perf_counter()
    while True:
        probabilities(images)
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return calls * len(images) / elapsed


# The targets for the default model on 2 cores.
TARGET_DIGITS_PER_SECOND = 40_000
TARGET_COLD_START_S = 1.0


def _bench_model(model: str | os.PathLike | None, folder: Path) -> tuple[Any, dict, Path, str]:
    """(module, card, weights file, description) for the benchmark.

    None: the bundled model, or, in a package built without one, the default recipe's
    architecture with random weights (speed does not depend on the weights); saved to `folder`
    so that the command-line cold start can load it like any run.
    """
    from digitrec import checkpoint
    from digitrec.recognize import bundled_model, load_model

    if model is None and bundled_model().is_file():
        module, card = load_model(bundled_model())
        description = f"bundled ({card.get('command') or card.get('model')})"
        return module, card, bundled_model(), description
    if model is not None:
        module, card = load_model(model)
        return module, card, checkpoint.weights_path(model), str(model)
    from digitrec.config import RECIPES
    from digitrec.models import Calibrated, create_model

    config = RECIPES["robust"]  # the recipe of the default recognition model
    inner = create_model(config.model, **config.model_args).eval()
    card = {"model": config.model, "model_args": dict(config.model_args), "temperature": 1.0}
    card = checkpoint.save_run(folder, inner.state_dict(), card)
    description = f"{config.model} (random weights: no bundled model in this installation)"
    return Calibrated(inner).eval(), card, folder / checkpoint.WEIGHTS_FILE, description


def cold_start(backend: str, model: Path, image: Path, repeats: int = 5) -> dict[str, Any]:
    """Wall time of `digitrec recognize --backend B --model M IMAGE` in a fresh process.

    With more than one repeat, a first unrecorded run warms the disk cache; the median of the
    recorded runs is the figure.
    """
    import statistics
    import subprocess
    import sys

    command = [sys.executable, "-m", "digitrec", "recognize"]
    command += ["--backend", backend, "--model", str(model), str(image)]
    times, answer = [], ""
    for _ in range(repeats + (repeats > 1)):
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True)
        times.append(time.perf_counter() - start)
        if done.returncode != 0:
            raise ModelError(f"`{' '.join(command)}` failed: {done.stderr.strip()[-500:]}")
        answer = done.stdout.strip()
    rest = times[-repeats:]
    return {
        "seconds": round(statistics.median(rest), 3),
        "min_s": round(min(rest), 3),
        "max_s": round(max(rest), 3),
        "runs": len(rest),
        "answer": answer,
    }


def bench_inference(
    model: str | os.PathLike | None = None,
    batch: int = 1024,
    seconds: float = 3.0,
    threads: int | None = None,
    cold_starts: int = 5,
) -> dict[str, Any]:
    """PyTorch and ONNX Runtime side by side for one model: digits/s at one batch size, and
    the cold start of `digitrec recognize` on one image through each backend.

    model: a run directory or .safetensors file; None is the bundled model (see `_bench_model`).
    threads: for both runtimes; default every core this process may use.
    """
    import platform

    from digitrec import synth
    from digitrec.config import available_cores
    from digitrec.models import count_parameters

    threads = threads or available_cores()
    images = np.random.default_rng(0).random((batch, 28, 28), dtype=np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        module, card, weights, description = _bench_model(model, folder / "run")
        onnx_path = folder / ONNX_FILE
        export_module(module, card, onnx_path, images[:256])
        data, extension, label = synth.make_example("paper", np.random.default_rng(7))
        image = folder / f"digit-{label}{extension}"
        image.write_bytes(data)
        torch_speed, onnx_speed = _throughputs(module, onnx_path, images, seconds, threads)
        starts = {
            "torch": cold_start("torch", weights, image, cold_starts),
            "onnx": cold_start("onnx", onnx_path, image, cold_starts),
        }
    report = {
        "model": description,
        "architecture": card.get("model"),
        "parameters": count_parameters(module),
        "batch": batch,
        "threads": threads,
        "cpu": platform.processor() or platform.machine(),
        "torch": {"digits_per_second": round(torch_speed), "cold_start": starts["torch"]},
        "onnx": {"digits_per_second": round(onnx_speed), "cold_start": starts["onnx"]},
        "speedup": round(onnx_speed / torch_speed, 2),
        "targets": {
            "onnx_digits_per_second": TARGET_DIGITS_PER_SECOND,
            "onnx_cold_start_s": TARGET_COLD_START_S,
        },
    }
    report["met"] = {
        "onnx_digits_per_second": onnx_speed >= TARGET_DIGITS_PER_SECOND,
        "onnx_cold_start_s": starts["onnx"]["seconds"] <= TARGET_COLD_START_S,
    }
    return report


def _throughputs(
    module: Any, onnx_path: Path, images: np.ndarray, seconds: float, threads: int
) -> tuple[float, float]:
    """Digits per second of (PyTorch, ONNX Runtime), both on `threads` threads, over `images`."""
    import torch

    from digitrec.recognize import OnnxBackend, TorchBackend

    batch = len(images)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch_speed = throughput(TorchBackend(module).probabilities, batch, seconds, images)
    finally:
        torch.set_num_threads(previous)
    onnx = OnnxBackend(onnx_path, threads)
    return torch_speed, throughput(onnx.probabilities, batch, seconds, images)


def inference_table(report: dict[str, Any]) -> str:
    """The two backends side by side, then each target and whether it was met."""
    lines = [
        f"model: {report['model']} ({report['parameters']:,d} parameters), "
        f"batch {report['batch']}, {report['threads']} threads",
        f"{'backend':<12} {'digits/s':>10} {'cold start':>11}",
    ]
    for name, label in (("torch", "pytorch"), ("onnx", "onnxruntime")):
        entry = report[name]
        lines.append(
            f"{label:<12} {entry['digits_per_second']:>10,d} "
            f"{entry['cold_start']['seconds']:>10.2f}s"
        )
    targets, met = report["targets"], report["met"]
    lines.append(
        f"target onnxruntime >= {targets['onnx_digits_per_second']:,d} digits/s: "
        f"{'met' if met['onnx_digits_per_second'] else 'MISSED'}; "
        f"cold start <= {targets['onnx_cold_start_s']:.1f}s: "
        f"{'met' if met['onnx_cold_start_s'] else 'MISSED'}"
    )
    return "\n".join(lines)
