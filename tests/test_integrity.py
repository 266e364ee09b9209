"""Whole-model integrity: the digest in a model card covers the card as well as the weights, the
card's values are checked when a model loads, and a damaged model is refused in one line, never
used. The bundled model is the subject: no training needed."""

from __future__ import annotations

import json
import math
import random
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from digitrec import checkpoint, recognize
from digitrec.checkpoint import ModelError
from digitrec.cli import main
from digitrec.recognize import Recognizer

BUNDLED = Path(recognize.__file__).parent / "pretrained"
IMAGE = Path(__file__).resolve().parents[1] / "examples" / "04-canvas-3.png"


@pytest.fixture
def weights(tmp_path) -> Path:
    """A copy of the bundled weights file alone, with no model.json beside it."""
    path = tmp_path / "bundled.safetensors"
    shutil.copy(BUNDLED / "model.safetensors", path)
    return path


def _card_text(path: Path) -> str:
    with safe_open(str(path), framework="numpy") as f:
        return f.metadata()["digitrec_card"]


def _rewrite_card(path: Path, change: Callable[[dict], None]) -> None:
    """Change the card in the file's metadata, tensors kept, its digests left as they were."""
    card = json.loads(_card_text(path))
    change(card)
    save_file(load_file(str(path)), str(path), metadata={"digitrec_card": json.dumps(card)})


def _reseal(path: Path, change: Callable[[dict, dict], None]) -> None:
    """Change the card (and tensors), with digests that match: as if it had been trained so."""
    card, arrays = json.loads(_card_text(path)), load_file(str(path))
    change(card, arrays)
    card = checkpoint.seal_card(card, checkpoint.tensors_digest(arrays))
    save_file(arrays, str(path), metadata={"digitrec_card": json.dumps(card)})


def _refused(path: Path, capsys, match: str | None = None) -> None:
    """Refused by the Python API and, in one line, by `digitrec recognize --model PATH`."""
    with pytest.raises(ModelError, match=match):
        Recognizer.load(path)
    assert main(["recognize", "--model", str(path), str(IMAGE)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("digitrec: error:") and captured.err.count("\n") == 1


def test_the_bundled_model_is_sealed_and_its_onnx_export_still_matches():
    card = json.loads(_card_text(BUNDLED / "model.safetensors"))
    assert card["model_sha256"] == checkpoint.card_digest(card)
    readable = json.loads((BUNDLED / "model.json").read_text())
    assert readable["model_sha256"] == card["model_sha256"]
    torch_model = Recognizer.load(None, backend="torch")
    # The ONNX export was made from these very weights: `tensors_sha256` still ties them.
    onnx_model = Recognizer.load(None, backend="onnx")
    assert onnx_model.card.tensors_sha256 == card["tensors_sha256"]
    assert torch_model.recognize(IMAGE).number == onnx_model.recognize(IMAGE).number == "3"


def test_one_changed_digit_of_the_temperature_is_refused(weights, capsys):
    def change(card):
        digits = repr(card["temperature"])
        card["temperature"] = float(digits[:-1] + ("1" if digits[-1] != "1" else "2"))

    _rewrite_card(weights, change)
    _refused(weights, capsys, "does not match its model_sha256")


def test_a_card_edited_beside_its_weights_is_refused(tmp_path, capsys):
    for name in ("model.safetensors", "model.json"):
        shutil.copy(BUNDLED / name, tmp_path / name)
    readable = json.loads((tmp_path / "model.json").read_text())
    readable["model_sha256"] = "0" * 64
    (tmp_path / "model.json").write_text(json.dumps(readable))
    _refused(tmp_path, capsys, "describes another model card")


def test_a_card_without_its_digest_is_refused(weights, capsys):
    _rewrite_card(weights, lambda card: card.pop("model_sha256"))
    _refused(weights, capsys, "no model_sha256 digest")


def _header_end(blob: bytes) -> int:
    return 8 + int.from_bytes(blob[:8], "little")


def test_one_flipped_bit_in_the_weights_card_or_header_is_refused(weights, capsys):
    blob = weights.read_bytes()
    temperature = repr(json.loads(_card_text(weights))["temperature"]).encode()
    places = {
        "a weight": (_header_end(blob) + 1000, 0x01),
        "the temperature": (blob.index(temperature) + 5, 0x01),  # one digit, one bit
        "a tensor's end in the header": (blob.index(b'"data_offsets":[0,') + 18, 0x01),
        "the header's length": (0, 0x10),
    }
    for offset, bit in places.values():
        damaged = bytearray(blob)
        damaged[offset] ^= bit
        weights.write_bytes(bytes(damaged))
        _refused(weights, capsys)


def test_no_flipped_bit_anywhere_goes_unnoticed(weights, tmp_path):
    blob = weights.read_bytes()
    arrays, card = checkpoint.read_weights(weights)
    rng = random.Random(0)
    end = _header_end(blob)
    offsets = rng.sample(range(end), 200) + rng.sample(range(end, len(blob)), 100)
    for offset in offsets:
        damaged = bytearray(blob)
        damaged[offset] ^= 1 << rng.randrange(8)
        path = tmp_path / "damaged.safetensors"
        path.write_bytes(bytes(damaged))
        try:
            got_arrays, got_card = checkpoint.read_weights(path)
        except ModelError:
            continue
        # Accepted only if the flip changed nothing that is read back.
        assert got_card == card, offset
        assert all(np.array_equal(got_arrays[k], arrays[k]) for k in arrays), offset


def _set(section: str | None, key: str, value) -> Callable[[dict, dict], None]:
    def change(card, arrays):
        (card[section] if section else card)[key] = value

    return change


def _set_std(value) -> Callable[[dict, dict], None]:
    def change(card, arrays):
        card["input"]["standardise"]["std"] = value

    return change


@pytest.mark.parametrize(
    "change, match",
    [
        (_set(None, "temperature", 0), "temperature 0"),
        (_set(None, "temperature", -0.5), "temperature -0.5"),
        (_set(None, "temperature", math.inf), "temperature inf"),
        (_set(None, "temperature", "0.46"), "temperature '0.46'"),
        (_set(None, "classes", [str(d) for d in range(9)]), "9 classes for a model with 10"),
        (_set(None, "classes", ["0", "1", "2", "3", "4", "5", "6", "7", "8", "8"]), "distinct"),
        (_set(None, "classes", [True, False] * 5), "distinct names or numbers"),
        (_set_std(0.0), "standardisation"),
        (_set_std(math.nan), "standardisation"),
    ],
)
def test_a_card_with_unusable_values_is_refused_at_load(weights, capsys, change, match):
    _reseal(weights, change)
    _refused(weights, capsys, match)


def test_weights_holding_nan_are_refused(weights, capsys):
    def poison(card, arrays):
        name = sorted(k for k in arrays if arrays[k].dtype.kind == "f")[0]
        arrays[name] = arrays[name].copy()
        arrays[name].flat[0] = np.nan

    _reseal(weights, poison)
    _refused(weights, capsys, "NaN or infinite")


def test_check_finite_keeps_nan_and_inf_out_of_every_answer():
    fine = np.full((2, 10), 0.1, dtype=np.float32)
    assert checkpoint.check_finite(fine, "model") is fine
    for bad in (np.nan, np.inf, -np.inf):
        probabilities = fine.copy()
        probabilities[1, 3] = bad
        with pytest.raises(ModelError, match="model: the model gave NaN or infinite"):
            checkpoint.check_finite(probabilities, "model")
