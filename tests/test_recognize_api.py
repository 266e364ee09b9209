"""The Python API and its two backends: torch-free ONNX path, bundled model, safe loading."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

from digitrec import checkpoint, recognize, synth
from digitrec.bench import realworld
from digitrec.checkpoint import ModelError
from digitrec.cli import main
from digitrec.recognize import Recognizer

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").iterdir())


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


def test_import_digitrec_imports_neither_torch_nor_matplotlib():
    done = _python(
        "import sys, digitrec\n"
        "assert digitrec.Recognizer and digitrec.ImageResult\n"
        "heavy = [m for m in ('torch', 'matplotlib') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    assert done.returncode == 0, done.stderr


def test_the_onnx_path_never_imports_torch_or_matplotlib(onnx_run):
    image = ROOT / "examples" / "01-paper-2.jpg"
    done = _python(
        "import sys, contextlib, io\n"
        "from digitrec import Recognizer\n"
        f"r = Recognizer.load({str(onnx_run / 'model.onnx')!r})\n"
        f"assert r.backend.name == 'onnx' and r.recognize({str(image)!r}).digits\n"
        "from digitrec.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        f"    code = main(['recognize', '--backend', 'onnx', '--model', {str(onnx_run)!r},\n"
        f"                 {str(image)!r}])\n"
        "assert code == 0 and 'The number is probably' in out.getvalue(), out.getvalue()\n"
        "heavy = [m for m in ('torch', 'matplotlib') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    assert done.returncode == 0, done.stderr


def _same_answers(first: list, second: list) -> None:
    for a, b in zip(first, second, strict=True):
        assert (a.number, a.error) == (b.number, b.error), a.path
        for x, y in zip(a.digits, b.digits, strict=True):
            assert x.box == y.box
            assert np.abs(np.subtract(x.probabilities, y.probabilities)).max() <= 2e-5


def test_onnx_and_torch_give_the_same_answers_on_real_world_images(onnx_run, mnist):
    onnx_reader = Recognizer.load(onnx_run / "model.onnx")
    torch_reader = Recognizer.load(onnx_run, backend="torch")
    assert (onnx_reader.backend.name, torch_reader.backend.name) == ("onnx", "torch")
    _same_answers(onnx_reader.recognize_many(EXAMPLES), torch_reader.recognize_many(EXAMPLES))
    items = realworld.make_set(mnist.test_images, mnist.test_labels, per_kind=2)
    files = [item.data for item in items]
    _same_answers(onnx_reader.recognize_many(files), torch_reader.recognize_many(files))


def test_the_bundled_model_reads_the_examples_through_both_backends():
    assert (recognize.BUNDLED_DIR / "model.safetensors").is_file()
    assert (recognize.BUNDLED_DIR / "model.onnx").is_file()
    default = Recognizer.load()  # the bundled model.onnx: no torch needed
    assert default.backend.name == "onnx"
    # The card states its benchmark figures: every kind the benchmark renders.
    assert set(default.card.data["realworld"]["per_kind"]) == set(synth.KINDS)
    assert default.card.metrics["test_accuracy"] > 0.99
    answers = default.recognize_many(EXAMPLES)
    _same_answers(answers, Recognizer.load(backend="torch").recognize_many(EXAMPLES))
    misses = []
    for path, answer in zip(EXAMPLES, answers, strict=True):
        # Examples are named after their answer: NN-KIND-LABEL, the label spelled for a file name.
        _, kind, label = path.stem.split("-", 2)
        expected = synth.label_from_file_name(label)
        assert answer.error is None
        if answer.full_text != expected:
            misses.append(kind)
        else:
            assert answer.number == expected.split("\n")[0]
    # The two kinds the README lists as short of their benchmark target may miss; no other.
    assert set(misses) <= {"touching", "notdigit"}, misses


def test_the_bundled_model_is_package_data():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "pretrained/*" in config["tool"]["setuptools"]["package-data"]["digitrec"]
    total = sum(p.stat().st_size for p in recognize.BUNDLED_DIR.iterdir())
    assert total < 5_000_000


def test_an_empty_bundle_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(recognize, "BUNDLED_DIR", tmp_path)
    with pytest.raises(ModelError, match="no bundled model"):
        Recognizer.load()
    assert main(["recognize", str(EXAMPLES[0])]) == 1
    assert "no bundled model" in capsys.readouterr().err


def test_a_bundle_without_onnx_runs_through_torch(onnx_run, tmp_path, monkeypatch):
    for name in ("model.safetensors", "model.json"):
        shutil.copy(onnx_run / name, tmp_path / name)
    monkeypatch.setattr(recognize, "BUNDLED_DIR", tmp_path)
    assert Recognizer.load().backend.name == "torch"
    with pytest.raises(ModelError, match="digitrec export"):
        Recognizer.load(backend="onnx")


def test_backend_choice(onnx_run, tiny_run):
    assert Recognizer.load(onnx_run, backend="onnx").backend.name == "onnx"  # RUN/model.onnx
    assert Recognizer.load(onnx_run).backend.name == "torch"  # weights prefer torch
    with pytest.raises(ModelError, match="--backend onnx"):
        Recognizer.load(onnx_run / "model.onnx", backend="torch")
    with pytest.raises(ModelError, match="digitrec export"):
        Recognizer.load(tiny_run.run_dir, backend="onnx")  # never exported
    with pytest.raises(ModelError, match="unknown backend"):
        Recognizer.load(onnx_run, backend="tensorflow")


def test_a_stale_export_beside_other_weights_is_refused(onnx_run, tmp_path):
    shutil.copy(recognize.bundled_model(), tmp_path / "model.safetensors")
    shutil.copy(onnx_run / "model.onnx", tmp_path / "model.onnx")
    with pytest.raises(ModelError, match="other weights"):
        Recognizer.load(tmp_path, backend="onnx")


def test_recognize_json_is_the_same_through_onnx(onnx_run, capsys):
    image = str(ROOT / "examples" / "08-row-11865.png")
    assert main(["recognize", image, "--model", str(onnx_run), "--json"]) == 0
    through_torch = json.loads(capsys.readouterr().out)
    assert main(["recognize", image, "--model", str(onnx_run), "--backend", "onnx", "--json"]) == 0
    through_onnx = json.loads(capsys.readouterr().out)
    assert through_onnx["number"] == through_torch["number"]
    assert set(through_onnx) == {"path", "number", "text", "lines", "digits"}


# Safe loading: safetensors and JSON only, every check refusing with a one-line reason.


def _copy_run(source: Path, folder: Path) -> Path:
    for name in ("model.safetensors", "model.json"):
        shutil.copy(source / name, folder / name)
    return folder


def test_loading_never_unpickles(tiny_run, monkeypatch):
    import pickle

    import torch

    def refuse(*args, **kwargs):
        raise AssertionError("a pickle was loaded")

    for module, name in ((pickle, "load"), (pickle, "loads"), (torch, "load")):
        monkeypatch.setattr(module, name, refuse)
    assert Recognizer.load(tiny_run.run_dir, backend="torch").recognize(EXAMPLES[0]).digits


def test_a_pickle_posing_as_weights_is_refused(tiny_run, tmp_path):
    import torch

    torch.save({"weights": torch.zeros(3)}, tmp_path / "model.safetensors")
    with pytest.raises(ModelError, match="not a readable safetensors file"):
        Recognizer.load(tmp_path, backend="torch")


def test_weights_that_fail_their_digest_are_refused(tiny_run, tmp_path):
    run = _copy_run(tiny_run.run_dir, tmp_path)
    data = bytearray((run / "model.safetensors").read_bytes())
    data[-100] ^= 0xFF  # a flipped byte in the last tensor
    (run / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(ModelError, match="do not match the digest"):
        Recognizer.load(run, backend="torch")


def test_weights_of_the_wrong_shape_are_refused(tiny_run, tmp_path):
    arrays, card = checkpoint.read_weights(tiny_run.run_dir)
    import torch

    state = {k: torch.from_numpy(np.array(v)) for k, v in arrays.items()}
    state["classifier.weight"] = state["classifier.weight"][:, :-1]  # (10, C - 1): digest is fine
    card = {k: v for k, v in card.items() if k != "tensors_sha256"}
    checkpoint.save_run(tmp_path, state, card)
    with pytest.raises(ModelError, match="weights do not fit the model"):
        Recognizer.load(tmp_path, backend="torch")


def test_a_card_without_digest_or_a_mismatched_model_json_is_refused(tiny_run, tmp_path):
    run = _copy_run(tiny_run.run_dir, tmp_path)
    card = json.loads((run / "model.json").read_text())
    card["tensors_sha256"] = "0" * 64
    (run / "model.json").write_text(json.dumps(card))
    with pytest.raises(ModelError, match="describes other weights"):
        Recognizer.load(run, backend="torch")
    (run / "model.json").write_text("{not json")
    with pytest.raises(ModelError, match="not a readable JSON model card"):
        Recognizer.load(run, backend="torch")

    from safetensors.numpy import load_file, save_file

    (run / "model.json").unlink()
    arrays = load_file(str(run / "model.safetensors"))
    del card["tensors_sha256"]
    save_file(arrays, str(run / "model.safetensors"), metadata={"digitrec_card": json.dumps(card)})
    with pytest.raises(ModelError, match="no tensors_sha256"):
        Recognizer.load(run, backend="torch")


def _tampered_onnx(source: Path, target: Path, change) -> Path:
    import onnx

    model = onnx.load(str(source))
    change(model)
    onnx.save(model, str(target))
    return target


def test_an_onnx_file_altered_after_export_is_refused(onnx_run, tmp_path):
    from onnx import numpy_helper

    def edit_card(model):
        for entry in model.metadata_props:
            if entry.key == "digitrec_card":
                card = json.loads(entry.value)
                card["metrics"]["test_accuracy"] = 1.0
                entry.value = json.dumps(card)

    def edit_weights(model):
        largest = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))
        values = numpy_helper.to_array(largest) * 1.5
        largest.CopyFrom(numpy_helper.from_array(values.astype(np.float32), largest.name))

    def drop_check(model):
        kept = [e for e in model.metadata_props if e.key != "digitrec_check"]
        del model.metadata_props[:]
        model.metadata_props.extend(kept)

    source = onnx_run / "model.onnx"
    cases = {
        "card": (edit_card, "altered after export"),
        "weights": (edit_weights, "no longer gives the answers"),
        "check": (drop_check, "without its digitrec self-check"),
    }
    for name, (change, message) in cases.items():
        path = _tampered_onnx(source, tmp_path / f"{name}.onnx", change)
        with pytest.raises(ModelError, match=message):
            Recognizer.load(path)
    (tmp_path / "junk.onnx").write_bytes(b"not an onnx file")
    with pytest.raises(ModelError, match="not a usable ONNX model"):
        Recognizer.load(tmp_path / "junk.onnx")


def test_a_batch_read_on_threads_matches_one_file_at_a_time(mnist, tmp_path):
    # Enough files for extract_many to use its worker threads, with bad ones in the middle:
    # every file keeps its own answer, in order, and the bad ones their own error.
    # The kinds of one digit or one row on a plain page, which nearly always read right.
    items = realworld.make_set(
        mnist.test_images, mnist.test_labels, per_kind=2, seed=3, kinds=synth.PLAIN_KINDS
    )
    paths = [str(p) for p in realworld.write_set(items, tmp_path / "set")]
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.jpg").write_bytes(b"not a jpeg at all")
    paths[3:3] = [str(tmp_path / "empty.png"), str(tmp_path / "text.jpg")]
    recognizer = Recognizer.load(None, backend="onnx")
    together = recognizer.recognize_many(paths)
    alone = [recognizer.recognize(path) for path in paths]
    assert [r.path for r in together] == paths
    assert [r.to_dict() for r in together] == [r.to_dict() for r in alone]
    assert together[3].error and together[4].error and together[5].error is None
    read = together[:3] + together[5:]
    right = sum(r.full_text == item.label for r, item in zip(read, items, strict=True))
    assert right >= 0.9 * len(items)
