"""The command line: instant help, the article's sentence, the JSON contract and bad files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from digitrec.cli import main

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_help_is_instant_and_does_not_import_torch():
    code = (
        "import sys, contextlib, io\n"
        "from digitrec.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        "    try: main(['--help'])\n"
        "    except SystemExit: pass\n"
        "print('torch' in sys.modules, 'recognize' in out.getvalue())\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "True"]
    module = subprocess.run(
        [sys.executable, "-m", "digitrec", "--help"], capture_output=True, text=True
    )
    assert module.returncode == 0 and "train" in module.stdout


def test_summary_shows_the_articles_parameter_counts(capsys):
    assert main(["summary", "mlp"]) == 0
    out = capsys.readouterr().out
    for count in ("100,480", "1,290", "101,770"):
        assert count in out


@pytest.fixture
def inputs(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    good = sorted(p for p in EXAMPLES.iterdir() if "-row-" not in p.name)[:3]
    (folder / "empty.png").write_bytes(b"")
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    return [str(p) for p in good] + [str(folder / "empty.png"), str(folder / "corrupt.jpg")]


def test_recognize_json_keeps_order_schema_and_reports_bad_files(tiny_run, inputs, capsys):
    code = main(["recognize", *inputs, "--model", str(tiny_run.run_dir), "--json"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 2  # some inputs could not be read
    assert [line["path"] for line in lines] == inputs
    for line in lines[:3]:
        assert set(line) == {"path", "number", "text", "lines", "digits"}
        assert line["number"] == "".join(str(d["digit"]) for d in line["digits"])
        for digit in line["digits"]:
            assert 0 <= digit["digit"] <= 9
            assert len(digit["probabilities"]) == 10
            assert sum(digit["probabilities"]) == pytest.approx(1.0, abs=1e-4)
            assert digit["confidence"] == pytest.approx(max(digit["probabilities"]), abs=1e-6)
    for line in lines[3:]:
        assert set(line) == {"path", "error"}
        assert "\n" not in line["error"] and line["error"]
    assert "empty" in lines[3]["error"]


def test_recognize_text_is_the_articles_sentence_and_exit_0_when_all_read(
    tiny_run, tmp_path, capsys
):
    import numpy as np

    from digitrec.synth import draw_digit, encode_format

    path = tmp_path / "seven.png"
    data, _ = encode_format(
        draw_digit(7, np.random.default_rng(1)), "png8", np.random.default_rng(2)
    )
    path.write_bytes(data)
    plot = tmp_path / "plot.png"
    code = main(["recognize", str(path), "--model", str(tiny_run.run_dir), "--plot", str(plot)])
    out = capsys.readouterr().out
    assert code == 0
    assert out.startswith("seven.png: The number is probably a ")
    assert plot.is_file() and plot.stat().st_size > 1000


def test_a_missing_model_is_a_one_line_error(tmp_path, capsys):
    code = main(["recognize", str(EXAMPLES), "--model", str(tmp_path / "nowhere")])
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("digitrec: error:") and err.count("\n") == 1


def test_training_on_a_gpu_this_machine_lacks_is_a_one_line_error(
    data_cache, monkeypatch, tmp_path, capsys
):
    monkeypatch.setenv("XDG_CACHE_HOME", str(data_cache.parent))
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    for command in (
        ["train", "--out", str(tmp_path / "run")],
        ["bench", "train", "--out", str(tmp_path / "bench.json")],
    ):
        code = main([*command, "--device", "cuda", "--subset", "100"])
        err = capsys.readouterr().err
        assert code == 1
        assert (
            err.startswith("digitrec: error: device 'cuda': no CUDA GPU") and err.count("\n") == 1
        )
    assert not list(tmp_path.iterdir())  # nothing written


def test_evaluate_of_several_runs_tests_their_vote(
    tiny_run, splits, data_cache, monkeypatch, tmp_path, capsys
):
    from digitrec.checkpoint import ModelCard
    from digitrec.config import recipe
    from digitrec.models import load_model
    from digitrec.train import fit, predict_logits

    monkeypatch.setenv("XDG_CACHE_HOME", str(data_cache.parent))
    other = fit(recipe("fast", epochs=1, seed=1), splits, tmp_path / "other").run_dir
    runs = [str(tiny_run.run_dir), str(other)]
    assert main(["evaluate", *runs, "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    # The vote is the mean of the two runs' calibrated probabilities.
    models = [load_model(run)[0] for run in runs]
    mean = sum(predict_logits(m, splits.test.images).softmax(1) for m in models) / 2
    expected = (mean.argmax(1) == splits.test.labels).float().mean().item()
    assert results["test"]["accuracy"] == pytest.approx(expected, abs=1e-6)
    assert [r["run"] for r in results["runs"]] == runs
    assert results["runs"][0]["test_accuracy"] == pytest.approx(
        tiny_run.card["metrics"]["test_accuracy"], abs=1e-6
    )
    assert main(["evaluate", *runs, "--report", str(tmp_path / "report")]) == 2
    assert "--report takes one run" in capsys.readouterr().err
    # Runs on different datasets cannot vote: their classes mean different things.
    fashion = {**tiny_run.card, "dataset": {**tiny_run.card["dataset"], "name": "fashion"}}
    cards = dict(zip(runs, map(ModelCard.from_dict, [tiny_run.card, fashion]), strict=True))
    monkeypatch.setattr("digitrec.evaluate.load_model", lambda run: (models[0], cards[run]))
    assert main(["evaluate", *runs]) == 1
    assert "a vote needs runs trained on one dataset, not fashion and mnist" in (
        capsys.readouterr().err
    )


def test_evaluate_json_reports_three_splits_and_a_verdict(
    tiny_run, data_cache, monkeypatch, capsys
):
    monkeypatch.setenv("XDG_CACHE_HOME", str(data_cache.parent))
    assert main(["evaluate", str(tiny_run.run_dir), "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert results["test"]["accuracy"] == pytest.approx(
        tiny_run.card["metrics"]["test_accuracy"], abs=1e-6
    )
    assert {"train", "validation", "test", "verdict"} <= set(results)
    assert isinstance(results["verdict"], str) and results["verdict"]


@pytest.mark.parametrize(
    "name", ["mlp", "cnn", "fastcnn", "wide", "kernelnet", "pytorch-example", "keras-convnet"]
)
def test_every_registered_model_trains_through_the_model_option(
    name, mnist, data_cache, monkeypatch, tmp_path, capsys, short_evaluations
):
    from safetensors import safe_open

    from digitrec.config import recipe
    from digitrec.models import list_models

    assert name in list_models()
    monkeypatch.setenv("XDG_CACHE_HOME", str(data_cache.parent))
    out = tmp_path / "run"
    # 256 images at the fast recipe's batch of 128 and half an epoch: one step.
    code = main(["train", "--model", name, "--subset", "256", "--epochs", "0.5", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    with safe_open(str(out / "model.safetensors"), framework="numpy") as f:
        card = json.loads(f.metadata()["digitrec_card"])
    assert card["model"] == name
    # The recipe's widths belong to its own model; any other model keeps its own defaults.
    own = name == recipe("fast").model
    expected = {"widths": list(recipe("fast").model_args["widths"])} if own else {}
    assert card["model_args"] == expected


def test_all_registered_models_are_covered_by_the_training_test():
    from digitrec.models import list_models

    marks = test_every_registered_model_trains_through_the_model_option.pytestmark
    assert set(marks[0].args[1]) == set(list_models())


def test_model_args_given_with_another_model_are_kept():
    from digitrec.config import recipe

    assert recipe("fast", model="cnn").model_args == {}
    assert recipe("fast", model="fastcnn").model_args == {"widths": (16, 32, 48, 64)}
    assert recipe("fast", model="cnn", model_args={"widths": (8, 8, 8)}).model_args == {
        "widths": (8, 8, 8)
    }


@pytest.mark.parametrize(
    ("accuracies", "start"),
    [
        ((0.95, 0.95, 0.95), "underfitting"),
        ((1.0, 0.98, 0.98), "overfitting"),
        ((0.995, 0.9926, 0.995), "good fit"),
    ],
)
def test_fit_verdict_branches_and_the_spread_it_quotes(accuracies, start):
    from digitrec.evaluate import fit_verdict

    verdict = fit_verdict(*accuracies)
    assert verdict.startswith(start)
    if start == "good fit":
        spread = max(accuracies) - min(accuracies)  # validation is the outlier here
        assert f"within {spread:.2%}" in verdict


def test_version_and_help_examples(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith("digitrec ")
    for command in ("recognize", "serve", "train"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        out = capsys.readouterr().out
        assert "example:\n  digitrec " + command in out
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    help_text = capsys.readouterr().out
    for option in ("--backend", "--host", "--port"):
        line = help_text[help_text.index(option, help_text.index("options:")) :]
        assert len(line.split("\n")[0].split()) > 2 or line.split("\n")[1].startswith(" " * 20)


def test_errors_keep_the_path_and_drop_stray_quotes(tmp_path, capsys):
    missing = tmp_path / "some" / "dir" / "x.png"
    assert main(["recognize", str(missing)]) == 2
    assert capsys.readouterr().out.strip() == f"{missing}: error: file not found"
    assert main(["summary", "foo"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("digitrec: error: unknown model 'foo'") and '"' not in err


def test_a_folder_says_what_it_skipped_and_an_empty_one_is_an_error(tmp_path, capsys):
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "scan.pdf").write_bytes(b"%PDF-1.4")
    (folder / "drawing.svg").write_text("<svg/>")
    (folder / "notes.txt").write_text("hi")
    assert main(["recognize", str(folder)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 4  # three skipped files and "nothing to read"
    # Sorted by name, as the folder is read.
    assert "drawing.svg" in err[0] and "SVG" in err[0]
    assert "notes.txt" in err[1]
    assert "scan.pdf" in err[2] and "PDF" in err[2] and "PNG" in err[2]
    assert err[3].startswith("digitrec: error: nothing to read")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["recognize", str(empty)]) == 2
    assert "nothing to read" in capsys.readouterr().err


def test_stages_stay_inside_their_folder_one_per_file(tmp_path, capsys):
    image = (EXAMPLES / "04-canvas-3.png").read_bytes()
    inputs = tmp_path / "in"
    (inputs / "a").mkdir(parents=True)
    (inputs / "...png").write_bytes(image)  # its stem is ".."
    (inputs / "x.png").write_bytes(image)
    (inputs / "a" / "x.png").write_bytes(image)  # same stem as the one above
    stages = tmp_path / "out" / "stages"
    paths = [str(inputs / "...png"), str(inputs / "x.png"), str(inputs / "a" / "x.png")]
    assert main(["recognize", *paths, "--stages", str(stages)]) == 0
    folders = sorted(p for p in stages.iterdir())
    assert len(folders) == 3
    assert all(p.parent == stages and p.resolve().is_relative_to(stages.resolve()) for p in folders)
    assert all((p / "3-boxes.png").is_file() for p in folders)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["stages"]


def test_demo_runs_the_whole_pipeline(data_cache, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(data_cache.parent))
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--examples", str(EXAMPLES)]) == 0
    printed = capsys.readouterr().out
    steps = [line.split(" ", 1)[0] for line in printed.splitlines() if line[:1].isdigit()]
    assert steps == ["1/5", "2/5", "3/5", "4/5", "5/5"]
    examples = sorted(path.name for path in EXAMPLES.iterdir())
    answered = [line.strip().split(":", 1)[0] for line in printed.splitlines() if ": " in line]
    assert set(examples) <= set(answered)  # every example file gets its line
    for name in ("preview.png", "recognized.png", "run/model.safetensors"):
        assert (out / name).stat().st_size > 1000, name


def test_data_commands_describe_fetch_and_preview(mnist, data_cache, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(data_cache.parent))
    assert main(["data", "info"]) == 0
    info = capsys.readouterr().out
    assert "60000 training and 10000 test images" in info
    assert all(mnist.sha256[part] in info for part in ("train-images", "test-labels"))
    counts = info.split("train label counts:")[1].splitlines()[0].split()
    assert [int(n) for n in counts] == [int((mnist.train_labels == d).sum()) for d in range(10)]
    assert main(["data", "fetch"]) == 0
    assert capsys.readouterr().out.count("(from ") == 4
    preview = tmp_path / "preview.png"
    assert main(["data", "preview", "--out", str(preview)]) == 0
    assert preview.stat().st_size > 1000


def test_models_lists_every_registered_model_with_its_size(capsys):
    from digitrec.models import count_parameters, create_model, list_models

    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == list(list_models())
    mlp = next(line for line in lines if line.startswith("mlp "))
    assert f"{count_parameters(create_model('mlp')):,d} parameters" in mlp  # 101,770: the article's


def test_explain_command_writes_its_page(tiny_run, tmp_path, capsys):
    out = tmp_path / "explain"
    image = EXAMPLES / "04-canvas-3.png"
    assert main(["explain", str(image), "--model", str(tiny_run.run_dir), "--out", str(out)]) == 0
    assert (out / "explain.html").stat().st_size > 10_000
    assert "explain.html" in capsys.readouterr().out
