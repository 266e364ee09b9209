"""What tests/test_distributed.py launches with torchrun where the CLI cannot set the case up.

python -m torch.distributed.run --standalone --nproc_per_node 2 tests/torchrun_entry.py MODE OUT

- `steps`: three steps of the fast recipe in float32 on 301 digits, so the last global
  batch of 45 splits 23/22 over the ranks; rank 0 writes the run directory OUT.
- `ensemble`: a small two-member ensemble whose members train in parallel, one per process.
- `hang`: rank 1 stops answering after joining; rank 0 must give up after a 3 s timeout.
"""

from __future__ import annotations

import dataclasses
import sys
import time

import torch

from digitrec import data, distributed
from digitrec.config import DataConfig, recipe
from digitrec.data import Split, make_splits
from digitrec.train import fit

# Float32 and the default memory layout, so that one process and two differ by the order of their
# float sums alone: bf16, and channels-last convolutions on this CPU, round much more coarsely.
# One epoch of 301 digits is three steps. No label smoothing: with it Adam's first steps magnify
# those differences about 40-fold (one thread against two: 5.6e-4 of the largest weight instead
# of 1.3e-5), past the tolerance that separates summation order from a real error.
STEPS_CONFIG = recipe(
    "fast", epochs=1, label_smoothing=0.0, bf16=False, channels_last=False, calibrate=False
)
STEPS_SUBSET = 301
ENSEMBLE_CONFIG = recipe(
    "ensemble", epochs=2, batch_size=64, members=2, model_args={"widths": (16, 32, 64)}
)


def small_splits(dataset: data.Dataset, subset: int):
    splits = make_splits(dataset, DataConfig(subset=subset))
    # 2,000 test digits show learning and keep rank 0's evaluations short.
    test = Split(splits.test.images[:2000], splits.test.labels[:2000])
    return dataclasses.replace(splits, test=test)


def main(mode: str, out: str) -> int:
    world = distributed.world_from_env()
    mnist = data.load("mnist", data_dir="")
    with distributed.process_group(world, timeout_s=3 if mode == "hang" else 60):
        if mode == "steps":
            fit(STEPS_CONFIG, small_splits(mnist, STEPS_SUBSET), out, "fast", world=world)
        elif mode == "ensemble":
            splits = small_splits(mnist, 1000)
            fit(ENSEMBLE_CONFIG, splits, out, "ensemble", world=world, parallel_members=True)
        elif mode == "hang":
            if world.rank == 1:
                time.sleep(600)
            distributed.sum_over_ranks(torch.ones(1), world)  # waits for rank 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
