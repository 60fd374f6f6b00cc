"""Where this process sits in the job, and process-group setup.

Reads the torchrun variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT);
a process started without them is a single-process job.
"""

from __future__ import annotations

import datetime
import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def discover() -> DistEnv:
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return DistEnv(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)))
    return DistEnv()


class DistSetupError(RuntimeError):
    """The job cannot form its process group; the message says which setting is wrong."""


def check_master_address(environ: dict | os._Environ = os.environ) -> None:
    """Fail fast (instead of hanging in the rendezvous) when MASTER_ADDR does not resolve."""
    addr, port = environ.get("MASTER_ADDR"), environ.get("MASTER_PORT", "29500")
    if not addr:
        raise DistSetupError("MASTER_ADDR is not set (launch with torchrun, or set MASTER_ADDR and MASTER_PORT)")
    try:
        socket.getaddrinfo(addr, int(port))
    except (socket.gaierror, ValueError) as exc:
        raise DistSetupError(f"MASTER_ADDR={addr!r} MASTER_PORT={port!r} does not resolve: {exc}") from None


def init_distributed(device: torch.device, timeout_s: float = 300.0) -> DistEnv:
    """Discover the job layout and, for more than one process, join the default group
    (NCCL on CUDA, gloo on CPU)."""
    env = discover()
    if env.distributed and not dist.is_initialized():
        check_master_address()
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(env.local_rank)
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return env


def shutdown() -> None:
    """Leave the process group together: a rank tearing down gloo while a peer still talks
    to it aborts the peer ("terminate called without an active exception")."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
