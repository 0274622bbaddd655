"""Processes and devices: one CPU, one GPU, or many processes under ``torchrun``.

``torchrun`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; with more than one
process the group uses NCCL on GPUs and gloo on the CPU. Only rank 0 writes
checkpoints, metrics and the console. How the model is spread over the processes
(DDP or FSDP2) is ``trainer/parallel.py``'s, never ``model.py``'s.

A worker under torchrun ends itself within a second of its agent's death, and
``srun``'s tasks get torchrun's variables from Slurm's (``trainer/launch.py``, both
set up before torch is imported).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as torch_dist

from trainer.config import ConfigError

T = TypeVar("T")


@dataclass(frozen=True)
class Dist:
    """This process's place in the run."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str | None = None) -> Dist:
    """Join the process group ``torchrun`` set up (if any) and pick this process's device.

    ``device`` is ``cpu``, ``cuda`` or None (a GPU when there is one).
    """
    if device not in (None, "cpu", "cuda"):
        raise ConfigError(f"--device {device!r}: choose cpu or cuda (left out: a GPU when there is one)")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device is None else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise ConfigError(
            "--device cuda: no CUDA GPU is visible to this process; leave it out to train on the CPU"
        )
    if use_cuda:
        torch.cuda.set_device(local_rank)
    where = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if world_size > 1 and not torch_dist.is_initialized():
        torch_dist.init_process_group("nccl" if use_cuda else "gloo", device_id=where if use_cuda else None)
    return Dist(rank, world_size, local_rank, where)


def main_first(dist: Dist, work: Callable[[], T]) -> T:
    """``work()`` on rank 0, then on the other ranks once rank 0 is through.

    Rank 0 may change the run directory (lock it, move damaged checkpoints aside)
    before the others read it. An error on rank 0 ends every rank: the others raise
    a ConfigError of their own, which they do not print (rank 0 says why).
    """
    if dist.main:
        try:
            result = work()
        except BaseException:
            all_reduce_sum([1], dist)
            raise
        all_reduce_sum([0], dist)
        return result
    if all_reduce_sum([0], dist)[0]:
        raise ConfigError("rank 0 stopped before training")
    return work()


def all_reduce_sum(values: list[float], dist: Dist) -> list[float]:
    """Element-wise sums of ``values`` over all processes (one collective; the values as given on one)."""
    if dist.world_size == 1:
        return [float(value) for value in values]
    tensor = torch.tensor(values, dtype=torch.float64, device=dist.device)
    torch_dist.all_reduce(tensor)
    return tensor.tolist()


def barrier(dist: Dist) -> None:
    """Wait for every process (e.g. for rank 0 to finish a checkpoint before the others exit)."""
    if dist.world_size > 1:
        torch_dist.barrier()


def close(dist: Dist) -> None:
    if dist.world_size > 1 and torch_dist.is_initialized():
        torch_dist.destroy_process_group()
