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
        [images[i] for i in index],
        [f"label {classes[labels[i]]}" for i in index],
        path,
        suptitle="20 random training digits",
    )


def recognition_plot(
    originals: Sequence[np.ndarray | None], titles: Sequence[str], path: str | os.PathLike
) -> Path:
    """Each input image with its answer, as the article's plt.imshow loop shows them."""
    columns = min(5, max(1, len(originals)))
    blank = np.zeros((28, 28))
    return digit_grid(
        [o if o is not None else blank for o in originals],
        titles,
        path,
        columns=columns,
        cmap="gray",
    )


# Report and explanation figures. One colour per role, everywhere: training in blue, validation
# in orange, the answer and mistakes in red; signed weights on a diverging map centred on zero,
# activations (zero and up) on a sequential map, digits white on black as the network sees them.
TRAIN_COLOUR = "#1f77b4"
VALIDATION_COLOUR = "#ff7f0e"
ANSWER_COLOUR = "#d62728"
OTHER_COLOUR = "#7f7f7f"
SIGNED_CMAP = "RdBu_r"
ACTIVATION_CMAP = "viridis"
DIGIT_CMAP = "gray"


def confusion_heatmap(
    confusion: np.ndarray, classes: Sequence[str], path: str | os.PathLike, title: str
) -> Path:
    """Counts of (true, predicted) pairs; a log colour scale so single mistakes stay visible."""
    from matplotlib.colors import LogNorm

    plt = pyplot()
    confusion = np.asarray(confusion)
    figure, ax = plt.subplots(figsize=(6.4, 5.6))
    shown = np.ma.masked_equal(confusion, 0)
    image = ax.imshow(shown, cmap="Blues", norm=LogNorm(vmin=1, vmax=max(2, confusion.max())))
    threshold = np.sqrt(max(2, confusion.max()))
    for (row, column), count in np.ndenumerate(confusion):
        if count:
            colour = "white" if count > threshold else "black"
            ax.text(column, row, str(count), ha="center", va="center", fontsize=7, color=colour)
    ax.set_xticks(range(len(classes)), classes)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted label")
    ax.set_ylabel("true label")
    ax.set_title(title)
    figure.colorbar(image, ax=ax, label="test digits (log scale)")
    return save(figure, path)


def training_curves(history: Sequence[dict], path: str | os.PathLike) -> Path:
    """Loss and accuracy per epoch, train against validation (one line pair per ensemble member)."""
    from matplotlib.ticker import MaxNLocator

    plt = pyplot()
    figure, (loss_ax, accuracy_ax) = plt.subplots(1, 2, figsize=(10, 3.8))
    members = sorted({h.get("member", 0) for h in history})
    for member in members:
        rows = [h for h in history if h.get("member", 0) == member]
        epochs = [h["epoch"] for h in rows]
        suffix = f" (member {member})" if len(members) > 1 else ""
        style = ["-", "--", ":", "-."][members.index(member) % 4]
        for ax, key in ((loss_ax, "loss"), (accuracy_ax, "accuracy")):
            for split, colour in (("train", TRAIN_COLOUR), ("validation", VALIDATION_COLOUR)):
                values = [h.get(f"{split}_{key}") for h in rows]
                if any(v is None for v in values):
                    continue
                ax.plot(epochs, values, style, marker="o", color=colour, label=split + suffix)
    loss_ax.set_title("loss per epoch")
    loss_ax.set_ylabel("cross-entropy loss")
    accuracy_ax.set_title("accuracy per epoch")
    accuracy_ax.set_ylabel("accuracy")
    for ax in (loss_ax, accuracy_ax):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return save(figure, path)


