"""The `digitrec` command line: a thin layer over the library.

Heavy libraries (torch, matplotlib) are imported inside the commands that need them, so
`digitrec --help` is instant.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "examples"


def _print(*args: Any, **kwargs: Any) -> None:
    print(*args, **kwargs, flush=True)


class ProgressBar:
    """Renders training events as one updating line per epoch on stderr."""

    def __init__(self, stream=None, width: int = 30) -> None:
        self.stream = stream or sys.stderr
        self.width = width
        self.interactive = self.stream.isatty()

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event["event"]
        if kind == "step":
            if not self.interactive and event["step"] != event["steps"]:
                return
            done = int(self.width * event["step"] / event["steps"])
            bar = "#" * done + "." * (self.width - done)
            self.stream.write(
                f"\repoch {event['epoch']}/{event['epochs']} [{bar}] {event['step']}/"
                f"{event['steps']} loss {event['loss']:.4f} acc {event['accuracy']:.4f}"
            )
            self.stream.flush()
        elif kind == "epoch":
            self.stream.write(
                f"  val_loss {event['validation_loss']:.4f} val_acc "
                f"{event['validation_accuracy']:.4f} ({event['train_seconds']:.1f}s)\n"
            )
        elif kind == "member":
            self.stream.write(
                f"ensemble member {event['index']}/{event['of']} {event['model_args']}\n"
            )
        elif kind == "prepare":
            self.stream.write(f"{event['message']}\n")
        elif kind in ("resume", "warning"):
            self.stream.write(f"{kind}: {event.get('message', event.get('epoch'))}\n")
        self.stream.flush()


def _data_config(args: argparse.Namespace):
    from digitrec.config import DataConfig

    return DataConfig(dataset=args.dataset, data_dir=args.data_dir)


def cmd_data(args: argparse.Namespace) -> int:
    from digitrec import data

    if args.action == "fetch":
        paths, sources = data.fetch(args.dataset, data_dir=args.data_dir)
        for part in data.PARTS:
            _print(f"{part:13s} {paths[part]}  (from {sources[part]})")
        return 0
    dataset = data.load(args.dataset, data_dir=args.data_dir)
    if args.action == "info":
        _print(
            f"dataset {dataset.name}: {len(dataset.train_labels)} training and "
            f"{len(dataset.test_labels)} test images of {dataset.train_images.shape[1:]} pixels"
        )
        for part in data.PARTS:
            _print(f"  {part:13s} sha256 {dataset.sha256[part]}")
            _print(f"  {'':13s} {dataset.paths[part]} (from {dataset.sources[part]})")
        import numpy as np

        _print(
            "  train label counts:",
            " ".join(map(str, np.bincount(dataset.train_labels, minlength=10))),
        )
        _print(
            "  test label counts: ",
            " ".join(map(str, np.bincount(dataset.test_labels, minlength=10))),
        )
        return 0
    from digitrec import figures

    path = figures.preview(
        dataset.train_images, dataset.train_labels, dataset.classes, args.out, seed=args.seed
    )
    _print(f"preview: {path}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from digitrec.models import count_parameters, create_model, list_models

    for name, description in list_models().items():
        params = count_parameters(create_model(name))
        _print(f"{name:16s} {params:>10,d} parameters  {description}")
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    from digitrec.models import count_parameters, create_model, layer_table

    model = create_model(args.name)
    _print(f"{args.name}: {type(model).__name__}")
    _print(f"{'layer':24s} {'type':14s} {'parameters':>12s}")
    for name, kind, params in layer_table(model):
        _print(f"{name:24s} {kind:14s} {params:>12,d}")
    _print(f"{'(output)':24s} {'Softmax':14s} {0:>12,d}")
    _print(f"total parameters: {count_parameters(model):,d}")
    return 0


def _train_settings(args: argparse.Namespace):
    """(config, data config, recipe name, run folder) from the flags, or from the run's saved
    state with --resume, where a flag given must agree with it."""
    from digitrec.checkpoint import ModelError
    from digitrec.config import DataConfig, recipe
    from digitrec.train import resume_settings

    values = dict(
        model=args.model,
        epochs=args.epochs,
        batch_size=args.batch_size,
        seed=args.seed,
        learning_rate=args.learning_rate,
        threads=args.threads,
        device=args.device,
        checkpoint_every=args.checkpoint_every,
    )
    if args.resume:
        out = Path(args.resume)
        if args.out and Path(args.out) != out:
            raise ModelError(f"--resume continues in {out}; --out {args.out} names another folder")
        config, data_config, recipe_name = resume_settings(
            out, args.recipe, args.dataset, args.subset, **values
        )
        return config, data_config, recipe_name, out
    recipe_name = args.recipe or "fast"
    config = recipe(recipe_name, **values)
    data_config = DataConfig(dataset=args.dataset or "mnist", subset=args.subset)
    return (
        config,
        data_config,
        recipe_name,
        Path(args.out or f"runs/{recipe_name}-{config.model}-s{config.seed}"),
    )


def cmd_train(args: argparse.Namespace) -> int:
    from digitrec import data, distributed
    from digitrec.data import make_splits
    from digitrec.train import fit

    # Under torchrun every process runs this command; rank 0 alone prints and writes.
    world = distributed.world_from_env()
    config, data_config, recipe_name, out = _train_settings(args)
    dataset = data.load(data_config.dataset, data_dir=args.data_dir)
    splits = make_splits(dataset, data_config, config.device)
    if world.is_main:
        processes = f" on {world.world_size} processes" if world.is_distributed else ""
        _print(
            f"training {config.model} ({recipe_name or 'no'} recipe) on {len(splits.train)} "
            f"{dataset.name} images{processes}, validating on {len(splits.validation)} "
            f"-> {out}"
        )
    try:
        with distributed.process_group(world, config.device, args.timeout):
            result = fit(
                config,
                splits,
                out,
                recipe_name=recipe_name,
                on_progress=ProgressBar(),
                resume=bool(args.resume),
                world=world,
                parallel_members=args.parallel_members,
            )
    except distributed.CollectiveTimeout as error:
        print(f"digitrec: error: {error}", file=sys.stderr)
        return 1
    if not world.is_main:
        return 0
    m = result.card["metrics"]
    _print(
        f"test accuracy {m['test_accuracy']:.4f}, test loss {m['test_loss']:.4f}, "
        f"{m['train_seconds']:.1f}s of training; saved {out}/model.safetensors"
    )
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from digitrec.evaluate import evaluate_runs

    if len(args.runs) > 1 and args.report:
        print("digitrec: error: --report takes one run", file=sys.stderr)
        return 2
    run = evaluate_runs(args.runs, args.data_dir)
    results = run.results
    if args.report:
        from digitrec.report import write_report

        results["report"] = str(
            write_report(args.runs[0], run.model, run.card, run.splits, args.report)
        )
    if args.json:
        _print(json.dumps(results, indent=2))
        return 0
    for entry in results.get("runs", []):
        _print(f"{entry['run']}: test accuracy {entry['test_accuracy']:.4f}")
    if len(args.runs) > 1:
        _print(f"the vote of these {len(args.runs)} runs:")
    for split in ("train", "validation", "test"):
        r = results[split]
        _print(f"{split:10s} loss {r['loss']:.4f}  accuracy {r['accuracy']:.4f}")
    _print(results["verdict"])
    if args.report:
        _print(f"report: {results['report']}")
    return 0


def cmd_recognize(args: argparse.Namespace) -> int:
    from digitrec.recognize import Recognizer, scan_paths

    if args.plot:
        require("matplotlib")  # before any work: not after every file has been read
    paths, skipped = scan_paths(args.paths)
    for path, why in skipped:
        print(f"digitrec: skipped {path}: {why}", file=sys.stderr)
    if not paths:
        print(
            f"digitrec: error: nothing to read in {' '.join(args.paths)}: no image files "
            "(PNG, JPEG, GIF, BMP, TIFF, WebP, PNM)",
            file=sys.stderr,
        )
        return 2
    recognizer = Recognizer.load(args.model, backend=args.backend)
    store = _feedback_store(args.feedback_db) if args.ask else None
    # With --stages, files go in small batches whose pictures are written and dropped at once,
    # so memory does not grow with the number of files.
    batch = STAGES_BATCH if args.stages else max(len(paths), 1)
    results = []
    for first in range(0, len(paths), batch):
        chunk = paths[first : first + batch]
        stages = [{} for _ in chunk] if args.stages else None
        chunk_results = recognizer.recognize_many(chunk, stages=stages)
        for result in chunk_results:
            _print(result.to_json() if args.json else result.text())
            if store is not None and not _ask_feedback(store, recognizer, result):
                store = None  # the input ended: read the rest without asking
        if args.stages:
            _write_stages(args.stages, first, chunk, stages)
        results.extend(chunk_results)
    if args.stages and not args.json:
        _print(f"stages: {args.stages}")
    if args.plot:
        _plot_results(results, args.plot)
        if not args.json:
            _print(f"plot: {args.plot}")
    return 2 if any(r.error for r in results) else 0


STAGES_BATCH = 16


def _write_stages(root: str, first: int, paths: list[str], stages: list[dict]) -> None:
    from digitrec.preprocess import save_stages, stages_folder

    for offset, (path, stage) in enumerate(zip(paths, stages, strict=True)):
        if stage:
            save_stages(stage, stages_folder(root, first + offset, path))


def _plot_results(results, path) -> Path:
    """Each file's answer over the digits as the model saw them (28x28 each, side by side)."""
    import numpy as np

    from digitrec import figures

    images, titles = [], []
    for result in results:
        images.append(np.hstack([d.image for d in result.digits]) if result.digits else None)
        answer = result.full_text.replace("\n", " / ") if result.full_text else None
        titles.append("error" if result.error else f"probably {answer}" if answer else "no digit")
    return figures.recognition_plot(images, titles, path)


