"""The training benchmark on a tiny budget: every recipe runs a few steps and learns, and the
JSON has its schema. Timings are never asserted here; `make bench` reports them."""

from __future__ import annotations

import dataclasses
import json

import pytest

from digitrec.bench import training as bench
from digitrec.cli import main
from digitrec.config import DataConfig, recipe
from digitrec.data import Split, make_splits
from digitrec.train import fit


@pytest.fixture(scope="module")
def small(mnist):
    splits = make_splits(mnist, DataConfig(subset=1200, validation_size=500))
    # 2,000 test digits measure "learns" well enough and keep the wide nets' evaluations short.
    return dataclasses.replace(
        splits, test=Split(splits.test.images[:2000], splits.test.labels[:2000])
    )


@pytest.mark.parametrize(
    "name",
    [
        "fast",
        "fast-long",
        "accurate",
        "ensemble",
        "robust",
        "article",
        "reference-pytorch",
        "reference-keras",
    ],
)
def test_every_recipe_runs_a_few_steps_and_learns(name, small, tmp_path):
    # Two passes over 1,200 images (38 steps): enough for the heavily augmented recipes too.
    config = recipe(name, epochs=2, batch_size=64)
    if config.members > 1:
        config = recipe(
            name, epochs=2, batch_size=64, members=2, model_args={"widths": (16, 32, 64)}
        )
    result = fit(config, small, tmp_path / name, recipe_name=name)
    # Chance is 10%; a few steps of any working recipe is well above it.
    assert result.card["metrics"]["test_accuracy"] > 0.3
    assert result.card["recipe_name"] == name


def test_time_to_reads_the_curve():
    curve = [[1.0, 0.97, 0.25], [2.0, 0.991, 0.5], [3.0, 0.996, 1.0]]
    assert bench.time_to(curve, 0.990) == 2.0
    assert bench.time_to(curve, 0.995) == 3.0
    assert bench.time_to(curve, 0.999) is None


def test_benchmark_json_has_its_schema(
    mnist, data_cache, monkeypatch, tmp_path, capsys, short_evaluations
):
    monkeypatch.setenv("XDG_CACHE_HOME", str(data_cache.parent))
    out, plot = tmp_path / "bench.json", tmp_path / "bench.png"
    code = main(
        [
            "bench",
            "train",
            "--recipes",
            "fast,reference-keras",
            "--seeds",
            "2",
            "--subset",
            "1000",
            "--max-epochs",
            "0.5",
            "--out",
            str(out),
            "--plot",
            str(plot),
        ]
    )
    assert code == 3  # half an epoch on 1,000 images: the fast recipe's targets are missed
    report = json.loads(out.read_text())
    assert {"machine", "recipes"} <= set(report)
    assert report["machine"]["cpu_count"] >= 1
    assert set(report["recipes"]) == {"fast", "reference-keras"}
    for entry in report["recipes"].values():
        assert entry["params"] > 0
        assert len(entry["seeds"]) == 2
        assert entry["curve"] and all(len(point) == 3 for point in entry["curve"])
        seconds = [point[0] for point in entry["curve"]]
        assert seconds == sorted(seconds)
        for key in ("time_to_99_0_s", "time_to_99_5_s", "final_test_accuracy"):
            assert key in entry
            assert entry[key] is None or entry[key] >= 0
    # `fast` is evaluated four times in its (capped) epoch, the references once.
    assert len(report["recipes"]["fast"]["curve"]) == 4
    assert len(report["recipes"]["reference-keras"]["curve"]) == 1
    assert plot.stat().st_size > 1000
    assert [(t["recipe"], t["accuracy"], t["met"]) for t in report["targets"]] == [
        ("fast", 0.990, False)
    ]
    printed = capsys.readouterr().out
    assert "fast is" in printed and "target fast 99.00% within 2.5s: MISSED" in printed


def test_targets_need_every_seed_in_time():
    def entry(*curves):
        return {"seeds": [{"curve": curve} for curve in curves]}

    quick = [[1.0, 0.985, 0.25], [2.0, 0.991, 0.5], [9.0, 0.996, 2.0]]
    late = [[1.0, 0.985, 0.25], [3.0, 0.991, 0.5], [9.0, 0.996, 2.0]]
    report = {
        "recipes": {
            "fast": entry(quick, quick),
            "fast-long": entry(quick),
            "reference-keras": entry(quick),
        }
    }
    assert [t["met"] for t in bench.targets(report)] == [True, True]
    report["recipes"]["fast"] = entry(quick, late)
    report["targets"] = first, second = bench.targets(report)
    assert not first["met"] and first["times"] == [2.0, 3.0] and second["met"]
    assert "MISSED (2 of 2 seeds reached it, in 2.0-3.0s)" in bench.targets_table(report)


def test_on_a_gpu_fast_is_set_beside_the_record_and_the_cpu_targets_do_not_apply():
    curve = [[0.4, 0.985, 0.25], [0.9, 0.9912, 0.5]]
    report = {
        "device": "cuda",
        "machine": {"cuda": "Some GPU"},
        "recipes": {
            "fast": {
                "seeds": [{"curve": curve}],
                "time_to_99_0_s": 0.9,
                "final_test_accuracy": 0.9912,
            }
        },
    }
    assert bench.targets(report) == []
    comparison = bench.gpu_comparison(report)
    assert comparison["time_to_99_0_s"] == 0.9 and comparison["record"]["seconds"] == 0.76
    assert bench.gpu_line(comparison) == (
        "fast on Some GPU: 99.0% in 0.90s; published record: 99.04% in 0.76s on a GTX 1660 Ti"
    )
    report["device"] = "cpu"
    assert bench.gpu_comparison(report) is None
    assert [t["met"] for t in bench.targets(report)] == [True]


def test_the_ensemble_benchmarks_its_vote(
    mnist, data_cache, monkeypatch, tmp_path, short_evaluations
):
    monkeypatch.setenv("XDG_CACHE_HOME", str(data_cache.parent))
    out = tmp_path / "bench.json"
    code = main(
        [
            "bench",
            "train",
            "--recipes",
            "ensemble",
            "--seeds",
            "1",
            "--subset",
            "600",
            "--max-epochs",
            "0.5",
            "--out",
            str(out),
        ]
    )
    assert code == 3
    entry = json.loads(out.read_text())["recipes"]["ensemble"]
    ((seconds, accuracy, _),) = entry["curve"]
    assert seconds > 0 and 0.0 <= accuracy <= 1.0 and entry["final_test_accuracy"] == accuracy


def test_a_spent_budget_ends_the_run_at_the_next_evaluation(small):
    # A budget of 0 s is spent by the first evaluation: the run stops there, with one point.
    run = bench.bench_recipe("fast", small, seed=0, budget_s=0.0, max_epochs=1)
    # The first of four evaluations in the epoch (at a whole step, so near a quarter).
    assert len(run["curve"]) == 1 and 0 < run["epochs"] <= 1 / bench.EVALS_PER_EPOCH["fast"]
    whole = bench.bench_recipe("fast", small, seed=0, budget_s=None, max_epochs=1)
    assert len(whole["curve"]) == bench.EVALS_PER_EPOCH["fast"]
