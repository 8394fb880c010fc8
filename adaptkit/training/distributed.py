"""Multi-process training under ``torchrun``: the real DDP engine, gloo on CPU, nccl on GPU."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0

    def all_sum(self, value: float) -> float:
        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t)
        return float(t.item())

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()


def init_distributed(device: str = "auto") -> Dist:
    """Join the process group when launched by torchrun (``WORLD_SIZE`` > 1).

    Args:
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``. Under torchrun each process
            takes the GPU of its ``LOCAL_RANK``.
    """
    from adaptkit.errors import AdaptkitError

    if device not in ("auto", "cpu", "cuda"):
        raise AdaptkitError(f"unknown device {device!r}; valid: auto, cpu, cuda", key="--device")
    if device == "cuda" and not torch.cuda.is_available():
        raise AdaptkitError("--device cuda, but CUDA is not available here", key="--device")
    cuda = torch.cuda.is_available() and device != "cpu"
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(device=torch.device("cuda" if cuda else "cpu"))
    rank = int(os.environ["RANK"])
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        where, backend = torch.device("cuda", local), "nccl"
    else:
        where, backend = torch.device("cpu"), "gloo"
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend=backend)
    return Dist(rank=rank, world=world, device=where)


def shutdown(dist: Dist) -> None:
    if dist.world > 1 and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
