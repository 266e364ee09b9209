"""Explanations: what a trained network does with one of your images, layer by layer.

`explain_image` follows the article's walk through a network for one digit: the first layer's
kernels, every convolution channel's activation map, the flattening, the dense layer, softmax,
and which pixels the answer rests on (integrated gradients). `explain_lines` is the article's
opening example on real MNIST: hand-made vertical and horizontal line kernels over 4s and 8s.
Each writes PNGs and one self-contained explain.html.
"""

from __future__ import annotations

import html
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from digitrec import figures, preprocess
from digitrec.models import load_model
from digitrec.pages import figure_html, table_html, write_html
from digitrec.recognize import model_or_bundled

TOP_UNITS = 16
WEIGHT_IMAGES = 32
SALIENCY_STEPS = 64

# The article: softmax is a vote of the 10 output neurons, turned into probabilities.
SOFTMAX_CAPTION = (
    "The output layer gives one raw score per digit. Softmax, the article's \"voting system "
    'for the 10 neurons", turns them into probabilities that sum to 1: how sure the network '
    "is about each option. It exponentiates before it normalises, "
    "p<sub>i</sub> = e<sup>s<sub>i</sub></sup> / &Sigma;<sub>j</sub> e<sup>s<sub>j</sub></sup>,"
    " so a lead of a few points in raw score becomes a near-certain probability."
)


# --- the network's insides for one image -----------------------------------------------------


@dataclass
class Trace:
    """What one forward pass left behind: conv activations (C, H, W) by layer name and the
    input and output vector of every Linear layer, in the order they ran."""

    conv: dict[str, np.ndarray] = field(default_factory=dict)
    conv_stage: dict[str, str] = field(default_factory=dict)
    linear: list[tuple[str, np.ndarray, np.ndarray]] = field(default_factory=list)
    scores: np.ndarray | None = None


def network_of(model: Any) -> Any:
    """The network inside a `Calibrated` wrapper (the model itself otherwise)."""
    return getattr(model, "model", model)


def layer_source(model: Any) -> Any:
    """The network whose layers are shown: an ensemble shows its first member."""
    from digitrec.models import Ensemble

    network = network_of(model)
    return network.members[0] if isinstance(network, Ensemble) else network


def conv_layers(network: Any) -> list[tuple[str, Any, Any, str]]:
    """(name, conv, module to hook, stage) per nn.Conv2d: the hook sits after the ReLU that
    follows the conv in its Sequential (past any batch norm) when there is one."""
    from torch import nn

    layers = []
    for parent_name, parent in network.named_modules():
        children = list(parent.named_children())
        for position, (child_name, child) in enumerate(children):
            if not isinstance(child, nn.Conv2d):
                continue
            name = f"{parent_name}.{child_name}" if parent_name else child_name
            hooked, stage = child, "convolution output (before its activation)"
            if isinstance(parent, nn.Sequential):
                normalised = False
                for _, after in children[position + 1 :]:
                    if isinstance(after, nn.BatchNorm2d):
                        normalised = True
                        continue
                    if isinstance(after, nn.ReLU):
                        hooked = after
                        stage = "after batch norm and ReLU" if normalised else "after ReLU"
                    break
            layers.append((name, child, hooked, stage))
    return layers


def trace(model: Any, image28: np.ndarray) -> Trace:
    """Run one digit (28, 28) through the model with forward hooks on every conv (after its
    activation where practical) and every Linear layer of the shown network."""
    import torch
    from torch import nn

    x = torch.from_numpy(preprocess.mnist_like(image28))[None, None]  # (1, 1, 28, 28)
    result = Trace()
    handles = []
    source = layer_source(model)

    def keep_conv(name: str):
        def hook(module, inputs, output):
            result.conv[name] = output[0].detach().float().clone().numpy()  # (C, H, W)

        return hook

    def keep_linear(name: str):
        def hook(module, inputs, output):
            vector_in = inputs[0][0].detach().float().clone().numpy()
            result.linear.append((name, vector_in, output[0].detach().float().clone().numpy()))

        return hook

    try:
        for name, _, hooked, stage in conv_layers(source):
            handles.append(hooked.register_forward_hook(keep_conv(name)))
            result.conv_stage[name] = stage
        for name, module in source.named_modules():
            if isinstance(module, nn.Linear):
                handles.append(module.register_forward_hook(keep_linear(name)))
        model.eval()
        with torch.no_grad():
            result.scores = model(x)[0].float().numpy()
    finally:
        for handle in handles:
            handle.remove()
    return result


