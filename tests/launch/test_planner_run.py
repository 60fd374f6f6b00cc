"""A real 2-process run with one rank slowed on purpose (a sleep per token): the balanced
planner, calibrated online from the profiler's per-rank speeds, shifts tokens away from it
and the measured step time drops against the fixed plan; the losses stay the same."""

import numpy as np
import pytest

from tests.launch.runs import baton_train, jsonl

pytestmark = [pytest.mark.runs, pytest.mark.ranks]


def run(tmp_path, kind):
    steps = ["train.steps=12", "train.log_every=2", "train.eval_every=12", "data.tokens_per_batch=2048"]
    slow = ["profile.slow_rank=1", "profile.slow_seconds_per_ktoken=0.8"]
    run_dir = baton_train(tmp_path / kind, tmp_path / "data", 2, *steps, *slow, f"parallel.planner.kind={kind}")
    ranks = [jsonl(run_dir / "profile" / f"rank{r}.jsonl") for r in range(2)]
    return ranks, jsonl(run_dir / "metrics.jsonl")


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
