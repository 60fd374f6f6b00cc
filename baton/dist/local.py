"""Run a function on N local processes joined by torch.distributed over gloo: what the
multi-process tests and CPU benchmarks use (torchrun and SLURM launch real jobs)."""

from __future__ import annotations

import os
import socket
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, fn: Callable, args: tuple, out: str) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    try:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
        result = fn(rank, world_size, *args)
        torch.save(result, Path(out) / f"{rank}.pt")
        dist.barrier()  # leave together: gloo aborts a peer still talking to a closed rank
        dist.destroy_process_group()
    except BaseException:
        (Path(out) / f"{rank}.err").write_text(traceback.format_exc())
        raise
    # The result is saved and the group left: skip the interpreter's teardown, where a library's
    # native threads can abort a finished process (seen once with DeepSpeed: "terminate called
    # without an active exception", exit -6, after every rank had saved its result).
    os._exit(0)


def run_local(world_size: int, fn: Callable, *args: Any, timeout: float = 300.0) -> list[Any]:
    """``fn(rank, world_size, *args)`` on ``world_size`` fresh processes; each rank's result.

    A rank that raises fails the call with its traceback; a hang past ``timeout`` kills all.
    """
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory() as out:
        port = free_port()
        procs = [ctx.Process(target=_worker, args=(r, world_size, port, fn, args, out)) for r in range(world_size)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout)
        hung = [r for r, p in enumerate(procs) if p.is_alive()]
        for p in procs:
            if p.is_alive():
                p.kill()
        errors = {
            r: (Path(out) / f"{r}.err").read_text() for r in range(world_size) if (Path(out) / f"{r}.err").exists()
        }
        if errors:
            raise AssertionError("\n".join(f"rank {r} failed:\n{tb}" for r, tb in errors.items()))
        if hung:
            raise AssertionError(f"ranks {hung} still running after {timeout}s")
        failed = [r for r, p in enumerate(procs) if p.exitcode != 0]
        if failed:
            raise AssertionError(f"ranks {failed} exited with {[procs[r].exitcode for r in failed]}")
        return [torch.load(Path(out) / f"{r}.pt", weights_only=False) for r in range(world_size)]
