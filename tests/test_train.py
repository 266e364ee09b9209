"""Training: a short run learns, its files reload to the same predictions, runs are
deterministic, and an interrupted run resumes to exactly where an uninterrupted one ends."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from digitrec import checkpoint, config, train
from digitrec.config import AugmentConfig, DataConfig, recipe, to_dict, train_config_from_dict
from digitrec.data import make_splits
from digitrec.evaluate import evaluate_split, predict_logits
from digitrec.models import load_model
from digitrec.train import fit


def test_a_short_run_on_a_small_subset_beats_90_percent_on_held_out_digits(tiny_run, splits):
    assert len(splits.train) == 6000
    assert tiny_run.card["metrics"]["test_accuracy"] > 0.90
    assert tiny_run.card["metrics"]["validation_accuracy"] > 0.90
    assert [h["epoch"] for h in tiny_run.history] == [1, 2]


def test_the_run_directory_describes_the_run(tiny_run):
    run = tiny_run.run_dir
    for name in ("model.safetensors", "model.json", "history.json"):
        assert (run / name).is_file()
    card = json.loads((run / "model.json").read_text())
    assert card["model"] == "fastcnn"
    assert card["recipe_name"] == "fast"
    assert card["dataset"]["name"] == "mnist"
    assert card["dataset"]["sha256"]["train-images"].startswith("ba891046")
    assert card["input"]["standardise"]["mean"] == pytest.approx(0.1307)
    assert train_config_from_dict(card["recipe"]) == recipe("fast", epochs=2, seed=0)
    assert 0 < card["metrics"]["test_accuracy"] <= 1
    assert "created" in card
    assert len(json.loads((run / "history.json").read_text())) == 2
    assert not list(run.glob("*.tmp"))  # atomic writes leave no temp files


def test_save_then_load_gives_the_same_predictions(tiny_run, splits):
    loaded, card = load_model(tiny_run.run_dir)
    images = splits.test.images[:500]
    with torch.no_grad():
        before = predict_logits(tiny_run.model, images) / card.temperature
        after = predict_logits(loaded, images)
    assert torch.allclose(before, after, atol=1e-5)


def test_a_run_whose_weights_were_altered_is_refused(tiny_run, tmp_path):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(tiny_run.run_dir, copy)
    blob = bytearray((copy / "model.safetensors").read_bytes())
    blob[-10] ^= 0x55
    (copy / "model.safetensors").write_bytes(bytes(blob))
    with pytest.raises(checkpoint.ModelError, match="model.safetensors"):
        load_model(copy)


@pytest.fixture(scope="module")
def small(mnist):
    return make_splits(mnist, DataConfig(subset=1500, validation_size=500))


def _weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_training_is_deterministic_for_a_seed(small, tmp_path):
    config = recipe("fast", epochs=1, batch_size=100, seed=5)
    a = fit(config, small, tmp_path / "a")
    b = fit(config, small, tmp_path / "b")
    c = fit(recipe("fast", epochs=1, batch_size=100, seed=6), small, tmp_path / "c")
    wa, wb, wc = _weights(a.model), _weights(b.model), _weights(c.model)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)


def test_augmentation_stops_after_its_share_of_the_steps(small, tmp_path, monkeypatch):
    augmented = []
    real = train.augment
    monkeypatch.setattr(train, "augment", lambda x, *a: augmented.append(len(x)) or real(x, *a))
    shifts = AugmentConfig(enabled=True, translate=0.08, until=0.6)
    # 1,500 images in batches of 100: 15 steps an epoch, 30 in all; 60% is all of epoch 1 and
    # the first 3 steps of epoch 2.
    fit(recipe("fast", epochs=2, batch_size=100, augment=shifts), small, tmp_path / "a")
    assert augmented == [100] * 18
    # Augmenting none of the steps trains exactly the model that no augmentation does.
    none = fit(
        recipe("fast", epochs=1, batch_size=100, augment=dataclasses.replace(shifts, until=0.0)),
        small,
        tmp_path / "b",
    )
    off = fit(recipe("fast", epochs=1, batch_size=100), small, tmp_path / "c")
    assert len(augmented) == 18
    wn, wo = _weights(none.model), _weights(off.model)
    assert all(torch.equal(wn[k], wo[k]) for k in wn)


class Interrupt(Exception):
    pass


def test_an_interrupted_run_resumes_to_the_same_weights(small, tmp_path):
    config = recipe("fast", epochs=3, batch_size=100, seed=1)
    whole = fit(config, small, tmp_path / "whole")

    def stop_after_epoch_2(event):
        if event["event"] == "epoch" and event["epoch"] == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        fit(config, small, tmp_path / "cut", on_progress=stop_after_epoch_2)
    assert (tmp_path / "cut" / checkpoint.STATE_FILE).is_file()
    assert not (tmp_path / "cut" / checkpoint.WEIGHTS_FILE).exists()
    resumed = fit(config, small, tmp_path / "cut", resume=True)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    w1, w2 = _weights(whole.model), _weights(resumed.model)
    assert all(torch.allclose(w1[k].float(), w2[k].float()) for k in w1)
    assert evaluate_split(resumed.model, small.test)["accuracy"] == pytest.approx(
        evaluate_split(whole.model, small.test)["accuracy"]
    )


def test_a_failed_write_leaves_the_previous_file_intact(tmp_path):
    target = tmp_path / "model.json"
    checkpoint.write_json(target, {"version": 1})

    def broken(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write("{half a fi")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        checkpoint.write_atomic(target, broken)
    assert json.loads(target.read_text()) == {"version": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["model.json"]


def test_recipes_round_trip_through_json():
    for name in ("article", "fast", "accurate", "ensemble", "robust"):
        config = recipe(name)
        assert train_config_from_dict(json.loads(json.dumps(to_dict(config)))) == config


def test_card_records_the_command_that_reproduces_a_named_recipe(splits):
    from digitrec.config import recipe
    from digitrec.train import reproduce_command

    command = reproduce_command(recipe("fast", seed=3), "fast", splits)
    assert command == "digitrec train --recipe fast --seed 3 --subset 6000"
    # A recipe with overridden fields is recorded in full in the card instead.
    assert reproduce_command(recipe("fast", seed=3, epochs=2), "fast", splits) is None


def test_a_device_this_machine_lacks_is_refused_before_any_data_moves(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert config.check_device("cpu") == "cpu"
    refused = [
        ("cuda", "no CUDA GPU"),
        ("cuda:1", "no CUDA GPU"),
        ("gpu", "unknown device 'gpu'"),
        ("cuda:x", "unknown device"),
    ]
    for device, reason in refused:
        with pytest.raises(config.DeviceError, match=reason):
            config.check_device(device)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert config.check_device("cuda:0") == "cuda:0"
    with pytest.raises(config.DeviceError, match="has 1 CUDA GPU"):
        config.check_device("cuda:1")
