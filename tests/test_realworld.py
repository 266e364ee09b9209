"""The real-world set: deterministic, labelled like a person reads it, scored per kind."""

from __future__ import annotations

import json

from digitrec import realworld, synth
from digitrec.cli import main
from digitrec.recognize import Recognizer


def test_the_set_is_deterministic_and_labelled(mnist, tmp_path):
    first = realworld.make_set(mnist.test_images, mnist.test_labels, per_kind=2, seed=3)
    again = realworld.make_set(mnist.test_images, mnist.test_labels, per_kind=2, seed=3)
    assert [item.data for item in first] == [item.data for item in again]
    assert [item.kind for item in first] == [kind for kind in synth.KINDS for _ in range(2)]
    for item in first:
        if item.kind == "blank":
            assert item.label == ""
        elif item.kind == "row":
            assert 2 <= len(item.label) <= 5 and item.label.isdigit()
        else:
            assert len(item.label) == 1 and item.label.isdigit()
    paths = realworld.write_set(first, tmp_path)
    assert len(paths) == len(first) and all(path.stat().st_size > 0 for path in paths)
    assert paths[0].name.startswith("paper-00000-")


def test_score_counts_whole_numbers_per_kind(mnist, tiny_run):
    items = realworld.make_set(
        mnist.test_images, mnist.test_labels, per_kind=4, kinds=("paper", "blank")
    )
    report = realworld.score(Recognizer.load(tiny_run.run_dir), items)
    assert report["images"] == 8
    assert set(report["per_kind"]) == {"paper", "blank"}
    # A blank page is never read as a digit; a trained model reads most clean paper digits.
    assert report["per_kind"]["blank"]["accuracy"] == 1.0
    assert report["per_kind"]["paper"]["correct"] >= 3
    assert report["files_per_second"] > 0
    assert "all" in realworld.table(report)


def test_bench_realworld_writes_its_json(mnist, data_cache, tiny_run, monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(data_cache.parent))
    out = tmp_path / "realworld.json"
    code = main(["bench", "realworld", "--model", str(tiny_run.run_dir), "--per-kind", "1",
                 "--out", str(out), "--write", str(tmp_path / "files")])  # fmt: skip
    assert code == 0
    report = json.loads(out.read_text())
    assert report["images"] == len(synth.KINDS)
    assert set(report["per_kind"]) == set(synth.KINDS)
    assert len(list((tmp_path / "files").iterdir())) == len(synth.KINDS)


def test_bench_realworld_kinds(mnist, data_cache, tiny_run, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(data_cache.parent))
    out = tmp_path / "realworld.json"
    code = main(["bench", "realworld", "--model", str(tiny_run.run_dir), "--per-kind", "2",
                 "--kinds", "paper,blank", "--out", str(out)])  # fmt: skip
    assert code == 0
    report = json.loads(out.read_text())
    assert report["images"] == 4 and set(report["per_kind"]) == {"paper", "blank"}
    assert main(["bench", "realworld", "--kinds", "paper,napkin"]) == 2
    assert "unknown: napkin" in capsys.readouterr().err
