"""Where this process sits in the job, and process-group setup.

Launchers: torchrun (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), and MPI
(`mpirun -np N baton train ...`: Open MPI's OMPI_COMM_WORLD_* or MPICH's PMI_* variables;
rank 0's address and a free port reach the others through mpi4py). A process started by
neither is a single-process job.
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


MPI_VARIABLES = (  # (rank, size, local rank) as Open MPI and MPICH (Hydra) name them
    ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"),
    ("PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID"),
)


def discover(environ=None) -> DistEnv:
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return DistEnv(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)))
    for rank, size, local in MPI_VARIABLES:
        if rank in env and size in env:
            return DistEnv(int(env[rank]), int(env[size]), int(env.get(local, 0)))
    return DistEnv()


def _mpi_rendezvous(env: DistEnv) -> None:
    """Under MPI, agree on MASTER_ADDR/MASTER_PORT (rank 0's address, a free port of its)
    and export the torchrun-style variables for torch.distributed's env:// init."""
    if "MASTER_ADDR" not in os.environ:
        try:
            from mpi4py import MPI
        except ImportError:
            raise DistSetupError("launched by MPI without MASTER_ADDR: install mpi4py (pip install mpi4py)") from None
        address = None
        if env.rank == 0:
            with socket.socket() as s:
                s.bind(("", 0))
                address = (socket.gethostbyname(socket.gethostname()), s.getsockname()[1])
        os.environ["MASTER_ADDR"], port = MPI.COMM_WORLD.bcast(address, root=0)
        os.environ["MASTER_PORT"] = str(port)
    os.environ.update(RANK=str(env.rank), WORLD_SIZE=str(env.world_size), LOCAL_RANK=str(env.local_rank))


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
        if "RANK" not in os.environ:
            _mpi_rendezvous(env)
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
