"""The scaling model: its recurrence against hand-worked steps, and the strategy choice."""

import numpy as np
import pytest

from baton.config import ModelConfig
from baton.parallel.interconnect import Interconnect
from baton.parallel.plan import RankPiece, StepPlan
from baton.parallel.scaling import LayerTimes, StepModel, choose_strategy, predict_step


def one_layer(latency: float, state_bytes: int = 0, gb_per_s: float = 1.0) -> StepModel:
    """One layer: per token 1 s before the relay, 2 s of scan, 1 s after, forward and
    backward alike; no head."""
    times = LayerTimes(1.0, 2.0, 1.0)
    net = Interconnect(latency, gb_per_s, gb_per_s, ranks_per_node=8)
    return StepModel(1, state_bytes, state_bytes, times, times, 0.0, net)


def chain_plan(world: int, tokens: int = 1) -> StepPlan:
    chain = list(range(world))
    return StepPlan([RankPiece([(r * tokens, (r + 1) * tokens)], chain) for r in chain])


def test_chain_by_hand():
    """3 ranks, 1 token each, hops of 5 s. Forward: every summary is ready at 1; rank 1's
    state arrives at 6, rank 2's at 11 (rank 1 forwards on arrival), so the layers end at
    1+2+1 = 4, max(3, 6)+1 = 7, max(3, 11)+1 = 12. Backward from there along 2 -> 1 -> 0:
    ready at 13 (rank 2), 8, 5; rank 1 receives at max(13)+5 = 18, rank 0 at
    max(13+10, 8+5) = 23; ends: 13+2+1 = 16, max(10, 18)+1 = 19, max(7, 23)+1 = 24."""
    model = one_layer(latency=5.0)
    got = predict_step(model, chain_plan(3), [0, 3], "chain")
    assert got.tolist() == [24.0, 19.0, 16.0]
    # Without overlap the scan starts after the arrival: forward ends 4, 6+3 = 9, 11+3 = 14.
    nolap = predict_step(model, chain_plan(3), [0, 3], "chain", overlap=False)
    assert nolap.tolist()[2] == 14.0 + 1 + 2 + 1  # rank 2 starts the backward chain


def test_newton_layers_relay_once_per_iteration():
    """Two forward relays per layer (two Newton iterations), 2 ranks, 1 token each, hops of 5 s.
    Pass 1: rank 1's state arrives at 6, ends 4 and 7. Pass 2: rank 0 ready at 5, rank 1 at 8,
    the state arrives at 10: ends 8 and max(10, 10) + 1 = 11. Backward from rank 1 (ready 12,
    end 15) to rank 0 (arrival 17, end 18). The model built from a config relays K times."""
    times = LayerTimes(1.0, 2.0, 1.0)
    net = Interconnect(5.0, 1.0, 1.0, ranks_per_node=8)
    model = StepModel(1, 0, 0, times, times, 0.0, net, forward_relays=2)
    assert predict_step(model, chain_plan(2), [0, 2], "chain").tolist() == [18.0, 15.0]
    cfg = ModelConfig(mixer="paragru", newton_iterations=4)
    assert StepModel.for_model(cfg, 1e-6, net).forward_relays == 4


def test_a_reset_cuts_the_wait():
    """A document starting inside rank 2's piece: rank 3 no longer waits for ranks 0 and 1
    (2 tokens a rank, hops of 5 s, longer than the 4 s scan that hides them)."""
    model = one_layer(latency=5.0)
    plan = chain_plan(4, tokens=2)
    whole = predict_step(model, plan, [0, 8], "chain")
    reset = predict_step(model, plan, [0, 5, 8], "chain")
    assert plan.dependency_runs([0, 5, 8]) == [[0, 1, 2], [2, 3]]
    # Forward: rank 3's state leaves rank 2 when its summary is ready (2 s), 5 s later it
    # is there: 7 + 2 s after; the whole chain's arrives at 2 + 15 = 17.
    assert reset[3] < whole[3] - 9


def test_blocks_pipeline_a_large_state():
    """A state of 1 MB over 1 GB/s links (1 ms a hop) on 16 ranks: in 8 blocks the chain's
    forward latency is (15 + 7) hops of an eighth, not 15 whole hops."""
    model = one_layer(latency=1e-6, state_bytes=1_000_000)
    model.forward = model.backward = LayerTimes(0.0, 1e-6, 0.0)
    plan = chain_plan(16)
    whole = predict_step(model, plan, [0, 16], "chain").max()
    blocked = predict_step(model, plan, [0, 16], "chain", blocks=8).max()
    hop = 1e-6 + 1e-3
    assert whole == pytest.approx(2 * 15 * hop, rel=1e-3)
    assert blocked == pytest.approx(2 * (15 + 7) * (1e-6 + 1e-3 / 8), rel=1e-3)


def test_allgather_grows_with_the_world_and_auto_picks_the_fastest():
    cfg = ModelConfig(mixer="gla", d_model=2048, n_layers=24, n_heads=4, expand_k=0.5, vocab_size=32000)
    model = StepModel.for_model(cfg, 1 / 45_000, Interconnect())
    times = {}
    for world in (8, 64):
        plan = chain_plan(world, 32768)
        times[world] = {s: predict_step(model, plan, [0, world * 32768], s).max() for s in ("allgather", "chain")}
        choice, predicted = choose_strategy(model, plan, [0, world * 32768])
        assert predicted[choice] == min(predicted.values())
    assert times[64]["allgather"] > 1.2 * times[8]["allgather"]
    assert times[64]["chain"] < 1.05 * times[8]["chain"]


def test_ranks_without_a_chain_do_not_wait():
    plan = StepPlan([RankPiece([(0, 5)]), RankPiece([(5, 10)])])
    got = predict_step(one_layer(latency=100.0), plan, [0, 5, 10], "logscan")
    assert got.tolist() == [40.0, 40.0]  # 5 tokens x 4 s x (forward + backward)


def test_interconnect_fit_recovers_latency_and_bandwidth():
    sizes = [1e4, 1e5, 1e6, 1e7]
    rng = np.random.default_rng(0)
    seconds = [20e-6 + n / 3e9 * (1 + 0.01 * rng.standard_normal()) for n in sizes]
    net = Interconnect.fit(sizes, seconds)
    assert net.intra_gb_per_s == pytest.approx(3.0, rel=0.03)
    assert net.latency_s == pytest.approx(20e-6, rel=0.3)
