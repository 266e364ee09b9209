"""Outlier exposure: the non-digit images, and a training step that spreads their probability."""

from __future__ import annotations

import numpy as np
import torch

from digitrec import outliers
from digitrec.config import AugmentConfig, recipe


def test_outliers_are_mnist_like_deterministic_and_from_every_source(mnist):
    digits = mnist.train_images[:500]
    fashion = mnist.test_images[:50]  # stands in for Fashion-MNIST: any 28x28 uint8 images
    first = outliers.make_outliers(200, np.random.default_rng(1), digits, fashion)
    again = outliers.make_outliers(200, np.random.default_rng(1), digits, fashion)
    assert first.shape == (200, 28, 28) and first.dtype == np.uint8
    assert np.array_equal(first, again)
    assert (first.reshape(200, -1).max(axis=1) > 128).all()  # every image has ink
    # Without Fashion-MNIST its share goes to the font: the count stays.
    assert len(outliers.make_outliers(50, np.random.default_rng(1), digits)) == 50


def test_a_wrong_cut_is_mostly_not_one_digit():
    rng = np.random.default_rng(0)
    string = np.zeros((2, 28, 28), np.uint8)
    string[0, 4:24, 6:18] = 255  # two blocks of the same ink
    string[1, 4:24, 6:18] = 255
    layers = outliers.touching_string(string, rng)
    assert layers.shape[0] == 2
    first_columns = np.flatnonzero(layers[0].max(axis=0) > 0.3)
    second_columns = np.flatnonzero(layers[1].max(axis=0) > 0.3)
    whole_first = (int(first_columns[0]), int(first_columns[-1]) + 1)
    straddling = (int(first_columns[0]), int(second_columns[-1]) + 1)
    assert not outliers._is_wrong_cut(layers, whole_first)
    assert outliers._is_wrong_cut(layers, straddling)  # half of its ink is each digit's
    half = (whole_first[0], (whole_first[0] + whole_first[1]) // 2)
    assert outliers._is_wrong_cut(layers, half)  # half of one digit


def test_outlier_images_enter_the_batch_and_pull_towards_equal_probabilities(mnist, splits):
    from digitrec.models import create_model
    from digitrec.train import _with_outliers, with_outlier_images

    config = recipe("fast", outliers=0.5, seed=0)
    small = with_outlier_images(splits, config)
    assert small.train.outliers is not None and small.train.outliers.shape[1:] == (1, 28, 28)
    index = torch.arange(8)
    batch = _with_outliers(small.train, index, config, torch.Generator().manual_seed(0))
    assert len(batch) == 8 + 4
    assert torch.equal(batch[:8], small.train.images[:8])
    # The loss on outliers is smallest when every class is equally likely.
    model = create_model("mlp")
    logits = model(small.train.outliers[:16].float() / 255)
    uniform = -torch.log_softmax(torch.zeros(16, 10), 1).mean()
    assert -torch.log_softmax(logits, 1).mean() >= uniform


def test_low_resolution_augmentation_blurs_only_the_picked_digits(splits):
    from digitrec.train import augment

    x = splits.train.images[:64].float() / 255
    config = AugmentConfig(enabled=True, low_resolution=1.0)
    blurred = augment(x, config, torch.Generator().manual_seed(0))
    # Shrunk to at most 12 px and back: fine detail is lost, so the images change but keep ink.
    assert not torch.allclose(blurred, x, atol=1e-3)
    assert (blurred.sum(dim=(1, 2, 3)) > 0).all()
    untouched = augment(x, AugmentConfig(enabled=True), torch.Generator().manual_seed(0))
    assert torch.allclose(untouched, x, atol=1e-5)