def cmd_demo(args: argparse.Namespace) -> int:
    """The main job: fetch, preview, train, evaluate, recognize the bundled examples."""
    from digitrec import data, figures
    from digitrec.config import DataConfig, recipe
    from digitrec.data import make_splits
    from digitrec.evaluate import evaluate_run
    from digitrec.recognize import Recognizer, expand_paths
    from digitrec.train import fit

    out = Path(args.out)
    started = time.perf_counter()
    _print("1/5 data: fetching and verifying MNIST")
    dataset = data.load("mnist", data_dir=args.data_dir)
    for part in data.PARTS:
        digest, source = dataset.sha256[part][:16], dataset.sources[part]
        _print(f"    {part:13s} ok  sha256 {digest}...  from {source}")
    shapes = f"train {dataset.train_images.shape}, test {dataset.test_images.shape}"
    _print(f"    {shapes}, uint8 -> scaled 0..1")
    preview = figures.preview(
        dataset.train_images, dataset.train_labels, dataset.classes, out / "preview.png"
    )
    _print(f"2/5 preview: {preview}")
    config = recipe("fast", seed=args.seed)
    splits = make_splits(dataset, DataConfig())
    epochs = f"{config.epochs:g} epoch{'' if config.epochs == 1 else 's'}"
    _print(f"3/5 train: {config.model} ({epochs}, batch {config.batch_size})")
    result = fit(config, splits, out / "run", recipe_name="fast", on_progress=ProgressBar())
    _print("4/5 evaluate:")
    from digitrec.models import load_model

    model, _ = load_model(out / "run")
    results = evaluate_run(model, splits)
    for split in ("train", "validation", "test"):
        r = results[split]
        _print(f"    {split:10s} accuracy {r['accuracy']:.4f}  loss {r['loss']:.4f}")
    _print(f"    {results['verdict']}")
    examples = Path(args.examples)
    shown = os.path.relpath(examples) if examples.resolve().is_relative_to(Path.cwd()) else examples
    _print(f"5/5 recognize: {shown}/")
    recognizer = Recognizer.load(out / "run")
    answers = recognizer.recognize_many(expand_paths([examples]))
    for answer in answers:
        _print(f"    {answer.text()}")
    plot = _plot_results(answers, out / "recognized.png")
    _print(
        f"\ndone in {time.perf_counter() - started:.0f}s: test accuracy "
        f"{result.card['metrics']['test_accuracy']:.2%} after "
        f"{result.card['metrics']['train_seconds']:.1f}s of training"
    )
    _print(f"figures: {preview}, {plot}")
    _print(f"model:   {out / 'run' / 'model.safetensors'} (+ model.json, history.json)")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from digitrec.bench.commands import run

    return run(args)