def saliency(
    model: Any, image28: np.ndarray, target: int | None = None, steps: int = SALIENCY_STEPS
) -> np.ndarray:
    """Integrated gradients (28, 28): how much each pixel moves the target class's score,
    on the straight path from a black image to this one.

    The attributions add up to score(image) - score(black) (up to the path's discretisation),
    so positive pixels pushed the answer up and negative ones held it back. `target` defaults
    to the predicted class.
    """
    import torch

    x = torch.from_numpy(preprocess.mnist_like(image28))[None, None]  # (1, 1, 28, 28)
    model.eval()
    with torch.no_grad():
        if target is None:
            target = int(model(x)[0].argmax())
    alphas = (torch.arange(steps, dtype=torch.float32) + 0.5) / steps  # midpoint rule
    path = (alphas[:, None, None, None] * x).requires_grad_(True)  # (steps, 1, 28, 28)
    with torch.enable_grad():
        scores = model(path)[:, target].sum()
        (gradients,) = torch.autograd.grad(scores, path)
    return (x[0, 0] * gradients.mean(0)[0]).detach().numpy().astype(np.float64)


# --- the article's line kernels --------------------------------------------------------------


def line_kernels(size: int = 7, stroke: int = 3) -> dict[str, np.ndarray]:
    """Hand-made vertical and horizontal line detectors (size, size).

    A bright bar `stroke` pixels wide (MNIST strokes are about 2.5 px) down the middle, dark
    flanks either side; positive weights sum to 1 and negative ones to -1, so a blank or an
    evenly filled patch scores 0 and only a line shaped like the bar scores high.
    """
    columns = np.arange(size) - size // 2
    vertical = np.where(np.abs(columns) <= stroke // 2, 1.0, -1.0)[None, :].repeat(size, 0)
    vertical[vertical > 0] /= vertical[vertical > 0].sum()
    vertical[vertical < 0] /= -vertical[vertical < 0].sum()
    return {"vertical": vertical, "horizontal": vertical.T.copy()}


def line_maps(images: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Activation maps ReLU(image * kernel), (N, H-k+1, W-k+1) for images (N, H, W).

    '*' is the convolution of CNNs: the kernel slides over the image (stride 1, no padding) and
    each output is the sum of kernel times the pixels under it.
    """
    images = _as_unit(images)
    rows, columns = kernel.shape
    out_h, out_w = images.shape[1] - rows + 1, images.shape[2] - columns + 1
    out = np.zeros((len(images), out_h, out_w))
    for i in range(rows):
        for j in range(columns):
            out += kernel[i, j] * images[:, i : i + out_h, j : j + out_w]
    return np.maximum(out, 0.0)


def line_kernel_responses(images: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Line response per unit of ink for each image (N,): sum of ReLU(image * kernel) / ink.

    Per unit of ink because an 8 has more ink than a 4: a plain sum would reward ink, not
    lines. A blank image responds 0.
    """
    images = _as_unit(images)
    total = line_maps(images, kernel).sum(axis=(1, 2))
    ink = images.sum(axis=(1, 2))
    return np.where(ink > 0, total / np.maximum(ink, 1e-12), 0.0)


def line_kernel_response(image: np.ndarray, kernel: np.ndarray) -> float:
    """How strongly one image (H, W) answers a line kernel (see `line_kernel_responses`)."""
    return float(line_kernel_responses(np.asarray(image)[None], kernel)[0])


def line_study(images: np.ndarray, labels: np.ndarray, digits: tuple[int, int] = (4, 8)) -> dict:
    """Per-ink responses of each line kernel (and their sum) for every image of two digits."""
    kernels = line_kernels()
    study: dict[str, Any] = {"kernels": kernels, "responses": {}}
    for digit in digits:
        chosen = images[labels == digit]
        per_kernel = {name: line_kernel_responses(chosen, k) for name, k in kernels.items()}
        per_kernel["both"] = per_kernel["vertical"] + per_kernel["horizontal"]
        study["responses"][digit] = per_kernel
    return study


def _as_unit(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype == np.uint8:
        return images.astype(np.float64) / 255.0
    return images.astype(np.float64)


# --- pages ------------------------------------------------------------------------------------


@dataclass
class _Page:
    """An explanation page being built: its HTML sections and the figures written for it."""

    out_dir: Path
    sections: list[str] = field(default_factory=list)
    written: list[Path] = field(default_factory=list)

    def add(self, path: Path, caption: str) -> None:
        """Embed the figure at `path` with its caption (HTML)."""
        self.written.append(path)
        self.sections.append(figure_html(path, caption))

    def finish(self, title: str, show: bool) -> Path:
        """Write explain.html (and show the figures when asked); returns its path."""
        page = write_html(self.out_dir / "explain.html", title, "\n".join(self.sections))
        if show:
            figures.show_images(self.written)
        return page


@dataclass
class _Reading:
    """One digit as the model read it: what the page about it needs."""

    model: Any
    card: dict[str, Any]
    digit: np.ndarray  # (28, 28), what the network sees
    classes: list[str]
    result: Trace
    probabilities: np.ndarray
    answer: int
    name: str  # the model's name, from its card


def explain_image(
    image_path: str | os.PathLike,
    model_path: str | os.PathLike | None,
    out_dir: Path,
    show: bool = False,
) -> Path:
    """Explain how the model reads the first digit in an image; returns explain.html's path."""
    digits = _digits_in(image_path)
    model, card = load_model(model_or_bundled(model_path))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    reading = _read(model, card, digits[0].image)
    page = _Page(out_dir)
    _intro_section(page, reading, Path(image_path).name, len(digits))
    source = layer_source(model)
    _conv_sections(page, reading, source)
    page.sections.append("<h2>Flattening and the dense layer</h2>")
    if reading.result.linear:
        _dense_sections(page, reading, source)
    _softmax_section(page, reading)
    _saliency_section(page, reading)
    return page.finish(f"digitrec explain: {reading.name}", show)


def _digits_in(image_path: str | os.PathLike) -> list[preprocess.Digit]:
    """The digits found in the image file, or an ImageError that names the file."""
    try:
        digits = preprocess.extract_digits(preprocess.read_bytes(image_path))
    except preprocess.ImageError as error:
        raise preprocess.ImageError(f"{image_path}: {error}") from None
    if not digits:
        raise preprocess.ImageError(f"{image_path}: no digit found, nothing to explain")
    return digits


def _read(model: Any, card: dict[str, Any], digit: np.ndarray) -> _Reading:
    """Trace one digit through the model and turn its scores into probabilities."""
    classes = list(card.classes)
    result = trace(model, digit)
    scores = result.scores
    probabilities = np.exp(scores - scores.max())
    probabilities /= probabilities.sum()
    answer = int(np.argmax(probabilities))
    name = card.model
    return _Reading(model, card, digit, classes, result, probabilities, answer, name)


def _intro_section(page: _Page, reading: _Reading, file_name: str, found: int) -> None:
    """The heading, the answer in words and the digit as the network sees it."""
    esc = html.escape
    card, classes, answer = reading.card, reading.classes, reading.answer
    probabilities = reading.probabilities
    page.sections.append(f"<h1>How {esc(reading.name)} reads {esc(file_name)}</h1>")
    page.sections.append(
        f"<p><b>The number is probably {'an' if str(classes[answer]) == '8' else 'a'} "
        f"{classes[answer]}</b> ({probabilities[answer]:.1%}). "
        f"{found} digit{'s' if found != 1 else ''} found. "
        + ("This page follows the first (leftmost). " if found > 1 else "")
        + f"Model <code>{esc(reading.name)}</code>, {card.parameters:,} parameters"
        + (", an ensemble: the layer pictures show its first member" if card.members else "")
        + ".</p>"
    )
    page.add(
        figures.panel_grid(
            [[(reading.digit, "what the network sees (28x28)", "digit")]],
            page.out_dir / "input.png",
            "the digit after preprocessing",
        ),
        "The image is cut to its digit, scaled into a 20x20 box and centred by mass in 28x28, "
        "white on black with values 0..1: exactly what recognition feeds the network.",
    )


def _conv_sections(page: _Page, reading: _Reading, source: Any) -> None:
    """The first convolution's kernels and the activation maps of every convolution."""
    convs = conv_layers(source)
    page.sections.append("<h2>Convolution layers</h2>")
    if not convs:
        page.sections.append(
            f'<p class="note">{html.escape(reading.name)} has no convolution layers: like the '
            "article's Keras network it flattens the image straight away and works with dense "
            "layers only, so there are no kernels or activation maps to show.</p>"
        )
        return
    _, first, _, _ = convs[0]
    _kernels_figure(page, first)
    for index, (layer, conv, _, _) in enumerate(convs):
        _activations_figure(page, reading.result, index, layer, conv)


def _kernels_figure(page: _Page, first: Any) -> None:
    """The kernels of the first convolution, averaged over its input channels."""
    weights = first.weight.detach().float().numpy().mean(axis=1)  # (out, k, k)
    page.add(
        figures.map_grid(
            weights,
            page.out_dir / "kernels.png",
            f"{len(weights)} kernels of the first convolution ({weights.shape[1]}x"
            f"{weights.shape[2]})",
            labels=[str(i) for i in range(len(weights))],
            signed=True,
            colorbar_label="weight",
        ),
        "Each kernel is a small matrix of learned weights that slides over the image; like "
        "the article's light bulb it lights up where the pixels under it match its pattern "
        "(red weights want ink, blue want background).",
    )


def _activations_figure(page: _Page, result: Trace, index: int, layer: str, conv: Any) -> None:
    """Every channel's activation map of one convolution, with its strongest channels."""
    maps = result.conv[layer]
    stage = result.conv_stage[layer]
    strongest = np.argsort(-maps.max(axis=(1, 2)))[:5]
    page.add(
        figures.map_grid(
            maps,
            page.out_dir / f"activations-{index + 1}.png",
            f"layer {layer}: {maps.shape[0]} channels, {maps.shape[1]}x{maps.shape[2]}, {stage}",
            labels=[str(i) for i in range(len(maps))],
            colorbar_label="activation",
        ),
        f"Activation map of every channel of convolution <code>{html.escape(layer)}</code> "
        f"({conv.in_channels} → {conv.out_channels} channels, "
        f"{conv.kernel_size[0]}x{conv.kernel_size[1]} kernels), {html.escape(stage)}, on one "
        "colour scale. Strongest channels: "
        + ", ".join(f"{c} ({maps[c].max():.2f})" for c in strongest)
        + ". Early layers answer to strokes and edges; later ones, on smaller maps, to "
        "combinations of them.",
    )


def _softmax_section(page: _Page, reading: _Reading) -> None:
    """Raw scores and probabilities in words and as a chart."""
    classes, answer = reading.classes, reading.answer
    scores, probabilities = reading.result.scores, reading.probabilities
    page.sections.append("<h2>Softmax</h2>")
    page.sections.append(
        "<p>Raw scores: "
        + ", ".join(f"{c}: {s:.2f}" for c, s in zip(classes, scores, strict=True))
        + ".<br>Probabilities: "
        + ", ".join(f"{c}: {p:.3f}" for c, p in zip(classes, probabilities, strict=True))
        + f" (sum {probabilities.sum():.3f}).</p>"
    )
    temperature = reading.card.temperature
    calibrated = (
        f" The scores shown are the output layer's divided by the temperature {temperature:.3g}"
        " fitted on the validation split, so their softmax is calibrated."
    )
    page.add(
        figures.softmax_chart(
            scores,
            probabilities,
            classes,
            page.out_dir / "softmax.png",
            f"answer: {classes[answer]} ({probabilities[answer]:.1%})",
        ),
        SOFTMAX_CAPTION + (calibrated if temperature != 1 else ""),
    )


def _saliency_section(page: _Page, reading: _Reading) -> None:
    """Integrated gradients: which pixels raised or lowered the answer's score."""
    page.sections.append("<h2>Which pixels decided</h2>")
    label = reading.classes[reading.answer]
    attribution = saliency(reading.model, reading.digit, target=reading.answer)
    page.add(
        figures.saliency_figure(
            reading.digit,
            attribution,
            page.out_dir / "saliency.png",
            f"integrated gradients for the score of {label}",
        ),
        "Integrated gradients: the gradient of the score of the answer, averaged along the "
        f"straight path from a black image to this one ({SALIENCY_STEPS} steps) and multiplied "
        "by the pixel. Red pixels raised the score, blue ones lowered it; together they add up "
        f"to the score's rise from a black image ({attribution.sum():.2f}).",
    )


def _dense_sections(page: _Page, reading: _Reading, source: Any) -> None:
    """The flatten figure, then what the first dense layer makes of its input vector."""
    result = reading.result
    name, vector, output = result.linear[0]
    _flatten_figure(page, reading, name, vector)
    linear = dict(source.named_modules())[name]
    is_output = len(result.linear) == 1 or (
        output.size == len(reading.classes) and name == result.linear[-1][0]
    )
    if not is_output:
        _hidden_layer_figures(page, reading, source, name, linear, vector, output)
    else:
        _output_layer_figure(page, reading, name, linear, vector)


def _flatten_figure(page: _Page, reading: _Reading, name: str, vector: np.ndarray) -> None:
    """How the 2D maps (or the image) become the dense layer's input vector."""
    digit, result = reading.digit, reading.result
    last_conv = list(result.conv.values())[-1] if result.conv else None
    if last_conv is None and vector.size == digit.size:
        grid, segment = digit, digit.shape[1]
        text = (
            f"The 28x28 image is unrolled row by row into {vector.size} values, one input "
            "neuron per pixel (the article's Flatten); thin lines mark where each row starts."
        )
        xlabel = "position in the vector (row x 28 + column)"
    elif last_conv is not None and vector.size == last_conv.size:
        grid, segment = None, last_conv.shape[1] * last_conv.shape[2]
        text = (
            f"The last convolution's {last_conv.shape[0]} maps of {last_conv.shape[1]}x"
            f"{last_conv.shape[2]} are unrolled one after another into {vector.size} values; "
            "thin lines mark where each channel starts."
        )
        xlabel = "position in the vector (channel x map size + row x width + column)"
    elif last_conv is not None and vector.size == last_conv.shape[0]:
        grid, segment = None, 0
        text = (
            f"Instead of unrolling its last {last_conv.shape[0]} maps of {last_conv.shape[1]}x"
            f"{last_conv.shape[2]}, this network keeps only the largest value of each (global "
            f"max pooling): a vector of {vector.size} values, one per channel, saying how "
            "strongly each pattern appears anywhere in the digit."
        )
        xlabel = "channel of the last convolution"
    else:
        grid, segment = None, 0
        text = f"The dense layer <code>{html.escape(name)}</code> receives {vector.size} values."
        xlabel = "position in the vector"
    page.add(
        figures.flatten_figure(
            grid,
            vector,
            segment,
            page.out_dir / "flatten.png",
            f"flattening: 2D → 1D vector for the dense layer {name}",
            xlabel,
        ),
        text + " A dense layer connects every one of these values to each of its neurons.",
    )


def _hidden_layer_figures(
    page: _Page,
    reading: _Reading,
    source: Any,
    name: str,
    linear: Any,
    vector: np.ndarray,
    output: np.ndarray,
) -> None:
    """A hidden dense layer's most active neurons, and their weights drawn as 28x28 images."""
    from torch import nn

    follows_relu = _followed_by_relu(source, name)
    values = np.maximum(output, 0) if follows_relu else output
    top = np.argsort(-values)[:TOP_UNITS]
    page.add(
        figures.top_values_chart(
            values[top],
            [f"unit {u}" for u in top],
            page.out_dir / "dense.png",
            f"dense layer {name}: the {len(top)} most active of its {values.size} neurons",
            "activation" + (" (after ReLU)" if follows_relu else ""),
        ),
        f"Each of the {values.size} neurons of <code>{html.escape(name)}</code> sums all "
        f"{vector.size} inputs with its own weights plus a bias"
        + (", then ReLU cuts negatives to 0" if follows_relu else "")
        + f". {int((values > 0).sum())} of them are active for this digit.",
    )
    digit = reading.digit
    if not (isinstance(linear, nn.Linear) and linear.in_features == digit.size):
        return
    weights = linear.weight.detach().float().numpy().reshape(-1, *digit.shape)
    chosen = np.argsort(-values)[:WEIGHT_IMAGES]
    page.add(
        figures.map_grid(
            weights[chosen],
            page.out_dir / "weights.png",
            f"first-layer weights of the {len(chosen)} most active of {len(weights)} neurons",
            labels=[f"unit {u}" for u in chosen],
            signed=True,
            colorbar_label="weight",
        ),
        f"The {digit.size} weights of a neuron in the first dense layer, drawn back "
        "as a 28x28 image: red pixels add to the neuron when inked, blue ones subtract. "
        "These are the neurons this digit excites most.",
    )


def _output_layer_figure(
    page: _Page, reading: _Reading, name: str, linear: Any, vector: np.ndarray
) -> None:
    """The inputs of the output layer that moved the answer's score most, up or down."""
    label = reading.classes[reading.answer]
    weights = linear.weight.detach().float().numpy()[reading.answer]
    contributions = weights * vector
    top = np.argsort(-np.abs(contributions))[:TOP_UNITS]
    page.add(
        figures.top_values_chart(
            contributions[top],
            [f"input {i}" for i in top],
            page.out_dir / "dense.png",
            f"dense layer {name} is the output layer: top contributions to the score of {label}",
            "weight x value",
        ),
        f"Here the dense layer is the output layer itself: the score of "
        f"{label} is the sum of weight x value over its {vector.size} inputs plus "
        "a bias. The bars are the inputs that moved that score most, up (blue) or down "
        "(red).",
    )


def _followed_by_relu(network: Any, name: str) -> bool:
    """Whether the module registered right after `name` in its parent is an nn.ReLU."""
    from torch import nn

    parent_name, _, child_name = name.rpartition(".")
    parent = dict(network.named_modules())[parent_name] if parent_name else network
    children = list(parent.named_children())
    names = [n for n, _ in children]
    position = names.index(child_name)
    return position + 1 < len(children) and isinstance(children[position + 1][1], nn.ReLU)


def _more_or_less(ratio: float) -> str:
    if ratio > 1.1:
        return "clearly more to the 4s than to"
    if ratio > 1.0:
        return "slightly more to the 4s than to"
    return "no more to the 4s than to"


def explain_lines(out_dir: Path, data_dir: str | os.PathLike | None = None, show=False) -> Path:
    """The article's example on real MNIST: do line kernels answer 4s more than 8s?

    Every 4 and 8 in the test set is measured; the pictures show the 4 and the 8 whose combined
    response is the median of their digit, so they are typical rather than picked to flatter.
    """
    from digitrec import data

    dataset = data.load("mnist", data_dir=data_dir)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    images, labels = dataset.test_images, dataset.test_labels
    study = line_study(images, labels)
    kernels, responses = study["kernels"], study["responses"]
    typical = _typical_digits(images, labels, responses)
    written = [
        _line_kernels_figure(kernels, out_dir),
        _line_maps_figure(kernels, typical, out_dir),
        _line_strength_figure(responses, out_dir),
    ]
    body = _lines_body(written, kernels["vertical"].shape[0], responses)
    page = write_html(out_dir / "explain.html", "digitrec: line kernels", "\n".join(body))
    if show:
        figures.show_images(written)
    return page


def _typical_digits(images: np.ndarray, labels: np.ndarray, responses: dict) -> dict:
    """The 4 and the 8 (0..1) whose combined line response is the median of their digit."""
    typical = {}
    for digit in (4, 8):
        both = responses[digit]["both"]
        median_index = int(np.argsort(both)[len(both) // 2])
        typical[digit] = _as_unit(images[labels == digit][median_index])
    return typical


def _line_kernels_figure(kernels: dict[str, np.ndarray], out_dir: Path) -> Path:
    """The two hand-made kernels side by side."""
    size = kernels["vertical"].shape[0]
    return figures.panel_grid(
        [
            [
                (kernels["vertical"], f"vertical line kernel {size}x{size}", "signed"),
                (kernels["horizontal"], f"horizontal line kernel {size}x{size}", "signed"),
            ]
        ],
        out_dir / "line-kernels.png",
        "hand-made kernels",
    )


def _line_maps_figure(kernels: dict[str, np.ndarray], typical: dict, out_dir: Path) -> Path:
    """A typical 4 and 8, each beside its activation map under both kernels."""
    rows = []
    for digit in (4, 8):
        image = typical[digit]
        row = [(image, f"a typical {digit} from the test set", "digit")]
        for kind in ("vertical", "horizontal"):
            strength = line_kernel_response(image, kernels[kind])
            activation = line_maps(image[None], kernels[kind])[0]
            row.append((activation, f"{kind} lines: {strength:.3f} per ink", "activation"))
        rows.append(row)
    return figures.panel_grid(
        rows, out_dir / "line-maps.png", "activation maps, ReLU(image * kernel)"
    )


def _line_strength_figure(responses: dict, out_dir: Path) -> Path:
    """Histograms of the line response per unit of ink over every test 4 and 8."""
    panels = [
        (
            f"{kind} kernel" if kind != "both" else "vertical + horizontal",
            {f"{d}s": responses[d][kind] for d in (4, 8)},
        )
        for kind in ("vertical", "horizontal", "both")
    ]
    return figures.histograms(
        panels, out_dir / "line-strength.png", "line response per unit of ink"
    )


def _line_table(responses: dict) -> list[list[str]]:
    """Per kernel: the mean response over 4s and 8s, their ratio and how often a 4 wins."""
    table = []
    for kind in ("vertical", "horizontal", "both"):
        fours, eights = responses[4][kind], responses[8][kind]
        wins = float((fours[:, None] > eights[None, :]).mean())
        table.append(
            [
                kind if kind != "both" else "vertical + horizontal",
                f"{fours.mean():.4f}",
                f"{eights.mean():.4f}",
                f"{fours.mean() / eights.mean():.2f}",
                f"{wins:.0%}",
            ]
        )
    return table


def _lines_body(written: list[Path], size: int, responses: dict) -> list[str]:
    """The line-kernel page's HTML sections, around the three figures in `written`."""
    table = _line_table(responses)
    count4, count8 = len(responses[4]["both"]), len(responses[8]["both"])
    ratios = {k: responses[4][k].mean() / responses[8][k].mean() for k in responses[4]}
    return [
        "<h1>What distinguishes a four from an eight?</h1>",
        "<p>The article's opening example: a four is mostly vertical and horizontal lines, an "
        "eight is curves and diagonals, so a kernel that detects lines should light up on a 4. "
        f"Here that is measured on all {count4} fours and {count8} eights of the MNIST test "
        "set.</p>",
        figure_html(
            written[0],
            f"Two {size}x{size} kernels made by hand, not learned: a bright bar 3 pixels "
            "wide (MNIST's stroke width) between dark flanks. Positive weights sum to 1, "
            "negative ones to -1, so an empty or evenly filled patch scores 0.",
        ),
        figure_html(
            written[1],
            "The kernel slides over the digit; at each place the pixels under it are "
            "multiplied by its weights and summed, and ReLU keeps the positive part. "
            "Bright spots are where a straight stroke of that direction lies.",
        ),
        "<h2>Strength over the whole test set</h2>",
        "<p>Strength is the activation map's total divided by the digit's ink: an 8 has more "
        "ink than a 4, and a plain total would reward ink rather than lines.</p>",
        table_html(
            ["kernel", "mean over 4s", "mean over 8s", "4s / 8s", "pairs where the 4 wins"], table
        ),
        figure_html(
            written[2],
            "Distribution of the strength over every test 4 and 8; dashed lines are the means.",
        ),
        "<p>What the numbers say, per unit of ink: the vertical kernel responds "
        f"{_more_or_less(ratios['vertical'])} the 8s ({table[0][3]} times). The horizontal "
        f"kernel alone responds {_more_or_less(ratios['horizontal'])} the 8s ({table[1][3]} "
        "times): a 4 has one short crossbar, and the tops and bottoms of an 8's loops are nearly "
        f"horizontal too. Together the two kernels respond {_more_or_less(ratios['both'])} the "
        f"8s ({table[2][3]} times). One hand-made kernel is a weak cue; a CNN learns dozens of "
        "kernels and stacks layers of them, which is why it "
        "reads both digits almost without error.</p>",
    ]
