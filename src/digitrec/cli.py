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

    path = figures.preview(dataset.train_images, dataset.train_labels, dataset.classes,
                           args.out, seed=args.seed)  # fmt: skip
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


def cmd_train(args: argparse.Namespace) -> int:
    from digitrec import data, distributed
    from digitrec.checkpoint import ModelError
    from digitrec.config import DataConfig, recipe
    from digitrec.train import fit, make_splits, resume_settings

    # Under torchrun every process runs this command; rank 0 alone prints and writes.
    world = distributed.world_from_env()

    values = dict(model=args.model, epochs=args.epochs, batch_size=args.batch_size,
                  seed=args.seed, learning_rate=args.learning_rate, threads=args.threads,
                  device=args.device, checkpoint_every=args.checkpoint_every)  # fmt: skip
    if args.resume:
        # Settings come from the run's saved state; a flag given must agree with it.
        out = Path(args.resume)
        if args.out and Path(args.out) != out:
            raise ModelError(f"--resume continues in {out}; --out {args.out} names another folder")
        config, data_config, recipe_name = resume_settings(
            out, args.recipe, args.dataset, args.subset, **values
        )
    else:
        recipe_name = args.recipe or "fast"
        config = recipe(recipe_name, **values)
        data_config = DataConfig(dataset=args.dataset or "mnist", subset=args.subset)
        out = Path(args.out or f"runs/{recipe_name}-{config.model}-s{config.seed}")
    dataset = data.load(data_config.dataset, data_dir=args.data_dir)
    splits = make_splits(dataset, data_config, config.device)
    if world.is_main:
        processes = f" on {world.world_size} processes" if world.is_distributed else ""
        _print(f"training {config.model} ({recipe_name or 'no'} recipe) on {len(splits.train)} "
               f"{dataset.name} images{processes}, validating on {len(splits.validation)} "
               f"-> {out}")  # fmt: skip
    try:
        with distributed.process_group(world, config.device, args.timeout):
            result = fit(config, splits, out, recipe_name=recipe_name, on_progress=ProgressBar(),
                         resume=bool(args.resume), world=world,
                         parallel_members=args.parallel_members)  # fmt: skip
    except distributed.CollectiveTimeout as error:
        print(f"digitrec: error: {error}", file=sys.stderr)
        return 1
    if not world.is_main:
        return 0
    m = result.card["metrics"]
    _print(f"test accuracy {m['test_accuracy']:.4f}, test loss {m['test_loss']:.4f}, "
           f"{m['train_seconds']:.1f}s of training; saved {out}/model.safetensors")  # fmt: skip
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from digitrec import data
    from digitrec.config import DataConfig
    from digitrec.evaluate import evaluate_run
    from digitrec.models import Ensemble
    from digitrec.recognize import load_model
    from digitrec.train import evaluate, make_splits

    if len(args.runs) > 1 and args.report:
        print("digitrec: error: --report takes one run", file=sys.stderr)
        return 2
    loaded = [load_model(run) for run in args.runs]
    datasets = sorted({card["dataset"]["name"] for _, card in loaded})
    if len(datasets) > 1:
        print(f"digitrec: error: a vote needs runs trained on one dataset, not "
              f"{' and '.join(datasets)}", file=sys.stderr)  # fmt: skip
        return 2
    # Several runs: their vote, the mean of their calibrated probabilities.
    model = loaded[0][0] if len(loaded) == 1 else Ensemble([m for m, _ in loaded]).eval()
    dataset = data.load(datasets[0], data_dir=args.data_dir)
    splits = make_splits(dataset, DataConfig(dataset=dataset.name))
    results = evaluate_run(model, splits)
    if len(loaded) > 1:
        results["runs"] = [{"run": run, "test_accuracy": evaluate(m, splits.test)["accuracy"]}
                           for run, (m, _) in zip(args.runs, loaded, strict=True)]  # fmt: skip
    if args.report:
        from digitrec.report import write_report

        run, (_, card) = args.runs[0], loaded[0]
        results["report"] = str(write_report(run, model, card, splits, args.report))
    if args.json:
        _print(json.dumps(results, indent=2))
        return 0
    for entry in results.get("runs", []):
        _print(f"{entry['run']}: test accuracy {entry['test_accuracy']:.4f}")
    if len(loaded) > 1:
        _print(f"the vote of these {len(loaded)} runs:")
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
        print(f"digitrec: error: nothing to read in {' '.join(args.paths)}: no image files "
              "(PNG, JPEG, GIF, BMP, TIFF, WebP, PNM)", file=sys.stderr)  # fmt: skip
        return 2
    recognizer = Recognizer.load(args.model, backend=args.backend)
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
    from digitrec import figures, preprocess

    images, titles = [], []
    for result in results:
        try:
            images.append(preprocess.decode(preprocess.read_bytes(result.path)))
        except preprocess.ImageError:
            images.append(None)
        titles.append(
            result.text().split(": ", 1)[-1].replace("The number is probably", "probably")
        )
    return figures.recognition_plot(images, titles, path)