def cmd_export(args: argparse.Namespace) -> int:
    from digitrec.export import PARITY_TOLERANCE, export_onnx

    result = export_onnx(args.run, args.out, data_dir=args.data_dir)
    _print(
        f"exported {result['path']} ({result['bytes']:,d} bytes, opset {result['opset']}, "
        f"dynamic batch, softmax included, model card in its metadata)"
    )
    _print(
        f"parity with PyTorch on {result['parity_images']} MNIST test digits: max |p_onnx - "
        f"p_torch| = {result['max_abs_diff']:.2e} (limit {PARITY_TOLERANCE:.0e}), labels identical"
    )
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from digitrec import explain

    if args.lines:
        path = explain.explain_lines(Path(args.out), data_dir=args.data_dir, show=args.show)
    else:
        if not args.image:
            raise FileNotFoundError("explain needs an IMAGE (or --lines)")
        path = explain.explain_image(args.image, args.model, Path(args.out), show=args.show)
    _print(f"explanation: {path}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from digitrec.serve import ServeConfig, run_server

    try:
        config = ServeConfig(
            workers=args.workers, max_connections=args.max_connections, max_queue=args.max_queue
        )
    except ValueError as error:
        print(f"digitrec: error: {error}", file=sys.stderr)
        return 2
    run_server(
        config=config,
        model=args.model,
        backend=args.backend,
        host=args.host,
        port=args.port,
        cors_origins=args.cors_origin or [],
        admin_token=args.admin_token,
        feedback_db=args.feedback_db,
    )
    return 0


def cmd_feedback(args: argparse.Namespace) -> int:
    from digitrec import feedback

    with _feedback_store(args.feedback_db) as store:
        if args.action == "add":
            from digitrec.recognize import Recognizer

            recognizer = Recognizer.load(args.model, backend=args.backend)
            _print(f"stored {feedback.record(store, recognizer, args.image, args.label).summary()}")
        elif args.action == "list":
            records = store.latest(args.limit)
            table = [feedback.list_table(records)]
            for line in [json.dumps(r.to_dict()) for r in records] if args.json else table:
                _print(line)
        elif args.action == "stats":
            stats = store.stats()
            _print(json.dumps(stats.to_dict()) if args.json else feedback.stats_table(stats))
        elif args.action == "export":
            labels = feedback.export(store, args.dir)
            _print(f"exported {store.count()} records to {args.dir} (labels: {labels})")
        elif not store.delete(args.id):
            print(
                f"digitrec: error: no feedback record {args.id} in "
                f"{feedback.describe(store.location)}",
                file=sys.stderr,
            )
            return 1
        else:
            _print(f"deleted feedback record {args.id}")
    return 0


def _feedback_store(location: str | None):
    from digitrec.feedback import open_store

    return open_store(location)


def _ask_feedback(store, recognizer, result) -> bool:
    """Ask whether ``result`` is right; store the answer confirmed or the number typed. False
    when the input has ended (nothing more will be asked)."""
    from digitrec import feedback, preprocess

    if result.error is not None:
        return True
    while True:
        print(
            "right? [Enter = yes, or type the right number] ", end="", file=sys.stderr, flush=True
        )
        line = sys.stdin.readline()
        if not line:
            print(file=sys.stderr)
            return False
        label = line.strip() or feedback.answer_of(result)
        if not label:
            return True  # no digit read and none typed: nothing to learn from
        try:
            saved = store.add(
                preprocess.read_bytes(result.path),
                label,
                result,
                feedback.weights_digest(recognizer.card),
            )
        except feedback.FeedbackError as error:
            print(f"  {error}", file=sys.stderr)
            continue
        except preprocess.ImageError as error:
            print(f"  not stored: {result.path}: {error}", file=sys.stderr)
            return True
        print(f"  stored {saved.summary()}", file=sys.stderr)
        return True


def cmd_train_reader(args: argparse.Namespace) -> int:
    """Train the line reader that reads touching digits, and save it (ONNX checked)."""
    import dataclasses

    from digitrec.linereader_train import LineTrainConfig, train_line_reader

    config = LineTrainConfig()
    settings = {"steps": args.steps, "seed": args.seed, "threads": args.threads}
    if args.samples is not None:
        settings.update(composed=args.samples, pipeline=args.samples)
    config = dataclasses.replace(config, **{k: v for k, v in settings.items() if v is not None})

    def show(event: dict) -> None:
        if event.get("step", 0) % 500 == 0:
            _print(f"step {event['step']}: CTC loss {event['loss']:.3f}", file=sys.stderr)

    card = train_line_reader(args.out, config, data_dir=args.data_dir, on_progress=show)
    checked = card["validation"]
    _print(
        f"line reader: {checked['composed_exact']:.1%} of {checked['composed_strings']} strings "
        f"of MNIST test digits and {checked['touching_pages_exact']:.1%} of "
        f"{checked['touching_pages']} touching pages read exactly; saved in {args.out}"
    )
    _print(f"to use it: copy {args.out}/linereader.* into {Path(__file__).parent / 'pretrained'}")
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    from dataclasses import fields

    from digitrec.feedback import describe
    from digitrec.finetune import FinetuneConfig, finetune, result_table

    require("torch")  # before the store is opened or created
    given = {f.name: getattr(args, f.name) for f in fields(FinetuneConfig)}
    config = FinetuneConfig(**{name: value for name, value in given.items() if value is not None})
    with _feedback_store(args.feedback) as store:
        _print(
            f"fine-tuning {args.model or 'the bundled model'} on the feedback in "
            f"{describe(store.location)} -> {args.out}"
        )
        result = finetune(args.model, store, args.out, config, data_dir=args.data_dir)
    _print(result_table(result))
    if not result.accepted:
        print(f"digitrec: refused: {result.reason}", file=sys.stderr)
        return 3
    _print(
        f"saved {Path(args.out) / 'model.safetensors'} (`digitrec export {args.out}` writes "
        "its ONNX file)"
    )
    return 0


EXAMPLES = """examples:
  digitrec recognize photo.jpg scans/          read every image; one answer per file
  digitrec recognize form.png --json --stages out/stages
  digitrec train --recipe fast                 99%+ on MNIST in seconds on a laptop CPU
  digitrec train --model cnn --epochs 2        any registered model (see `digitrec models`)
  digitrec evaluate runs/fast-fastcnn-s0 --report out/report
  digitrec export runs/fast-fastcnn-s0         ONNX, checked against PyTorch
  digitrec serve --port 8000                   REST API and a drawing page
"""


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as package_version

    try:
        return package_version("digitrec")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def _data_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="mnist", help="mnist or fashion-mnist")
    p.add_argument("--data-dir", help="folder with the four IDX files (default: $DIGITREC_DATA)")


