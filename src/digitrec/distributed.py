"""Data-parallel training on several processes and machines, as `torchrun` launches it.

torchrun starts one process per worker and tells each where it stands through the environment
(RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT). Without those
variables training is the single process it always was, and nothing here touches it.

The scheme: every rank holds the whole in-memory training set and draws the same permutation
from the same seeded generator each epoch; rank r trains on every N-th image of each global
batch (`shard`), so together the ranks see each image exactly once per epoch and the global
batch stays the recipe's. That is the scaling rule: the per-rank batch is the global batch / N
and the learning rate is unchanged, because the optimizer sees the same global batch as on one
process. DistributedDataParallel averages the gradients and batch norm statistics span the
global batch (`sync_batch_norm`), so N processes train the model one process would (with
augmentation, each rank draws its own random distortions: the same kind of run, not the same
bits). Rank 0 alone
evaluates, reports and writes files; checkpoints hold the unwrapped model, so a run resumes on
any number of processes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from digitrec.config import available_cores

# Long enough for rank 0's validation pass between epochs, short enough that a rank that hangs
# (a stopped process, a lost machine) ends the job within minutes instead of never.
DEFAULT_TIMEOUT_S = 120.0
# How long ranks wait for each other where the wait is a whole job's work (the final evaluation
# on rank 0, the slowest ensemble member): a rank that dies ends the job sooner through torchrun.
LONG_WAIT_S = 24 * 3600.0


class CollectiveTimeout(RuntimeError):
    """A collective waited longer than the timeout: another rank failed or hangs."""


@dataclass(frozen=True)
class World:
    """Where this process stands among the training processes (one process by default)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0  # index among the processes on this machine
    local_world_size: int = 1  # processes on this machine

    @property
    def is_main(self) -> bool:
        """Rank 0 evaluates, reports progress and writes the run directory."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


SINGLE_PROCESS = World()


def world_from_env(env: Mapping[str, str] = os.environ) -> World:
    """The World torchrun describes in the environment; one process when it describes none."""
    if "RANK" not in env or "WORLD_SIZE" not in env:
        return SINGLE_PROCESS
    world_size = int(env["WORLD_SIZE"])
    return World(
        rank=int(env["RANK"]),
        world_size=world_size,
        local_rank=int(env.get("LOCAL_RANK", 0)),
        local_world_size=int(env.get("LOCAL_WORLD_SIZE", world_size)),
    )


def backend_for(device: str) -> str:
    """NCCL between GPUs, gloo between CPUs."""
    return "nccl" if device.startswith("cuda") else "gloo"


def threads_per_process(world: World, cores: int | None = None) -> int:
    """This machine's cores shared out among its processes, so they do not oversubscribe."""
    cores = cores or available_cores()
    return max(1, cores // world.local_world_size)


@contextmanager
def process_group(
    world: World, device: str = "cpu", timeout_s: float = DEFAULT_TIMEOUT_S
) -> Iterator[None]:
    """Join the training processes for the duration of the block (nothing for one process).

    Collectives give up after `timeout_s`, raising `CollectiveTimeout` that names this rank; a
    rank that fails outright makes torchrun stop the others.
    """
    if not world.is_distributed:
        yield
        return
    if device.startswith("cuda"):
        torch.cuda.set_device(world.local_rank)  # so "cuda" means this process's own GPU
    torch.set_num_threads(threads_per_process(world))
    # env:// rendezvous: torchrun set MASTER_ADDR and MASTER_PORT.
    dist.init_process_group(backend_for(device), timeout=timedelta(seconds=timeout_s))
    try:
        yield
        # Leave together: a rank that tears down its connections while rank 0 still evaluates
        # and writes can crash at exit ("terminate called without an active exception").
        wait_for_all(world, LONG_WAIT_S)
    except RuntimeError as error:  # gloo raises a plain RuntimeError, NCCL a DistError
        if "timed out" not in str(error).lower() and "timeout" not in str(error).lower():
            raise
        raise CollectiveTimeout(
            f"rank {world.rank} of {world.world_size} waited {timeout_s:g}s for the other "
            "processes: one of them failed or hangs (raise --timeout if rank 0's evaluation "
            "between epochs takes longer)"
        ) from error
    finally:
        dist.destroy_process_group()


def shard(batch: torch.Tensor, world: World) -> torch.Tensor:
    """This rank's part of a global batch of indices: every N-th one from offset `rank`.

    The shares of all ranks are disjoint and cover the batch; they differ in size by at most one.
    """
    if not world.is_distributed:
        return batch
    return batch[world.rank :: world.world_size]


def rank_generator(generator: torch.Generator, world: World) -> torch.Generator:
    """A random stream of this rank's own, seeded from the stream the ranks share.

    Every rank must keep drawing the same permutations from the shared generator, so per-image
    random draws (augmentation) come from here instead.
    """
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    return torch.Generator().manual_seed(seed + world.rank)


def sum_over_ranks(tensor: torch.Tensor, world: World) -> torch.Tensor:
    """The elementwise sum of `tensor` over all ranks (the tensor itself for one process)."""
    if world.is_distributed:
        tensor = tensor.clone()
        dist.all_reduce(tensor)
    return tensor


def wait_for_all(world: World, timeout_s: float) -> None:
    """Block until every rank gets here, waiting at most `timeout_s` (a long wait is fine)."""
    if world.is_distributed:
        # A group of its own, because the training group's timeout is sized for one epoch.
        group = dist.new_group(backend="gloo", timeout=timedelta(seconds=timeout_s))
        dist.barrier(group=group)


class _GlobalBatchNormFunction(torch.autograd.Function):
    """Batch norm over the global batch: one all-reduce forward, one backward (as SyncBatchNorm).

    Forward: each rank's per-channel count, mean and variance, combined over the ranks, then
    the native (eval-mode) batch norm kernel applies them. Backward: the gradient of the input
    needs the global sums of dy and dy * (x - mean), since every rank's output depends on every
    rank's input through the statistics; the weight and bias get this rank's share, which DDP
    adds up like any other parameter's gradient.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, eps: float):  # x: (N, C, ...)
        # (C,) each; the kernel of BatchNorm's own statistics, 10x faster than var_mean here.
        mean, variance = torch.batch_norm_update_stats(x.float(), None, None, 0.0)
        count = x.numel() // x.shape[1]
        # (3, C) in float64: count, sum and sum of squares, so that combining is exact enough.
        stats = torch.stack(
            [torch.full_like(mean, count), mean * count, (variance + mean * mean) * count]
        ).double()
        dist.all_reduce(stats)
        n = stats[0]
        mean = stats[1] / n
        variance = (stats[2] / n - mean * mean).clamp_min(0)
        mean, variance = mean.float(), variance.float()
        y = F.batch_norm(x, mean, variance, weight, bias, training=False, eps=eps)
        invstd = torch.rsqrt(variance + eps)
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.count = float(n[0])
        ctx.mark_non_differentiable(mean, variance)
        return y, mean, variance, float(n[0])

    @staticmethod
    def backward(ctx, grad_y, *_):
        x, weight, mean, invstd = ctx.saved_tensors
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        dy, centred = grad_y.float(), x.float() - mean.view(shape)
        local = torch.stack([dy.sum(dims), (dy * centred).sum(dims)])  # (2, C)
        grad_weight = local[1] * invstd if weight is not None else None
        grad_bias = local[0].clone() if weight is not None else None
        sums = local.clone()
        dist.all_reduce(sums)
        mean_dy, mean_dy_centred = sums[0] / ctx.count, sums[1] / ctx.count
        scale = invstd if weight is None else invstd * weight
        # dx = w * invstd * (dy - mean(dy) - (x - mean) * invstd^2 * mean(dy * (x - mean)))
        grad_x = dy - mean_dy.view(shape) - centred * (invstd**2 * mean_dy_centred).view(shape)
        grad_x = grad_x * scale.view(shape)
        return grad_x.to(x.dtype), grad_weight, grad_bias, None


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm whose training statistics span the global batch, on CPUs too.

    `torch.nn.SyncBatchNorm` does this on GPUs only (its kernels are CUDA's); on CPUs this
    takes its place with the same arithmetic. Same state_dict as BatchNorm.
    """

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (N, C, ...), got {x.dim()}D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        y, mean, variance, n = _GlobalBatchNormFunction.apply(x, self.weight, self.bias, self.eps)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = self.momentum
                if momentum is None:  # cumulative average
                    momentum = 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean, momentum)
                self.running_var.lerp_(variance * (n / max(n - 1, 1)), momentum)  # unbiased
        return y


