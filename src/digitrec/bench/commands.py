"""`digitrec bench ...`: each benchmark's command, over the modules of this package."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from digitrec.bench import comma_list, say


def _write(report: dict, out: str, table: str) -> None:
    """The report as JSON at ``out``, its table on the terminal, and where the JSON went."""
    from digitrec import checkpoint

    checkpoint.write_json(out, report)
    say(table)
    say(f"results: {out}")


def run(args: argparse.Namespace) -> int:
    """`digitrec bench WHAT`: run one benchmark, write its JSON, print its table."""
    if args.what == "feedback":
        return bench_feedback(args)
    if args.what == "realworld":
        return bench_realworld(args)
    if args.what == "infer":
        return bench_infer(args)
    if args.what == "serve":
        return bench_serve(args)
    if args.nproc:
        return bench_scaling(args)
    from digitrec import checkpoint, data
    from digitrec.bench import training as bench
    from digitrec.config import DataConfig
    from digitrec.data import make_splits

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    dataset = data.load("mnist", data_dir=args.data_dir)
    splits = make_splits(dataset, DataConfig(subset=args.subset), args.device)
    recipes = comma_list(args.recipes) or list(bench.DEFAULT_RECIPES)

    def show(name: str, run: dict) -> None:
        reached = ", ".join(
            f"{label} in {run[key]:.1f}s" if run[key] is not None else f"{label} never"
            for label, key in (("99.0%", "time_to_99_0_s"), ("99.5%", "time_to_99_5_s"))
        )
        say(
            f"{name} seed {run['seed']}: final {run['final_test_accuracy']:.4f} after "
            f"{run['epochs']:g} epochs; {reached}"
        )

    report = bench.run_benchmark(
        splits, recipes, args.seeds, args.device, args.budget_s, args.max_epochs, on_result=show
    )
    report["settings"] = {
        "subset": args.subset,
        "budget_s": args.budget_s,
        "max_epochs": args.max_epochs,
        "seeds": args.seeds,
    }
    out = args.out or "bench-train.json"
    checkpoint.write_json(out, report)
    say(bench.table(report))
    if report["targets"]:
        say(bench.targets_table(report))
    if report["gpu_record"]:
        say(bench.gpu_line(report["gpu_record"]))
    say(f"results: {out}")
    if args.plot:
        say(f"plot: {bench.plot(report, args.plot)}")
    return 0 if all(target["met"] for target in report["targets"]) else 3


def bench_scaling(args: argparse.Namespace) -> int:
    """Seconds per epoch on 1, 2, ... processes (torchrun on loopback), added to the bench JSON."""
    from digitrec import checkpoint
    from digitrec.bench import training as bench

    nprocs = [int(n) for n in comma_list(args.nproc)]
    out = Path(args.out or "bench-train.json")
    report = json.loads(out.read_text()) if out.is_file() else {}
    report["scaling"] = {"machine": bench.machine(), "recipes": {}}
    for name in comma_list(args.recipes) or ["fast"]:

        def show(nproc: int, run: dict, name: str = name) -> None:
            seconds, accuracy = run["seconds_per_epoch"], run["test_accuracy"]
            say(
                f"{name} on {nproc} process(es), seed {run['seed']}: {seconds:.2f} s/epoch, "
                f"test accuracy {accuracy:.4f}"
            )

        result = bench.scaling(
            name, nprocs, args.seeds, args.subset, args.max_epochs, args.data_dir, on_result=show
        )
        report["scaling"]["recipes"][name] = result
        checkpoint.write_json(out, report)
        say(bench.scaling_table(result))
    say(f"results: {out}, under scaling")
    return 0


def bench_realworld(args: argparse.Namespace) -> int:
    """Per-kind accuracy and files/s on MNIST test digits rendered as users' files."""
    from digitrec import data, synth
    from digitrec.bench import realworld
    from digitrec.recognize import Recognizer

    kinds = comma_list(args.kinds) if args.kinds else list(synth.KINDS)
    unknown = sorted(set(kinds) - set(synth.KINDS))
    if unknown or not kinds:
        print(
            f"digitrec: error: --kinds takes some of {','.join(synth.KINDS)}; "
            f"unknown: {','.join(unknown) or '(none given)'}",
            file=sys.stderr,
        )
        return 2
    dataset = data.load("mnist", data_dir=args.data_dir)
    items = realworld.make_set(
        dataset.test_images, dataset.test_labels, args.per_kind, args.seed, kinds
    )
    if args.write:
        say(f"wrote {len(realworld.write_set(items, args.write))} files to {args.write}")
    recognizer = Recognizer.load(args.model)
    report = {
        "model": recognizer.card.command or args.model or "bundled",
        "seed": args.seed,
        "libraries": realworld.libraries(),
        **realworld.score(recognizer, items),
    }
    _write(report, args.out or "bench-realworld.json", realworld.table(report))
    return 0


