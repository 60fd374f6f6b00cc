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
import subprocess
import sys
import threading
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
    """Rank, world size and local rank from torchrun, a SLURM job step (srun) or MPI."""
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return DistEnv(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)))
    if "SLURM_PROCID" in env and "SLURM_STEP_NUM_TASKS" in env:  # a task of `srun` (not the batch shell)
        return DistEnv(int(env["SLURM_PROCID"]), int(env["SLURM_STEP_NUM_TASKS"]), int(env.get("SLURM_LOCALID", 0)))
    for rank, size, local in MPI_VARIABLES:
        if rank in env and size in env:
            return DistEnv(int(env[rank]), int(env[size]), int(env.get(local, 0)))
    return DistEnv()


def slurm_hostnames(nodelist: str) -> list[str]:
    """Expand a SLURM node list (``n[1-3],gpu7``) with ``scontrol show hostnames``."""
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DistSetupError(f"cannot expand SLURM node list {nodelist!r} with scontrol: {exc}") from None
    if out.returncode != 0:
        raise DistSetupError(f"scontrol show hostnames {nodelist!r} failed: {out.stderr.strip()}")
    return out.stdout.split()


def _slurm_rendezvous(env: DistEnv, environ=os.environ) -> None:
    """Under srun: the first node of the step is the master; the port derives from the job
    id (the same on every task, different for concurrent jobs). Checks the node count."""
    nodelist = environ.get("SLURM_STEP_NODELIST") or environ["SLURM_JOB_NODELIST"]
    hosts = slurm_hostnames(nodelist)
    expected = int(environ.get("SLURM_STEP_NUM_NODES") or environ.get("SLURM_NNODES") or len(hosts))
    if len(hosts) != expected:
        raise DistSetupError(f"SLURM node list {nodelist!r} has {len(hosts)} nodes, the step expects {expected}")
    environ.setdefault("MASTER_ADDR", hosts[0])
    if "MASTER_PORT" not in environ:
        environ["MASTER_PORT"] = str(20000 + int(environ.get("SLURM_JOB_ID", 0)) % 20000)
        if env.rank == 0:  # the master's store will listen there: say so now if it cannot
            check_port_free(int(environ["MASTER_PORT"]))
    environ.update(RANK=str(env.rank), WORLD_SIZE=str(env.world_size), LOCAL_RANK=str(env.local_rank))


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


def check_port_free(port: int) -> None:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("", port))
        except OSError as exc:
            raise DistSetupError(f"MASTER_PORT={port} is taken on this node ({exc}); set MASTER_PORT") from None


def init_distributed(device: torch.device, init_timeout_s: float = 120.0, timeout_s: float = 600.0) -> DistEnv:
    """Discover the job layout and, for more than one process, join the default group
    (NCCL on CUDA, gloo on CPU), then check it with a tiny all-reduce.

    ``init_timeout_s`` bounds forming the group and the check (a missing or unreachable
    rank ends the process with a message instead of a hang); ``timeout_s`` bounds every
    collective afterwards (a rank that died mid-step).
    """
    env = discover()
    if env.distributed and not dist.is_initialized():
        if "RANK" not in os.environ:
            if "SLURM_PROCID" in os.environ and "SLURM_STEP_NUM_TASKS" in os.environ:
                _slurm_rendezvous(env)
            else:
                _mpi_rendezvous(env)
        check_master_address()
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(env.local_rank)
        where = f"MASTER_ADDR={os.environ['MASTER_ADDR']} MASTER_PORT={os.environ.get('MASTER_PORT')}"
        watchdog = threading.Timer(init_timeout_s, _give_up, (env, where, init_timeout_s))
        watchdog.daemon = True
        watchdog.start()
        try:
            dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
            _preflight(env, device, init_timeout_s)
        finally:
            watchdog.cancel()
    return env


def _give_up(env: DistEnv, where: str, seconds: float) -> None:
    print(
        f"baton: error: rank {env.rank}: the {env.world_size}-rank process group did not form within "
        f"{seconds:.0f} s ({where}): a rank is missing, or cannot reach the master (dist.init_timeout_s)",
        file=sys.stderr,
        flush=True,
    )
    os._exit(3)


def _preflight(env: DistEnv, device: torch.device, timeout_s: float) -> None:
    """A tiny all-reduce: every rank is there and the links carry data."""
    ones = torch.ones(1, device=device)
    dist.all_reduce(ones, async_op=True).wait(datetime.timedelta(seconds=timeout_s))
    if int(ones.item()) != env.world_size:
        raise DistSetupError(f"pre-flight all-reduce gave {ones.item()}, expected {env.world_size}")


def end_process(code: int) -> int:
    """The exit status of a command. In a process group, end the process at once, with no
    teardown: gloo's threads may still hold finished async work whose tensors are freed
    during interpreter finalization, or be closing a pair a peer still reads, and either
    aborts the process ("terminate called without an active exception"), turning exit status
    0 or 2 into a SIGABRT. After a user error every rank found it (or one rank ends the job);
    after success :func:`leave_together` ran first, and MPI, where it launched the ranks, is
    finalized (mpirun counts a rank that ends without it as failed). In one process, return it."""
    if not dist.is_initialized():
        return code
    sys.stdout.flush()
    sys.stderr.flush()
    mpi = sys.modules.get("mpi4py.MPI")
    if code == 0 and mpi is not None and mpi.Is_initialized() and not mpi.Is_finalized():
        mpi.Finalize()
    os._exit(code)


def leave_together() -> None:
    """Wait for every rank at the end of a command, so none ends while a peer still talks to it."""
    if dist.is_initialized():
        dist.barrier()


def sum_over_ranks(values: list[float]) -> list[float]:
    """Element-wise sums over all ranks (float64); the values themselves in one process."""
    if not dist.is_initialized():
        return values
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()
