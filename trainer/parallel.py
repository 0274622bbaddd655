"""How the model is spread over processes: DDP (a whole copy on each rank) or FSDP2 (``fully_shard``).

``--parallel ddp`` wraps the model in ``DistributedDataParallel``: every rank holds
all weights and optimizer moments and gradients are all-reduced. ``--parallel fsdp``
applies FSDP2's ``fully_shard`` to each encoder layer, then to the root (embeddings,
final norm, head and the tied decoder): every parameter becomes a ``DTensor``
sharded on dim 0 over the ranks, each layer is all-gathered just before its forward
and backward, and gradients are reduce-scattered, so a rank holds 1/N of the
weights, gradients and optimizer moments. With one process both are the model
itself.

Checkpoints do not depend on the choice: :func:`full_tensor` gathers each sharded
tensor whole on save, and :func:`shard_like` cuts a whole tensor into this rank's
shard on load, so a checkpoint saved under FSDP is one of the usual format and a
run can resume under either (or on one process).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor
from torch.nn.parallel import DistributedDataParallel

from trainer.distributed import Dist
from trainer.model import ModernBertMLM


def parallelize(model: ModernBertMLM, dist: Dist, parallel: str) -> nn.Module:
    """The module the training loop calls; under ``fsdp`` ``model`` itself is sharded in place.

    Call it before the optimizer is made: ``fully_shard`` replaces the parameters with
    sharded ones. Layers keep ``reshard_after_forward`` (FSDP2's default: free the
    gathered weights after each forward, gather again for backward), trading a second
    all-gather per layer for memory, as torchtitan does.
    """
    if dist.world_size == 1:
        return model
    if parallel == "ddp":
        return DistributedDataParallel(
            model, device_ids=[dist.local_rank] if dist.device.type == "cuda" else None
        )
    mesh = init_device_mesh(dist.device.type, (dist.world_size,))
    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


@contextmanager
def gradient_sync(model: nn.Module, sync: bool) -> Iterator[None]:
    """Around one micro-step's forward and backward: reduce gradients across ranks only if ``sync``.

    Micro-steps before a step's last accumulate local gradients, reduced once at its
    last: DDP's ``no_sync``, FSDP2's ``set_requires_gradient_sync``.
    """
    if isinstance(model, FSDPModule):
        model.set_requires_gradient_sync(sync)
        yield
    elif isinstance(model, DistributedDataParallel) and not sync:
        with model.no_sync():
            yield
    else:
        yield


def is_sharded(model: nn.Module) -> bool:
    """Whether ``model``'s parameters are ``DTensor`` shards (then saving it is a collective)."""
    return any(isinstance(parameter, DTensor) for parameter in model.parameters())


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The whole of ``tensor``: a ``DTensor``'s shards all-gathered (every rank must call it), else itself."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def shard_like(whole: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``whole`` laid out as ``like``: this rank's shard for a ``DTensor``, else ``whole`` on its device.

    Every rank holds ``whole`` (each reads the checkpoint), so each takes its own
    shard without communication (``src_data_rank=None``).
    """
    whole = whole.to(like.device)
    if isinstance(like, DTensor):
        return distribute_tensor(whole, like.device_mesh, like.placements, src_data_rank=None)
    return whole
