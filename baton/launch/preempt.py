"""Stopping in time: preemption signals, a flag file, and the job's deadline.

Under ``baton submit`` SLURM signals the batch shell (``--signal=B:USR1@...``), which
touches ``<run_dir>/PREEMPT``; a process launched straight by ``srun --signal=USR1@...``
gets SIGUSR1 itself. Past ``BATON_DEADLINE`` minus a margin (the time-limit fallback, for
when no signal comes) counts the same. Every rank polls, and all agree through one
all-reduce, so they stop at the same step; the trainer then checkpoints and the job is
requeued: by ``baton submit``'s batch script once every rank has exited (rank 0 leaves it
a ``REQUEUE`` note), or, in a job launched some other way, by rank 0 itself.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch
import torch.distributed as dist

from baton.dist.env import DistEnv

FLAG = "PREEMPT"
REQUEUE_NOTE = "REQUEUE"
REQUEUE_BY_BATCH = "BATON_REQUEUE_BY_BATCH"  # set by baton submit's batch script
DEADLINE = "BATON_DEADLINE"  # the job's end (Unix time), set by the batch script
REASONS = ("", "preemption signal", "time limit near")


class Preemption:
    def __init__(self, run_dir: Path, env: DistEnv, margin_s: float) -> None:
        self.flag, self.note, self.env = run_dir / FLAG, run_dir / REQUEUE_NOTE, env
        deadline = os.environ.get(DEADLINE)
        self.deadline = float(deadline) - margin_s if deadline else None
        self._signalled = False
        if env.is_main:  # a flag or note left from before this start (a previous allocation's) is stale
            self.flag.unlink(missing_ok=True)
            self.note.unlink(missing_ok=True)
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGUSR1, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        self._signalled = True

    def requested(self) -> str:
        """Why to stop now ('' to go on); the same answer on every rank (a collective)."""
        local = 1 if (self._signalled or self.flag.exists()) else 0
        if not local and self.deadline is not None and time.time() > self.deadline:
            local = 2
        if self.env.distributed:
            t = torch.tensor([local], dtype=torch.int32)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            local = int(t.item())
        return REASONS[local]

    def requeue(self) -> None:
        """Rank 0, after the checkpoint is committed: clear the flag and have the job put back
        in the queue (under SLURM); the requeued job resumes from that checkpoint."""
        if not self.env.is_main:
            return
        self.flag.unlink(missing_ok=True)
        job = os.environ.get("SLURM_JOB_ID")
        if job is None:
            print("baton: stopped; continue with resume=auto", flush=True)
        elif os.environ.get(REQUEUE_BY_BATCH) == "1":
            # The batch script requeues once srun returns: no rank is killed mid-exit.
            self.note.write_text(f"{job}\n")
            print(f"baton: stopped; the batch script requeues job {job} once every rank has exited", flush=True)
        else:
            # Announce first: once the controller accepts the requeue it kills this job step,
            # often before a line printed afterwards reaches the log.
            print(f"baton: requeueing job {job}; it resumes from the checkpoint", flush=True)
            proc = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
            if proc.returncode != 0:
                print(f"baton: scontrol requeue {job} failed: {proc.stderr.strip()}", file=sys.stderr, flush=True)