def _model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="run directory, .safetensors or .onnx (default: bundled)")
    p.add_argument(
        "--backend",
        default="auto",
        choices=["auto", "torch", "onnx"],
        help="torch (needs digitrec[train]), onnx (ONNX Runtime, no torch), or "
        "auto: ONNX for the bundled model and .onnx files, else torch when "
        "installed",
    )


def _command(sub, name: str, func, help: str, example: str) -> argparse.ArgumentParser:
    p = sub.add_parser(
        name,
        help=help,
        description=help,
        epilog=f"example:\n  {example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.set_defaults(func=func)
    return p


def _add_data(sub) -> None:
    p = _command(
        sub,
        "data",
        cmd_data,
        "fetch, describe or preview the dataset",
        "digitrec data info --dataset fashion-mnist",
    )
    p.add_argument("action", choices=["fetch", "info", "preview"])
    _data_options(p)
    p.add_argument("--out", default="out/preview.png", help="preview PNG path")
    p.add_argument("--seed", type=int, default=0, help="which random digits to preview")


def _add_models(sub) -> None:
    _command(sub, "models", cmd_models, "list the registered models", "digitrec models")
    p = _command(
        sub,
        "summary",
        cmd_summary,
        "layers and parameter counts of a model",
        "digitrec summary mlp",
    )
    p.add_argument("name", help="a registered model name, e.g. mlp or cnn")


def _add_train(sub) -> None:
    p = _command(
        sub,
        "train",
        cmd_train,
        "train a model and save a run directory",
        "digitrec train --recipe fast --seed 1 --out runs/mine",
    )
    p.add_argument(
        "--recipe",
        help="fast, fast-long, accurate, ensemble, robust, article, reference-pytorch "
        "or reference-keras (default fast)",
    )
    p.add_argument(
        "--model",
        help="train this registered model instead of the recipe's, with "
        "its own default sizes (see `digitrec models`)",
    )
    p.add_argument("--epochs", type=float, help="override the recipe's epochs")
    p.add_argument("--batch-size", type=int, help="override the recipe's batch size")
    p.add_argument("--learning-rate", type=float, help="override the recipe's learning rate")
    p.add_argument("--seed", type=int, help="random seed (default 0; runs are deterministic)")
    p.add_argument("--threads", type=int, help="torch threads (default: all cores)")
    p.add_argument("--device", help="cpu or cuda (default cpu)")
    p.add_argument("--subset", type=int, help="train on the first N training images only")
    p.add_argument("--out", help="run directory (default runs/RECIPE-MODEL-sSEED)")
    p.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue an interrupted run with its own settings (flags given must agree with them)",
    )
    p.add_argument(
        "--checkpoint-every",
        type=int,
        metavar="STEPS",
        help="save the training state every STEPS steps as well as at each epoch's "
        "end (default 100; 0: epoch ends only)",
    )
    p.add_argument(
        "--parallel-members",
        action="store_true",
        help="under torchrun: train an ensemble's members one per process, not data-parallel",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=120.0,
        metavar="SECONDS",
        help="under torchrun: give up when the other processes do not answer for "
        "this long (default %(default)g)",
    )
    _data_options(p)
    p.set_defaults(dataset=None)  # default mnist; unset, so --resume can tell it was left out


