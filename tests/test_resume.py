"""Resuming training: a run killed at any moment after its first checkpoint resumes to a valid
model, with its own settings; contradicting flags and damaged training states are refused in
one line; every atomic write reaches the disk before its rename."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from digitrec import checkpoint, data
from digitrec.cli import main
from digitrec.config import DataConfig, recipe
from digitrec.data import Split, make_splits
from digitrec.models import load_model
from digitrec.train import fit, resume_settings


@pytest.fixture(scope="module")
def small(mnist):
    splits = make_splits(mnist, DataConfig(subset=1500, validation_size=500))
    test = Split(splits.test.images[:500], splits.test.labels[:500])
    return dataclasses.replace(splits, test=test)


@pytest.fixture
def cached_data(data_cache, monkeypatch):
    """Commands run in this process find the test run's MNIST, and no user folder."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(data_cache.parent))
    monkeypatch.delenv("DIGITREC_DATA", raising=False)


class Stop(Exception):
    pass


def _stop_at(epoch: int, step: int):
    def on_progress(event):
        if event == {"event": "checkpoint", "epoch": epoch, "step": step}:
            raise Stop

    return on_progress


def test_a_run_stopped_between_epoch_ends_resumes_to_the_same_weights(small, tmp_path):
    # Trained without a single mid-epoch checkpoint: saving one changes nothing either.
    config = recipe("fast", epochs=2, batch_size=100, seed=3, checkpoint_every=7)
    whole = fit(dataclasses.replace(config, checkpoint_every=0), small, tmp_path / "whole")
    # 1,500 images in batches of 100: 15 steps an epoch; a checkpoint every 7 steps falls at
    # step 7 of epoch 1 (before any validation) and at step 6 of epoch 2 (global step 21).
    for epoch, step in [(1, 7), (2, 6)]:
        cut = tmp_path / f"cut-{epoch}"
        with pytest.raises(Stop):
            fit(config, small, cut, on_progress=_stop_at(epoch, step))
        assert not (cut / checkpoint.WEIGHTS_FILE).exists()
        events = []
        resumed = fit(config, small, cut, resume=True, on_progress=events.append)
        assert events[0]["message"] == f"continuing epoch {epoch} at step {step}"
        assert [h["epoch"] for h in resumed.history] == [1, 2]
        for key, value in whole.model.state_dict().items():
            assert torch.equal(value, resumed.model.state_dict()[key]), (epoch, key)
        totals = [(h["train_loss"], h["train_accuracy"]) for h in resumed.history]
        assert totals == [(h["train_loss"], h["train_accuracy"]) for h in whole.history]


def _train_command(out: Path, *flags: str) -> list[str]:
    return [sys.executable, "-m", "digitrec", "train", "--out", str(out), *flags]


