"""Plans: exact coverage, consistent chains, and the local view each rank gets."""

import numpy as np
import pytest
import torch

from baton.parallel.plan import PlanError, RankPiece, StepPlan, local_batch
from baton.parallel.planner import even_groups_plan
from tests.helpers import make_batch


def covered(plan, batch):
    return torch.cat([torch.cat([batch.tokens[a:b] for a, b in sorted(p.spans)]) for p in plan.pieces])


@pytest.mark.parametrize("world,sp", [(1, 1), (2, 1), (2, 2), (4, 2), (4, 4), (3, 3)])
def test_even_groups_plan_covers_every_token_once(world, sp):
    batch = make_batch([5, 90, 33, 7, 61, 2, 40])
    plan = even_groups_plan(batch, world, sp)
    plan.validate(batch.n_tokens)
    spans = sorted(s for p in plan.pieces for s in p.spans)
    assert spans[0][0] == 0 and spans[-1][1] == batch.n_tokens
    for rank in range(world):
        local = local_batch(plan, rank, batch)
        assert local.tokens.numel() == plan.pieces[rank].n_tokens == int(local.cu_seqlens[-1])


def test_even_groups_plan_falls_back_to_one_chain_for_one_document():
    batch = make_batch([200])
    plan = even_groups_plan(batch, 4, 1)
    plan.validate(batch.n_tokens)
    assert all(p.chain == [0, 1, 2, 3] for p in plan.pieces)


def test_local_batch_marks_continuations_and_boundaries():
    batch = make_batch([10, 30, 20])  # documents at [0,10) [10,40) [40,60)
    plan = StepPlan(
        [RankPiece([(0, 25)], [0, 1, 2]), RankPiece([(25, 40)], [0, 1, 2]), RankPiece([(40, 60)], [0, 1, 2])]
    )
    plan.validate(60)
    first, middle, last = (local_batch(plan, r, batch) for r in range(3))
    assert first.cu_seqlens.tolist() == [0, 10, 25] and first.continues_to_next and not first.continues_from_prev
    assert middle.cu_seqlens.tolist() == [0, 15] and middle.continues_from_prev
    assert not middle.continues_to_next  # the cut at 40 is a document boundary
    assert not last.continues_from_prev
    assert torch.equal(middle.labels, batch.labels[25:40])


@pytest.mark.parametrize(
    "pieces,message",
    [
        ([RankPiece([(0, 30)]), RankPiece([(31, 60)])], "gap or overlap at token 30"),
        ([RankPiece([(0, 30)]), RankPiece([(20, 60)])], "gap or overlap"),
        ([RankPiece([(0, 30)]), RankPiece([(30, 50)])], "cover 50 of 60"),
        ([RankPiece([(0, 30)], [0, 1]), RankPiece([(30, 60)], [1, 0, 2])], "disagree on their chain"),
        ([RankPiece([(30, 60)], [0, 1]), RankPiece([(0, 30)], [0, 1])], "successor 1 starts at 0"),
        ([RankPiece([(0, 60)]), RankPiece([])], "rank 1 holds no tokens"),
    ],
)
def test_validate_rejects_bad_plans(pieces, message):
    with pytest.raises(PlanError, match=message):
        StepPlan(pieces).validate(60)


def test_plan_round_trips_through_json():
    plan = even_groups_plan(make_batch([50, 70]), 4, 2)
    assert StepPlan.from_dict(plan.to_dict()) == plan


def test_dependency_runs_break_where_a_piece_resets():
    """Documents [0,100) [100,130) [130,400): a chain of 6 ranks. Rank 2 holds the start of
    document 2 and rank 3 the start of document 3: the state each sends on does not depend on
    what it receives, so the 5-hop chain is three runs, the longest 2 hops."""
    batch = make_batch([100, 30, 270])
    edges = [0, 40, 80, 120, 200, 300, 400]
    chain = list(range(6))
    plan = StepPlan([RankPiece([(a, b)], chain) for a, b in zip(edges[:-1], edges[1:])])
    plan.validate(400)
    bounds = batch.cu_seqlens.tolist()
    assert plan.dependency_runs(bounds) == [[0, 1, 2], [2, 3], [3, 4, 5]]
    whole = StepPlan([RankPiece([(a, b)], chain) for a, b in zip(edges[:-1], edges[1:])])
    assert whole.dependency_runs([0, 400]) == [chain]


def test_plan_carries_agrees_with_the_local_batches():
    """The plan's view of which ranks forward state equals what each rank's model sees (one
    segment continuing a document), over plans of every planner on random batches."""
    rng = np.random.default_rng(0)
    for trial in range(20):
        batch = make_batch([int(x) for x in rng.integers(5, 300, size=int(rng.integers(1, 12)))], seed=trial)
        plan = even_groups_plan(batch, 4, int(rng.choice([1, 2, 4])))
        bounds = batch.cu_seqlens.tolist()
        for rank in range(4):
            local = local_batch(plan, rank, batch)
            assert plan.carries(rank, bounds) == (local.continues_from_prev and len(local.cu_seqlens) == 2)
