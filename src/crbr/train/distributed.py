"""Process-group setup for `torchrun` (DDP). A plain `python`/`crbr` run is world size 1."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group torchrun describes (RANK / WORLD_SIZE / LOCAL_RANK env vars).

    Backend: NCCL when training on CUDA, gloo otherwise. Idempotent.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device=cuda but CUDA is not available")
    dev = torch.device(f"cuda:{local}") if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    return DistInfo(rank, world, local, dev)


def shutdown_distributed(ok: bool = True) -> None:
    """Leave the process group torchrun set up; a no-op when there is none.

    On success every rank first meets at a barrier, so none tears its group down while another still talks
    to it. Without an explicit `destroy_process_group`, gloo's worker threads are torn down at interpreter
    exit, which can abort the process ("terminate called without an active exception") after all the work
    is done. It makes that rarer, not impossible: under load the interpreter's C++ teardown can still
    abort (1 run in 15-40 of the two-process test, with or without the barrier), so the `crbr`
    command also skips that teardown after success (`crbr.cli.main._leave_process_group`). After a
    failure the barrier is skipped: the other ranks may never reach it.
    """
    if not dist.is_initialized():
        return
    try:
        if ok:
            dist.barrier()
    finally:
        dist.destroy_process_group()
