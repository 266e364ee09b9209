"""The fuzz target, briefly: the hostile corpus and a few thousand mutations of it must each be
read or refused with a one-line ImageError, in under two seconds of CPU. `make fuzz` runs a
million inputs."""

from __future__ import annotations

import random

import pytest

from digitrec import fuzz, preprocess

COUNT = 3_000


@pytest.fixture(scope="module")
def corpus() -> dict[str, bytes]:
    return fuzz.hostile_corpus()


@pytest.mark.parametrize(
    "name, message",
    [
        ("jpeg-scan-bomb", "too many JPEG scans"),
        ("jpeg-marker-flood", "too many JPEG markers"),
        ("png-padded-bomb", "decompression bomb"),
        ("png-chunk-flood", "too many PNG chunks"),
        ("png-huge-header", "too large"),
        ("ico-holding-a-big-png", "unsupported image format ICO"),
        ("eps-header", "unsupported image format EPS"),
        ("psd-header", "unsupported image format PSD"),
        ("avif-like-header", "unsupported image format AVIF"),
        ("heic-like-header", "unsupported image format HEIF"),
        ("gif-huge-screen", "too large"),
        ("bmp-huge-header", "too large"),
        ("tiff-huge-header", "too large"),
        ("webp-huge-header", "16384x16384 pixels"),
        ("pgm-huge-header", "too large"),
        ("empty", "empty file"),
        ("text", "not an image"),
    ],
)
def test_each_attack_is_refused_with_its_reason(corpus, name, message):
    with pytest.raises(preprocess.ImageError, match=message):
        preprocess.extract_digits(corpus[name])


def test_every_valid_sample_is_read(corpus):
    for name in fuzz.valid_samples():
        preprocess.extract_digits(corpus[name])


def test_the_corpus_and_a_few_thousand_mutations_are_read_or_refused_quickly(corpus):
    report = fuzz.run(COUNT, seed=0, corpus=corpus)
    assert report.inputs == COUNT
    assert report.read + report.refused == COUNT, [
        (failure.index, failure.seed_name, failure.problem) for failure in report.failures[:10]
    ]
    assert not report.failures
    assert report.slowest_seconds < fuzz.TIME_LIMIT_S
    assert report.read > COUNT // 20  # the mutations still reach the decoders and beyond


def test_an_input_is_rebuilt_from_its_index(corpus):
    names = sorted(corpus)
    first = fuzz.fuzz_input(corpus, names, 5_000, seed=3)
    assert fuzz.fuzz_input(corpus, names, 5_000, seed=3) == first
    assert fuzz.fuzz_input(corpus, names, 5_001, seed=3) != first
    assert fuzz.fuzz_input(corpus, names, 0, seed=3) == (names[0], corpus[names[0]])


def test_mutations_repair_png_checksums_often_enough_to_reach_the_decoder(corpus):
    png = corpus["png-gray"]
    rng = random.Random(0)
    repaired = [fuzz.mutate(png, [png], rng) for _ in range(200)]
    readable = 0
    for data in repaired:
        try:
            preprocess.decode(data)
            readable += 1
        except preprocess.ImageError:
            pass
    assert readable > 20