def reliability_diagram(
    bin_edges: np.ndarray,
    bin_accuracy: np.ndarray,
    bin_confidence: np.ndarray,
    bin_counts: np.ndarray,
    ece: float,
    path: str | os.PathLike,
) -> Path:
    """Accuracy against confidence per bin, the gap to the diagonal, and how many digits each bin
    holds (most sit in the last bin, so the count axis is logarithmic)."""
    plt = pyplot()
    figure, (ax, count_ax) = plt.subplots(
        2, 1, figsize=(5.6, 6.4), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    width = np.diff(bin_edges)
    left = bin_edges[:-1]
    filled = bin_counts > 0
    ax.bar(
        left[filled],
        bin_accuracy[filled],
        width[filled],
        align="edge",
        color=TRAIN_COLOUR,
        edgecolor="white",
        label="accuracy in bin",
    )
    gap_bottom = np.minimum(bin_accuracy, bin_confidence)[filled]
    gap = np.abs(bin_accuracy - bin_confidence)[filled]
    ax.bar(
        left[filled],
        gap,
        width[filled],
        bottom=gap_bottom,
        align="edge",
        color=ANSWER_COLOUR,
        alpha=0.35,
        label="gap to confidence",
    )
    ax.plot([0, 1], [0, 1], "--", color=OTHER_COLOUR, label="perfect calibration")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.set_title(f"reliability diagram (ECE {ece:.4f}, {len(width)} bins)")
    ax.legend(fontsize=8, loc="upper left")
    count_ax.bar(left, np.maximum(bin_counts, 0), width, align="edge", color=OTHER_COLOUR)
    count_ax.set_yscale("symlog", linthresh=1)
    count_ax.set_xlabel("confidence (probability of the predicted class)")
    count_ax.set_ylabel("digits")
    count_ax.set_xlim(0, 1)
    return save(figure, path)


def _mosaic(maps: np.ndarray, columns: int, gap: int = 1) -> np.ndarray:
    """(C, H, W) -> one (rows*(H+gap), columns*(W+gap)) image with NaN gaps between tiles."""
    count, height, width = maps.shape
    rows = max(1, -(-count // columns))
    mosaic = np.full((rows * (height + gap) - gap, columns * (width + gap) - gap), np.nan)
    for index in range(count):
        row, column = divmod(index, columns)
        top, left = row * (height + gap), column * (width + gap)
        mosaic[top : top + height, left : left + width] = maps[index]
    return mosaic


def map_grid(
    maps: np.ndarray,
    path: str | os.PathLike,
    title: str,
    labels: Sequence[str] | None = None,
    columns: int | None = None,
    signed: bool = False,
    colorbar_label: str = "",
) -> Path:
    """Many small maps (C, H, W) tiled into one picture on a shared colour scale, so their
    strengths compare: signed maps (weights) diverge around zero, others start at their minimum."""
    plt = pyplot()
    maps = np.asarray(maps, dtype=np.float64)
    count, height, width = maps.shape
    columns = columns or min(count, 16 if count > 64 else 8)
    rows = max(1, -(-count // columns))
    gap = max(1, height // 8)
    mosaic = _mosaic(maps, columns, gap)
    tile = 0.75 if height > 8 else 0.55
    figure, ax = plt.subplots(figsize=(max(4.0, columns * tile + 1.2), max(1.6, rows * tile + 0.9)))
    if signed:
        limit = float(np.nanmax(np.abs(mosaic))) or 1.0
        image = ax.imshow(mosaic, cmap=SIGNED_CMAP, vmin=-limit, vmax=limit)
    else:
        low, high = float(np.nanmin(mosaic)), float(np.nanmax(mosaic))
        image = ax.imshow(mosaic, cmap=ACTIVATION_CMAP, vmin=low, vmax=max(high, low + 1e-6))
    ax.set_facecolor("white")
    if labels is not None:
        for index, label in enumerate(labels[:count]):
            row, column = divmod(index, columns)
            ax.text(
                column * (width + gap),
                row * (height + gap),
                label,
                fontsize=6,
                color="white",
                va="top",
                ha="left",
                bbox={"facecolor": "black", "alpha": 0.5, "pad": 0.5, "lw": 0},
            )
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=10)
    figure.colorbar(image, ax=ax, fraction=0.03, pad=0.02, label=colorbar_label)
    return save(figure, path)


def softmax_chart(
    scores: np.ndarray, probabilities: np.ndarray, classes: Sequence[str], path, title: str
) -> Path:
    """The raw scores the output layer gives, and the probabilities softmax turns them into."""
    plt = pyplot()
    answer = int(np.argmax(probabilities))
    colours = [ANSWER_COLOUR if i == answer else OTHER_COLOUR for i in range(len(classes))]
    figure, (score_ax, probability_ax) = plt.subplots(1, 2, figsize=(10, 3.6))
    positions = np.arange(len(classes))
    score_ax.bar(positions, scores, color=colours)
    score_ax.axhline(0, color="black", lw=0.6)
    for x, value in zip(positions, scores, strict=True):
        score_ax.text(
            x, value, f"{value:.1f}", ha="center", fontsize=7, va="bottom" if value >= 0 else "top"
        )
    score_ax.set_title("raw scores (output layer, before softmax)")
    score_ax.set_ylabel("score")
    probability_ax.bar(positions, probabilities, color=colours)
    for x, value in zip(positions, probabilities, strict=True):
        probability_ax.text(x, value, f"{value:.3f}", ha="center", va="bottom", fontsize=7)
    probability_ax.set_ylim(0, 1.1)
    probability_ax.set_title("softmax probabilities (sum to 1)")
    probability_ax.set_ylabel("probability")
    for ax in (score_ax, probability_ax):
        ax.set_xticks(positions, classes)
        ax.set_xlabel("digit")
    figure.suptitle(title, y=1.04)
    return save(figure, path)


def saliency_figure(
    image: np.ndarray, attribution: np.ndarray, path: str | os.PathLike, title: str
) -> Path:
    """The input, the signed attribution of each pixel, and the attribution over the input."""
    plt = pyplot()
    limit = float(np.abs(attribution).max()) or 1.0
    figure, axes = plt.subplots(1, 3, figsize=(10, 3.6))
    axes[0].imshow(image, cmap=DIGIT_CMAP, vmin=0, vmax=1)
    axes[0].set_title("input (28x28)")
    shown = axes[1].imshow(attribution, cmap=SIGNED_CMAP, vmin=-limit, vmax=limit)
    axes[1].set_title("attribution per pixel (score change)")
    figure.colorbar(shown, ax=axes[1], fraction=0.046, pad=0.04)
    axes[2].imshow(image, cmap=DIGIT_CMAP, vmin=0, vmax=1)
    axes[2].imshow(attribution, cmap=SIGNED_CMAP, vmin=-limit, vmax=limit, alpha=0.6)
    axes[2].set_title("over the input")
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    figure.suptitle(title)
    return save(figure, path)


def flatten_figure(
    grid: np.ndarray | None, vector: np.ndarray, segment: int, path, title: str, xlabel: str
) -> Path:
    """A 2D input beside the 1D vector it becomes; thin lines mark where each row (or channel)
    of the 2D input starts in the vector."""
    plt = pyplot()
    if grid is not None:
        figure, (grid_ax, ax) = plt.subplots(
            1, 2, figsize=(11, 3.2), gridspec_kw={"width_ratios": [1, 4]}
        )
        grid_ax.imshow(grid, cmap=DIGIT_CMAP, vmin=0, vmax=1)
        grid_ax.set_title(f"{grid.shape[0]}x{grid.shape[1]} image")
        grid_ax.set_xticks([])
        grid_ax.set_yticks([])
    else:
        figure, ax = plt.subplots(figsize=(11, 3.2))
    positions = np.arange(len(vector))
    ax.bar(positions, vector, width=1.0, color=TRAIN_COLOUR)
    if segment and segment < len(vector):
        for start in range(segment, len(vector), segment):
            ax.axvline(start - 0.5, color=OTHER_COLOUR, lw=0.4, alpha=0.6)
    ax.set_xlim(-0.5, len(vector) - 0.5)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("value")
    ax.set_title(f"the flat vector: {len(vector)} values")
    figure.suptitle(title, y=1.04)
    return save(figure, path)


def top_values_chart(
    values: np.ndarray, labels: Sequence[str], path, title: str, ylabel: str
) -> Path:
    """Bars for a few chosen values, largest first; negative bars in red."""
    plt = pyplot()
    values = np.asarray(values, dtype=np.float64)
    colours = [TRAIN_COLOUR if v >= 0 else ANSWER_COLOUR for v in values]
    figure, ax = plt.subplots(figsize=(max(5.0, 0.45 * len(values) + 1.5), 3.4))
    ax.bar(np.arange(len(values)), values, color=colours)
    ax.axhline(0, color="black", lw=0.6)
    ax.set_xticks(np.arange(len(values)), labels, rotation=60, fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    return save(figure, path)


def panel_grid(
    panels: Sequence[Sequence[tuple[np.ndarray, str, str]]], path: str | os.PathLike, title: str
) -> Path:
    """Rows of (picture, title, kind) panels; kind is "digit", "signed" or "activation"."""
    plt = pyplot()
    rows, columns = len(panels), max(len(row) for row in panels)
    figure, axes = plt.subplots(rows, columns, figsize=(columns * 2.6, rows * 2.7), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for row, entries in enumerate(panels):
        for column, (picture, caption, kind) in enumerate(entries):
            ax = axes[row][column]
            if kind == "digit":
                shown = ax.imshow(picture, cmap=DIGIT_CMAP, vmin=0, vmax=1)
            elif kind == "signed":
                limit = float(np.abs(picture).max()) or 1.0
                shown = ax.imshow(picture, cmap=SIGNED_CMAP, vmin=-limit, vmax=limit)
            else:
                shown = ax.imshow(picture, cmap=ACTIVATION_CMAP, vmin=0)
            if kind != "digit":
                figure.colorbar(shown, ax=ax, fraction=0.046, pad=0.04)
            ax.set_title(caption, fontsize=9)
    figure.suptitle(title)
    return save(figure, path)


def histograms(
    groups: Sequence[tuple[str, dict[str, np.ndarray]]], path: str | os.PathLike, xlabel: str
) -> Path:
    """One panel per (title, {label: values}); each label's mean marked by a dashed line."""
    plt = pyplot()
    figure, axes = plt.subplots(1, len(groups), figsize=(4.2 * len(groups), 3.4), squeeze=False)
    colours = [TRAIN_COLOUR, VALIDATION_COLOUR, ANSWER_COLOUR, OTHER_COLOUR]
    for ax, (title, series) in zip(axes[0], groups, strict=True):
        everything = np.concatenate(list(series.values()))
        bins = np.linspace(everything.min(), everything.max(), 40)
        for colour, (label, values) in zip(colours, series.items(), strict=False):
            ax.hist(values, bins=bins, alpha=0.55, color=colour, label=f"{label} (n={len(values)})")
            ax.axvline(values.mean(), color=colour, ls="--", lw=1.5)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("digits")
        ax.legend(fontsize=8)
    return save(figure, path)


def display_available() -> bool:
    import sys

    return sys.platform in ("darwin", "win32") or bool(
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    )


def show_images(paths: Sequence[str | os.PathLike]) -> bool:
    """Open written PNGs in windows with plt.show(); False (and nothing shown) without a display
    or an interactive matplotlib backend."""
    if not display_available():
        return False
    import matplotlib

    for backend in ("macosx", "QtAgg", "TkAgg", "GTK4Agg", "GTK3Agg"):
        try:
            matplotlib.use(backend, force=True)
            break
        except (ImportError, ValueError):
            continue
    else:
        return False
    import matplotlib.pyplot as plt

    for path in paths:
        figure = plt.figure(figsize=(8, 6))
        figure.canvas.manager.set_window_title(Path(path).name)
        plt.imshow(plt.imread(str(path)))
        plt.axis("off")
    plt.show()
    matplotlib.use("Agg", force=True)
    return True
