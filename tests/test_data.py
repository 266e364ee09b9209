"""Data: IDX parsing, verification by SHA-256, the fetch order, the real MNIST and its preview."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from digitrec import data

TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_parse_idx_round_trip_on_a_tiny_synthetic_file():
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    labels = np.array([7, 1], dtype=np.uint8)
    assert np.array_equal(data.parse_idx(data.idx_bytes(images)), images)
    assert np.array_equal(data.parse_idx(data.idx_bytes(labels)), labels)


@pytest.mark.parametrize(
    "mangle, message",
    [
        (lambda b: b[:-1], "does not match its header"),  # truncated
        (lambda b: b + b"\0", "does not match its header"),  # trailing bytes
        (lambda b: b"\x01" + b[1:], "bad magic"),  # not an IDX file
        (lambda b: b[:2] + b"\x42" + b[3:], "unsupported IDX type"),
        (lambda b: b[:6], "truncated header"),
    ],
)
def test_parse_idx_refuses_broken_files(mangle, message):
    good = data.idx_bytes(np.zeros((2, 3, 4), dtype=np.uint8))
    with pytest.raises(data.DataError, match=message):
        data.parse_idx(mangle(good), "broken-file")


def test_real_mnist_is_verified_and_complete(mnist, data_cache):
    assert mnist.train_images.shape == (60000, 28, 28)
    assert mnist.test_images.shape == (10000, 28, 28)
    assert mnist.train_images.dtype == np.uint8
    assert np.bincount(mnist.train_labels, minlength=10).tolist() == TRAIN_COUNTS
    assert np.bincount(mnist.test_labels, minlength=10).tolist() == TEST_COUNTS
    for part, path in mnist.paths.items():
        assert Path(path).parent == data_cache / "mnist"
        assert data.sha256_bytes(Path(path).read_bytes()) == data.DATASETS["mnist"].sha256[part]


def test_model_input_is_the_articles_0_to_1_scaling():
    import torch

    from digitrec.models import to_input

    scaled = to_input(torch.tensor([[[[0, 51, 255]]]], dtype=torch.uint8))
    assert scaled.dtype == torch.float32
    assert torch.allclose(scaled, torch.tensor([[[[0.0, 0.2, 1.0]]]]))


def _copy_cache(mnist, folder: Path, gzip: bool = False) -> Path:
    folder.mkdir(parents=True)
    for path in mnist.paths.values():
        raw = Path(path).read_bytes()
        name = Path(path).name
        if gzip:
            (folder / f"{name}.gz").write_bytes(data.gzip_bytes(raw, level=1))
        else:
            (folder / name).write_bytes(raw)
    return folder


def test_a_user_folder_of_gz_files_is_used_first(mnist, tmp_path):
    folder = _copy_cache(mnist, tmp_path / "download", gzip=True)
    paths, sources = data.fetch("mnist", data_dir=folder, cache=tmp_path / "cache")
    assert set(sources.values()) == {str(folder)}
    assert all(p.is_file() and p.parent == tmp_path / "cache" / "mnist" for p in paths.values())


def test_a_corrupted_file_is_refused_and_removed_from_the_cache(mnist, tmp_path):
    cache = tmp_path / "cache"
    _copy_cache(mnist, cache / "mnist")
    corrupt = cache / "mnist" / "t10k-labels-idx1-ubyte"
    blob = bytearray(corrupt.read_bytes())
    blob[100] ^= 0xFF
    corrupt.write_bytes(bytes(blob))
    with pytest.raises(data.DataError) as caught:
        data.fetch("mnist", data_dir="", cache=cache, use_network=False)
    message = str(caught.value)
    assert "test-labels" in message and "SHA-256 mismatch" in message
    assert "--data-dir" in message
    assert not corrupt.exists()  # never left in the cache
    # The other three were fine and stay.
    assert len(os.listdir(cache / "mnist")) == 3


def test_a_corrupted_user_file_falls_through_to_the_next_source(mnist, tmp_path):
    folder = _copy_cache(mnist, tmp_path / "download")
    (folder / "train-labels-idx1-ubyte").write_bytes(b"not mnist")
    cache = _copy_cache(mnist, tmp_path / "cache" / "mnist").parent
    paths, sources = data.fetch("mnist", data_dir=folder, cache=cache, use_network=False)
    assert sources["train-labels"] == "cache"
    assert sources["train-images"] == str(folder)


def test_unknown_dataset_is_a_clear_error():
    with pytest.raises(data.DataError, match="unknown dataset 'kmnist'"):
        data.load("kmnist")


FASHION_DIR = "/usr/share/datasets/fashion-mnist"


@pytest.mark.skipif(
    not os.path.isdir(FASHION_DIR), reason="Debian's dataset-fashion-mnist is not installed"
)
def test_fashion_mnist_goes_through_the_same_code(tmp_path):
    fashion = data.load("fashion-mnist", data_dir="", cache=tmp_path)
    assert fashion.train_images.shape == (60000, 28, 28)
    assert set(fashion.sources.values()) == {FASHION_DIR}
    assert np.bincount(fashion.test_labels).tolist() == [1000] * 10
    assert fashion.classes[9] == "Ankle boot"


def test_preview_is_a_grid_of_20_labelled_digits(mnist, tmp_path):
    from digitrec import figures

    path = figures.preview(
        mnist.train_images, mnist.train_labels, mnist.classes, tmp_path / "p.png", seed=3
    )
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.width > 300 and image.height > 150
