"""Figures drawn with matplotlib's Agg backend: digit grids and recognition plots.

Every function takes arrays, writes one PNG and returns its path; nothing is shown unless asked.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def pyplot():
    """matplotlib.pyplot on the Agg backend, imported only when a figure is drawn."""
    import matplotlib

    if not os.environ.get("DISPLAY") or matplotlib.get_backend().lower() != "agg":
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(figure, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110, bbox_inches="tight")
    pyplot().close(figure)
    return path


def digit_grid(
    images: Sequence[np.ndarray],
    titles: Sequence[str],
    path: str | os.PathLike,
    columns: int = 10,
    suptitle: str | None = None,
    cmap: str = "binary",
) -> Path:
    """A grid of digit images with a title under each (the article's preview figure)."""
    plt = pyplot()
    rows = max(1, -(-len(images) // columns))
    figure, axes = plt.subplots(rows, columns, figsize=(columns * 1.2, rows * 1.45), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, title in zip(axes.flat, images, titles, strict=False):
        ax.imshow(image, cmap=cmap)
        ax.set_title(title, fontsize=9)
    if suptitle:
        figure.suptitle(suptitle)
    return save(figure, path)


def preview(images: np.ndarray, labels: np.ndarray, classes: Sequence[str], path, seed: int = 0):
    """20 random training digits with their labels."""
    index = np.random.default_rng(seed).choice(len(images), size=20, replace=False)
    return digit_grid(
        [images[i] for i in index], [f"label {classes[labels[i]]}" for i in index], path,
        suptitle="20 random training digits",
    )  # fmt: skip


def recognition_plot(
    originals: Sequence[np.ndarray | None], titles: Sequence[str], path: str | os.PathLike
) -> Path:
    """Each input image with its answer, as the article's plt.imshow loop shows them."""
    columns = min(5, max(1, len(originals)))
    blank = np.zeros((28, 28))
    return digit_grid(
        [o if o is not None else blank for o in originals], titles, path, columns=columns,
        cmap="gray",
    )  # fmt: skip
