"""Multi-process training with ``torchrun``: process-group set-up and rank helpers.

``torchrun --nproc_per_node=N -m cvkit train ...`` starts N processes and sets ``RANK``,
``LOCAL_RANK`` and ``WORLD_SIZE``; :func:`init_distributed` reads them and joins the group
(NCCL on CUDA, gloo on the CPU). Without those variables everything here is a no-op and
:func:`is_main_process` is true, so single-process code needs no special case.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job: global rank, rank on its node and job size."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1

    @property
    def enabled(self) -> bool:
        """True when the job has more than one process."""
        return self.world_size > 1


def init_distributed(backend: str | None = None) -> DistInfo:
    """Join the process group described by torchrun's environment variables, if any.

    Args:
        backend: ``nccl`` or ``gloo``; default NCCL when CUDA is available, else gloo.

    Returns:
        This process's :class:`DistInfo` (world size 1 outside torchrun).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    info = DistInfo(
        rank=int(os.environ["RANK"]),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        world_size=world_size,
        local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size))),
    )
    if not dist.is_initialized():
        if backend is None:
            backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend=backend, rank=info.rank, world_size=info.world_size)
    return info


def is_distributed() -> bool:
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's global rank (0 outside a process group)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """Number of processes in the job (1 outside a process group)."""
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    """True on rank 0: the process that logs, evaluates and writes checkpoints."""
    return rank() == 0


def barrier() -> None:
    """Wait for every process (no-op outside a process group)."""
    if is_distributed():
        dist.barrier()


def mean_across_processes(values: torch.Tensor) -> torch.Tensor:
    """The element-wise mean of ``values`` over all processes (``values`` itself when alone)."""
    if not is_distributed():
        return values
    values = values.detach().clone()
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values / world_size()


def broadcast_object(obj: object) -> object:
    """Rank 0's ``obj`` on every process (``obj`` itself when alone)."""
    if not is_distributed():
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def cleanup_distributed() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