def _add_evaluate(sub) -> None:
    p = _command(
        sub,
        "evaluate",
        cmd_evaluate,
        "test a trained run; --report writes an HTML report",
        "digitrec evaluate runs/fast-fastcnn-s0 --report out/report",
    )
    p.add_argument(
        "runs",
        nargs="+",
        metavar="run",
        help="run directory; several: test their vote (mean probability)",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--report", metavar="DIR", help="write report.html and figures here")
    p.add_argument("--data-dir", help="folder with the four IDX files")


def _add_recognize(sub) -> None:
    p = _command(
        sub,
        "recognize",
        cmd_recognize,
        "read the digits in image files or folders",
        "digitrec recognize examples/ --json",
    )
    p.add_argument("paths", nargs="+", help="image files or folders")
    _model_options(p)
    p.add_argument("--json", action="store_true", help="one JSON object per input")
    p.add_argument("--plot", metavar="FILE", help="draw each image with its answer")
    p.add_argument(
        "--stages",
        metavar="DIR",
        help="save each preprocessing step as a PNG, one folder per input file",
    )
    p.add_argument(
        "--ask",
        action="store_true",
        help="after each answer ask whether it is right (answers are read from "
        "standard input) and store the right number as feedback (see `digitrec "
        "feedback`)",
    )
    _feedback_db_option(p)


def _add_bench(sub) -> None:
    p = _command(
        sub,
        "bench",
        cmd_bench,
        "benchmarks: training time to accuracy, real-world reading, inference, "
        "serving, learning from corrections",
        "digitrec bench realworld --per-kind 20",
    )
    p.add_argument(
        "what",
        choices=["train", "realworld", "infer", "serve", "feedback"],
        help="what to benchmark",
    )
    p.add_argument(
        "--recipes",
        help="train: comma-separated recipes (default fast,fast-long,"
        "reference-pytorch,reference-keras; with --nproc: fast)",
    )
    p.add_argument("--seeds", type=int, default=3, help="seeds per recipe")
    p.add_argument("--out", help="JSON results file (default bench-WHAT.json)")
    p.add_argument(
        "--plot",
        metavar="FILE",
        help="train: time-versus-accuracy plot; feedback: error-versus-corrections plot (PNG)",
    )
    p.add_argument(
        "--model",
        help="realworld, serve: run directory or .onnx; infer, "
        "feedback: run directory or .safetensors (default: bundled)",
    )
    _bench_run_options(p)


def _bench_run_options(p: argparse.ArgumentParser) -> None:
    """The options of `digitrec bench` that only some benchmarks read."""
    p.add_argument("--batch", type=int, default=1024, help="infer: digits per model call")
    p.add_argument(
        "--seconds",
        type=float,
        default=3.0,
        help="infer: timing per backend; serve: length of each run",
    )
    p.add_argument("--cold-starts", type=int, default=5, help="infer: recognize runs to time")
    p.add_argument("--per-kind", type=int, default=100, help="realworld: files per kind")
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="realworld: render the set from this seed (default 0, the benchmark's own; any "
        "other gives a fresh set of the same kinds, to check a change on files it was not "
        "tuned on)",
    )
    p.add_argument(
        "--corrections",
        default="20,50,100",
        metavar="N,M",
        help="feedback: corrections per fine-tune, one run each (default %(default)s)",
    )
    p.add_argument("--requests", type=int, default=5000, help="serve: requests per run")
    p.add_argument(
        "--concurrency",
        default="1,16,64",
        metavar="N,M",
        help="serve: connections at once, one run each (default %(default)s)",
    )
    p.add_argument(
        "--workers",
        metavar="N,M",
        help="serve: server worker processes, one set of runs each (default: 1 and one per core)",
    )
    p.add_argument(
        "--kinds", metavar="K,K", help="realworld: only these kinds of file (default: all)"
    )
    p.add_argument("--write", metavar="DIR", help="realworld: also write the files here")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument(
        "--threads", type=int, help="torch (and infer: onnxruntime) threads (default: all cores)"
    )
    p.add_argument("--budget-s", type=float, help="stop a run after this much training time")
    p.add_argument("--max-epochs", type=float, help="cap every recipe's epochs")
    p.add_argument(
        "--nproc",
        metavar="N,M",
        help="train: seconds per epoch on N, M, ... "
        "processes of this machine (torchrun), sharing its cores",
    )
    p.add_argument("--subset", type=int, help="train on the first N images (quick checks)")
    p.add_argument("--data-dir", help="folder with the four IDX files")


