"""Real processes, real timings: per-rank records, and a slowed rank flagged as a straggler
while a rank with three times the planned tokens is not."""

import json
import time

import pytest
import torch

from baton.dist.env import DistEnv
from baton.dist.local import run_local
from baton.models.flops import FlopsPerToken
from baton.models.lm import token_losses
from baton.parallel.plan import RankPiece, StepPlan, local_batch
from baton.parallel.sequence import SequenceParallel, apply_sequence_parallel
from baton.profile.recorder import RankProfiler
from tests.helpers import make_batch, tiny_model

pytestmark = pytest.mark.ranks

LENGTHS = [900, 300, 300]  # rank 0 holds 3x the tokens of the others
SLOW_RANK, SLEEP_PER_TOKEN = 1, 2e-4


def worker(rank, world, run_dir, steps):
    model = tiny_model("gla")
    sp = SequenceParallel(rank, world, "chain")
    apply_sequence_parallel(model, sp)
    batch = make_batch(LENGTHS)
    bounds = batch.cu_seqlens.tolist()
    plan = StepPlan([RankPiece([(a, b)]) for a, b in zip(bounds[:-1], bounds[1:])])
    prof = RankProfiler(run_dir, DistEnv(rank, world), torch.device("cpu"), FlopsPerToken(1, 0))
    for step in range(1, steps + 1):
        with prof.phase("data"):
            local = local_batch(plan, rank, batch)
        with sp.step(plan, local) as stats:
            with prof.phase("forward"):
                loss, _ = token_losses(model(local.tokens[None], local.cu_seqlens), local.labels[None])
                if rank == SLOW_RANK:
                    time.sleep(SLEEP_PER_TOKEN * local.tokens.numel())
            with prof.phase("backward"):
                loss.backward()
        prof.record(step, local.tokens.numel(), stats.to_dict())
    summary = prof.end_interval()
    prof.close()
    return summary


def test_slowed_rank_is_flagged_planned_load_is_not(tmp_path):
    summaries = run_local(3, worker, str(tmp_path), 6)
    summary = summaries[0]
    assert summaries[1] is None and summaries[2] is None  # the summary is rank 0's
    assert summary["stragglers"] == [SLOW_RANK], summary
    assert summary["slowest_rank"] == SLOW_RANK
    for rank, length in enumerate(LENGTHS):
        records = [json.loads(line) for line in (tmp_path / "profile" / f"rank{rank}.jsonl").read_text().splitlines()]
        assert [r["step"] for r in records] == list(range(1, 7))
        assert all(r["rank"] == rank and r["tokens"] == length for r in records)
        for r in records:
            parts = r["data_s"] + r["forward_s"] + r["backward_s"]
            assert abs(parts - r["step_s"]) < 1e-9 and 0 <= r["compute_s"] <= r["step_s"]
