"""The planner for hybrids: attention's work grows along a document, so a document's later
pieces get fewer tokens; pairs and keys and values are priced as the ops do them; the plans
are balanced on the simulator's mixes (documents of 1K to 128K tokens, uniform and mixed-speed
ranks), and the attention baselines (equal contiguous cuts, zigzag) are not."""

from dataclasses import replace

import numpy as np
import pytest

from baton.config import load_config
from baton.models.flops import causal_pairs, kv_bytes_per_token
from baton.parallel.baselines import equal_split_plan, zigzag_plan
from baton.parallel.interconnect import Interconnect
from baton.parallel.plan import RankPiece, StepPlan
from baton.parallel.planner import CostModel, balanced_plan, piece_work
from baton.parallel.scaling import assumed_seconds_per_token
from tests.conftest import CONFIGS

HYBRID = load_config(str(CONFIGS / "1b-hybrid.yaml")).model
NET = Interconnect()
H100 = 989e12  # bf16 dense peak


def hybrid_cost(seconds_per_token: list[float]) -> CostModel:
    return CostModel.for_model(HYBRID, seconds_per_token, NET)


def mix(ranks: int, seed: int, tokens_per_rank: int = 32768) -> list[int]:
    """Documents log-uniform between 1K and 128K tokens, filling the batch."""
    rng, lengths = np.random.default_rng(seed), []
    while sum(lengths) < ranks * tokens_per_rank:
        lengths.append(int(np.exp(rng.uniform(np.log(1024), np.log(131072)))))
    lengths[-1] -= sum(lengths) - ranks * tokens_per_rank
    return [0, *np.cumsum([n for n in lengths if n > 0]).tolist()]


def test_pairs_are_those_of_causal_attention_over_each_piece():
    """Arbitrary spans (a document split between ranks, pieces holding several documents):
    per rank the pairs the attention op scores, counted from each piece's own layout."""
    bounds = [0, 10, 40, 45, 100]
    plan = StepPlan([RankPiece([(0, 25)], [0, 1]), RankPiece([(25, 43), (60, 100)], [0, 1]), RankPiece([(43, 60)])])
    _, pairs = piece_work(plan, bounds)
    expected = [causal_pairs([0, 10, 25]), causal_pairs([0, 15, 18], 15), causal_pairs([0, 2, 17], 3)]
    expected[1] += causal_pairs([0, 40], 15)  # tokens 60..100 of the document starting at 45
    assert pairs.tolist() == expected


def test_a_long_documents_later_pieces_get_fewer_tokens():
    """One 128K document over 8 ranks of one node: attention makes its later tokens dearer, so
    the cuts move towards its end and the ranks still finish together."""
    bounds = [0, 131072]
    result = balanced_plan(bounds, hybrid_cost([assumed_seconds_per_token(HYBRID, H100)] * 8))
    tokens = [p.n_tokens for p in result.plan.pieces]
    assert all(a > b for a, b in zip(tokens[:-1], tokens[1:])), tokens
    assert result.imbalance < 1.01, result.predicted_s
    flat = balanced_plan(bounds, replace(hybrid_cost([1.0] * 8), pair_tokens=0.0))  # a recurrent model
    assert max(p.n_tokens for p in flat.plan.pieces) - min(p.n_tokens for p in flat.plan.pieces) <= 64  # tails


def test_keys_values_are_priced_where_documents_continue():
    """Rank 1 continues rank 0's document (20 earlier tokens), rank 2 continues it further (50,
    from ranks 0 and 1); a rank sends its last segment to each rank continuing it."""
    bounds = [0, 10, 100, 115]
    plan = StepPlan(
        [RankPiece([(0, 30)], [0, 1, 2]), RankPiece([(30, 60)], [0, 1, 2]), RankPiece([(60, 115)], [0, 1, 2])]
    )
    cost = hybrid_cost([1e-6] * 3)
    without = replace(cost, kv_hop_seconds_per_token=0.0, inter_node_kv_hop_seconds_per_token=0.0)
    extra = np.array(cost.predict(plan, bounds)) - np.array(without.predict(plan, bounds))
    per_token = kv_bytes_per_token(HYBRID) / (NET.intra_gb_per_s * 1e9)
    # in: 0, 20, 50 tokens; out: rank 0's 20 to two ranks, rank 1's 30 to one
    assert extra == pytest.approx(np.array([40, 30, 50]) * per_token)


@pytest.mark.parametrize("ranks", [16, 64])
@pytest.mark.parametrize("speeds", ["uniform", "mixed"])
def test_hybrid_plans_are_balanced_on_the_simulators_mixes(ranks, speeds):
    """Within 5% of perfect balance: predicted time of the slowest rank over the mean; mixed
    speeds are a quarter of the ranks 1.5x slower (an older GPU generation) and a few 20%."""
    rng = np.random.default_rng(ranks)
    seconds = np.full(ranks, assumed_seconds_per_token(HYBRID, H100))
    if speeds == "mixed":
        seconds[: ranks // 4] *= 1.5
        seconds[rng.choice(ranks, size=max(1, ranks // 16), replace=False)] *= 1.2
    bounds = mix(ranks, seed=ranks)
    cost = hybrid_cost(seconds.tolist())
    balanced = balanced_plan(bounds, cost)
    assert balanced.imbalance <= 1.05, balanced.imbalance
    equal, zigzag = equal_split_plan(bounds, cost), zigzag_plan(bounds, cost, HYBRID, NET)
    assert max(balanced.predicted_s) < min(max(equal.predicted_s), max(zigzag.predicted_s))