def cmd_demo(args: argparse.Namespace) -> int:
    """The main job: fetch, preview, train, evaluate, recognize the bundled examples."""
    from digitrec import data, figures
    from digitrec.config import DataConfig, recipe
    from digitrec.evaluate import evaluate_run
    from digitrec.recognize import Recognizer, expand_paths
    from digitrec.train import fit, make_splits

    out = Path(args.out)
    started = time.perf_counter()
    _print("1/5 data: fetching and verifying MNIST")
    dataset = data.load("mnist", data_dir=args.data_dir)
    for part in data.PARTS:
        digest, source = dataset.sha256[part][:16], dataset.sources[part]
        _print(f"    {part:13s} ok  sha256 {digest}...  from {source}")
    shapes = f"train {dataset.train_images.shape}, test {dataset.test_images.shape}"
    _print(f"    {shapes}, uint8 -> scaled 0..1")
    preview = figures.preview(dataset.train_images, dataset.train_labels, dataset.classes,
                              out / "preview.png")  # fmt: skip
    _print(f"2/5 preview: {preview}")
    config = recipe("fast", seed=args.seed)
    splits = make_splits(dataset, DataConfig())
    epochs = f"{config.epochs:g} epoch{'' if config.epochs == 1 else 's'}"
    _print(f"3/5 train: {config.model} ({epochs}, batch {config.batch_size})")
    result = fit(config, splits, out / "run", recipe_name="fast", on_progress=ProgressBar())
    _print("4/5 evaluate:")
    from digitrec.recognize import load_model

    model, _ = load_model(out / "run")
    results = evaluate_run(model, splits)
    for split in ("train", "validation", "test"):
        r = results[split]
        _print(f"    {split:10s} accuracy {r['accuracy']:.4f}  loss {r['loss']:.4f}")
    _print(f"    {results['verdict']}")
    examples = Path(args.examples)
    _print(f"5/5 recognize: {examples}/")
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
    if args.what == "realworld":
        return bench_realworld(args)
    if args.what == "infer":
        return bench_infer(args)
    if args.what == "serve":
        return bench_serve(args)
    if args.nproc:
        return bench_scaling(args)
    from digitrec import bench, checkpoint, data
    from digitrec.config import DataConfig
    from digitrec.train import make_splits

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    dataset = data.load("mnist", data_dir=args.data_dir)
    splits = make_splits(dataset, DataConfig(subset=args.subset), args.device)
    recipes = _comma_list(args.recipes) or list(bench.DEFAULT_RECIPES)

    def show(name: str, run: dict) -> None:
        reached = ", ".join(
            f"{label} in {run[key]:.1f}s" if run[key] is not None else f"{label} never"
            for label, key in (("99.0%", "time_to_99_0_s"), ("99.5%", "time_to_99_5_s"))
        )
        _print(f"{name} seed {run['seed']}: final {run['final_test_accuracy']:.4f} after "
               f"{run['epochs']:g} epochs; {reached}")  # fmt: skip

    report = bench.run_benchmark(splits, recipes, args.seeds, args.device, args.budget_s,
                                 args.max_epochs, on_result=show)  # fmt: skip
    report["settings"] = {"subset": args.subset, "budget_s": args.budget_s,
                          "max_epochs": args.max_epochs, "seeds": args.seeds}  # fmt: skip
    out = args.out or "bench-train.json"
    checkpoint.write_json(out, report)
    _print(bench.table(report))
    if report["targets"]:
        _print(bench.targets_table(report))
    if report["gpu_record"]:
        _print(bench.gpu_line(report["gpu_record"]))
    _print(f"results: {out}")
    if args.plot:
        _print(f"plot: {bench.plot(report, args.plot)}")
    return 0 if all(target["met"] for target in report["targets"]) else 3


