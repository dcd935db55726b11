"""Process-group setup for data-parallel training under torchrun or SLURM (gloo on CPU, NCCL on CUDA).

torchrun and submitit's TorchDistributedEnvironment export RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR and MASTER_PORT; without them the run is a single process and nothing is set up.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistributedContext:
    """Rank, world size and device of this process; rank 0 of a world of 1 when not distributed."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # True when init_distributed created the process group

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum `tensor` over all ranks in place (no-op in a single process); return it."""
        if self.is_distributed:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def barrier(self) -> None:
        if self.is_distributed:
            dist.barrier()


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def local_device(requested: str | torch.device, local_rank: int, world_size: int) -> torch.device:
    """Device of this rank: `cuda` becomes cuda:LOCAL_RANK, or cuda:0 when one GPU is visible."""
    device = torch.device(requested)
    if device.type != "cuda":
        return device
    if not torch.cuda.is_available():
        raise RuntimeError(f"device {requested!r} was requested but torch finds no CUDA device; "
                           "pass --device cpu or run on a machine with a GPU")
    if device.index is not None:
        if world_size > 1:
            raise ValueError(f"device {requested!r} names one GPU, but {world_size} ranks would share it; "
                             "pass --device cuda so each rank takes the GPU of its LOCAL_RANK")
        return device
    visible = torch.cuda.device_count()
    # A launcher that sets CUDA_VISIBLE_DEVICES per rank leaves one visible GPU at index 0.
    index = 0 if visible == 1 else local_rank
    if index >= visible:
        raise RuntimeError(f"LOCAL_RANK {local_rank} has no GPU: only {visible} are visible; "
                           "start no more ranks per node than there are GPUs")
    return torch.device("cuda", index)


def init_distributed(requested_device: str | torch.device = "cpu") -> DistributedContext:
    """Join the process group that torchrun or SLURM describes in the environment, if any.

    A process group created elsewhere (a test, a caller) is reused as it is.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    if dist.is_available() and dist.is_initialized():
        world_size, rank = dist.get_world_size(), dist.get_rank()
        device = local_device(requested_device, local_rank, world_size)
        return DistributedContext(rank, world_size, local_rank, device, owns_group=False)
    if world_size == 1:
        return DistributedContext(0, 1, 0, local_device(requested_device, 0, 1))

    if not 0 <= rank < world_size:
        raise ValueError(f"RANK={rank} is outside the world of WORLD_SIZE={world_size} processes")
    device = local_device(requested_device, local_rank, world_size)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    log.info("rank %d of %d joined the %s process group on %s (MASTER_ADDR=%s MASTER_PORT=%s)",
             rank, world_size, backend, device, os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT"))
    return DistributedContext(rank, world_size, local_rank, device, owns_group=True)


def shutdown_distributed(context: DistributedContext) -> None:
    """Destroy the process group if init_distributed created it."""
    if context.owns_group and dist.is_initialized():
        dist.destroy_process_group()