def test_a_run_killed_at_a_random_moment_resumes_with_its_own_settings(mnist, data_cache, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "DIGITREC_DATA"}
    env["XDG_CACHE_HOME"] = str(data_cache.parent)
    run = tmp_path / "run"
    flags = ("--subset", "2048", "--batch-size", "32", "--epochs", "4", "--checkpoint-every", "20")
    process = subprocess.Popen(
        _train_command(run, *flags, "--threads", "1"),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    state = run / checkpoint.STATE_FILE
    deadline = time.monotonic() + 120
    while not state.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    delay = random.uniform(0.0, 0.5)  # anywhere after the first 20 steps, mid-write included
    time.sleep(delay)
    process.kill()  # SIGKILL: no handler runs, no file is closed cleanly
    assert process.wait() == -9, f"the run ended before the kill {delay:.2f}s after its state"
    assert not (run / checkpoint.WEIGHTS_FILE).exists()

    resumed = subprocess.run(
        [sys.executable, "-m", "digitrec", "train", "--resume", str(run), "--threads", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, (delay, resumed.stderr)
    assert "on 2048 mnist images" in resumed.stdout  # --subset taken from the run
    model, card = load_model(run)
    assert isinstance(card.metrics["test_accuracy"], float)
    assert 0.5 < card.metrics["test_accuracy"] <= 1.0
    assert (card.recipe["batch_size"], card.recipe["epochs"]) == (32, 4)
    history = json.loads((run / checkpoint.HISTORY_FILE).read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]


def _one_line_error(capsys) -> str:
    captured = capsys.readouterr()
    assert "training" not in captured.out, captured.out  # refused before any training line
    assert captured.err.startswith("digitrec: error:") and captured.err.count("\n") == 1
    return captured.err


def test_resume_refuses_flags_that_contradict_the_run(cached_data, tmp_path, capsys):
    run = tmp_path / "run"
    flags = ["--subset", "512", "--epochs", "0.5", "--batch-size", "64"]
    assert main(["train", "--out", str(run), *flags]) == 0
    capsys.readouterr()
    contradictions = [
        ["--dataset", "fashion-mnist"],
        ["--subset", "1024"],
        ["--epochs", "1"],
        ["--recipe", "accurate"],
        ["--seed", "1"],
        ["--batch-size", "128"],
        ["--out", str(tmp_path / "elsewhere")],
    ]
    for given in contradictions:
        assert main(["train", "--resume", str(run), *given]) == 1, given
        err = _one_line_error(capsys)
        assert given[0] in err, err
    # Flags that agree, and how often to save, are accepted.
    agreeing = [
        "--dataset",
        "mnist",
        "--subset",
        "512",
        "--recipe",
        "fast",
        "--checkpoint-every",
        "9",
    ]
    assert main(["train", "--resume", str(run), *agreeing]) == 0


def test_resume_without_a_training_state_is_one_line_before_training(cached_data, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    for folder in (tmp_path / "empty", tmp_path / "missing"):
        assert main(["train", "--resume", str(folder)]) == 1
        assert "no training state to resume from" in _one_line_error(capsys)


def test_resume_continues_on_the_dataset_the_run_trained_on(
    mnist, cached_data, tmp_path, monkeypatch, capsys
):
    # Stand-in Fashion-MNIST (MNIST's pixels under its name and classes), so the test needs
    # no second download: what matters is which dataset the resumed run asks for.
    fashion = dataclasses.replace(
        mnist, name="fashion-mnist", classes=data.get_spec("fashion-mnist").classes
    )
    asked = []

    def load(name, **kwargs):
        asked.append(name)
        return fashion if name == "fashion-mnist" else mnist

    monkeypatch.setattr(data, "load", load)
    run = tmp_path / "run"
    flags = ["--dataset", "fashion-mnist", "--subset", "512", "--epochs", "0.5"]
    assert main(["train", "--out", str(run), *flags]) == 0
    config, data_config, recipe_name = resume_settings(run)
    assert (data_config.dataset, data_config.subset, recipe_name) == ("fashion-mnist", 512, "fast")
    assert main(["train", "--resume", str(run)]) == 0
    assert asked == ["fashion-mnist", "fashion-mnist"]
    assert "on 512 fashion-mnist images" in capsys.readouterr().out
    assert load_model(run)[1].classes[0] == "T-shirt/top"


def test_fit_refuses_a_state_saved_on_other_data(small, mnist, tmp_path):
    config = recipe("fast", epochs=1, batch_size=100, checkpoint_every=0)
    fit(config, small, tmp_path)
    other = make_splits(mnist, DataConfig(subset=1000, validation_size=500))
    with pytest.raises(checkpoint.ModelError, match="first 1500 images of mnist"):
        fit(config, other, tmp_path, resume=True)
    with pytest.raises(checkpoint.ModelError, match="learning_rate"):
        fit(dataclasses.replace(config, learning_rate=1e-3), small, tmp_path, resume=True)


@pytest.fixture(scope="module")
def state_file(small, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("state")
    with pytest.raises(Stop):
        config = recipe("fast", epochs=1, batch_size=100, checkpoint_every=5)
        fit(config, small, run, on_progress=_stop_at(1, 10))
    return run / checkpoint.STATE_FILE


def _header_size(blob: bytes) -> int:
    return 8 + int.from_bytes(blob[:8], "little")


def test_a_damaged_training_state_is_refused_in_one_line(state_file, capsys):
    blob = state_file.read_bytes()
    header = _header_size(blob)
    damaged = {
        "a bit of a tensor": (header + (len(blob) - header) // 2, 0x04),
        "a bit of the bookkeeping": (blob.index(b'epoch\\": 0') + 9, 0x01),  # 0 -> 1
        "the header's length": (1, 0x40),
    }
    for what, (offset, bit) in damaged.items():
        copy = bytearray(blob)
        copy[offset] ^= bit
        state_file.write_bytes(bytes(copy))
        with pytest.raises(checkpoint.ModelError):
            checkpoint.load_state(state_file)
        assert main(["train", "--resume", str(state_file.parent)]) == 1, what
        _one_line_error(capsys)
    state_file.write_bytes(blob[: len(blob) // 2])  # cut short
    assert main(["train", "--resume", str(state_file.parent)]) == 1
    _one_line_error(capsys)
    state_file.write_bytes(blob)


def test_no_flipped_bit_anywhere_in_a_training_state_goes_unnoticed(state_file, tmp_path):
    blob = state_file.read_bytes()
    tensors, state = checkpoint.load_state(state_file)
    rng = random.Random(0)
    header = _header_size(blob)
    offsets = rng.sample(range(header), 150) + rng.sample(range(header, len(blob)), 150)
    for offset in offsets:
        copy = bytearray(blob)
        copy[offset] ^= 1 << rng.randrange(8)
        path = tmp_path / checkpoint.STATE_FILE
        path.write_bytes(bytes(copy))
        try:
            got_tensors, got_state = checkpoint.load_state(path)
        except checkpoint.ModelError:
            continue
        # Accepted only if the flip changed nothing that is read back.
        assert got_state == state, offset
        assert all(torch.equal(got_tensors[k], tensors[k]) for k in tensors), offset


def test_every_atomic_write_reaches_the_disk_before_its_rename(tmp_path, monkeypatch):
    calls = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        calls.append(("fsync", "folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"))
        real_fsync(fd)

    def replace(source, target):
        calls.append(("replace", os.path.basename(target)))
        real_replace(source, target)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    checkpoint.write_json(tmp_path / "model.json", {"version": 1})
    # The data first, then the rename, then the folder that records the rename.
    assert calls == [("fsync", "file"), ("replace", "model.json"), ("fsync", "folder")]
    calls.clear()
    data._write_atomic(tmp_path / "cache" / "labels", b"\x00" * 8)  # the dataset cache's writer
    assert calls == [("fsync", "file"), ("replace", "labels"), ("fsync", "folder")]
    assert (tmp_path / "cache" / "labels").read_bytes() == b"\x00" * 8
