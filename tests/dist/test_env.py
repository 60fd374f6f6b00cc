"""Process-group setup: discovery, and failing fast and clearly on a bad rendezvous."""

import os
import socket
import subprocess
import sys
import time

import pytest

from baton.dist.env import DistEnv, DistSetupError, check_port_free, discover


def test_unresolvable_master_address_is_a_clear_error_within_seconds(tmp_path):
    env = dict(os.environ, RANK="0", WORLD_SIZE="2", LOCAL_RANK="0", MASTER_ADDR="no-such-host.invalid",
               MASTER_PORT="29511", OMP_NUM_THREADS="1")
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "baton.launch.cli", "train", f"data.cache_dir={tmp_path}",
                           "data.synthetic_docs=200", "data.eval_docs=20", f"train.run_dir={tmp_path / 'run'}"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert time.monotonic() - start < 30
    assert proc.returncode == 2
    assert "MASTER_ADDR='no-such-host.invalid'" in proc.stderr and "does not resolve" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_discovers_a_slurm_task_but_not_the_batch_shell():
    task = {"SLURM_PROCID": "5", "SLURM_STEP_NUM_TASKS": "8", "SLURM_LOCALID": "1", "SLURM_NTASKS": "8"}
    assert discover(task) == DistEnv(5, 8, 1)
    assert discover({"SLURM_PROCID": "0", "SLURM_NTASKS": "8"}) == DistEnv()  # sbatch's shell is no rank


def test_a_taken_port_is_named():
    with socket.socket() as s:
        s.bind(("", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(DistSetupError, match=f"MASTER_PORT={port} is taken"):
            check_port_free(port)