def _add_export(sub) -> None:
    p = _command(
        sub,
        "export",
        cmd_export,
        "export a run to ONNX, checked against PyTorch",
        "digitrec export runs/fast-fastcnn-s0 --out model.onnx",
    )
    p.add_argument("run", help="run directory or .safetensors file")
    p.add_argument("--format", default="onnx", choices=["onnx"], help="only ONNX for now")
    p.add_argument("--out", help="output file (default RUN_DIR/model.onnx)")
    p.add_argument("--data-dir", help="folder with MNIST's IDX files (for the parity check)")


def _add_explain(sub) -> None:
    p = _command(
        sub,
        "explain",
        cmd_explain,
        "kernels, activation maps, softmax, saliency of an image",
        "digitrec explain examples/04-canvas-3.png --out out/explain",
    )
    p.add_argument("image", nargs="?", help="an image file")
    p.add_argument("--model", help="run directory (default: bundled)")
    p.add_argument("--out", default="out/explain", help="folder for the figures and explain.html")
    p.add_argument("--lines", action="store_true", help="the article's line-kernel example")
    p.add_argument("--show", action="store_true", help="also open the figures in a window")
    p.add_argument("--data-dir", help="folder with the four IDX files")


def _add_serve(sub) -> None:
    p = _command(
        sub,
        "serve",
        cmd_serve,
        "REST API and drawing page",
        "digitrec serve --host 0.0.0.0 --port 8080",
    )
    _model_options(p)
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on; 0.0.0.0 for every interface (default %(default)s)",
    )
    p.add_argument("--port", type=int, default=8000, help="TCP port (default %(default)s)")
    p.add_argument("--cors-origin", action="append", help="allow this origin (repeatable)")
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes, each with its own model and its share of the cores "
        "(default %(default)s; see the README on sizing)",
    )
    p.add_argument(
        "--max-connections",
        type=int,
        default=256,
        help="open sockets per worker; more are answered 503 (default %(default)s)",
    )
    p.add_argument(
        "--max-queue",
        type=int,
        default=64,
        help="images being read or waiting per worker; more are answered 503 with "
        "Retry-After (default %(default)s)",
    )
    p.add_argument(
        "--admin-token",
        default=os.environ.get("DIGITREC_ADMIN_TOKEN"),
        help="turn on POST /api/model/reload for requests with this Bearer token "
        "(default: $DIGITREC_ADMIN_TOKEN, which other users cannot see in the "
        "process list; unset: reload is off)",
    )
    _feedback_db_option(p)


