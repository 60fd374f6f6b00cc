"""A real 2-process run with one rank slowed on purpose (a sleep per token): the balanced
planner, calibrated online from the profiler's per-rank speeds, shifts tokens away from it
and the measured step time drops against the fixed plan; the losses stay the same."""

import json
import os
import subprocess
import sys

import numpy as np


def run(tmp_path, kind):
    run_dir = tmp_path / kind
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "baton.launch.cli",
        "train",
        "train.steps=12",
        "train.log_every=2",
        "train.eval_every=12",
        "data.synthetic_docs=300",
        "data.eval_docs=20",
        "data.tokens_per_batch=2048",
        f"data.cache_dir={tmp_path / 'data'}",
        f"train.run_dir={run_dir}",
        f"parallel.planner.kind={kind}",
        "profile.slow_rank=1",
        "profile.slow_seconds_per_ktoken=0.4",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [
        [json.loads(line) for line in (run_dir / "profile" / f"rank{r}.jsonl").read_text().splitlines()]
        for r in range(2)
    ]
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return ranks, metrics


def test_balanced_planner_moves_work_off_a_slow_rank(tmp_path):
    fixed, fixed_metrics = run(tmp_path, "fixed")
    balanced, balanced_metrics = run(tmp_path, "balanced")
    later = slice(4, None)  # after the first calibrations (every 2 steps)
    step_fixed = np.mean([r["step_s"] for r in fixed[0][later]])
    step_balanced = np.mean([r["step_s"] for r in balanced[0][later]])
    assert step_balanced < 0.75 * step_fixed, (step_fixed, step_balanced)
    slow_tokens = np.mean([r["tokens"] for r in balanced[1][later]])
    fast_tokens = np.mean([r["tokens"] for r in balanced[0][later]])
    assert slow_tokens < 0.5 * fast_tokens
    assert all("predicted_s" in m["plan"] and m["plan"]["solver"] == "proportional-cut" for m in balanced_metrics)
    for a, b in zip(fixed_metrics, balanced_metrics):
        assert abs(a["loss"] - b["loss"]) / a["loss"] < 1e-4
