"""The model registry: the article's exact MLP, and every registered network is usable."""

from __future__ import annotations

import pytest
import torch

from digitrec.models import (
    count_parameters,
    create_model,
    layer_table,
    list_models,
    probabilities,
    register_model,
)


def test_mlp_is_the_articles_network():
    model = create_model("mlp")
    table = {name: (kind, params) for name, kind, params in layer_table(model)}
    counts = [params for kind, params in table.values() if kind == "Linear"]
    assert counts == [100_480, 1_290]
    assert count_parameters(model) == 101_770


@pytest.mark.parametrize("name", sorted(list_models()))
def test_every_model_maps_digits_to_ten_finite_logits(name):
    torch.manual_seed(0)
    model = create_model(name).eval()
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        logits = model(x)
        p = probabilities(logits)
    assert logits.shape == (3, 10)
    assert torch.isfinite(logits).all()
    assert torch.allclose(p.sum(dim=1), torch.ones(3), atol=1e-5)
    assert count_parameters(model) > 0


@pytest.mark.parametrize("name", ["cnn", "wide", "kernelnet"])
def test_conv_models_train_in_channels_last(name):
    model = create_model(name).to(memory_format=torch.channels_last)
    x = torch.rand(4, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    loss = model(x).logsumexp(dim=1).mean()
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_fastcnn_takes_one_conv_per_width_and_keeps_the_weight_names():
    deep = create_model("fastcnn", widths=(16, 32, 48, 64))
    assert [n for n, kind, _ in layer_table(deep) if kind == "Conv2d"] == [
        f"conv{i}.0" for i in range(1, 5)
    ]
    assert deep(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    # The three-stage default (the bundled model's shape) still names its layers conv1..conv3.
    assert {k.split(".")[0] for k in create_model("fastcnn").state_dict()} == {
        "conv1",
        "conv2",
        "conv3",
        "classifier",
    }
    with pytest.raises(ValueError, match="at least 2 widths"):
        create_model("fastcnn", widths=(16,))


def test_reference_models_match_their_published_sizes():
    assert count_parameters(create_model("keras-convnet")) == 34_826
    assert count_parameters(create_model("pytorch-example")) == 1_199_882


def test_unknown_model_and_duplicate_names_are_refused():
    with pytest.raises(KeyError, match="unknown model"):
        create_model("resnet-9000")
    with pytest.raises(ValueError, match="already registered"):
        register_model("mlp", "again")(lambda: None)
