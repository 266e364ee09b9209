"""Fuzz the image reader: `python tools/fuzz.py --count 1000000` (what `make fuzz` runs).

Every input (the hostile corpus of `digitrec.fuzz`, then mutations of it) must be read or refused
with a one-line ImageError, within the CPU time limit. An input is rebuilt from its index (and
--seed), so `--start INDEX --count 1` replays one; failing inputs are also written to --failures
DIR as INDEX.bin. --corpus DIR writes the seed files. The exit status is 1 when any input failed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from digitrec import fuzz

# Inputs per job handed to a worker process: big enough to hide the hand-over, small enough
# for steady progress lines.
JOB_SIZE = 5_000
# Each worker process builds the corpus once.
WORKER_CORPUS: dict[str, bytes] = {}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=20_000, help="inputs to try")
    parser.add_argument("--seed", type=int, default=0, help="the run: same seed, same inputs")
    parser.add_argument("--start", type=int, default=0, help="first input index")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes")
    parser.add_argument("--time-limit", type=float, default=fuzz.TIME_LIMIT_S,
                        help="CPU seconds an input may take (default %(default)s)")  # fmt: skip
    parser.add_argument("--failures", default="out/fuzz-failures", help="folder for failing inputs")
    parser.add_argument("--corpus", help="write the seed files to this folder and exit")
    args = parser.parse_args(argv)
    if args.corpus:
        folder = Path(args.corpus)
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in fuzz.hostile_corpus().items():
            (folder / f"{name}.bin").write_bytes(data)
        print(f"corpus: {folder}")
        return 0
    report = run_jobs(args)
    print(summary(report))
    if report.failures:
        folder = Path(args.failures)
        folder.mkdir(parents=True, exist_ok=True)
        for failure in report.failures:
            (folder / f"{failure.index}.bin").write_bytes(failure.data)
            print(f"FAILED input {failure.index} (from {failure.seed_name}): {failure.problem}")
        print(f"failing inputs: {folder}")
        return 1
    return 0


def run_jobs(args: argparse.Namespace) -> fuzz.Report:
    """The run split into jobs of JOB_SIZE inputs over ``args.workers`` processes."""
    jobs = [
        (start, min(JOB_SIZE, args.start + args.count - start), args.seed, args.time_limit)
        for start in range(args.start, args.start + args.count, JOB_SIZE)
    ]
    report = fuzz.Report()
    started = time.perf_counter()
    with ProcessPoolExecutor(args.workers, initializer=start_worker) as pool:
        for done in as_completed([pool.submit(run_job, *job) for job in jobs]):
            report.merge(done.result())
            report.wall_seconds = time.perf_counter() - started
            print(summary(report), flush=True)
    return report


def start_worker() -> None:
    """Build the corpus, and send the C libraries' own complaints (libtiff prints one line per
    damaged TIFF) to /dev/null: only outcomes count."""
    WORKER_CORPUS.update(fuzz.hostile_corpus())
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    os.close(null)


def run_job(start: int, count: int, seed: int, time_limit_s: float) -> fuzz.Report:
    return fuzz.run(count, seed=seed, start=start, corpus=WORKER_CORPUS, time_limit_s=time_limit_s)


def summary(report: fuzz.Report) -> str:
    return (
        f"{report.inputs:,d} inputs in {report.wall_seconds:.1f} s ({report.rate:,.0f}/s): "
        f"{report.read:,d} read, {report.refused:,d} refused, {len(report.failures)} failed; "
        f"slowest {report.slowest_seconds:.3f} s CPU (input {report.slowest_index}, "
        f"from {report.slowest_seed})"
    )


if __name__ == "__main__":
    sys.exit(main())
