"""Training the line reader (`digitrec.linereader`): its CRNN, its synthetic strings, CTC.

The reader learns from strings of MNIST *training* digits only, made two ways:

- composed here: 1 to 5 digits slid into each other with `synth.touching_row` (touching or
  overlapping, sometimes a small gap), with size, baseline, slant and stroke width varied,
  then blurred and scaled in contrast the way `preprocess.to_ink` leaves ink;
- cut by the real pipeline: pages of touching digits and of one digit rendered by `synth` and
  read back by `preprocess.extract_page`, so the reader sees exactly the blobs it will be given.

About one blob in ten is not digits (letters, symbols, scribbles, clothes, pages of marks) with
an empty target, so that the reader does not invent digits in a letter. Torch is imported by the
functions that train and export; building the data needs only numpy and OpenCV.

    make_samples -> fit (CTCLoss, AdamW, one-cycle) -> evaluate -> save (safetensors, ONNX, card)
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from digitrec import linereader, outliers, preprocess, synth
from digitrec.checkpoint import tensors_digest, write_atomic, write_json

Sample = tuple[np.ndarray, list[int]]  # (line input (LINE_HEIGHT, W), digits)


@dataclass(frozen=True)
class LineTrainConfig:
    """A good run on two idle cores in about ten minutes (data five, training five)."""

    steps: int = 6000
    batch_size: int = 48
    learning_rate: float = 3e-3
    weight_decay: float = 1e-4
    composed: int = 24000  # strings composed here
    pipeline: int = 24000  # pages rendered by synth and cut by preprocess
    nondigit_share: float = 0.1
    seed: int = 0
    threads: int = 2
    channels: tuple[int, int, int, int] = (32, 48, 64, 96)
    hidden: int = 96


# --- the network (torch) -------------------------------------------------------------------


def create_line_model(channels: Sequence[int] = (32, 48, 64, 96), hidden: int = 96) -> Any:
    """The CRNN: (N, 1, 32, W) pixels -> (N, W / STRIDE, 11) logits, blank first."""
    import torch
    from torch import nn

    def block(inputs: int, outputs: int, kernel: tuple[int, int] = (3, 3)) -> nn.Sequential:
        padding = (kernel[0] // 2, kernel[1] // 2) if kernel == (3, 3) else (0, 0)
        return nn.Sequential(
            nn.Conv2d(inputs, outputs, kernel, padding=padding, bias=False),
            nn.BatchNorm2d(outputs),
            nn.ReLU(inplace=True),
        )

    class LineCRNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            first, second, third, fourth = channels
            self.block1 = block(1, first)
            self.pool1 = nn.MaxPool2d(2)  # 32 x W -> 16 x W/2
            self.block2 = block(first, second)
            # -> 8 x W/STRIDE: the first pool halved the width, this one gives the rest of
            # linereader.STRIDE, the one place the frame width is set.
            self.pool2 = nn.MaxPool2d((2, linereader.STRIDE // 2))
            self.block3 = block(second, third)
            self.pool3 = nn.MaxPool2d((2, 1))  # -> 4 x W/STRIDE
            self.block4 = block(third, fourth)
            self.collapse = block(fourth, fourth, (4, 1))  # -> 1 x W/STRIDE
            self.rnn = nn.GRU(fourth, hidden, batch_first=True, bidirectional=True)
            self.dropout = nn.Dropout(0.1)
            self.head = nn.Linear(2 * hidden, linereader.NUM_CLASSES)

        def forward(self, lines: torch.Tensor) -> torch.Tensor:
            x = self.pool1(self.block1(lines))
            x = self.pool2(self.block2(x))
            x = self.pool3(self.block3(x))
            x = self.collapse(self.block4(x))  # (N, C, 1, T)
            x = x.squeeze(2).transpose(1, 2)  # (N, T, C)
            x, _ = self.rnn(x)
            return self.head(self.dropout(x))  # (N, T, 11)

    return LineCRNN()


# --- composed strings (numpy) --------------------------------------------------------------


def scaled_digit(digit: np.ndarray, height: int, aspect: float, slant: float) -> np.ndarray:
    """An MNIST digit (28x28 uint8) cropped to its ink, ``height`` px tall, its width times
    ``aspect``, sheared by ``slant`` (x shift per px up), edges sharpened like a pen's."""
    ink = digit.astype(np.float32) / 255.0
    rows = np.flatnonzero(ink.max(axis=1) > 0.1)
    columns = np.flatnonzero(ink.max(axis=0) > 0.1)
    ink = ink[rows[0] : rows[-1] + 1, columns[0] : columns[-1] + 1]
    scale = height / ink.shape[0]
    width = max(1, round(ink.shape[1] * scale * aspect))
    interpolation = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_CUBIC
    big = cv2.resize(ink, (width, height), interpolation=interpolation)
    if slant:
        # x' = x + slant * (height - y): the top leans right for a positive slant.
        extra = int(np.ceil(abs(slant) * height))
        offset = slant * height + (extra if slant < 0 else 0)
        shear = np.float32([[1, -slant, offset], [0, 1, 0]])
        big = cv2.warpAffine(big, shear, (width + extra, height), flags=cv2.INTER_LINEAR)
    # Enlarging a 28 px digit blurs it; a contrast ramp brings back a pen-like edge.
    return np.clip((big - 0.25) / 0.5, 0.0, 1.0).astype(np.float32)