def _comma_list(text: str | None) -> list[str]:
    """The items of a comma-separated option, blanks dropped ("a, b,,c": a, b, c; None: none)."""
    return [part.strip() for part in (text or "").split(",") if part.strip()]


def bench_scaling(args: argparse.Namespace) -> int:
    """Seconds per epoch on 1, 2, ... processes (torchrun on loopback), added to the bench JSON."""
    from digitrec import bench, checkpoint

    nprocs = [int(n) for n in _comma_list(args.nproc)]
    out = Path(args.out or "bench-train.json")
    report = json.loads(out.read_text()) if out.is_file() else {}
    report["scaling"] = {"machine": bench.machine(), "recipes": {}}
    for name in _comma_list(args.recipes) or ["fast"]:

        def show(nproc: int, run: dict, name: str = name) -> None:
            seconds, accuracy = run["seconds_per_epoch"], run["test_accuracy"]
            _print(f"{name} on {nproc} process(es), seed {run['seed']}: {seconds:.2f} s/epoch, "
                   f"test accuracy {accuracy:.4f}")  # fmt: skip

        result = bench.scaling(name, nprocs, args.seeds, args.subset, args.max_epochs,
                               args.data_dir, on_result=show)  # fmt: skip
        report["scaling"]["recipes"][name] = result
        checkpoint.write_json(out, report)
        _print(bench.scaling_table(result))
    _print(f"results: {out}, under scaling")
    return 0


def bench_realworld(args: argparse.Namespace) -> int:
    """Per-kind accuracy and files/s on MNIST test digits rendered as users' files."""
    from digitrec import checkpoint, data, realworld, synth
    from digitrec.recognize import Recognizer

    kinds = _comma_list(args.kinds) if args.kinds else list(synth.KINDS)
    unknown = sorted(set(kinds) - set(synth.KINDS))
    if unknown or not kinds:
        print(f"digitrec: error: --kinds takes some of {','.join(synth.KINDS)}; "
              f"unknown: {','.join(unknown) or '(none given)'}", file=sys.stderr)  # fmt: skip
        return 2
    dataset = data.load("mnist", data_dir=args.data_dir)
    items = realworld.make_set(dataset.test_images, dataset.test_labels, args.per_kind,
                               kinds=kinds)  # fmt: skip
    if args.write:
        _print(f"wrote {len(realworld.write_set(items, args.write))} files to {args.write}")
    recognizer = Recognizer.load(args.model)
    report = {"model": recognizer.card.get("command") or args.model or "bundled",
              **realworld.score(recognizer, items)}  # fmt: skip
    out = args.out or "bench-realworld.json"
    checkpoint.write_json(out, report)
    _print(realworld.table(report))
    _print(f"results: {out}")
    return 0


