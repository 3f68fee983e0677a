"""Data-parallel training under torchrun: one process per device, each taking its share of every
optimiser step's batch, with the gradients added up across processes, so the update equals the
one-process update on the whole batch. The reward model wraps its model in DistributedDataParallel
(`data_parallel`, `trainers.reward.fit`); PPO shards each rollout and sums the gradients itself
(`sum_gradients`, `trainers.ppo`), since its loss mixes two forward paths (policy and demonstrations).

    torchrun --nproc_per_node 2 -m rlhf.cli reward train --data feedback.jsonl --out runs/rm-ddp

torchrun sets WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; `init` joins the process
group from them (NCCL for CUDA tensors, gloo for CPU ones) and gives each process its own GPU.
Without that launch every helper is the one-process identity: `split` returns the whole batch,
`average` the value itself, `data_parallel` leaves the model bare, `barrier` returns at once.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

T = TypeVar("T")


def launched() -> bool:
    """Started by torchrun (or anything that sets its variables) with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init() -> None:
    """Join the process group once per process and take this process's GPU (LOCAL_RANK), so the
    model placed afterwards lands on it; nothing without a launch. The group is left at exit."""
    if not launched() or _joined():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    # Both backends where there are GPUs: a model configured onto the CPU (`device: cpu`) still trains.
    dist.init_process_group("cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo")
    atexit.register(teardown)


def teardown() -> None:
    if _joined():
        dist.destroy_process_group()


def _joined() -> bool:
    return dist.is_available() and dist.is_initialized()


def world() -> int:
    """Processes training together: the process group's size, 1 when there is none."""
    return dist.get_world_size() if _joined() else 1


def rank() -> int:
    """This process's rank; before `init`, the one torchrun gave it (RANK), so output can be left to rank 0 early."""
    return dist.get_rank() if _joined() else int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    """The process that evaluates, writes the version and prints: rank 0."""
    return rank() == 0


def shard(items: Sequence[T], rank: int, world: int) -> list[T]:
    """Rank `rank`'s contiguous share of `items` (of a length-sorted batch: similar lengths, little
    padding). Shares differ in size by one at most, are disjoint and, in rank order, are `items`."""
    per, extra = divmod(len(items), world)
    start = rank * per + min(rank, extra)
    return list(items[start : start + per + (rank < extra)])


def split(batch: list[int], weights: torch.Tensor) -> tuple[list[int], float]:
    """This process's examples of one optimiser step's `batch`, and the factor its loss (a weighted
    mean over those examples, `weights` rows: examples x heads) is multiplied by.

    The one-process loss is sum(w*l) / W over the batch (W: the batch's weight sum). A process's
    mean is sum_r(w*l) / W_r; times world * W_r / W it is world * sum_r(w*l) / W, and DDP's mean of
    the processes' gradients is then the gradient of sum(w*l) / W: the same update, whatever the
    bootstrap and recency weights put on each share. A batch smaller than the world leaves some
    processes without an example: they run one with factor 0, so the gradient all-reduce still
    meets every process."""
    if world() == 1:
        return batch, 1.0
    mine = shard(batch, rank(), world())
    if not mine:
        return batch[:1], 0.0
    total = max(float(weights[batch].sum()), 1e-8)  # the clamp of trainers.reward_losses' weighted mean
    return mine, world() * float(weights[mine].sum()) / total


def average(value: torch.Tensor) -> float:
    """The mean of `value` over the processes (each holds its share times the world: the mean is the
    one-process value); `value` itself in one process."""
    if world() == 1:
        return value.item()
    total = value.detach().clone()
    dist.all_reduce(total)
    return total.item() / world()


def total(value: torch.Tensor) -> torch.Tensor:
    """`value` (sums, counts) added up over the processes; `value` itself in one process."""
    if world() == 1:
        return value
    summed = value.detach().clone()
    dist.all_reduce(summed)
    return summed


def gathered(values: list[float]) -> list[float]:
    """Every process's `values`, concatenated in rank order: for contiguous shards (`shard`), the
    one-process list."""
    if world() == 1:
        return values
    parts: list[list[float] | None] = [None] * world()
    dist.all_gather_object(parts, values)
    return [v for part in parts for v in part or []]


def all_agree(flag: bool) -> bool:
    """True only if every process says True, so that all take the same branch (one that stopped
    alone would leave the others waiting in the next collective)."""
    if world() == 1:
        return flag
    agreed = torch.tensor([float(flag)])
    dist.all_reduce(agreed, op=dist.ReduceOp.MIN)
    return bool(agreed.item())


def sum_gradients(parameters: Sequence[torch.nn.Parameter]) -> None:
    """Add up the processes' gradients, each already weighted by its share of the batch: the sum is
    the one-process gradient. A parameter without a gradient here counts as zero."""
    if world() == 1:
        return
    for parameter in parameters:
        if parameter.grad is None:
            parameter.grad = torch.zeros_like(parameter)
        dist.all_reduce(parameter.grad)


@contextmanager
def data_parallel(holder: Any) -> Iterator[None]:
    """`holder.model` wrapped in DistributedDataParallel while the block trains (it broadcasts rank
    0's weights at the start and averages the gradients in every backward pass), the bare model
    again after it; no wrapper in one process."""
    if world() == 1:
        yield
        return
    model = holder.model
    device = next(model.parameters()).device
    holder.model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    try:
        yield
    finally:
        holder.model = model


def barrier() -> None:
    """Wait until every process gets here (the others wait for rank 0's version directory)."""
    if world() > 1:
        dist.barrier()
