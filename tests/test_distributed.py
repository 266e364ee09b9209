"""Data-parallel training with torchrun: two gloo processes on loopback train what one process
trains, rank 0 alone writes, runs resume on another number of processes, ensemble members train
one per process, and a rank that hangs ends the job with a clear message."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from digitrec import checkpoint
from digitrec.config import DataConfig, recipe
from digitrec.data import make_splits
from digitrec.distributed import World, shard, threads_per_process, world_from_env
from digitrec.train import fit

TESTS = Path(__file__).resolve().parent
RUN_FILES = ["history.json", "last.safetensors", "model.json", "model.safetensors"]


def torchrun(args: list[str], cwd: Path, data_cache: Path) -> subprocess.CompletedProcess:
    """Two processes on this machine, as `torchrun --standalone --nproc_per_node 2 ARGS`."""
    env = {k: v for k, v in os.environ.items() if k != "DIGITREC_DATA"}
    env["XDG_CACHE_HOME"] = str(data_cache.parent)  # the MNIST the tests fetched
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        *args,
    ]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_the_shards_of_a_batch_are_disjoint_and_cover_it():
    batch = torch.randperm(45)
    for world_size in (1, 2, 3, 4, 50):
        shares = [shard(batch, World(rank, world_size)) for rank in range(world_size)]
        assert sorted(torch.cat(shares).tolist()) == sorted(batch.tolist())
        assert max(map(len, shares)) - min(map(len, shares)) <= 1


def test_the_world_comes_from_torchrun_environment():
    assert world_from_env({}) == World()
    env = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}
    world = world_from_env(env)
    assert (world.rank, world.world_size, world.local_rank, world.local_world_size) == (3, 4, 1, 2)
    assert world.is_distributed and not world.is_main
    assert threads_per_process(world, cores=16) == 8
    assert threads_per_process(World(local_world_size=4), cores=2) == 1


def test_global_batch_norm_is_batch_norm_over_the_global_batch(tmp_path):
    import torch.distributed as dist
    import torch.nn.functional as F

    from digitrec.distributed import _GlobalBatchNormFunction

    # One rank: the global batch is the local one, so BatchNorm itself (in float64) is the oracle
    # for the statistics, the output and all three gradients.
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        generator = torch.Generator().manual_seed(0)
        x = torch.randn((16, 8, 7, 7), generator=generator) * 3 + 1
        x = x.contiguous(memory_format=torch.channels_last)
        weight, bias = torch.rand(8, generator=generator), torch.randn(8, generator=generator)
        upstream = torch.randn(x.shape, generator=generator)

        def outputs(batch_norm, dtype):
            inputs = [t.to(dtype).requires_grad_() for t in (x, weight, bias)]
            y = batch_norm(*inputs)
            y.backward(upstream.to(dtype))
            return [y] + [t.grad for t in inputs]

        expected = outputs(
            lambda *a: F.batch_norm(a[0], None, None, a[1], a[2], True), torch.float64
        )
        found = outputs(lambda *a: _GlobalBatchNormFunction.apply(*a, 1e-5)[0], torch.float32)
        for name, e, f in zip(("y", "dx", "dweight", "dbias"), expected, found, strict=True):
            assert torch.allclose(f.double(), e, rtol=1e-5, atol=1e-5 * e.abs().max().item()), name
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def small(mnist):
    return make_splits(mnist, DataConfig(subset=2000))


@pytest.fixture(scope="module")
def one_process(small, tmp_path_factory):
    """The fast recipe on one process: 2,000 digits, two epochs."""
    return fit(recipe("fast", epochs=2), small, tmp_path_factory.mktemp("one"), "fast")


# Two runs of the fast recipe that differ only in the order of float sums (one process against
# two, or one thread against two) end 0.05-0.6 points apart in test accuracy here: bf16 rounding
# and Adam's sign-like first steps amplify the tiny differences. Seeds differ by 2-3 points.
SAME_MODEL_POINTS = 0.015


def test_two_processes_learn_what_one_process_learns_and_rank_0_alone_writes(
    one_process, data_cache, tmp_path
):
    args = [
        "-m",
        "digitrec",
        "train",
        "--recipe",
        "fast",
        "--subset",
        "2000",
        "--epochs",
        "2",
        "--out",
        "run",
    ]
    result = torchrun(args, tmp_path, data_cache)
    assert result.returncode == 0, result.stderr[-3000:]
    # Only rank 0 wrote, and only the run directory: no second copy, no temporary files.
    assert [p.name for p in tmp_path.iterdir()] == ["run"]
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == RUN_FILES
    assert result.stdout.count("test accuracy") == 1  # and only rank 0 reported
    card = json.loads((tmp_path / "run" / checkpoint.CARD_FILE).read_text())
    accuracy = card["metrics"]["test_accuracy"]
    assert accuracy > 0.8  # chance is 10%
    assert accuracy == pytest.approx(
        one_process.card["metrics"]["test_accuracy"], abs=SAME_MODEL_POINTS
    )
    # Each epoch covered the 2,000 digits once, in 16 global batches of 128, over both ranks.
    history = json.loads((tmp_path / "run" / checkpoint.HISTORY_FILE).read_text())
    assert [h["epoch"] for h in history] == [1, 2]


def test_in_float32_three_steps_on_two_processes_give_one_process_weights(
    mnist, data_cache, tmp_path
):
    sys.path.insert(0, str(TESTS))
    from torchrun_entry import STEPS_CONFIG, STEPS_SUBSET, small_splits

    result = torchrun([str(TESTS / "torchrun_entry.py"), "steps", "two"], tmp_path, data_cache)
    assert result.returncode == 0, result.stderr[-3000:]
    one = fit(STEPS_CONFIG, small_splits(mnist, STEPS_SUBSET), tmp_path / "one", "fast")
    two, _ = checkpoint.read_weights(tmp_path / "two")
    # Relative to each tensor's largest value, one process and two differ by 6e-5 to 3e-4 here,
    # as much as one thread and two on one process (3e-4): summation order alone. Batch norm
    # over each rank's half of the batch instead of the global batch makes it 0.38.
    for name, weight in one.model.state_dict().items():
        if weight.is_floating_point():
            other = torch.from_numpy(two[name])
            assert (weight - other).abs().max() <= 5e-3 * weight.abs().max(), name


class Interrupt(Exception):
    pass


def test_a_run_begun_on_one_process_resumes_on_two(one_process, small, data_cache, tmp_path):
    def stop_after_epoch_1(event):
        if event["event"] == "epoch" and event["epoch"] == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        fit(recipe("fast", epochs=2), small, tmp_path / "run", "fast", stop_after_epoch_1)
    args = ["-m", "digitrec", "train", "--resume", "run", "--subset", "2000"]
    result = torchrun(args, tmp_path, data_cache)
    assert result.returncode == 0, result.stderr[-3000:]
    history = json.loads((tmp_path / "run" / checkpoint.HISTORY_FILE).read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    assert history[0]["validation_loss"] == one_process.history[0]["validation_loss"]
    card = json.loads((tmp_path / "run" / checkpoint.CARD_FILE).read_text())
    assert card["metrics"]["test_accuracy"] == pytest.approx(
        one_process.card["metrics"]["test_accuracy"], abs=SAME_MODEL_POINTS
    )


def test_ensemble_members_train_in_parallel_one_per_process(data_cache, tmp_path):
    result = torchrun([str(TESTS / "torchrun_entry.py"), "ensemble", "run"], tmp_path, data_cache)
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "run"
    for member in ("0", "1"):
        assert sorted(p.name for p in (run / "members" / member).iterdir()) == RUN_FILES
    card = json.loads((run / checkpoint.CARD_FILE).read_text())
    assert len(card["members"]) == 2
    assert card["metrics"]["test_accuracy"] > 0.3  # chance is 10%; 32 steps each
    history = json.loads((run / checkpoint.HISTORY_FILE).read_text())
    assert sorted({h["member"] for h in history}) == [1, 2]


def test_a_rank_that_hangs_ends_the_job_with_a_clear_message(data_cache, tmp_path):
    started = time.perf_counter()
    result = torchrun([str(TESTS / "torchrun_entry.py"), "hang", "run"], tmp_path, data_cache)
    assert result.returncode != 0
    assert "rank 0 of 2 waited 3s for the other processes" in result.stderr
    assert time.perf_counter() - started < 120  # rank 1 sleeps for 600 s


def test_the_scaling_benchmark_adds_its_figures_to_the_bench_json(
    data_cache, monkeypatch, tmp_path, capsys
):
    from digitrec.cli import main

    monkeypatch.setenv("XDG_CACHE_HOME", str(data_cache.parent))
    monkeypatch.delenv("DIGITREC_DATA", raising=False)
    out = tmp_path / "bench.json"
    out.write_text(json.dumps({"recipes": {"fast": {}}}))  # an earlier time-to-accuracy run
    args = [
        "bench",
        "train",
        "--nproc",
        "1,2",
        "--seeds",
        "1",
        "--subset",
        "600",
        "--max-epochs",
        "0.5",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    report = json.loads(out.read_text())
    assert report["recipes"] == {"fast": {}}  # kept
    scaling = report["scaling"]["recipes"]["fast"]
    assert list(scaling["processes"]) == ["1", "2"]
    for entry in scaling["processes"].values():
        assert entry["seconds_per_epoch"] > 0 and entry["speedup"] > 0
        assert entry["processes"] * entry["threads_per_process"] >= entry["cores_used"]
    assert scaling["processes"]["1"]["speedup"] == 1.0
    assert "speed-up" in capsys.readouterr().out
