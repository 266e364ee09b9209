"""`digitrec bench feedback`: the simulated writer is the same for the same seed, really changes
every digit, and is harder for the bundled model than the same digits as MNIST wrote them; a
tiny run of the benchmark writes the report the command prints, saves and plots."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from digitrec.bench import feedback as bench_feedback
from digitrec.checkpoint import write_json
from digitrec.cli import main
from digitrec.recognize import Recognizer

FIRST = bench_feedback.WRITER_FIRST


@pytest.fixture(scope="module")
def mnist_dir(mnist, data_cache):
    return data_cache / "mnist"  # the four verified IDX files the session fetched


def test_the_writer_is_the_same_for_a_seed_and_changes_every_digit(mnist):
    images, labels = mnist.test_images[FIRST : FIRST + 60], mnist.test_labels[FIRST : FIRST + 60]
    assert {1, 4, 7} <= set(labels.tolist())
    writer = bench_feedback.writer_set(images, labels, seed=0)
    assert (
        writer.dtype == np.uint8 and writer.shape[1:] == bench_feedback.plain_digit(images[0]).shape
    )
    assert np.array_equal(writer, bench_feedback.writer_set(images, labels, seed=0))
    # The seed moves only the hand-drawn parts: the 1s, 4s and 7s.
    other = bench_feedback.writer_set(images, labels, seed=1)
    changed = {
        int(d) for d, a, b in zip(labels, writer, other, strict=True) if not np.array_equal(a, b)
    }
    assert changed == {1, 4, 7}
    for image, picture in zip(images, writer, strict=True):
        plain = bench_feedback.plain_digit(image)
        ink = picture.astype(np.float32) / 255.0
        # The heavy pen: much more ink (a 4 is drawn again in its place, with its own strokes);
        # the slant and restyling: ink where there was none.
        assert ink.sum() > 1.3 * plain.sum()
        assert ((ink > 0.5) & (plain < 0.1)).sum() > 0.3 * (plain > 0.5).sum()


def test_the_writer_is_harder_for_the_model_than_mnist(mnist):
    images = mnist.test_images[FIRST : FIRST + 200]
    labels = mnist.test_labels[FIRST : FIRST + 200]
    writer = bench_feedback.writer_set(images, labels)
    recognizer = Recognizer.load(backend="torch")
    pngs = [bench_feedback.page_png(picture) for picture in writer]
    base = bench_feedback.base_readings(recognizer, images, labels, pngs)
    assert base["writer_error"] > base["plain_error"]
    # Reading the same pictures directly gives the same errors the report holds.
    wrong = bench_feedback.misread(recognizer.recognize_many(pngs), labels)
    assert base["writer_error"] == float(wrong.mean())


def test_corrections_start_with_the_misread_digits():
    wrong = np.array([False, True, False, True, False])
    labels = np.array([3, 1, 4, 7, 9])
    chosen = bench_feedback.choose_corrections(wrong, labels, 3)
    assert [(c.index, c.digit, c.misread) for c in chosen] == [(1, 1, True), (3, 7, True),
                                                               (0, 3, False)]  # fmt: skip
    assert bench_feedback.choose_corrections(wrong, labels, 2) == chosen[:2]


def test_a_tiny_benchmark_reports_what_the_command_prints(mnist, mnist_dir, tmp_path):
    config = replace(bench_feedback.benchmark_config(threads=1), steps=20, test_images=1000)
    report = bench_feedback.run_benchmark(mnist, corrections=(10,), config=config, held_out=40,
                                          pool=30, data_dir=mnist_dir)  # fmt: skip
    assert set(report) >= {"model", "machine", "writer", "config", "base", "runs", "targets"}
    assert report["writer"]["held_out"] == 40 and report["writer"]["pool"] == 30
    assert report["config"]["steps"] == 20
    (run,) = report["runs"]
    assert run["corrections"] == 10
    assert run["misread_corrections"] == min(10, report["writer"]["pool_misread"])
    assert 0 < run["usable_records"] <= 10
    assert run["trained_digits"] + run["feedback_held_out_digits"] == run["usable_records"]
    assert 0.0 <= run["writer_error"] <= 1.0 and run["seconds"] > 0
    assert run["mnist_test_drop"] == pytest.approx(run["mnist_test_before"] - run["mnist_test"])
    assert report["base"]["mnist_test"] == run["mnist_test_before"]
    # The halving is a target at 50 corrections only; the other two hold for every run.
    assert [t["name"] for t in report["targets"]] == ["mnist_test_drop", "seconds"]
    assert bench_feedback.met(report) == (run["targets_missed"] == [])
    table = bench_feedback.table(report)
    assert "writer error" in table and f"{run['writer_error']:.2%}" in table
    write_json(tmp_path / "bench.json", report)
    assert json.loads((tmp_path / "bench.json").read_text())["runs"][0]["corrections"] == 10
    assert bench_feedback.plot(report, tmp_path / "feedback.png").stat().st_size > 1000


@pytest.mark.parametrize("counts", ["0", "ten", ""])
def test_bad_correction_counts_are_one_line(counts, capsys):
    assert main(["bench", "feedback", "--corrections", counts]) == 2
    assert "--corrections takes counts of 1 or more" in capsys.readouterr().err
