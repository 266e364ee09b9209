"""Training crops as the pipeline cuts them: digits paired with their labels, marks that are
not digits, the same for the same seed, and a training split that really grows by them."""

from __future__ import annotations

import io

import numpy as np
import pytest

from digitrec import pagecrops
from digitrec.cli import ProgressBar
from digitrec.config import DataConfig, recipe
from digitrec.data import make_splits
from digitrec.recognize import Recognizer
from digitrec.train import with_outlier_images, with_page_crops


def test_page_digits_pair_each_crop_with_its_digit(mnist):
    images, labels = mnist.train_images[:500], mnist.train_labels[:500]
    crops, found = pagecrops.page_digits(images, labels, 60, np.random.default_rng(0))
    assert crops.shape == (60, 28, 28) and crops.dtype == np.uint8 and found.shape == (60,)
    assert set(found.tolist()) <= set(range(10))
    # Paired right, the bundled model (99.4% on MNIST) reads nearly all of them as labelled;
    # paired one off, it would agree about one time in ten.
    answers = Recognizer.load().probabilities(crops.astype(np.float32) / 255.0).argmax(1)
    assert (answers == found).mean() > 0.8
    again, _ = pagecrops.page_digits(images, labels, 60, np.random.default_rng(0))
    assert np.array_equal(crops, again)


def test_page_marks_are_crops_of_marks():
    marks = pagecrops.page_marks(20, np.random.default_rng(1))
    assert marks.shape == (20, 28, 28) and marks.dtype == np.uint8
    assert all(mark.max() > 128 for mark in marks)  # each holds a mark, not an empty crop


def test_page_crops_grow_the_training_split_and_the_outliers(mnist):
    splits = make_splits(mnist, DataConfig(subset=200, validation_size=500))
    config = recipe("robust", page_crops=0.1, outliers=0.25)
    events = []
    grown = with_page_crops(splits, config, events.append)
    assert len(grown.train) == 200 + 20
    assert events == [{"event": "prepare", "message": "cutting 20 digits from synthetic pages"}]
    assert grown.validation is splits.validation and grown.test is splits.test
    plain = with_outlier_images(splits, recipe("robust", outliers=0.25, page_crops=0.0))
    more = with_outlier_images(splits, config)
    assert len(more.train.outliers) == len(plain.train.outliers) + len(plain.train.outliers) // 3
    assert with_page_crops(splits, recipe("fast")) is splits  # off unless asked for


def test_kind_shares_weigh_the_kinds_named_and_refuse_others():
    kinds = pagecrops.DIGIT_KINDS
    shares = pagecrops.kind_shares({"lowres": 3})
    # Every other kind weighs 1, so lowres holds 3 of (len - 1) + 3 parts.
    assert shares[kinds.index("lowres")] == pytest.approx(3 / (len(kinds) + 2))
    assert shares[kinds.index("paper")] == pytest.approx(1 / (len(kinds) + 2))
    assert np.allclose(pagecrops.kind_shares(), 1 / len(kinds))
    with pytest.raises(ValueError, match="touching"):  # read by the line reader, not cut
        pagecrops.kind_shares({"touching": 2})
    with pytest.raises(ValueError, match=">= 0"):
        pagecrops.kind_shares({"lowres": -1})


def test_page_digits_draw_the_kinds_their_weights_ask_for(mnist, monkeypatch):
    drawn = []
    render = pagecrops.synth.render

    def recording(kind, *args, **kwargs):
        drawn.append(kind)
        return render(kind, *args, **kwargs)

    monkeypatch.setattr(pagecrops.synth, "render", recording)
    only = {kind: 0.0 for kind in pagecrops.DIGIT_KINDS if kind not in ("lowres", "grid")}
    images, labels = mnist.train_images[:300], mnist.train_labels[:300]
    pagecrops.page_digits(images, labels, 30, np.random.default_rng(2), only)
    assert drawn and set(drawn) <= {"lowres", "grid"}


def test_the_progress_bar_says_what_training_prepares():
    stream = io.StringIO()
    ProgressBar(stream)({"event": "prepare", "message": "cutting 20 digits from synthetic pages"})
    assert stream.getvalue() == "cutting 20 digits from synthetic pages\n"
