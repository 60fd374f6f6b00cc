"""Run `baton train` as a user would: a subprocess, under torchrun for several ranks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SMALL = ["data.synthetic_docs=300", "data.eval_docs=20"]


def baton_train(run_dir: Path, data_dir: Path, nproc: int, *overrides: str) -> Path:
    """Train into ``run_dir`` (fails the test with the tail of stderr on a non-zero exit)."""
    args = ["train", *SMALL, f"data.cache_dir={data_dir}", f"train.run_dir={run_dir}", *overrides]
    launcher = [] if nproc == 1 else ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    cmd = [sys.executable, *launcher, "-m", "baton.launch.cli", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
