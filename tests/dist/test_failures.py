"""A rank that dies mid-step, or never arrives: the job ends quickly and says which rank."""

from __future__ import annotations

import pytest

import os
import subprocess
import sys
import time

from tests.launch.runs import SMALL

pytestmark = pytest.mark.ranks


def test_killed_rank_ends_the_job_and_is_named(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=3", "-m"]
    cmd += ["baton.launch.cli", "train", *SMALL, f"data.cache_dir={tmp_path / 'data'}"]
    cmd += [f"train.run_dir={tmp_path / 'run'}", "train.steps=50", "dist.timeout_s=30"]
    env = dict(os.environ, OMP_NUM_THREADS="1", BATON_TEST_KILL_AT_STEP="1:3")
    start = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=180)
    elapsed = time.monotonic() - start
    assert proc.returncode != 0
    assert elapsed < 120, f"took {elapsed:.0f} s to notice a dead rank"
    # torchrun names the first failure: the rank, and that it died of signal 9.
    assert "rank      : 1 (local_rank: 1)" in proc.stderr and "exitcode  : -9" in proc.stderr, proc.stderr[-2000:]
    # The survivors got no further than the step the dead rank never finished.
    log = (tmp_path / "run" / "logs" / "rank0.log").read_text()
    assert "[3/50]" not in log


def test_missing_rank_times_out_with_a_message(tmp_path):
    # WORLD_SIZE says 2 but only rank 0 starts: the rendezvous cannot complete.
    env = dict(os.environ, OMP_NUM_THREADS="1", RANK="0", WORLD_SIZE="2", LOCAL_RANK="0")
    env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29731")
    cmd = [sys.executable, "-m", "baton.launch.cli", "train", *SMALL, f"data.cache_dir={tmp_path / 'data'}"]
    cmd += [f"train.run_dir={tmp_path / 'run'}", "dist.init_timeout_s=5"]
    start = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 3 and time.monotonic() - start < 60
    assert "rank 0: the 2-rank process group did not form within 5 s" in proc.stderr
