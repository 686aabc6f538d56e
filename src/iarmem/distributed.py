"""Data parallelism under torchrun: which shard this process takes, and exact reductions.

Outside torchrun everything degrades to one process. Reductions are exact: sums in float64,
maxima with their argmax broken towards the smallest image id, so N processes give what one
process gives.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1


def init_world(device: str = "cpu") -> World:
    """Join the torchrun process group when launched by torchrun (gloo on CPU, nccl on CUDA)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World(0, 1, torch.device(device))
    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    dev = torch.device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return World(rank, size, dev)


def shard(ids: np.ndarray, world: World) -> np.ndarray:
    """This rank's share: every size-th id starting at rank (balanced, order-preserving)."""
    return ids[world.rank:: world.size]


def all_sum(t: torch.Tensor, world: World) -> torch.Tensor:
    if world.active:
        t = t.to(world.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.cpu()


def all_max_argmax(max_: torch.Tensor, arg: torch.Tensor, world: World) -> tuple[torch.Tensor, torch.Tensor]:
    """Element-wise max over ranks with its argmax; ties go to the smallest id (as in one process)."""
    if not world.active:
        return max_, arg
    maxes = [torch.empty_like(max_) for _ in range(world.size)]
    args = [torch.empty_like(arg) for _ in range(world.size)]
    dist.all_gather(maxes, max_.contiguous())
    dist.all_gather(args, arg.contiguous())
    best, best_arg = maxes[0].clone(), args[0].clone()
    for m, a in zip(maxes[1:], args[1:]):
        take = (m > best) | ((m == best) & (a < best_arg))
        best = torch.where(take, m, best)
        best_arg = torch.where(take, a, best_arg)
    return best, best_arg


def all_gather_object(obj: object, world: World) -> list[object]:
    if not world.active:
        return [obj]
    out: list[object] = [None] * world.size
    dist.all_gather_object(out, obj)
    return out


def barrier(world: World) -> None:
    if world.active:
        dist.barrier()


def close(world: World) -> None:
    if world.active and dist.is_initialized():
        dist.destroy_process_group()
