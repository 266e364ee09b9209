"""The line reader: its input normalisation, CTC decoding and spans, a short training run that
must learn, ONNX against torch, and the bundled reader on touching digits it never saw."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from digitrec import linereader
from digitrec.checkpoint import ModelError
from digitrec.linereader import BLANK, LINE_HEIGHT, MARGIN, STRIDE


def test_a_blob_is_scaled_to_the_line_height_inside_a_margin():
    ink = np.zeros((64, 100), np.float32)
    ink[:, 10:20] = 1.0  # a bar 10 px wide of full ink
    line = linereader.to_line_input(ink)
    # 64 px -> 28 px (32 less two margins of 2): scale 7/16; 100 px wide -> 44, +4 margin = 48.
    assert line.shape == (LINE_HEIGHT, 48) and line.dtype == np.float32
    assert line.min() >= 0.0 and line.max() <= 1.0
    assert not line[:MARGIN].any() and not line[-MARGIN:].any() and not line[:, :MARGIN].any()
    # The bar lands at columns 2 + 10 * 7/16 .. 2 + 20 * 7/16, i.e. about 6.4 .. 10.8.
    columns = np.flatnonzero(line.max(axis=0) > 0.5)
    assert columns[0] in (6, 7) and columns[-1] in (9, 10)
    assert np.array_equal(linereader.to_line_input(ink), line)  # pure: same in, same out


def test_wide_blobs_are_squeezed_and_widths_are_whole_frames():
    assert linereader.to_line_input(np.ones((10, 1000), np.float32)).shape == (32, 256)
    assert linereader.to_line_input(np.ones((50, 51), np.float32)).shape[1] % STRIDE == 0
    empty = linereader.to_line_input(np.zeros((0, 0), np.float32))
    assert empty.shape[0] == LINE_HEIGHT and empty.shape[1] % STRIDE == 0 and not empty.any()


def _frames(best: list[int], sure: float = 0.9) -> np.ndarray:
    """(T, 11) probabilities whose most likely class per frame is ``best``."""
    frames = np.full((len(best), 11), (1.0 - sure) / 10, np.float32)
    frames[np.arange(len(best)), best] = sure
    return frames


def test_greedy_decoding_collapses_repeats_and_drops_blanks():
    # Classes per frame: -, 3, 3, -, 3, 5, 5, -: digit 2, blank, digit 2 again, digit 4.
    frames = _frames([BLANK, 3, 3, BLANK, 3, 5, 5, BLANK])
    frames[2, 3] = 0.95  # the run's best frame gives the digit's confidence
    assert linereader.greedy_decode(frames) == [
        (2, pytest.approx(0.95), 1, 2),
        (2, pytest.approx(0.9), 4, 4),
        (4, pytest.approx(0.9), 5, 6),
    ]
    assert linereader.greedy_decode(_frames([BLANK] * 5)) == []


def test_spans_tile_the_blob_in_reading_order():
    shape = (40, 50)  # 40 px tall: scale 0.7, 50 px -> 35 + 4 = 39 -> 40 input columns
    assert linereader.input_geometry(shape)[2] == 40
    # Ten steps of four columns, each step STRIDE-wide frames: 40 / STRIDE frames.
    per_step = 4 // STRIDE
    steps = [BLANK, 3, 3, BLANK, 3, 5, 5, BLANK, BLANK, BLANK]
    frames = _frames([label for label in steps for _ in range(per_step)])
    reading = linereader.reading(frames, shape)
    assert reading.text == "224"
    assert reading.confidence == pytest.approx(0.9 * 0.9 * 0.9)
    lefts = [left for _, _, left, _ in reading.digits]
    rights = [right for _, _, _, right in reading.digits]
    assert lefts[0] == 0 and rights[-1] == shape[1]
    assert lefts[1:] == rights[:-1]  # each digit reaches half-way to the next
    assert all(left < right for left, right in zip(lefts, rights, strict=True))
    # The first boundary lies half-way between step 2's end and step 4's start: step 3.5,
    # input column 14, ink column (14 - 2) / 0.7 = 17.
    assert rights[0] == 17


def test_an_empty_reading_is_as_sure_as_its_least_blank_frame():
    frames = _frames([BLANK] * 4)
    frames[2, BLANK] = 0.6
    reading = linereader.reading(frames, (32, 32))
    assert reading.digits == [] and reading.text == ""
    assert reading.confidence == pytest.approx(0.6)


@pytest.fixture(scope="module")
def samples(mnist):
    from digitrec import linereader_train as lt

    rng = np.random.default_rng(0)
    return lt.composed_samples(mnist.train_images[:500], mnist.train_labels[:500], 64, rng)


def test_a_few_training_steps_reduce_the_ctc_loss(samples):
    import torch

    from digitrec import linereader_train as lt

    torch.manual_seed(0)
    torch.set_num_threads(2)
    model = lt.create_line_model((8, 16, 24, 32), 32)
    config = lt.LineTrainConfig(steps=40, batch_size=16, learning_rate=3e-3)
    with torch.no_grad():
        model.eval()
        before = float(lt.ctc_loss(model, samples))
    lt.train_steps(model, samples, config)
    with torch.no_grad():
        model.eval()
        after = float(lt.ctc_loss(model, samples))
    assert np.isfinite(after) and after < 0.8 * before


def test_onnx_reads_what_torch_reads(samples, tmp_path):
    import torch

    from digitrec import linereader_train as lt

    torch.manual_seed(0)
    model = lt.create_line_model((8, 16, 24, 32), 32).eval()
    lines = [line for line, _ in samples[:6]]
    assert len({line.shape[1] for line in lines}) > 1  # the width axis really is dynamic
    onnx = lt.to_onnx_bytes(model)
    assert lt.onnx_difference(onnx, model, lines) < 1e-5


def test_inference_needs_no_torch():
    script = (
        "import sys; sys.modules['torch'] = None\n"
        "import numpy as np\n"
        "from digitrec.linereader import LineReader\n"
        "reader = LineReader.load()\n"
        "print(len(reader.read([np.ones((30, 60), np.float32), np.zeros((20, 10), np.float32)])))"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "2"


def test_the_bundled_reader_reads_touching_pages_of_unseen_digits(mnist):
    from digitrec import linereader_train as lt

    reader = linereader.LineReader.load()

    def read(blobs: list[np.ndarray]) -> list[str]:
        return [reading.text for reading in reader.read(blobs)]

    # The bundle reads about 90% of such pages exactly (its card: 300 pages); 40 pages give a
    # standard error near 5 points, so 70% (four of them below) fails only for a worse reader.
    accuracy = lt.page_accuracy(read, mnist.test_images, mnist.test_labels, 40, seed=7)
    assert accuracy >= 0.7


def test_blobs_of_one_line_join_at_their_origins():
    first, second = np.ones((4, 3), np.float32), np.full((2, 2), 0.5, np.float32)
    joined = linereader.joined_ink([first, second], [(10, 20), (15, 22)])
    assert joined.shape == (4, 7)  # columns 10..16, rows 20..23
    assert joined[:, :3].min() == 1.0 and not joined[:, 3:5].any()
    assert np.array_equal(joined[2:4, 5:7], second) and not joined[:2, 5:].any()


def test_train_reader_command_writes_a_reader_that_loads(tmp_path, data_cache, monkeypatch, capsys):
    from digitrec.cli import main

    monkeypatch.setenv("XDG_CACHE_HOME", str(data_cache.parent))
    out = tmp_path / "reader"
    code = main(["train-reader", "--out", str(out), "--steps", "3", "--samples", "24"])
    assert code == 0, capsys.readouterr().err
    assert "read exactly" in capsys.readouterr().out
    reader = linereader.LineReader.load(out)
    assert reader.card["training"]["steps"] == 3
    # A byte changed in the network is refused at load, not run.
    onnx = out / linereader.ONNX_FILE
    data = bytearray(onnx.read_bytes())
    data[len(data) // 2] ^= 0x01
    onnx.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="onnx_sha256"):
        linereader.LineReader.load(out)


def test_a_reader_made_for_another_frame_width_is_refused(tmp_path):
    # A reader whose frames span other columns would put every digit's box in the wrong place.
    bundled = linereader.bundled_line_reader()
    card = json.loads((bundled / linereader.CARD_FILE).read_text())
    assert card["stride"] == STRIDE
    (tmp_path / linereader.ONNX_FILE).write_bytes((bundled / linereader.ONNX_FILE).read_bytes())
    (tmp_path / linereader.CARD_FILE).write_text(json.dumps({**card, "stride": 2 * STRIDE}))
    with pytest.raises(ModelError, match="other inputs"):
        linereader.LineReader.load(tmp_path)