def sync_batch_norm(model: nn.Module, device: str) -> nn.Module:
    """Every BatchNorm layer made to use the global batch's statistics (same weights)."""
    if device.startswith("cuda"):
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, child in model.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            replacement = GlobalBatchNorm(
                child.num_features,
                child.eps,
                child.momentum,
                child.affine,
                child.track_running_stats,
            )
            # The same Parameter and buffer objects, so an optimizer built before still holds them.
            if child.affine:
                replacement.weight, replacement.bias = child.weight, child.bias
            if child.track_running_stats:
                replacement.running_mean = child.running_mean
                replacement.running_var = child.running_var
                replacement.num_batches_tracked = child.num_batches_tracked
            replacement.train(child.training)
            setattr(model, name, replacement)
        else:
            sync_batch_norm(child, device)
    return model


def wrap(model: nn.Module, world: World, device: str) -> nn.Module:
    """The model to train: DDP with synchronised batch norm, or the model itself when alone."""
    if not world.is_distributed:
        return model
    model = sync_batch_norm(model, device)
    device_ids = [world.local_rank] if device.startswith("cuda") else None
    return DistributedDataParallel(model, device_ids=device_ids)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside DDP (whose state_dict keys carry no "module." prefix)."""
    return model.module if isinstance(model, DistributedDataParallel) else model
