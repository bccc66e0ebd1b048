"""Process-group handling for ``torchrun``: the same code runs as one process or as K DDP ranks.

``torchrun`` sets ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK``; without them the run is a single process and every
helper here is a no-op. The backend is NCCL on GPUs and gloo on CPUs (which is how the test suite runs DDP).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device_type: str, graph_capture: bool = False) -> DistInfo:
    """Join the process group if launched by torchrun (idempotent), else describe a single process.

    Args:
        device_type: "cuda" (NCCL) or "cpu" (gloo).
        graph_capture: the training step will be captured as a CUDA graph with its collectives in it. PyTorch asks
            for NCCL's asynchronous error handling to be off then (its watchdog must not query captured work); it is
            set here, before the process group exists, unless the user set ``TORCH_NCCL_ASYNC_ERROR_HANDLING``.
            torchrun still stops every rank when one of them dies.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if graph_capture and device_type == "cuda":
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "0")
    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        if device_type == "cuda":
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return info


def shutdown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum a few scalars over all ranks (identity for a single process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def all_gather_objects(obj):
    """Every rank's ``obj`` as a list (``[obj]`` for a single process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def broadcast_flag(flag: bool, device: torch.device) -> bool:
    """True on every rank if it is True on any rank (used to stop all ranks together on a non-finite loss)."""
    return all_reduce_sum([float(flag)], device)[0] > 0