def compose_string(digits: Sequence[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """Digits written in one blob, as `synth`'s touching pages write them and wider: each slid
    into the one before until strokes join (or, sometimes, up to a small gap)."""
    height = int(rng.integers(36, 150))
    slant = float(rng.uniform(-0.25, 0.25)) if rng.random() < 0.5 else 0.0
    inks = [
        scaled_digit(
            digit,
            max(8, round(height * rng.uniform(0.8, 1.1))),
            float(rng.uniform(0.8, 1.2)),
            slant,
        )
        for digit in digits
    ]
    wander = max(1, height // 10)
    drops = [int(rng.integers(-wander, wander + 1)) for _ in inks]
    if rng.random() < 0.2:
        gaps = [int(rng.integers(0, max(2, height // 5))) for _ in inks[1:]]
        return spaced_row(inks, drops, gaps)
    overlaps = [int(rng.integers(1, max(2, height // 8))) for _ in inks[1:]]
    return synth.touching_row(inks, drops, overlaps)


def spaced_row(inks: Sequence[np.ndarray], drops: Sequence[int], gaps: Sequence[int]) -> np.ndarray:
    """Inks left to right with ``gaps`` px between their boxes (strokes may still cross where a
    digit leans), bottoms on one baseline moved down by ``drops`` px."""
    spread = max(abs(drop) for drop in drops)
    tallest = max(ink.shape[0] for ink in inks)
    width = sum(ink.shape[1] for ink in inks) + sum(gaps)
    alpha = np.zeros((tallest + 2 * spread, width), dtype=np.float32)
    left = 0
    for ink, drop, gap in zip(inks, drops, [*gaps, 0], strict=True):
        top = spread + tallest + drop - ink.shape[0]
        region = alpha[top : top + ink.shape[0], left : left + ink.shape[1]]
        np.maximum(region, ink, out=region)
        left += ink.shape[1] + gap
    return alpha


def as_found_ink(alpha: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Pen coverage as `preprocess` hands a blob over: thicker or thinner strokes, a camera's
    blur, ink saturating below full coverage, specks of noise, cropped to the ink."""
    ink = alpha.astype(np.float32)
    pen = max(1, round(ink.shape[0] * rng.uniform(0.01, 0.04)))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * pen + 1, 2 * pen + 1))
    roll = rng.random()
    if roll < 0.25:
        ink = cv2.dilate(ink, kernel)
    elif roll < 0.4:
        ink = cv2.erode(ink, kernel)
    if rng.random() < 0.5:
        ink = cv2.GaussianBlur(ink, (0, 0), float(rng.uniform(0.3, 1.2)))
    ink = np.clip(ink * rng.uniform(1.0, 1.5) - rng.uniform(0.0, 0.1), 0.0, 1.0)
    if rng.random() < 0.3:
        ink = np.clip(ink + rng.normal(0.0, 0.04, ink.shape).astype(np.float32), 0.0, 1.0)
    return crop_to_ink(ink)


def crop_to_ink(ink: np.ndarray) -> np.ndarray:
    """The bounding box of the pixels above linereader.INK, as `preprocess` crops blobs."""
    rows = np.flatnonzero(ink.max(axis=1) > linereader.INK)
    columns = np.flatnonzero(ink.max(axis=0) > linereader.INK)
    if rows.size == 0:
        return ink
    return ink[rows[0] : rows[-1] + 1, columns[0] : columns[-1] + 1]


def nondigit_blob(rng: np.random.Generator, fashion: np.ndarray | None) -> np.ndarray:
    """A mark that is no digit (a letter, a symbol, a scribble, clothes), or two side by side."""
    count = 1 if rng.random() < 0.7 else 2

    def one() -> np.ndarray:
        roll = rng.random()
        if fashion is not None and len(fashion) and roll < 0.2:
            return crop_to_ink(fashion[rng.integers(len(fashion))].astype(np.float32) / 255.0)
        return crop_to_ink(outliers.glyph(rng) if roll < 0.7 else outliers.shape(rng))

    height = int(rng.integers(36, 150))
    parts = []
    for _ in range(count):
        part = one()
        width = max(1, round(part.shape[1] * height / max(part.shape[0], 1)))
        parts.append(cv2.resize(part, (width, height), interpolation=cv2.INTER_LINEAR))
    alpha = synth.touching_row(parts, [0] * count, [int(rng.integers(1, 6))] * (count - 1))
    return as_found_ink(alpha, rng)


def composed_samples(
    images: np.ndarray,
    labels: np.ndarray,
    count: int,
    rng: np.random.Generator,
    fashion: np.ndarray | None = None,
    nondigit_share: float = 0.1,
) -> list[Sample]:
    """``count`` line inputs with their digits: 1 to 5 digits (most often 2 to 4) composed from
    ``images`` (uint8, N x 28 x 28), and ``nondigit_share`` blobs of marks with no digits."""
    samples: list[Sample] = []
    for _ in range(count):
        if rng.random() < nondigit_share:
            samples.append((linereader.to_line_input(nondigit_blob(rng, fashion)), []))
            continue
        length = int(rng.choice([1, 2, 3, 4, 5], p=[0.12, 0.25, 0.25, 0.25, 0.13]))
        chosen = rng.integers(len(images), size=length)
        ink = as_found_ink(compose_string(images[chosen], rng), rng)
        samples.append((linereader.to_line_input(ink), [int(labels[i]) for i in chosen]))
    return samples


# --- blobs cut by the pipeline -------------------------------------------------------------


def page_blobs(
    kind: str, digits: Sequence[np.ndarray], names: Sequence[int], rng: np.random.Generator
) -> tuple[list[np.ndarray], str]:
    """Render a `synth` page of ``kind`` and return the ink crops `preprocess` finds in it
    (reading order) and the page's label."""
    data, _, label = synth.render(kind, list(digits), rng, labels=list(names))
    page = preprocess.extract_page(data)
    return [digit.ink for digit in page.digits if digit.ink is not None], label


def pipeline_samples(
    images: np.ndarray, labels: np.ndarray, count: int, seed: int, nondigit_share: float = 0.1
) -> list[Sample]:
    """Up to ``count`` blobs cut by the pipeline from pages of touching digits (2 to 4), of one
    digit and of marks that are no digits; a page of digits found as several blobs is skipped
    (which digits each holds is not known)."""
    rng = np.random.default_rng(seed)
    samples: list[Sample] = []
    for _ in range(count):
        roll = rng.random()
        kind = "notdigit" if roll < nondigit_share else "touching" if roll < 0.85 else "paper"
        chosen = rng.integers(len(images), size=synth.digits_needed(kind))
        blobs, label = page_blobs(kind, images[chosen], labels[chosen].tolist(), rng)
        if kind == "notdigit":
            samples += [(linereader.to_line_input(blob), []) for blob in blobs[:2]]
        elif len(blobs) == 1:
            samples.append((linereader.to_line_input(blobs[0]), [int(c) for c in label]))
    return samples


def make_samples(
    images: np.ndarray,
    labels: np.ndarray,
    config: LineTrainConfig,
    fashion: np.ndarray | None = None,
    workers: int = 2,
) -> list[Sample]:
    """The training set: composed strings and pipeline blobs, built by ``workers`` processes
    (each from its own seed, so the set depends on the seed and the worker count only)."""
    seeds = np.random.SeedSequence(config.seed).spawn(2 * workers)
    jobs: list[tuple[Callable[..., list[Sample]], tuple]] = []
    for index in range(workers):
        share = slice(index, None, workers)
        composed_rng = np.random.default_rng(seeds[index])
        jobs.append(
            (
                composed_samples,
                (images, labels, config.composed // workers, composed_rng, fashion),
            )
        )
        pipeline_seed = int(seeds[workers + index].generate_state(1)[0])
        jobs.append(
            (
                pipeline_samples,
                (images[share], labels[share], config.pipeline // workers, pipeline_seed),
            )
        )
    if workers <= 1:
        return [sample for function, arguments in jobs for sample in function(*arguments)]
    with ProcessPoolExecutor(workers) as pool:
        futures = [pool.submit(function, *arguments) for function, arguments in jobs]
        return [sample for future in futures for sample in future.result()]


# --- training (torch) ----------------------------------------------------------------------


def batch_tensors(samples: Sequence[Sample]) -> tuple[Any, Any, Any, Any]:
    """(lines (N, 1, 32, W), targets concatenated as classes, input frames, target lengths)."""
    import torch

    lines = torch.from_numpy(linereader.pad_batch([line for line, _ in samples]))
    targets = torch.tensor([d + 1 for _, digits in samples for d in digits], dtype=torch.long)
    frames = torch.tensor([linereader.frame_count(line.shape[1]) for line, _ in samples])
    lengths = torch.tensor([len(digits) for _, digits in samples])
    return lines, targets, frames, lengths


def width_buckets(
    samples: Sequence[Sample], batch_size: int, rng: np.random.Generator
) -> list[list[int]]:
    """Batches of samples of about one width, in random order: little of a batch is padding,
    as the reader reads each blob unpadded."""
    widths = np.array([line.shape[1] for line, _ in samples], np.float64)
    order = np.argsort(widths * rng.uniform(0.98, 1.02, len(widths)), kind="stable")
    batches = [order[i : i + batch_size].tolist() for i in range(0, len(order), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def ctc_loss(model: Any, samples: Sequence[Sample]) -> Any:
    """The mean CTC loss of the model on a batch (per target, as CTCLoss's "mean")."""
    import torch

    lines, targets, frames, lengths = batch_tensors(samples)
    log_probs = torch.log_softmax(model(lines), dim=-1).transpose(0, 1)  # (T, N, 11)
    loss = torch.nn.functional.ctc_loss(
        log_probs, targets, frames, lengths, blank=linereader.BLANK, zero_infinity=True
    )
    return loss


def train_steps(
    model: Any,
    samples: Sequence[Sample],
    config: LineTrainConfig,
    on_progress: Callable[[dict[str, float]], None] | None = None,
) -> list[float]:
    """``config.steps`` AdamW steps on width-bucketed batches with a one-cycle schedule;
    returns the loss of each step."""
    import torch

    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.learning_rate, total_steps=config.steps, pct_start=0.15
    )
    rng = np.random.default_rng(config.seed)
    batches: list[list[int]] = []
    losses: list[float] = []
    model.train()
    for step in range(config.steps):
        if not batches:
            batches = width_buckets(samples, config.batch_size, rng)
        loss = ctc_loss(model, [samples[i] for i in batches.pop()])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
        if on_progress is not None and (step + 1) % 100 == 0:
            on_progress({"step": step + 1, "loss": float(np.mean(losses[-100:]))})
    return losses


def torch_frames(model: Any, lines: Sequence[np.ndarray]) -> list[np.ndarray]:
    """(T_i, 11) softmax frames from the torch model, batched as the ONNX reader batches."""
    import torch

    model.eval()
    out: list[np.ndarray] = [np.zeros((0, linereader.NUM_CLASSES), np.float32)] * len(lines)
    with torch.no_grad():
        for batch in linereader.width_batches([line.shape[1] for line in lines]):
            padded = torch.from_numpy(linereader.pad_batch([lines[i] for i in batch]))
            probabilities = torch.softmax(model(padded), dim=-1).numpy()
            for row, index in enumerate(batch):
                out[index] = probabilities[row, : linereader.frame_count(lines[index].shape[1])]
    return out


def string_accuracy(model: Any, samples: Sequence[Sample]) -> float:
    """The share of samples whose greedy reading is exactly their digits."""
    frames = torch_frames(model, [line for line, _ in samples])
    right = sum(
        [digit for digit, _, _, _ in linereader.greedy_decode(f)] == digits
        for f, (_, digits) in zip(frames, samples, strict=True)
    )
    return right / max(len(samples), 1)


def page_accuracy(
    read: Callable[[list[np.ndarray]], list[str]],
    images: np.ndarray,
    labels: np.ndarray,
    count: int,
    seed: int,
) -> float:
    """The share of ``count`` touching pages (from ``images``) whose blobs, read left to right
    by ``read`` and joined, spell the page's label."""
    rng = np.random.default_rng(seed)
    right = 0
    for _ in range(count):
        chosen = rng.choice(len(labels), size=synth.digits_needed("touching"), replace=False)
        blobs, label = page_blobs("touching", images[chosen], labels[chosen].tolist(), rng)
        right += int("".join(read(blobs)) == label)
    return right / max(count, 1)


# --- export and the run's files --------------------------------------------------------------


def to_onnx_bytes(model: Any, opset: int | None = None) -> bytes:
    """The model with the softmax appended, traced to ONNX with dynamic batch and width."""
    import torch

    from digitrec.export import OPSET, traced_onnx

    class WithSoftmax(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, lines: torch.Tensor) -> torch.Tensor:
            return torch.softmax(self.inner(lines), dim=-1)  # (N, T, 11)

    graph = WithSoftmax(model).eval()
    example = torch.rand(
        2, 1, linereader.LINE_HEIGHT, 64, generator=torch.Generator().manual_seed(0)
    )
    names = (linereader.INPUT_NAME, linereader.OUTPUT_NAME)
    axes = {names[0]: {0: "batch", 3: "width"}, names[1]: {0: "batch", 1: "frames"}}
    return traced_onnx(graph, example, names, axes, opset or OPSET)


def onnx_difference(onnx: bytes, model: Any, lines: Sequence[np.ndarray]) -> float:
    """The largest |p_onnx - p_torch| over the frames of ``lines``."""
    import onnxruntime as ort

    session = ort.InferenceSession(onnx, providers=["CPUExecutionProvider"])
    reference = torch_frames(model, lines)
    worst = 0.0
    for line, expected in zip(lines, reference, strict=True):
        got = session.run(None, {linereader.INPUT_NAME: line[None, None]})[0][0]
        worst = max(worst, float(np.abs(got - expected).max()))
    return worst


def save_line_reader(
    out_dir: str | Path, model: Any, card: dict[str, Any], check: Sequence[np.ndarray]
) -> dict[str, Any]:
    """Write linereader.{safetensors,onnx,json} atomically; the ONNX graph must agree with torch
    on the ``check`` lines (max abs difference 1e-4) or nothing is written."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    onnx = to_onnx_bytes(model)
    difference = onnx_difference(onnx, model, check)
    if difference > 1e-4:
        raise RuntimeError(f"ONNX and torch disagree by {difference:.2g}: export refused")
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    card = {
        **card,
        "onnx_max_abs_diff": difference,
        "tensors_sha256": tensors_digest({k: v.numpy() for k, v in tensors.items()}),
        "onnx_sha256": hashlib.sha256(onnx).hexdigest(),
    }
    write_atomic(out / linereader.WEIGHTS_FILE, lambda tmp: save_file(tensors, tmp))

    def write_onnx(tmp: str) -> None:
        Path(tmp).write_bytes(onnx)

    write_atomic(out / linereader.ONNX_FILE, write_onnx)
    write_json(out / linereader.CARD_FILE, card)
    return card


def validate(
    model: Any, images: np.ndarray, labels: np.ndarray, strings: int, pages: int, seed: int
) -> dict[str, float]:
    """Exact-string accuracy on MNIST *test* digits: ``strings`` composed as in training (2 to
    5 digits, augmented) and ``pages`` touching pages cut by the pipeline, each page's blobs
    read left to right and joined."""
    rng = np.random.default_rng(seed)
    held_out = composed_samples(images, labels, strings, rng, None, 0.0)

    def read(blobs: list[np.ndarray]) -> list[str]:
        frames = torch_frames(model, [linereader.to_line_input(blob) for blob in blobs])
        return ["".join(str(d[0]) for d in linereader.greedy_decode(f)) for f in frames]

    return {
        "composed_strings": strings,
        "composed_exact": string_accuracy(model, held_out),
        "touching_pages": pages,
        "touching_pages_exact": page_accuracy(read, images, labels, pages, seed + 1),
    }


def line_card(config: LineTrainConfig, **facts: Any) -> dict[str, Any]:
    """The reader's card: what it reads, how it was trained, how well it reads."""
    return {
        "kind": "digitrec line reader (CRNN + CTC)",
        "input_height": linereader.LINE_HEIGHT,
        "stride": linereader.STRIDE,
        "num_classes": linereader.NUM_CLASSES,
        "classes": ["blank", *[str(d) for d in range(10)]],
        "training": asdict(config),
        **facts,
    }


def train_line_reader(
    out_dir: str | Path,
    config: LineTrainConfig | None = None,
    data_dir: str | Path | None = None,
    on_progress: Callable[[dict[str, float]], None] | None = None,
) -> dict[str, Any]:
    """Build the data, train, validate on MNIST test digits, save; returns the card."""
    import torch

    from digitrec import data

    config = config or LineTrainConfig()
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    start = time.perf_counter()
    mnist = data.load("mnist", data_dir=data_dir)
    samples = make_samples(mnist.train_images, mnist.train_labels, config, _fashion(data_dir))
    built = time.perf_counter()
    model = create_line_model(config.channels, config.hidden)
    losses = train_steps(model, samples, config, on_progress)
    trained = time.perf_counter()
    model.eval()
    strings, pages = min(1000, config.composed), min(300, config.pipeline)
    validation = validate(
        model, mnist.test_images, mnist.test_labels, strings, pages, config.seed + 1
    )
    card = line_card(
        config,
        samples=len(samples),
        seconds={"data": round(built - start, 1), "training": round(trained - built, 1)},
        final_loss=float(np.mean(losses[-100:])),
        validation=validation,
        dataset_sha256=dict(mnist.sha256),
    )
    rng = np.random.default_rng(config.seed)
    check = composed_samples(mnist.test_images[:100], mnist.test_labels[:100], 32, rng)
    return save_line_reader(out_dir, model, card, [line for line, _ in check])


def _fashion(data_dir: str | Path | None) -> np.ndarray | None:
    """Fashion-MNIST's training images when they can be had; the glyphs stand in otherwise."""
    from digitrec import data

    try:
        return data.load("fashion-mnist", data_dir=data_dir).train_images
    except data.DataError:
        return None
