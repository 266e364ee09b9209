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
from digitrec.report import figure_html, table_html, write_html

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


def load(model_path: str | os.PathLike | None) -> tuple[Any, dict[str, Any]]:
    from digitrec.checkpoint import ModelError
    from digitrec.recognize import bundled_model, load_model

    path = Path(model_path) if model_path is not None else bundled_model()
    if model_path is None and not path.is_file():
        raise ModelError("no bundled model in this installation; pass --model RUN_DIR")
    return load_model(path)


def explain_image(
    image_path: str | os.PathLike,
    model_path: str | os.PathLike | None,
    out_dir: Path,
    show: bool = False,
) -> Path:
    """Explain how the model reads the first digit in an image; returns explain.html's path."""
    try:
        digits = preprocess.extract_digits(preprocess.read_bytes(image_path))
    except preprocess.ImageError as error:
        raise preprocess.ImageError(f"{image_path}: {error}") from None
    if not digits:
        raise preprocess.ImageError(f"{image_path}: no digit found, nothing to explain")
    model, card = load(model_path)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    digit = digits[0].image
    classes = [str(c) for c in (card.get("classes") or range(10))]
    result = trace(model, digit)
    scores = result.scores
    probabilities = np.exp(scores - scores.max())
    probabilities /= probabilities.sum()
    answer = int(np.argmax(probabilities))
    esc = html.escape
    sections: list[str] = []
    written: list[Path] = []

    def add(path: Path, caption: str) -> None:
        written.append(path)
        sections.append(figure_html(path, caption))

    source = layer_source(model)
    name = str(card.get("model"))
    sections.append(f"<h1>How {esc(name)} reads {esc(Path(image_path).name)}</h1>")
    sections.append(
        f"<p><b>The number is probably {'an' if str(classes[answer]) == '8' else 'a'} "
        f"{classes[answer]}</b> ({probabilities[answer]:.1%}). "
        f"{len(digits)} digit{'s' if len(digits) != 1 else ''} found. "
        + ("This page follows the first (leftmost). " if len(digits) > 1 else "")
        + f"Model <code>{esc(name)}</code>, {card.get('parameters', 0):,} parameters"
        + (", an ensemble: the layer pictures show its first member" if card.get("members") else "")
        + ".</p>"
    )
    add(
        figures.panel_grid(
            [[(digit, "what the network sees (28x28)", "digit")]], out_dir / "input.png",
            "the digit after preprocessing",
        ),
        "The image is cut to its digit, scaled into a 20x20 box and centred by mass in 28x28, "
        "white on black with values 0..1: exactly what recognition feeds the network.",
    )  # fmt: skip

    convs = conv_layers(source)
    sections.append("<h2>Convolution layers</h2>")
    if not convs:
        sections.append(
            f'<p class="note">{esc(name)} has no convolution layers: like the article\'s '
            "Keras network it flattens the image straight away and works with dense layers "
            "only, so there are no kernels or activation maps to show.</p>"
        )
    else:
        _, first, _, _ = convs[0]
        weights = first.weight.detach().float().numpy().mean(axis=1)  # (out, k, k)
        add(
            figures.map_grid(
                weights, out_dir / "kernels.png",
                f"{len(weights)} kernels of the first convolution ({weights.shape[1]}x"
                f"{weights.shape[2]})", labels=[str(i) for i in range(len(weights))],
                signed=True, colorbar_label="weight",
            ),
            "Each kernel is a small matrix of learned weights that slides over the image; like "
            "the article's light bulb it lights up where the pixels under it match its pattern "
            "(red weights want ink, blue want background).",
        )  # fmt: skip
        for index, (layer, conv, _, _) in enumerate(convs):
            maps = result.conv[layer]
            stage = result.conv_stage[layer]
            add(
                figures.map_grid(
                    maps, out_dir / f"activations-{index + 1}.png",
                    f"layer {layer}: {maps.shape[0]} channels, {maps.shape[1]}x{maps.shape[2]}, "
                    f"{stage}", labels=[str(i) for i in range(len(maps))],
                    colorbar_label="activation",
                ),
                f"Activation map of every channel of convolution <code>{esc(layer)}</code> "
                f"({conv.in_channels} → {conv.out_channels} channels, "
                f"{conv.kernel_size[0]}x{conv.kernel_size[1]} kernels), {esc(stage)}, on one "
                "colour scale. Strongest channels: "
                + ", ".join(
                    f"{c} ({maps[c].max():.2f})" for c in np.argsort(-maps.max(axis=(1, 2)))[:5]
                )
                + ". Early layers answer to strokes and edges; later ones, on smaller maps, to "
                "combinations of them.",
            )  # fmt: skip

    sections.append("<h2>Flattening and the dense layer</h2>")
    if result.linear:
        sections += _dense_sections(source, result, digit, classes, answer, out_dir, add)

    sections.append("<h2>Softmax</h2>")
    sections.append(
        "<p>Raw scores: "
        + ", ".join(f"{c}: {s:.2f}" for c, s in zip(classes, scores, strict=True))
        + ".<br>Probabilities: "
        + ", ".join(f"{c}: {p:.3f}" for c, p in zip(classes, probabilities, strict=True))
        + f" (sum {probabilities.sum():.3f}).</p>"
    )
    temperature = float(card.get("temperature", 1.0))
    add(
        figures.softmax_chart(
            scores, probabilities, classes, out_dir / "softmax.png",
            f"answer: {classes[answer]} ({probabilities[answer]:.1%})",
        ),
        SOFTMAX_CAPTION
        + (f" The scores shown are the output layer's divided by the temperature {temperature:.3g}"
           " fitted on the validation split, so their softmax is calibrated." if temperature != 1
           else ""),
    )  # fmt: skip

    sections.append("<h2>Which pixels decided</h2>")
    attribution = saliency(model, digit, target=answer)
    add(
        figures.saliency_figure(
            digit, attribution, out_dir / "saliency.png",
            f"integrated gradients for the score of {classes[answer]}",
        ),
        "Integrated gradients: the gradient of the score of the answer, averaged along the "
        f"straight path from a black image to this one ({SALIENCY_STEPS} steps) and multiplied "
        "by the pixel. Red pixels raised the score, blue ones lowered it; together they add up "
        f"to the score's rise from a black image ({attribution.sum():.2f}).",
    )  # fmt: skip
    page = write_html(out_dir / "explain.html", f"digitrec explain: {name}", "\n".join(sections))
    if show:
        figures.show_images(written)
    return page