def _add_demo(sub) -> None:
    p = _command(
        sub,
        "demo",
        cmd_demo,
        "the whole pipeline end to end (what `make run` runs)",
        "digitrec demo --out out/demo",
    )
    p.add_argument("--out", default="out/demo", help="where figures and the run go")
    p.add_argument("--examples", default=str(EXAMPLES_DIR), help="folder of images to read")
    p.add_argument("--seed", type=int, default=0, help="random seed of the training run")
    p.add_argument("--data-dir", help="folder with the four IDX files")


def _feedback_db_option(p: argparse.ArgumentParser, flag: str = "--feedback-db") -> None:
    p.add_argument(
        flag,
        metavar="PATH_OR_URL",
        help="feedback store: an SQLite file or a postgresql:// URL (default: "
        "$DIGITREC_FEEDBACK_DB, else ~/.local/share/digitrec/feedback.db)",
    )


def _add_feedback(sub) -> None:
    p = _command(
        sub,
        "feedback",
        cmd_feedback,
        "store images with the right number; list, count, export or delete them",
        "digitrec feedback add photo.jpg --label 42",
    )
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = actions.add_parser("add", help="read an image and store it with the right number")
    add.add_argument("image", help="an image file")
    add.add_argument(
        "--label", required=True, help="the right text: digits and . , - / : (at most 32)"
    )
    _model_options(add)
    listing = actions.add_parser("list", help="the newest records")
    listing.add_argument("--limit", type=int, default=20, help="how many (default %(default)s)")
    listing.add_argument("--json", action="store_true", help="one JSON object per record")
    stats = actions.add_parser("stats", help="records per digit and how often the model erred")
    stats.add_argument("--json", action="store_true", help="print JSON")
    export = actions.add_parser("export", help="write every image and a labels.csv to DIR")
    export.add_argument("dir", help="output folder")
    delete = actions.add_parser("delete", help="remove one record")
    delete.add_argument("id", type=int, help="the record's id (see `digitrec feedback list`)")
    for each in (add, listing, stats, export, delete):
        _feedback_db_option(each)


def _add_train_reader(sub) -> None:
    p = _command(
        sub,
        "train-reader",
        cmd_train_reader,
        "train the line reader that reads touching digits (CTC on MNIST strings)",
        "digitrec train-reader --out runs/reader",
    )
    p.add_argument("--out", default="runs/reader", help="folder for linereader.onnx and its card")
    p.add_argument("--steps", type=int, help="training steps (default 6000)")
    p.add_argument(
        "--samples", type=int, help="strings composed, and pages cut, for training (default 24000)"
    )
    p.add_argument("--seed", type=int, help="random seed (default 0)")
    p.add_argument("--threads", type=int, help="torch threads (default 2)")
    p.add_argument("--data-dir", help="folder with the four IDX files")


