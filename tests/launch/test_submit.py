"""`baton submit` against a real SLURM cluster on this machine (slurm/start-local-slurm.sh:
slurmctld + two slurmd "nodes" on one host, munge): a 2-node x 2-process job trains to the
end; a job signalled mid-run checkpoints, requeues itself, resumes and ends with the same
loss as an uninterrupted run. Also: config values never reach the shell unquoted."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from baton.launch.submit import render, time_limit_seconds
from tests.launch.runs import SMALL, baton_train, jsonl

pytestmark = [pytest.mark.slurm, pytest.mark.runs]


def test_shell_metacharacters_stay_literal(tmp_path):
    nasty = ["data.path='; rm -rf ~'", "train.run_dir=$(touch pwned)", "model.mixer=`id`"]
    script = render(None, nasty, 2, 2, 0, "10:00", "gpu;reboot", tmp_path / "run", 120, 29400)
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)  # valid shell
    line = next(line for line in script.splitlines() if "baton.launch.cli train" in line)
    args = line.split("baton.launch.cli train", 1)[1].rsplit("&", 1)[0]
    out = subprocess.run(["bash", "-c", f"printf '%s\\n' {args}"], capture_output=True, text=True, cwd=tmp_path)
    assert out.stdout.splitlines() == [
        "data.path='; rm -rf ~'",
        "model.mixer=`id`",
        f"train.run_dir={tmp_path / 'run'}",
        "resume=auto",
    ]
    assert not (tmp_path / "pwned").exists()
    assert "#SBATCH --partition='gpu;reboot'" in script


def test_time_limits():
    assert [time_limit_seconds(t) for t in ("30", "5:00", "1:00:00", "1-2", "1-0:30")] == [
        1800,
        300,
        3600,
        93600,
        88200,
    ]


def job_state(job: str) -> dict:
    out = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True).stdout
    return dict(re.findall(r"(\w+)=(\S*)", out))


def wait_for(job: str, done, timeout: float = 300) -> dict:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        state = job_state(job)
        if done(state):
            return state
        time.sleep(1)
    raise AssertionError(f"job {job} still {job_state(job).get('JobState')} after {timeout} s")


def submit(run_dir: Path, data_dir: Path, *overrides: str) -> str:
    cmd = [sys.executable, "-m", "baton.launch.cli", "submit", *SMALL, f"data.cache_dir={data_dir}"]
    cmd += [f"train.run_dir={run_dir}", *overrides, "--nodes", "2", "--procs-per-node", "2", "--time", "10"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr
    return (run_dir / "job_id").read_text().strip()


def finished(state: dict) -> bool:
    return state.get("JobState") in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL")


def test_two_node_job_trains(slurm, tmp_path, data_dir):
    run = tmp_path / "run"
    job = submit(run, data_dir, "train.steps=4")
    state = wait_for(job, finished)
    log = "".join(p.read_text() for p in (run / "logs").glob("slurm-*.out"))
    assert state["JobState"] == "COMPLETED", log[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["world_size"] == 4
    assert sorted(p.name for p in (run / "logs").glob("rank*.log")) == [f"rank{r}.log" for r in range(4)]
    nodes = {json.loads(line)["launcher"].get("SLURM_NODEID") for line in (run / "environment.jsonl").open()}
    assert nodes <= {"0", "1"}


def test_preempted_job_requeues_and_resumes(slurm, tmp_path, data_dir):
    opts = ["train.steps=24", "train.eval_every=100", "profile.slow_rank=0", "profile.slow_seconds_per_ktoken=0.4"]
    whole = baton_train(tmp_path / "whole", data_dir, 4, *opts)
    run = tmp_path / "run"
    job = submit(run, data_dir, *opts)
    # Signal the batch shell, as SLURM does before preempting, once a few steps are done.
    start = time.monotonic()
    while not (run / "metrics.jsonl").exists() or len(jsonl(run / "metrics.jsonl")) < 3:
        assert time.monotonic() - start < 180 and not finished(job_state(job)), "the job never got going"
        time.sleep(0.5)
    subprocess.run(["scancel", "--signal=USR1", "--batch", job], check=True)
    state = wait_for(job, lambda s: finished(s) and s.get("Restarts") == "1", timeout=400)
    log = "".join(p.read_text() for p in (run / "logs").glob("slurm-*.out"))
    assert state["JobState"] == "COMPLETED", log[-3000:]
    assert "requeueing job" in log and "(restart 1)" in log and "resumed from" in log
    # Every rank exited by itself before the batch script asked for the requeue: no rank or
    # launcher was killed mid-way (only the batch shell is, by the requeue, as SLURM says).
    assert "Traceback" not in log and "srun: error" not in log, log[-3000:]
    records = jsonl(run / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, 25))  # no step lost or repeated
    final = json.loads((run / "summary.json").read_text())["final_loss"]
    expected = json.loads((whole / "summary.json").read_text())["final_loss"]
    assert abs(final - expected) <= 1e-6 * abs(expected)


def test_job_of_its_own_making_is_requeued_by_rank_0(slurm, tmp_path, data_dir):
    """A user's own batch script (srun straight into `baton train`, no baton submit): on the
    stop flag rank 0 checkpoints and runs `scontrol requeue` itself."""
    run = tmp_path / "run"
    (run / "logs").mkdir(parents=True)
    train = [sys.executable, "-m", "baton.launch.cli", "train", *SMALL, f"data.cache_dir={data_dir}"]
    train += [f"train.run_dir={run}", "train.steps=12", "train.eval_every=100", "resume=auto"]
    train += ["profile.slow_rank=0", "profile.slow_seconds_per_ktoken=0.4"]
    script = run / "job.sbatch"
    script.write_text(
        "#!/bin/bash\n#SBATCH --nodes=1\n#SBATCH --ntasks=1\n#SBATCH --requeue\n#SBATCH --open-mode=append\n"
        f"#SBATCH --output={run}/logs/slurm-%j.out\nexport OMP_NUM_THREADS=1\n"
        f'echo "restart ${{SLURM_RESTART_COUNT:-0}}"\nsrun {" ".join(train)}\n'
    )
    job = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True, check=True)
    job = job.stdout.strip().split(";")[0]
    start = time.monotonic()
    while not (run / "metrics.jsonl").exists() or len(jsonl(run / "metrics.jsonl")) < 2:
        assert time.monotonic() - start < 180 and not finished(job_state(job)), "the job never got going"
        time.sleep(0.5)
    (run / "PREEMPT").touch()
    state = wait_for(job, lambda s: finished(s) and s.get("Restarts") == "1", timeout=300)
    log = "".join(p.read_text() for p in (run / "logs").glob("slurm-*.out"))
    assert state["JobState"] == "COMPLETED", log[-3000:]
    assert "restart 1" in log and "resumed from" in log
    # Rank 0's own log (written by the process, not forwarded by srun, which the requeue kills).
    assert f"requeueing job {job}" in (run / "logs" / "rank0.log").read_text()
    assert [r["step"] for r in jsonl(run / "metrics.jsonl")] == list(range(1, 13))
