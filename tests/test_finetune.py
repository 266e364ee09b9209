"""`digitrec finetune`: records held out whole, a model written only when MNIST test accuracy
holds (a learning rate far too high must be refused, and nothing written), and a written model
that is an ordinary run: it loads, reads, exports, and its command makes it again bit for bit."""

from __future__ import annotations

import shlex

import numpy as np
import pytest

from digitrec.checkpoint import ModelError, read_card
from digitrec.cli import main
from digitrec.feedback import FeedbackError, FeedbackStore, record
from digitrec.finetune import FinetuneConfig, finetune, load_base, split_records
from digitrec.recognize import Recognizer

# A few steps on one thread: the rule and the run directory are what is tested here.
QUICK = FinetuneConfig(steps=60, threads=1)


@pytest.fixture(scope="module")
def feedback_db(mnist, tmp_path_factory, paper_png):
    """20 records of two MNIST training digits each, read by the bundled model and labelled
    with their true digits, and one whose label does not fit (kept, unusable)."""
    recognizer = Recognizer.load()
    location = tmp_path_factory.mktemp("feedback") / "feedback.db"
    rng = np.random.default_rng(0)
    with FeedbackStore(location) as store:
        for _ in range(20):
            index = rng.integers(0, len(mnist.train_labels), 2)
            label = "".join(str(mnist.train_labels[i]) for i in index)
            record(store, recognizer, paper_png(*mnist.train_images[index]), label)
        record(store, recognizer, paper_png(mnist.train_images[0]), "123")
    return location


@pytest.fixture(scope="module")
def mnist_dir(mnist, data_cache):
    return data_cache / "mnist"  # the four verified IDX files the session fetched


def test_records_are_held_out_whole_by_a_seeded_fifth():
    records = list(range(10))
    trained, held = split_records(records, 0.2, seed=0)
    assert len(held) == 2 and sorted(trained + held) == records
    assert split_records(records, 0.2, seed=0) == (trained, held)
    assert any(split_records(records, 0.2, seed=s)[1] != held for s in range(1, 5))
    assert [len(split_records(list(range(n)), 0.2, 0)[1]) for n in (1, 2, 3, 4)] == [0, 1, 1, 1]


def test_a_model_that_loses_on_mnist_is_refused_and_nothing_is_written(
    feedback_db, tiny_run, mnist_dir, tmp_path, capsys
):
    out = tmp_path / "tuned"
    code = main(
        [
            "finetune",
            "--model",
            str(tiny_run.run_dir),
            "--feedback",
            str(feedback_db),
            "--out",
            str(out),
            "--learning-rate",
            "0.05",
            "--steps",
            "60",
            "--threads",
            "1",
            "--test-images",
            "2000",
            "--data-dir",
            str(mnist_dir),
        ]
    )
    captured = capsys.readouterr()
    assert code == 3
    assert "digitrec: refused: MNIST test accuracy would fall" in captured.err
    assert "more than the 0.1 allowed; nothing written" in captured.err
    assert "MNIST test" in captured.out and "held-out feedback" in captured.out
    assert not out.exists()


def test_a_fine_tuned_model_is_an_ordinary_run(
    paper_png, feedback_db, tiny_run, mnist, mnist_dir, tmp_path, capsys
):
    from digitrec.export import export_onnx

    out = tmp_path / "tuned"
    with FeedbackStore(feedback_db) as store:
        result = finetune(tiny_run.run_dir, store, out, QUICK, data_dir=mnist_dir)
        usable = [r.id for r in store.records(usable=True, images=False)]
    assert result.accepted, result.reason
    assert result.after["mnist_test"] >= result.before["mnist_test"] - QUICK.max_test_drop
    assert len(usable) >= 15  # a few pairs of MNIST digits touch and read as one or three
    assert len(result.held_out_records) == round(len(usable) / 5)
    assert sorted(result.trained_records + result.held_out_records) == usable
    assert result.trained_digits == 2 * len(result.trained_records)
    assert result.held_out_digits == 2 * len(result.held_out_records)
    card = read_card(out)
    tuned = card["finetune"]
    assert tuned["feedback_records"] == result.trained_records
    assert tuned["held_out_records"] == result.held_out_records
    assert tuned["base_tensors_sha256"] == tiny_run.card["tensors_sha256"]
    assert card["classes"] == [str(d) for d in range(10)] and card["input"]["standardise"]
    assert card["metrics"]["test_accuracy"] == result.after["mnist_test"]
    assert card["temperature"] == result.temperature > 0
    assert card["command"].endswith(f"--until-id {max(usable)}")
    # It reads like any run, and exports with its parity check.
    recognizer = Recognizer.load(out, backend="torch")
    assert recognizer.recognize(paper_png(mnist.test_images[0])).number == str(mnist.test_labels[0])
    assert export_onnx(out, images=mnist.test_images[:200])["labels_identical"]
    # Its command makes the same weights again.
    words = shlex.split(card["command"])
    words[words.index("--out") + 1] = str(tmp_path / "again")
    assert main([*words[1:], "--data-dir", str(mnist_dir)]) == 0
    assert "saved" in capsys.readouterr().out
    assert read_card(tmp_path / "again")["tensors_sha256"] == card["tensors_sha256"]


def test_nothing_to_learn_from_is_one_line(tmp_path, capsys):
    empty = tmp_path / "empty.db"
    code = main(["finetune", "--feedback", str(empty), "--out", str(tmp_path / "x")])
    assert code == 1
    assert "digitrec: error: no usable feedback records in" in capsys.readouterr().err
    with pytest.raises(FeedbackError), FeedbackStore(empty) as store:
        finetune(None, store, tmp_path / "x", QUICK)
    assert not (tmp_path / "x").exists()


def test_only_a_single_mnist_network_can_be_fine_tuned(tmp_path):
    with pytest.raises(ModelError, match="ONNX file cannot be trained"):
        load_base(tmp_path / "model.onnx")
