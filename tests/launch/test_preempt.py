"""Stopping in time without SLURM: the flag file and the deadline fallback each end the run
after a checkpoint, and resume=auto continues where it stopped."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from baton.checkpoint import complete_checkpoints
from tests.launch.runs import SMALL, baton_train, jsonl

pytestmark = [pytest.mark.ranks, pytest.mark.runs]


def train(run, data, env_extra, *overrides):
    cmd = [sys.executable, "-m", "baton.launch.cli", "train", *SMALL, f"data.cache_dir={data}", f"train.run_dir={run}"]
    env = dict(os.environ, OMP_NUM_THREADS="1", **env_extra)
    return subprocess.run([*cmd, "train.steps=6", *overrides], capture_output=True, text=True, env=env, timeout=300)


def test_deadline_stops_with_a_checkpoint_then_resumes(tmp_path):
    run, data = tmp_path / "run", tmp_path / "data"
    # The time limit is 100 s away and the margin 200 s: past due at the first poll.
    proc = train(run, data, {"BATON_DEADLINE": str(time.time() + 100)}, "train.deadline_margin_s=200")
    assert proc.returncode == 0, proc.stderr
    assert "stopping: time limit near; checkpoint of step 1 written" in proc.stdout + proc.stderr
    assert [p.name for p in complete_checkpoints(run / "checkpoints")] == ["step_00000001"]
    assert not (run / "summary.json").exists()
    baton_train(run, data, 1, "train.steps=6", "resume=auto")
    assert [r["step"] for r in jsonl(run / "metrics.jsonl")] == [1, 2, 3, 4, 5, 6]


def test_flag_file_stops_every_rank_at_the_same_step(tmp_path):
    run, data = tmp_path / "run", tmp_path / "data"
    run.mkdir()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m"]
    cmd += ["baton.launch.cli", "train", *SMALL, f"data.cache_dir={data}", f"train.run_dir={run}", "train.steps=400"]
    proc = subprocess.Popen(
        cmd, env=dict(os.environ, OMP_NUM_THREADS="1"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    while not (run / "metrics.jsonl").exists() or len(jsonl(run / "metrics.jsonl")) < 2:
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.2)
    (run / "PREEMPT").touch()
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out[-2000:]
    steps = len(jsonl(run / "metrics.jsonl"))
    assert 2 <= steps < 400 and f"checkpoint of step {steps} written" in out
    assert [p.name for p in complete_checkpoints(run / "checkpoints")] == [f"step_{steps:08d}"]
    assert not (run / "PREEMPT").exists()