def bench_infer(args: argparse.Namespace) -> int:
    """PyTorch vs ONNX Runtime: digits/s at one batch size and `recognize` cold start."""
    from digitrec import checkpoint, export

    report = export.bench_inference(args.model, batch=args.batch, seconds=args.seconds,
                                    threads=args.threads, cold_starts=args.cold_starts)  # fmt: skip
    out = args.out or "bench-infer.json"
    checkpoint.write_json(out, report)
    _print(export.inference_table(report))
    _print(f"results: {out}")
    return 0 if all(report["met"].values()) else 3


def bench_serve(args: argparse.Namespace) -> int:
    """Requests/s and latency of the API under load on loopback; fails on any error."""
    import numpy as np

    from digitrec import checkpoint, data, serve, synth

    try:
        concurrency = [int(n) for n in _comma_list(args.concurrency)]
    except ValueError:
        concurrency = []
    if not (concurrency and all(1 <= n <= serve.MAX_LOAD_CONCURRENCY for n in concurrency)
            and 1 <= args.requests <= serve.MAX_LOAD_REQUESTS):  # fmt: skip
        print(f"digitrec: error: --requests must be 1..{serve.MAX_LOAD_REQUESTS} and "
              f"--concurrency numbers 1..{serve.MAX_LOAD_CONCURRENCY}, such as 16,64",
              file=sys.stderr)  # fmt: skip
        return 2
    # A real digit as the drawing page sends it: MNIST's first test digit drawn on a canvas.
    dataset = data.load("mnist", data_dir=args.data_dir)
    image, _, label = synth.render("canvas", [dataset.test_images[0]], np.random.default_rng(0),
                                   labels=[int(dataset.test_labels[0])])  # fmt: skip
    report = serve.bench_serve(image, label, model=args.model, requests=args.requests,
                               concurrency=concurrency)  # fmt: skip
    out = args.out or "bench-serve.json"
    checkpoint.write_json(out, report)
    _print(serve.load_table(report))
    _print(f"results: {out}")
    return 3 if any(run["errors"] for run in report["runs"]) else 0


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
    from digitrec.serve import run_server

    run_server(
        model=args.model, backend=args.backend, host=args.host, port=args.port,
        cors_origins=args.cors_origin or [],
    )  # fmt: skip
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
    p.add_argument("--backend", default="auto", choices=["auto", "torch", "onnx"],
                   help="torch (needs digitrec[train]), onnx (ONNX Runtime, no torch), or "
                   "auto: ONNX for the bundled model and .onnx files, else torch when "
                   "installed")  # fmt: skip


def _command(sub, name: str, func, help: str, example: str) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help, description=help, epilog=f"example:\n  {example}",
                       formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.set_defaults(func=func)
    return p


def _add_data(sub) -> None:
    p = _command(sub, "data", cmd_data, "fetch, describe or preview the dataset",
                 "digitrec data info --dataset fashion-mnist")  # fmt: skip
    p.add_argument("action", choices=["fetch", "info", "preview"])
    _data_options(p)
    p.add_argument("--out", default="out/preview.png", help="preview PNG path")
    p.add_argument("--seed", type=int, default=0, help="which random digits to preview")


def _add_models(sub) -> None:
    _command(sub, "models", cmd_models, "list the registered models", "digitrec models")
    p = _command(sub, "summary", cmd_summary, "layers and parameter counts of a model",
                 "digitrec summary mlp")  # fmt: skip
    p.add_argument("name", help="a registered model name, e.g. mlp or cnn")