def _add_finetune(sub) -> None:
    from digitrec.finetune import FinetuneConfig

    defaults = FinetuneConfig()
    p = _command(
        sub,
        "finetune",
        cmd_finetune,
        "fine-tune a model on the feedback, refused if MNIST test accuracy falls",
        "digitrec finetune --feedback feedback.db --out runs/tuned",
    )
    p.add_argument(
        "--model", help="run directory or .safetensors to start from (default: the bundled model)"
    )
    _feedback_db_option(p, "--feedback")
    p.add_argument("--out", required=True, help="run directory to write")
    options = {
        "steps": (int, "training steps"),
        "batch_size": (int, "digits per step"),
        "learning_rate": (float, "Adam's learning rate"),
        "replay": (int, "MNIST training digits replayed per feedback digit"),
        "min_replay": (int, "MNIST digits replayed at least"),
        "holdout": (float, "fraction of the usable records held out to measure"),
        "seed": (int, "random seed"),
        "max_test_drop": (
            float,
            "refuse a model whose MNIST test accuracy falls more than this (0.001: 0.1 points)",
        ),
        "until_id": (int, "only records with ids up to this one"),
        "test_images": (int, "measure on the first N MNIST test digits"),
        "threads": (int, "torch threads"),
    }
    for name, (kind, text) in options.items():
        default = getattr(defaults, name)
        shown = "all" if default is None and name != "threads" else default
        p.add_argument(f"--{name.replace('_', '-')}", type=kind, help=f"{text} (default {shown})")
    p.add_argument("--data-dir", help="folder with MNIST's four IDX files")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="digitrec",
        description="Recognize handwritten digits: train, evaluate, read images.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"digitrec {version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (
        _add_data,
        _add_models,
        _add_train,
        _add_evaluate,
        _add_recognize,
        _add_bench,
        _add_export,
        _add_explain,
        _add_serve,
        _add_demo,
        _add_feedback,
        _add_finetune,
        _add_train_reader,
    ):
        add(sub)
    return parser


# The extra that installs each optional module, for a one-line hint when one is missing.
EXTRAS = {
    "torch": "train",
    "matplotlib": "train",
    "onnx": "train",
    "fastapi": "serve",
    "starlette": "serve",
    "uvicorn": "serve",
    "multipart": "serve",
    "python_multipart": "serve",
    "prometheus_client": "serve",
    "httpx": "dev",
}


def missing_extra(error: ModuleNotFoundError) -> str | None:
    """ "needs torch, which is not installed: pip install 'digitrec[train]'", or None when the
    missing module is not one of an extra's."""
    module = (error.name or "").split(".")[0]
    if module not in EXTRAS:
        return None
    return f"needs {module}, which is not installed: pip install 'digitrec[{EXTRAS[module]}]'"


def require(module: str) -> None:
    """Raise ModuleNotFoundError now if ``module`` is not installed (`main` names its extra)."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise ModuleNotFoundError(f"No module named {module!r}", name=module)


def error_line(error: BaseException) -> str:
    """The one line a user sees for an error: KeyError's repr quotes are dropped."""
    if isinstance(error, KeyError) and error.args:
        return str(error.args[0])
    return str(error) or type(error).__name__


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `digitrec ... | head`: the reader left; not an error of ours
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keeps the interpreter's flush quiet
        return 0
    except ModuleNotFoundError as error:
        hint = missing_extra(error)
        if hint is None or os.environ.get("DIGITREC_DEBUG"):
            raise
        print(f"digitrec: error: `digitrec {args.command}` {hint}", file=sys.stderr)
        return 1
    except Exception as error:
        # Only the light modules that define the error types: the handler must work without
        # torch, or a missing extra would hide behind a traceback.
        from digitrec.checkpoint import ModelError
        from digitrec.config import DeviceError
        from digitrec.data import DataError
        from digitrec.preprocess import ImageError

        known = DataError | ModelError | ImageError | DeviceError | KeyError | FileNotFoundError
        if os.environ.get("DIGITREC_DEBUG"):
            raise
        if isinstance(error, known):
            print(f"digitrec: error: {error_line(error)}", file=sys.stderr)
            return 1
        print(
            f"digitrec: internal error: {type(error).__name__}: {error_line(error)} "
            "(DIGITREC_DEBUG=1 shows the traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
