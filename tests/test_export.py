"""ONNX export: dynamic batch, softmax and model card inside, parity with PyTorch or refusal."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from digitrec import checkpoint, export
from digitrec.bench import inference
from digitrec.checkpoint import ModelError
from digitrec.cli import main
from digitrec.models import load_model
from digitrec.recognize import Recognizer


def test_export_agrees_with_pytorch_on_1000_mnist_digits(onnx_run, tiny_run, mnist):
    session = ort.InferenceSession(str(onnx_run / "model.onnx"))
    (graph_input,), (graph_output,) = session.get_inputs(), session.get_outputs()
    assert graph_input.name == "images" and graph_input.shape == ["batch", 1, 28, 28]
    assert graph_output.name == "probabilities" and graph_output.shape == ["batch", 10]

    # The oracle is PyTorch itself, run here rather than trusting the exporter's own report.
    images = mnist.test_images[:1000].astype(np.float32) / 255.0  # (N, 28, 28)
    module, _ = load_model(tiny_run.run_dir)
    with torch.no_grad():
        reference = torch.softmax(module(torch.from_numpy(images)[:, None]), dim=-1).numpy()
    got = session.run(None, {"images": images[:, None]})[0]  # (N, 10)
    assert np.abs(got - reference).max() <= 1e-5
    assert np.array_equal(got.argmax(1), reference.argmax(1))
    assert np.allclose(got.sum(1), 1.0, atol=1e-5)  # the softmax is inside the graph
    for batch in (1, 7):  # the batch size is dynamic
        assert session.run(None, {"images": images[:batch, None]})[0].shape == (batch, 10)


def test_the_onnx_file_carries_its_model_card(onnx_run, tiny_run):
    meta = ort.InferenceSession(str(onnx_run / "model.onnx")).get_modelmeta().custom_metadata_map
    assert meta["labels"] == "0,1,2,3,4,5,6,7,8,9"
    assert meta["normalisation_mean"] == "0.1307" and meta["normalisation_std"] == "0.3081"
    assert float(meta["test_accuracy"]) == tiny_run.card["metrics"]["test_accuracy"]
    card = json.loads(meta["digitrec_card"])
    assert card["tensors_sha256"] == tiny_run.card["tensors_sha256"]
    assert card["export"]["softmax_included"] is True
    parity = card["export"]["parity"]
    assert parity["parity_images"] == 1000 and parity["max_abs_diff"] <= 1e-5
    assert parity["labels_identical"] is True


def test_export_command_reports_the_parity_check(tiny_run, data_cache, tmp_path, capsys):
    out = tmp_path / "digits.onnx"
    code = main(
        [
            "export",
            str(tiny_run.run_dir),
            "--format",
            "onnx",
            "--out",
            str(out),
            "--data-dir",
            str(data_cache / "mnist"),
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0 and out.is_file()
    assert f"exported {out}" in printed
    assert "parity with PyTorch on 1000 MNIST test digits" in printed
    assert "labels identical" in printed


def _perturbed_export(monkeypatch):
    """Make the exporter trace slightly different weights than the ones PyTorch checks."""
    real = export.to_onnx_bytes

    def tampered(module, opset=export.OPSET):
        import copy

        other = copy.deepcopy(module)
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for parameter in other.parameters():
                parameter.add_(0.01 * torch.randn(parameter.shape, generator=generator))
        return real(other, opset)

    monkeypatch.setattr(export, "to_onnx_bytes", tampered)


def test_export_refuses_when_parity_fails_and_leaves_nothing(
    tiny_run, mnist, data_cache, tmp_path, monkeypatch, capsys
):
    _perturbed_export(monkeypatch)
    out = tmp_path / "bad.onnx"
    with pytest.raises(ModelError, match="export refused"):
        export.export_onnx(tiny_run.run_dir, out, images=mnist.test_images[:200])
    assert list(tmp_path.iterdir()) == []  # no file, no temporary left behind

    code = main(
        [
            "export",
            str(tiny_run.run_dir),
            "--out",
            str(out),
            "--data-dir",
            str(data_cache / "mnist"),
        ]
    )
    captured = capsys.readouterr()
    assert code == 1 and not out.exists()
    assert "exported" not in captured.out
    assert captured.err.startswith("digitrec: error:") and "disagree" in captured.err


def test_an_ensemble_exports_as_one_graph(mnist, tmp_path):
    # Two small members with random weights: the vote's graph, not its accuracy, is under test.
    members = [
        {"model": "kernelnet", "model_args": {"kernel_size": 7, "width": 8}},
        {"model": "kernelnet", "model_args": {"kernel_size": 5, "width": 8}},
    ]
    members = [dict(m, temperature=t) for m, t in zip(members, (1.5, 0.8), strict=True)]
    card = {"model": "ensemble", "model_args": {}, "members": members, "temperature": 1.0}
    from digitrec.models import build_from_card

    torch.manual_seed(0)
    checkpoint.save_run(tmp_path, build_from_card(card).state_dict(), card)
    result = export.export_onnx(tmp_path, images=mnist.test_images[:1000])
    assert result["model"] == "ensemble" and result["parity_images"] == 1000
    assert result["max_abs_diff"] <= 1e-5 and result["labels_identical"]

    onnx_reader = Recognizer.load(tmp_path / "model.onnx")
    torch_reader = Recognizer.load(tmp_path, backend="torch")
    images = mnist.test_images[1000:1100].astype(np.float32) / 255.0
    assert (
        np.abs(onnx_reader.probabilities(images) - torch_reader.probabilities(images)).max() < 1e-5
    )


def test_bench_infer_writes_both_backends_side_by_side(tiny_run, tmp_path, capsys, monkeypatch):
    # A speed any machine reaches and a cold start none does: one target met, one missed.
    monkeypatch.setattr(inference, "TARGET_DIGITS_PER_SECOND", 1)
    monkeypatch.setattr(inference, "TARGET_COLD_START_S", 0.0)
    out = tmp_path / "infer.json"
    code = main(
        [
            "bench",
            "infer",
            "--model",
            str(tiny_run.run_dir),
            "--batch",
            "64",
            "--seconds",
            "0.2",
            "--cold-starts",
            "1",
            "--out",
            str(out),
        ]
    )
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert code == 3
    assert report["met"] == {"onnx_digits_per_second": True, "onnx_cold_start_s": False}
    assert report["batch"] == 64 and report["threads"] >= 1
    assert report["parameters"] == tiny_run.card["parameters"]
    for backend in ("torch", "onnx"):
        entry = report[backend]
        assert entry["digits_per_second"] > 0
        assert entry["cold_start"]["seconds"] > 0 and entry["cold_start"]["runs"] == 1
        assert "The number is probably" in entry["cold_start"]["answer"]
    assert report["targets"] == {"onnx_digits_per_second": 1, "onnx_cold_start_s": 0.0}
    assert (
        "MISSED" in printed
        and "onnxruntime" in printed
        and "pytorch" in printed
        and str(out) in printed
    )


def test_onnx_metadata_is_plain_strings(onnx_run):
    model = onnx.load(str(onnx_run / "model.onnx"))
    keys = {entry.key for entry in model.metadata_props}
    assert {"digitrec_card", "digitrec_check", "labels", "normalisation", "test_accuracy"} <= keys
    assert model.producer_name == "digitrec"