def _add_train(sub) -> None:
    p = _command(sub, "train", cmd_train, "train a model and save a run directory",
                 "digitrec train --recipe fast --seed 1 --out runs/mine")  # fmt: skip
    p.add_argument("--recipe",
                   help="fast, fast-long, accurate, ensemble, robust, article, reference-pytorch "
                   "or reference-keras (default fast)")  # fmt: skip
    p.add_argument("--model", help="train this registered model instead of the recipe's, with "
                   "its own default sizes (see `digitrec models`)")  # fmt: skip
    p.add_argument("--epochs", type=float, help="override the recipe's epochs")
    p.add_argument("--batch-size", type=int, help="override the recipe's batch size")
    p.add_argument("--learning-rate", type=float, help="override the recipe's learning rate")
    p.add_argument("--seed", type=int, help="random seed (default 0; runs are deterministic)")
    p.add_argument("--threads", type=int, help="torch threads (default: all cores)")
    p.add_argument("--device", help="cpu or cuda (default cpu)")
    p.add_argument("--subset", type=int, help="train on the first N training images only")
    p.add_argument("--out", help="run directory (default runs/RECIPE-MODEL-sSEED)")
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue an interrupted run with its own settings (flags given must "
                   "agree with them)")  # fmt: skip
    p.add_argument("--checkpoint-every", type=int, metavar="STEPS",
                   help="save the training state every STEPS steps as well as at each epoch's "
                   "end (default 100; 0: epoch ends only)")  # fmt: skip
    p.add_argument("--parallel-members", action="store_true",
                   help="under torchrun: train an ensemble's members one per process, "
                   "not data-parallel")  # fmt: skip
    p.add_argument("--timeout", type=float, default=120.0, metavar="SECONDS",
                   help="under torchrun: give up when the other processes do not answer for "
                   "this long (default %(default)g)")  # fmt: skip
    _data_options(p)
    p.set_defaults(dataset=None)  # default mnist; unset, so --resume can tell it was left out


def _add_evaluate(sub) -> None:
    p = _command(sub, "evaluate", cmd_evaluate,
                 "test a trained run; --report writes an HTML report",
                 "digitrec evaluate runs/fast-fastcnn-s0 --report out/report")  # fmt: skip
    p.add_argument("runs", nargs="+", metavar="run",
                   help="run directory; several: test their vote (mean probability)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--report", metavar="DIR", help="write report.html and figures here")
    p.add_argument("--data-dir", help="folder with the four IDX files")


def _add_recognize(sub) -> None:
    p = _command(sub, "recognize", cmd_recognize, "read the digits in image files or folders",
                 "digitrec recognize examples/ --json")  # fmt: skip
    p.add_argument("paths", nargs="+", help="image files or folders")
    _model_options(p)
    p.add_argument("--json", action="store_true", help="one JSON object per input")
    p.add_argument("--plot", metavar="FILE", help="draw each image with its answer")
    p.add_argument("--stages", metavar="DIR",
                   help="save each preprocessing step as a PNG, one folder per "
                   "input file")  # fmt: skip


def _add_bench(sub) -> None:
    p = _command(sub, "bench", cmd_bench,
                 "benchmarks: training time to accuracy, real-world reading, inference, serving",
                 "digitrec bench realworld --per-kind 20")  # fmt: skip
    p.add_argument("what", choices=["train", "realworld", "infer", "serve"],
                   help="what to benchmark")  # fmt: skip
    p.add_argument("--recipes", help="train: comma-separated recipes (default fast,fast-long,"
                   "reference-pytorch,reference-keras; with --nproc: fast)")  # fmt: skip
    p.add_argument("--seeds", type=int, default=3, help="seeds per recipe")
    p.add_argument("--out", help="JSON results file (default bench-WHAT.json)")
    p.add_argument("--plot", metavar="FILE", help="time-versus-accuracy plot (PNG)")
    p.add_argument("--model", help="realworld, serve: run directory or .onnx; infer: run "
                   "directory or .safetensors (default: bundled)")  # fmt: skip
    p.add_argument("--batch", type=int, default=1024, help="infer: digits per model call")
    p.add_argument("--seconds", type=float, default=3.0, help="infer: timing per backend")
    p.add_argument("--cold-starts", type=int, default=5, help="infer: recognize runs to time")
    p.add_argument("--per-kind", type=int, default=100, help="realworld: files per kind")
    p.add_argument("--requests", type=int, default=5000, help="serve: requests per run")
    p.add_argument("--concurrency", default="16,64", metavar="N,M",
                   help="serve: clients at once, one run each (default %(default)s)")  # fmt: skip
    p.add_argument("--kinds", metavar="K,K", help="realworld: only these kinds of file "
                   "(default: all)")  # fmt: skip
    p.add_argument("--write", metavar="DIR", help="realworld: also write the files here")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--threads", type=int, help="torch (and infer: onnxruntime) threads "
                   "(default: all cores)")  # fmt: skip
    p.add_argument("--budget-s", type=float, help="stop a run after this much training time")
    p.add_argument("--max-epochs", type=float, help="cap every recipe's epochs")
    p.add_argument("--nproc", metavar="N,M", help="train: seconds per epoch on N, M, ... "
                   "processes of this machine (torchrun), sharing its cores")  # fmt: skip
    p.add_argument("--subset", type=int, help="train on the first N images (quick checks)")
    p.add_argument("--data-dir", help="folder with the four IDX files")