def bench_feedback(args: argparse.Namespace) -> int:
    """A simulated writer's error after fine-tuning on 20, 50, 100 of their corrections, with
    MNIST test accuracy and seconds per fine-tune; exit 3 when a target is missed."""
    from digitrec import data
    from digitrec.bench import feedback as writer_bench

    try:
        counts = [int(n) for n in comma_list(args.corrections)]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        print(
            "digitrec: error: --corrections takes counts of 1 or more, such as 20,50,100",
            file=sys.stderr,
        )
        return 2
    import torch  # before the data: a missing extra is named at once

    if args.threads:
        torch.set_num_threads(args.threads)
    config = writer_bench.benchmark_config(threads=args.threads)

    def show(run: dict) -> None:
        say(
            f"{run['corrections']} corrections: the writer's error {run['writer_error']:.2%}, "
            f"MNIST test {run['mnist_test']:.2%} ({run['seconds']:.1f}s)"
        )

    dataset = data.load("mnist", data_dir=args.data_dir)
    report = writer_bench.run_benchmark(
        dataset, counts, model=args.model, config=config, data_dir=args.data_dir, on_result=show
    )
    _write(report, args.out or "bench-feedback.json", writer_bench.table(report))
    if args.plot:
        say(f"plot: {writer_bench.plot(report, args.plot)}")
    return 0 if writer_bench.met(report) else 3


def bench_infer(args: argparse.Namespace) -> int:
    """PyTorch vs ONNX Runtime: digits/s at one batch size and `recognize` cold start."""
    from digitrec.bench import inference

    report = inference.bench_inference(
        args.model,
        batch=args.batch,
        seconds=args.seconds,
        threads=args.threads,
        cold_starts=args.cold_starts,
    )
    _write(report, args.out or "bench-infer.json", inference.inference_table(report))
    return 0 if all(report["met"].values()) else 3


def bench_serve(args: argparse.Namespace) -> int:
    """Requests/s and latency of `digitrec serve` under load on loopback, for 1 and N workers
    and three images; driven by wrk when installed. Fails on any error."""
    import importlib

    from digitrec import data
    from digitrec.bench import serving as loadtest
    from digitrec.config import available_cores

    # The server's extra, named in one line now rather than by a server that fails to start.
    importlib.import_module("digitrec.serve")

    try:
        connections = [int(n) for n in comma_list(args.concurrency)]
        workers = [int(n) for n in comma_list(args.workers)] or sorted({1, available_cores()})
    except ValueError:
        connections = workers = []
    if not (
        connections
        and all(1 <= n <= loadtest.MAX_LOAD_CONCURRENCY for n in connections)
        and workers
        and all(1 <= n <= 64 for n in workers)
        and args.seconds > 0
        and 1 <= args.requests <= loadtest.MAX_LOAD_REQUESTS
    ):
        print(
            f"digitrec: error: --concurrency numbers must be 1..{loadtest.MAX_LOAD_CONCURRENCY}"
            f" (such as 1,16,64), --workers 1..64, --seconds above 0 and --requests "
            f"1..{loadtest.MAX_LOAD_REQUESTS}",
            file=sys.stderr,
        )
        return 2
    dataset = data.load("mnist", data_dir=args.data_dir)
    images = loadtest.bench_images(dataset.test_images, dataset.test_labels)
    report = loadtest.bench_serve(
        images,
        workers=workers,
        connections=connections,
        seconds=args.seconds,
        requests=args.requests,
        model=args.model,
    )
    _write(report, args.out or "bench-serve.json", loadtest.load_table(report))
    return 3 if any(run["errors"] for run in report["runs"]) else 0
