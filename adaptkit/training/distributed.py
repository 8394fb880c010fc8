"""Multi-process training under ``torchrun``: gloo on CPU, nccl on GPU.

A run first reads where it stands from the environment ``torchrun`` sets (:func:`launch`:
rank, world size, device; nothing is joined yet), checks everything it can, and joins the
process group only then (:func:`join`). So a refusal, made identically by every process, comes
before any process waits on a peer. The engines on top: DDP (:mod:`torch.nn.parallel`) by
default, FSDP2 with ``--shard`` (:mod:`adaptkit.training.sharded`).
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field

import torch


@dataclass
class Dist:
    """Where this process stands.

    Attributes:
        rank: This process's rank (``RANK``).
        world: How many processes train (``WORLD_SIZE``; 1 without torchrun).
        device: Where this process computes.
        launched: Whether ``torchrun`` (or another launcher setting ``WORLD_SIZE``) started it.
    """

    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    launched: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    def all_sum(self, value: float) -> float:
        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t)
        return float(t.item())

    def all_gather_int(self, value: int) -> list[int]:
        """``value`` of every process, by rank (a tensor collective: no pickling)."""
        if self.world == 1:
            return [int(value)]
        mine = torch.tensor([int(value)], dtype=torch.int64, device=self.device)
        out = [torch.zeros_like(mine) for _ in range(self.world)]
        torch.distributed.all_gather(out, mine)
        return [int(t.item()) for t in out]

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()


def launch(device: str = "auto") -> Dist:
    """This process's rank, world size and device, from the environment; joins nothing.

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
    launched = "WORLD_SIZE" in os.environ
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(device=torch.device("cuda" if cuda else "cpu"), launched=launched)
    rank = int(os.environ["RANK"])
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return Dist(rank=rank, world=world, device=torch.device("cuda", local), launched=True)
    return Dist(rank=rank, world=world, device=torch.device("cpu"), launched=True)


#: Runs this process has joined: each joins under its own key prefix in the launcher's store.
_JOINS = itertools.count()


def join(dist: Dist) -> None:
    """Join the process group (nccl on CUDA, gloo on CPU) when more than one process trains.

    Each run of a process joins under a prefix of its own in the store ``torchrun`` provides:
    ``destroy_process_group`` leaves the previous run's keys (the peers' addresses) in the store,
    and a second run in the same processes (the contract kit, a notebook) would otherwise read
    them and connect to a peer that has not arrived yet. Every process runs the same runs in the
    same order, so the prefixes agree.
    """
    if dist.world <= 1 or torch.distributed.is_initialized():
        return
    store, _, _ = next(torch.distributed.rendezvous("env://", dist.rank, dist.world))
    torch.distributed.init_process_group(
        backend="nccl" if dist.device.type == "cuda" else "gloo",
        store=torch.distributed.PrefixStore(f"adaptkit-run-{next(_JOINS)}", store),
        rank=dist.rank,
        world_size=dist.world,
    )


def shutdown(dist: Dist) -> None:
    if dist.world > 1 and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
