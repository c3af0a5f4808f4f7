"""torch.distributed plumbing for the training loop: process group, device, wrapping, reductions.

A run launched by ``torchrun`` (``RANK`` and ``WORLD_SIZE`` set) gets a process group (nccl on
CUDA, gloo on CPU); a plain ``python`` run gets none and every helper here degrades to a no-op.
The environment is read here and nowhere else: other code asks :func:`is_main_process`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, TypeVar

import torch
import torch.distributed as dist
from torch import nn

T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: its rank, the world size, its device, and who owns the group."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_group: bool  # True when setup_distributed created the group (so teardown destroys it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1 or dist.is_initialized()


def setup_distributed() -> DistInfo:
    """Init the process group when launched by torchrun; pick cuda:LOCAL_RANK or cpu."""
    launched = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    owns = False
    if launched and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
        owns = True
    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
    else:
        rank, world, local_rank = 0, 1, 0
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=device, owns_group=owns)


def is_main_process() -> bool:
    """True in the process that prints results and writes shared files: rank 0 under torchrun, or a
    plain run. Answers before, during and after :func:`lmzoo.train.train` (which destroys the group
    it created)."""
    if dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


def process_count() -> int:
    """The number of processes of this run (1 for a plain run), also before :func:`setup_distributed`:
    a caller sizing per-process batches asks it before :func:`lmzoo.train.train` starts."""
    if dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1")) if "RANK" in os.environ else 1


def teardown_distributed(info: DistInfo) -> None:
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def all_reduce_sum(info: DistInfo, values: list[float]) -> list[float]:
    """Sum a few floats over ranks (float64 so token counts stay exact)."""
    return _all_reduce(info, values, dist.ReduceOp.SUM)


def all_reduce_min(info: DistInfo, values: list[float]) -> list[float]:
    """The smallest of each of a few floats over ranks."""
    return _all_reduce(info, values, dist.ReduceOp.MIN)


def all_reduce_max(info: DistInfo, values: list[float]) -> list[float]:
    """The largest of each of a few floats over ranks."""
    return _all_reduce(info, values, dist.ReduceOp.MAX)


def _all_reduce(info: DistInfo, values: list[float], op) -> list[float]:
    if not info.distributed:
        return list(values)
    device = info.device if info.device.type == "cuda" else torch.device("cpu")
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=op)
    return t.tolist()


def main_decides(info: DistInfo, decide: Callable[[], T]) -> T:
    """``decide()`` on rank 0 alone (it may read files and print), its value on every rank; a
    UserError it raises is raised on every rank with the same message."""
    from lmzoo.errors import UserError

    value, error = None, None
    if info.is_main:
        try:
            value = decide()
        except UserError as e:
            error = str(e)
    value, error = broadcast_object(info, (value, error))
    if error is not None:
        raise UserError(error)
    return value


def all_gather_object(info: DistInfo, obj: object) -> list[object]:
    if not info.distributed:
        return [obj]
    out: list[object] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(info: DistInfo, obj: object, src: int = 0) -> object:
    """Rank ``src``'s ``obj`` (any picklable value) on every rank; the others' ``obj`` is ignored."""
    if not info.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def wrap_model(model: nn.Module, info: DistInfo, *, fsdp: bool) -> nn.Module:
    """DistributedDataParallel, or FSDP2 ``fully_shard`` (each block of every ModuleList, then the root)."""
    if not info.distributed:
        return model
    if fsdp:
        from torch.distributed.fsdp import fully_shard

        for module in list(model.modules()):
            if isinstance(module, nn.ModuleList):
                for block in module:
                    fully_shard(block)
        fully_shard(model)
        return model
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [info.device.index] if info.device.type == "cuda" else None
    # models whose steps leave some parameters without gradient say so (XLNet: the segment
    # parameters without token types); DDP then looks for them every step
    find_unused = bool(getattr(model, "ddp_find_unused_parameters", False))
    return DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=find_unused)


def reshard(model: nn.Module) -> None:
    """Put FSDP2 modules back on their sharded parameters after a forward without backward (evaluation):
    the root module keeps its gathered parameters after forward, and state-dict and optimizer-state
    collectives must see the sharded ones the optimizer holds. No-op without FSDP."""
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def set_grad_sync(model: nn.Module, sync: bool):
    """Context for one micro-step: gradients are all-reduced only when ``sync`` (the last micro-step)."""
    import contextlib

    from torch.nn.parallel import DistributedDataParallel

    if isinstance(model, DistributedDataParallel):
        return contextlib.nullcontext() if sync else model.no_sync()
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2 module
        model.set_requires_gradient_sync(sync)
    return contextlib.nullcontext()