def _add_export(sub) -> None:
    p = _command(sub, "export", cmd_export, "export a run to ONNX, checked against PyTorch",
                 "digitrec export runs/fast-fastcnn-s0 --out model.onnx")  # fmt: skip
    p.add_argument("run", help="run directory or .safetensors file")
    p.add_argument("--format", default="onnx", choices=["onnx"], help="only ONNX for now")
    p.add_argument("--out", help="output file (default RUN_DIR/model.onnx)")
    p.add_argument("--data-dir", help="folder with MNIST's IDX files (for the parity check)")


def _add_explain(sub) -> None:
    p = _command(sub, "explain", cmd_explain,
                 "kernels, activation maps, softmax, saliency of an image",
                 "digitrec explain examples/04-canvas-3.png --out out/explain")  # fmt: skip
    p.add_argument("image", nargs="?", help="an image file")
    p.add_argument("--model", help="run directory (default: bundled)")
    p.add_argument("--out", default="out/explain", help="folder for the figures and explain.html")
    p.add_argument("--lines", action="store_true", help="the article's line-kernel example")
    p.add_argument("--show", action="store_true", help="also open the figures in a window")
    p.add_argument("--data-dir", help="folder with the four IDX files")


def _add_serve(sub) -> None:
    p = _command(sub, "serve", cmd_serve, "REST API and drawing page",
                 "digitrec serve --host 0.0.0.0 --port 8080")  # fmt: skip
    _model_options(p)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on; 0.0.0.0 for every interface "
                   "(default %(default)s)")  # fmt: skip
    p.add_argument("--port", type=int, default=8000, help="TCP port (default %(default)s)")
    p.add_argument("--cors-origin", action="append", help="allow this origin (repeatable)")


def _add_demo(sub) -> None:
    p = _command(sub, "demo", cmd_demo, "the whole pipeline end to end (what `make run` runs)",
                 "digitrec demo --out out/demo")  # fmt: skip
    p.add_argument("--out", default="out/demo", help="where figures and the run go")
    p.add_argument("--examples", default=str(EXAMPLES_DIR), help="folder of images to read")
    p.add_argument("--seed", type=int, default=0, help="random seed of the training run")
    p.add_argument("--data-dir", help="folder with the four IDX files")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="digitrec", description="Recognize handwritten digits: train, evaluate, read images.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("--version", action="version", version=f"digitrec {version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_data, _add_models, _add_train, _add_evaluate, _add_recognize, _add_bench,
                _add_export, _add_explain, _add_serve, _add_demo):  # fmt: skip
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
    "httpx": "dev",
}


def missing_extra(error: ModuleNotFoundError) -> str | None:
    """"needs torch, which is not installed: pip install 'digitrec[train]'", or None when the
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
        print(f"digitrec: internal error: {type(error).__name__}: {error_line(error)} "
              "(DIGITREC_DEBUG=1 shows the traceback)", file=sys.stderr)  # fmt: skip
        return 1


if __name__ == "__main__":
    sys.exit(main())
