"""Inference speed: PyTorch against ONNX Runtime for one model, digits per second at one batch
size, and the cold start of `digitrec recognize` through each backend in a fresh process.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from digitrec import checkpoint
from digitrec.checkpoint import ModelError
from digitrec.export import ONNX_FILE, export_module


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


def _bench_model(
    model: str | os.PathLike | None, folder: Path
) -> tuple[Any, checkpoint.ModelCard, Path, str]:
    """(module, card, weights file, description) for the benchmark.

    None: the bundled model, or, in a package built without one, the default recipe's
    architecture with random weights (speed does not depend on the weights); saved to `folder`
    so that the command-line cold start can load it like any run.
    """
    from digitrec import checkpoint
    from digitrec.models import load_model
    from digitrec.recognize import bundled_model

    if model is None and bundled_model().is_file():
        module, card = load_model(bundled_model())
        description = f"bundled ({card.description})"
        return module, card, bundled_model(), description
    if model is not None:
        module, card = load_model(model)
        return module, card, checkpoint.weights_path(model), str(model)
    from digitrec.config import RECIPES
    from digitrec.models import Calibrated, create_model

    config = RECIPES["robust"]  # the recipe of the default recognition model
    inner = create_model(config.model, **config.model_args).eval()
    card = {"model": config.model, "model_args": dict(config.model_args), "temperature": 1.0}
    card = checkpoint.ModelCard.from_dict(checkpoint.save_run(folder, inner.state_dict(), card))
    description = f"{config.model} (random weights: no bundled model in this installation)"
    return Calibrated(inner).eval(), card, folder / checkpoint.WEIGHTS_FILE, description


def cold_start(backend: str, model: Path, image: Path, repeats: int = 5) -> dict[str, Any]:
    """Wall time of `digitrec recognize --backend B --model M IMAGE` in a fresh process.

    With more than one repeat, a first unrecorded run warms the disk cache; the median of the
    recorded runs is the figure.
    """

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
        "architecture": card.model,
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
