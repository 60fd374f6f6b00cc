"""Run-directory logs: each rank's output in its own file, and the software a run used."""

from __future__ import annotations

import json
import os
import platform
import socket
import sys
import time
from importlib import metadata
from pathlib import Path

import torch
import torch.distributed as dist

from baton.dist.env import DistEnv

PACKAGES = ("baton", "torch", "triton", "deepspeed", "numpy", "omegaconf", "mpi4py", "nvidia-ml-py", "safetensors")


class _Tee:
    """A text stream that also appends everything to a log file."""

    def __init__(self, stream, log) -> None:
        self.stream, self.log = stream, log

    def write(self, text: str) -> int:
        self.log.write(text)
        self.log.flush()
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()
        self.log.flush()

    def __getattr__(self, name):
        return getattr(self.stream, name)


def tee_output(path: Path) -> None:
    """Copy this process's stdout and stderr into ``path`` (appended: a resumed job keeps
    its earlier logs)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    log = open(path, "a", buffering=1)  # noqa: SIM115 - lives as long as the process
    log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} pid {os.getpid()} on {socket.gethostname()}\n")
    sys.stdout, sys.stderr = _Tee(sys.stdout, log), _Tee(sys.stderr, log)


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def record_environment(path: Path, env: DistEnv, device: torch.device) -> None:
    """Append one record per start of the run: versions, devices, launcher variables."""
    launcher = {k: v for k, v in os.environ.items() if k.startswith(("SLURM_", "MASTER_", "OMPI_COMM_WORLD_SIZE"))}
    record = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": socket.gethostname(),
        "python": platform.python_version(),
        "packages": {name: _version(name) for name in PACKAGES},
        "cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "world_size": env.world_size,
        "launcher": launcher,
    }
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def _last_step(line: str) -> int | None:
    """The last step a record covers; None for a line torn by a crash mid-write."""
    try:
        record = json.loads(line)
        return record["steps"][-1] if "steps" in record else record["step"]
    except (ValueError, KeyError, IndexError, TypeError):
        return None


def drop_records_after(run_dir: Path, step: int) -> int:
    """Remove the step records (``metrics.jsonl``, ``profile/*.jsonl``, ``summary.json``) of
    steps after ``step``, where this start of the run begins: they are an earlier attempt's,
    which no checkpoint kept, and the steps are about to be trained (and recorded) again.
    Lines a crash left unfinished go too. Returns how many records went. Call before
    anything opens these files for appending."""
    dropped = 0
    for path in [run_dir / "metrics.jsonl", *sorted((run_dir / "profile").glob("*.jsonl"))]:
        if not path.is_file():
            continue
        lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        kept = [line for line in lines if (last := _last_step(line)) is not None and last <= step]
        if len(kept) < len(lines):
            dropped += len(lines) - len(kept)
            tmp = path.with_suffix(".tmp")
            tmp.write_text("".join(line + "\n" for line in kept))
            os.replace(tmp, path)
    summary = run_dir / "summary.json"  # written when a run finishes
    if summary.is_file():
        try:
            finished_at = json.loads(summary.read_text())["steps"]
        except (ValueError, KeyError):
            finished_at = None
        if finished_at is None or finished_at > step:
            summary.unlink()
    return dropped


def prepare_run_dir(run_dir: Path, env: DistEnv, step: int, config_yaml: str, device: torch.device) -> None:
    """Collective, at a run's start (after a resume has succeeded: a failed one changes
    nothing): rank 0 drops the records of steps after ``step``, which this run trains again,
    and writes the resolved config and the environment; every rank waits for it, so that the
    records are trimmed before any rank appends to them."""
    if env.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        dropped = drop_records_after(run_dir, step)
        if dropped:
            print(f"baton: dropped {dropped} records of steps after {step} (an earlier attempt's)", flush=True)
        (run_dir / "config.yaml").write_text(config_yaml)
        record_environment(run_dir / "environment.jsonl", env, device)
    if env.distributed:
        dist.barrier()
