"""Explanations: every figure for a CNN and the article's MLP, saliency, and the line kernels."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from digitrec import synth
from digitrec.config import DataConfig, recipe
from digitrec.data import make_splits
from digitrec.explain import (
    conv_layers,
    explain_image,
    explain_lines,
    layer_source,
    line_kernel_response,
    line_kernels,
    line_study,
    saliency,
    trace,
)
from digitrec.models import load_model
from digitrec.preprocess import ImageError, extract_digits
from digitrec.train import fit

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="module")
def seven(tmp_path_factory) -> Path:
    rng = np.random.default_rng(7)
    data, extension = synth.encode_format(synth.draw_digit(7, rng), "png8", rng)
    path = tmp_path_factory.mktemp("image") / f"seven{extension}"
    path.write_bytes(data)
    return path


@pytest.fixture(scope="module")
def mlp_run(mnist, tmp_path_factory):
    """The article's MLP, one epoch on 2,000 digits."""
    small = make_splits(mnist, DataConfig(subset=2000, validation_size=500))
    return fit(recipe("article", epochs=1), small, tmp_path_factory.mktemp("mlp"))


def _self_contained(page: str) -> bool:
    references = re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', page)
    return bool(references) and all(r.startswith("data:image/png;base64,") for r in references)


def test_explain_a_cnn(tiny_run, seven, tmp_path):
    page = explain_image(seven, tiny_run.run_dir, tmp_path)
    assert page == tmp_path / "explain.html"
    model, _ = load_model(tiny_run.run_dir)
    convs = conv_layers(layer_source(model))
    expected = ["input", "kernels", "flatten", "dense", "softmax", "saliency"]
    expected += [f"activations-{i + 1}" for i in range(len(convs))]
    for name in expected:
        assert (tmp_path / f"{name}.png").stat().st_size > 1000, name
    text = page.read_text()
    assert _self_contained(text)
    assert "The number is probably a 7" in text
    assert "sum to 1" in text and "Raw scores:" in text


def test_trace_keeps_every_channel_of_every_conv_after_its_activation(tiny_run, seven):
    model, _ = load_model(tiny_run.run_dir)
    digit = extract_digits(seven.read_bytes())[0].image
    result = trace(model, digit)
    convs = conv_layers(layer_source(model))
    assert convs and list(result.conv) == [name for name, *_ in convs]
    for name, conv, _, stage in convs:
        maps = result.conv[name]
        assert maps.shape[0] == conv.out_channels and maps.ndim == 3
        if "ReLU" in stage:
            assert maps.min() >= 0.0
    # The hooks see the same forward pass as the model's answer.
    with torch.no_grad():
        expected = model(torch.from_numpy(digit)[None, None])[0].numpy()
    np.testing.assert_allclose(result.scores, expected, atol=1e-5)


def test_saliency_is_integrated_gradients(tiny_run, seven):
    model, _ = load_model(tiny_run.run_dir)
    digit = extract_digits(seven.read_bytes())[0].image
    attribution = saliency(model, digit)
    assert attribution.shape == (28, 28) and np.isfinite(attribution).all()
    # Completeness: the attributions add up to score(image) - score(black image).
    with torch.no_grad():
        scores = model(torch.from_numpy(np.stack([digit, np.zeros_like(digit)]))[:, None])
    target = int(scores[0].argmax())
    rise = float(scores[0, target] - scores[1, target])
    assert attribution.sum() == pytest.approx(rise, rel=0.1, abs=0.5)
    # Pixels without ink get no attribution against a black baseline.
    assert np.all(attribution[digit == 0] == 0)


def test_explain_the_articles_mlp(mlp_run, seven, tmp_path):
    page = explain_image(seven, mlp_run.run_dir, tmp_path)
    for name in ("input", "weights", "flatten", "dense", "softmax", "saliency"):
        assert (tmp_path / f"{name}.png").stat().st_size > 1000, name
    assert not (tmp_path / "kernels.png").exists()
    text = page.read_text()
    assert "no convolution layers" in text and _self_contained(text)
    assert "784 values" in text


def test_a_blank_image_is_a_clear_error(tiny_run, tmp_path):
    with pytest.raises(ImageError, match="no digit found"):
        explain_image(EXAMPLES / "12-blank-none.png", tiny_run.run_dir, tmp_path)


def test_line_kernel_response_sees_lines_of_its_direction():
    kernels = line_kernels()
    vertical, horizontal = np.zeros((28, 28)), np.zeros((28, 28))
    vertical[4:24, 13:16] = 1.0
    horizontal[13:16, 4:24] = 1.0
    assert line_kernel_response(vertical, kernels["vertical"]) > 0.5
    assert line_kernel_response(vertical, kernels["horizontal"]) < 0.1
    assert line_kernel_response(horizontal, kernels["horizontal"]) > 0.5
    assert line_kernel_response(np.zeros((28, 28)), kernels["vertical"]) == 0.0
    # A filled square is no line: the dark flanks cancel the bar.
    assert line_kernel_response(np.ones((28, 28)), kernels["vertical"]) == pytest.approx(0.0)


def test_line_kernels_respond_more_to_fours_than_to_eights(mnist):
    # Every 4 and 8 of the test set, not one chosen pair.
    responses = line_study(mnist.test_images, mnist.test_labels)["responses"]
    fours, eights = responses[4], responses[8]
    assert len(fours["both"]) > 900 and len(eights["both"]) > 900
    assert fours["vertical"].mean() > 1.3 * eights["vertical"].mean()
    assert fours["both"].mean() > 1.1 * eights["both"].mean()
    # Most (4, 8) pairs agree, not just the means.
    assert (fours["both"][:, None] > eights["both"][None, :]).mean() > 0.7


def test_explain_lines_page(mnist, tmp_path, monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    data_dir = Path(mnist.paths["test-images"]).parent
    page = explain_lines(tmp_path, data_dir=data_dir, show=True)  # no display: nothing shown
    for name in ("line-kernels", "line-maps", "line-strength"):
        assert (tmp_path / f"{name}.png").stat().st_size > 1000, name
    text = page.read_text()
    fours, eights = (int((mnist.test_labels == digit).sum()) for digit in (4, 8))
    assert _self_contained(text) and f"{fours} fours and {eights} eights" in text