def _dense_sections(source, result: Trace, digit, classes, answer, out_dir, add) -> list[str]:
    """The flatten figure and the dense layer's top activations (or first-layer weights)."""
    from torch import nn

    esc = html.escape
    sections: list[str] = []
    name, vector, output = result.linear[0]
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
        text = f"The dense layer <code>{esc(name)}</code> receives {vector.size} values."
        xlabel = "position in the vector"
    add(
        figures.flatten_figure(
            grid, vector, segment, out_dir / "flatten.png",
            f"flattening: 2D → 1D vector for the dense layer {name}", xlabel,
        ),
        text + " A dense layer connects every one of these values to each of its neurons.",
    )  # fmt: skip

    linear = dict(source.named_modules())[name]
    is_output = (
        len(result.linear) == 1 or output.size == len(classes) and name == (result.linear[-1][0])
    )
    if not is_output:
        follows_relu = _followed_by_relu(source, name)
        values = np.maximum(output, 0) if follows_relu else output
        top = np.argsort(-values)[:TOP_UNITS]
        add(
            figures.top_values_chart(
                values[top], [f"unit {u}" for u in top], out_dir / "dense.png",
                f"dense layer {name}: the {len(top)} most active of its {values.size} neurons",
                "activation" + (" (after ReLU)" if follows_relu else ""),
            ),
            f"Each of the {values.size} neurons of <code>{esc(name)}</code> sums all "
            f"{vector.size} inputs with its own weights plus a bias"
            + (", then ReLU cuts negatives to 0" if follows_relu else "")
            + f". {int((values > 0).sum())} of them are active for this digit.",
        )  # fmt: skip
        if isinstance(linear, nn.Linear) and linear.in_features == digit.size:
            weights = linear.weight.detach().float().numpy().reshape(-1, *digit.shape)
            chosen = np.argsort(-values)[:WEIGHT_IMAGES]
            add(
                figures.map_grid(
                    weights[chosen], out_dir / "weights.png",
                    f"first-layer weights of the {len(chosen)} most active of "
                    f"{len(weights)} neurons", labels=[f"unit {u}" for u in chosen],
                    signed=True, colorbar_label="weight",
                ),
                f"The {digit.size} weights of a neuron in the first dense layer, drawn back "
                "as a 28x28 image: red pixels add to the neuron when inked, blue ones subtract. "
                "These are the neurons this digit excites most.",
            )  # fmt: skip
    else:
        weights = linear.weight.detach().float().numpy()[answer]
        contributions = weights * vector
        top = np.argsort(-np.abs(contributions))[:TOP_UNITS]
        add(
            figures.top_values_chart(
                contributions[top], [f"input {i}" for i in top], out_dir / "dense.png",
                f"dense layer {name} is the output layer: top contributions to the score of "
                f"{classes[answer]}", "weight x value",
            ),
            f"Here the dense layer is the output layer itself: the score of "
            f"{classes[answer]} is the sum of weight x value over its {vector.size} inputs plus "
            "a bias. The bars are the inputs that moved that score most, up (blue) or down "
            "(red).",
        )  # fmt: skip
    return sections


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
    written: list[Path] = []
    typical = {}
    for digit in (4, 8):
        both = responses[digit]["both"]
        median_index = int(np.argsort(both)[len(both) // 2])
        typical[digit] = _as_unit(images[labels == digit][median_index])

    size = kernels["vertical"].shape[0]
    written.append(
        figures.panel_grid(
            [[(kernels["vertical"], f"vertical line kernel {size}x{size}", "signed"),
              (kernels["horizontal"], f"horizontal line kernel {size}x{size}", "signed")]],
            out_dir / "line-kernels.png", "hand-made kernels",
        )
    )  # fmt: skip
    rows = []
    for digit in (4, 8):
        image = typical[digit]
        row = [(image, f"a typical {digit} from the test set", "digit")]
        for kind in ("vertical", "horizontal"):
            strength = line_kernel_response(image, kernels[kind])
            row.append((line_maps(image[None], kernels[kind])[0],
                        f"{kind} lines: {strength:.3f} per ink", "activation"))  # fmt: skip
        rows.append(row)
    written.append(
        figures.panel_grid(rows, out_dir / "line-maps.png", "activation maps, ReLU(image * kernel)")
    )
    written.append(
        figures.histograms(
            [(f"{kind} kernel" if kind != "both" else "vertical + horizontal",
              {f"{d}s": responses[d][kind] for d in (4, 8)})
             for kind in ("vertical", "horizontal", "both")],
            out_dir / "line-strength.png", "line response per unit of ink",
        )
    )  # fmt: skip

    table = []
    for kind in ("vertical", "horizontal", "both"):
        fours, eights = responses[4][kind], responses[8][kind]
        wins = float((fours[:, None] > eights[None, :]).mean())
        table.append([
            kind if kind != "both" else "vertical + horizontal", f"{fours.mean():.4f}",
            f"{eights.mean():.4f}", f"{fours.mean() / eights.mean():.2f}", f"{wins:.0%}",
        ])  # fmt: skip
    count4, count8 = len(responses[4]["both"]), len(responses[8]["both"])
    ratios = {k: responses[4][k].mean() / responses[8][k].mean() for k in responses[4]}
    body = [
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
        ),  # fmt: skip
        figure_html(
            written[2],
            "Distribution of the strength over every test 4 and 8; dashed lines are the means.",
        ),  # fmt: skip
        "<p>What the numbers say, per unit of ink: the vertical kernel responds "
        f"{_more_or_less(ratios['vertical'])} the 8s ({table[0][3]} times). The horizontal "
        f"kernel alone responds {_more_or_less(ratios['horizontal'])} the 8s ({table[1][3]} "
        "times): a 4 has one short crossbar, and the tops and bottoms of an 8's loops are nearly "
        f"horizontal too. Together the two kernels respond {_more_or_less(ratios['both'])} the "
        f"8s ({table[2][3]} times). One hand-made kernel is a weak cue; a CNN learns dozens of "
        "kernels and stacks layers of them, which is why it "
        "reads both digits almost without error.</p>",
    ]
    page = write_html(out_dir / "explain.html", "digitrec: line kernels", "\n".join(body))
    if show:
        figures.show_images(written)
    return page
