"""Scaling out under `torchrun`: ranks share the images and all-reduce their confusion matrices."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from naclip.segmenter import resolve_device


@dataclass
class Group:
    """This process's place in the run; a single process is rank 0 of 1."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owned: bool = False  # whether we started the process group (and so end it)
    backend: str | None = None

    @property
    def main(self) -> bool:
        return self.rank == 0

    def device(self, requested: str | torch.device) -> torch.device:
        """The requested device; under several ranks, `auto`/`cuda` become this rank's GPU."""
        device = resolve_device(requested)
        if self.world > 1 and device.type == "cuda" and device.index is None:
            device = torch.device("cuda", self.local_rank)
        return device

    def shard(self, indices: list[int]) -> list[int]:
        return indices[self.rank :: self.world]

    def sum(self, array: np.ndarray) -> np.ndarray:
        """Exact element-wise sum of an int64 array over ranks."""
        if self.world == 1:
            return array
        tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.int64))
        if self.backend == "nccl":
            tensor = tensor.cuda()
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor.cpu().numpy()

    def gather(self, value: Any) -> list[Any]:
        """Every rank's `value`, in rank order."""
        if self.world == 1:
            return [value]
        values: list[Any] = [None] * self.world
        dist.all_gather_object(values, value)
        return values

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def close(self) -> None:
        if self.owned and dist.is_initialized():
            dist.destroy_process_group()
            self.owned = False


def join(device: str | torch.device = "auto") -> Group:
    """Join the process group that `torchrun` describes in the environment (gloo on CPU, nccl on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Group()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    group = Group(rank, world, local_rank)
    cuda = group.device(device).type == "cuda"
    if cuda:
        torch.cuda.set_device(local_rank)
    if dist.is_initialized():
        group.backend = dist.get_backend()
    else:
        group.backend = "nccl" if cuda else "gloo"
        dist.init_process_group(group.backend)
        group.owned = True
    return group
