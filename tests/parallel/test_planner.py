"""The adaptive planner and its baselines: exact coverage, consistent chains, caps,
determinism, speed-proportional loads, and exact execution on real processes."""

import numpy as np
import pytest

from baton.data.loader import pack
from baton.dist.local import run_local
from baton.parallel.baselines import attention_cost_plan, best_fit_groups_plan
from baton.parallel.interconnect import Interconnect
from baton.parallel.plan import PlanError, StepPlan
from baton.parallel.planner import CostModel, DocumentLayout, balanced_plan, concat_chunk_plan, divide
from tests.helpers import rel
from tests.parallel.test_sequence import TOLERANCE, reference, sp_worker


def boundaries(n_docs, seed, giant=False):
    rng = np.random.default_rng(seed)
    lengths = np.maximum(1, rng.lognormal(5, 1.4, size=n_docs).astype(int))
    if giant:
        lengths[rng.integers(n_docs)] = 50 * int(lengths.mean())
    return [0, *np.cumsum(lengths).tolist()]


def check_exact_cover(plan: StepPlan, bounds):
    plan.validate(bounds[-1])
    tokens = np.zeros(bounds[-1], dtype=int)
    for piece in plan.pieces:
        for a, b in piece.spans:
            tokens[a:b] += 1
    assert (tokens == 1).all()


@pytest.mark.parametrize("ranks", [1, 2, 3, 8, 16, 64])
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("giant", [False, True])
def test_balanced_plan_covers_every_token_once(ranks, seed, giant):
    bounds = boundaries(40 * ranks, seed, giant)
    result = balanced_plan(bounds, CostModel([1e-6] * ranks, ranks_per_node=4))
    check_exact_cover(result.plan, bounds)
    for rank, piece in enumerate(result.plan.pieces):
        prev, nxt = result.plan.neighbours(rank)
        if nxt is not None:  # a relay only where a document really continues
            assert piece.spans[-1][1] not in set(bounds)


def test_layout_maps_work_and_positions_both_ways():
    # Documents of 10, 50 and 30 tokens laid out longest first: 50 | 30 | 10, each piece
    # costing a tail of 4 tokens of work.
    layout = DocumentLayout.longest_first([0, 10, 60, 90], overhead=4.0)
    assert layout.spans.tolist() == [[10, 60], [60, 90], [0, 10]] and layout.ends == [50, 80, 90]
    assert layout.to_work(50) == 54 and layout.to_work(80) == 88  # whole documents: their tails
    assert layout.to_work(20) == 4 + 20  # inside the first document: its piece's tail too
    for position in (0, 20, 50, 63, 89):
        assert layout.to_position(layout.to_work(position)) == position
    assert layout.snapped(52, tolerance=3) == 50 and layout.snapped(52, tolerance=1) == 52
    assert layout.snapped(79, tolerance=2) == 80


def test_divide_gives_equal_speeds_equal_work_and_snaps_cheap_cuts():
    layout = DocumentLayout.longest_first(list(range(0, 1001, 100)), overhead=0.0)  # ten documents of 100
    speeds, busy = np.ones(4), np.zeros(4)
    exact = divide(layout, 0, 1000, speeds, None, busy, tolerance=0, hop=0, min_piece=4)
    assert exact == [0, 250, 500, 750, 1000]
    # Relays cost: within 60 tokens every cut moves onto a document end (250 and 750 lie
    # halfway between two; the tie goes to the earlier end).
    snapped = divide(layout, 0, 1000, speeds, None, busy, tolerance=60, hop=1e-3, min_piece=4)
    assert snapped == [0, 200, 500, 700, 1000]


def test_loads_follow_measured_speed():
    bounds = boundaries(400, 2)
    per_token = [1e-6] * 8
    per_token[3] = 2e-6  # half as fast
    result = balanced_plan(bounds, CostModel(per_token, hop_seconds=0, inter_node_hop_seconds=0))
    tokens = [p.n_tokens for p in result.plan.pieces]
    others = np.mean([t for r, t in enumerate(tokens) if r != 3])
    assert abs(tokens[3] / others - 0.5) < 0.03
    assert result.imbalance < 1.02


def cut_documents(plan, bounds):
    cut = set()
    for piece in plan.pieces:
        for a, b in piece.spans:
            d = int(np.searchsorted(bounds, a, "right") - 1)
            if (a, b) != (bounds[d], bounds[d + 1]):
                cut.add(d)
    return cut


def test_cuts_move_to_document_ends_when_relays_cost_more():
    bounds = boundaries(600, 3, giant=True)
    free = cut_documents(balanced_plan(bounds, CostModel([1e-6] * 16, hop_seconds=0)).plan, bounds)
    costly = balanced_plan(bounds, CostModel([1e-6] * 16, hop_seconds=100e-6, ranks_per_node=16))
    assert len(free) <= 15
    assert len(cut_documents(costly.plan, bounds)) < len(free)
    assert costly.imbalance < 1.05


def test_hops_are_priced_from_the_models_summaries():
    """The 1.3B shapes: a delta-rule hop carries a K×K transition per head besides the state,
    a GLA hop a K-vector; with GDN's pricier hops the planner cuts fewer documents."""
    from baton.config import load_config
    from baton.models.flops import relay_bytes_per_hop
    from tests.conftest import CONFIGS

    gla, gdn = (load_config(str(CONFIGS / name)).model for name in ("1b.yaml", "1b-gdn.yaml"))
    costs = {}
    for name, model in (("gla", gla), ("gdn", gdn)):
        costs[name] = CostModel.for_model(model, [1e-6] * 16, Interconnect(10e-6, 200.0, 25.0, 8))
        nbytes = relay_bytes_per_hop(model)
        assert costs[name].hop_seconds == pytest.approx(2 * model.n_layers * 10e-6 + nbytes / 200e9)
        assert costs[name].inter_node_hop_seconds == pytest.approx(2 * model.n_layers * 10e-6 + nbytes / 25e9)
    # Per layer: GLA 4 heads x (256 + 256 x 512) x 4 B + the state gradient; GDN 6 x (256² + 256 x 512).
    assert relay_bytes_per_hop(gla) == 24 * (4 * 4 * (256 + 256 * 512) + 4 * 4 * 256 * 512)
    assert relay_bytes_per_hop(gdn) == 21 * (4 * 6 * (256 * 256 + 256 * 512) + 4 * 6 * 256 * 512)
    bounds = boundaries(600, 3, giant=True)
    cuts = {name: len(cut_documents(balanced_plan(bounds, cost).plan, bounds)) for name, cost in costs.items()}
    assert cuts["gdn"] <= cuts["gla"]


@pytest.mark.parametrize("iterations", [1, 3, 5])
def test_newton_rnn_hops_count_a_relay_per_iteration(iterations):
    """ParaLSTM: per layer one relay per Newton iteration, the backward's and the first guess's
    message (K + 2, as ``test_sequence_newton.py`` counts them on the wire); each forward relay
    carries the summary (a 2×2 block per unit and the [c, h] state), the other two a state."""
    from baton.config import ModelConfig
    from baton.models.flops import relay_bytes_per_hop

    model = ModelConfig(mixer="paralstm", d_model=256, n_heads=4, n_layers=6, newton_iterations=iterations)
    cost = CostModel.for_model(model, [1e-6] * 8, Interconnect(10e-6, 200.0, 25.0, 8))
    state = 4 * 256 * 2
    assert relay_bytes_per_hop(model) == 6 * (iterations * (4 * 256 * 4 + state) + 2 * state)
    assert cost.hop_seconds == pytest.approx((iterations + 2) * 6 * 10e-6 + relay_bytes_per_hop(model) / 200e9)


def test_memory_caps_are_respected_or_refused():
    bounds = boundaries(200, 4)
    total = bounds[-1]
    caps = [int(total / 4 * 1.3)] * 4
    caps[0] = int(total / 10)
    result = balanced_plan(bounds, CostModel([1e-6, 1e-6, 1e-6, 1e-6], memory_cap_tokens=caps))
    assert all(p.n_tokens <= c for p, c in zip(result.plan.pieces, caps))
    assert result.plan.pieces[0].n_tokens < total / 6
    with pytest.raises(PlanError, match="memory caps"):
        balanced_plan(bounds, CostModel([1e-6] * 4, memory_cap_tokens=[total // 5] * 4))


def test_deterministic():
    bounds = boundaries(300, 5, giant=True)
    cost = CostModel([1e-6, 1.3e-6, 1e-6, 0.9e-6, 1e-6, 1e-6], ranks_per_node=2)
    assert balanced_plan(bounds, cost).plan.to_dict() == balanced_plan(bounds, cost).plan.to_dict()


@pytest.mark.parametrize("make", [concat_chunk_plan, lambda b, c: best_fit_groups_plan(b, c, 2), attention_cost_plan])
def test_baselines_are_valid_plans(make):
    bounds = boundaries(100, 6)
    result = make(bounds, CostModel([1e-6] * 4))
    check_exact_cover(result.plan, bounds)
    assert len(result.predicted_s) == 4


def test_adaptive_beats_baselines_with_a_slow_rank():
    bounds = boundaries(2000, 7, giant=True)
    per_token = [1e-6] * 16
    per_token[5] = 1.2e-6
    cost = CostModel(per_token)
    ours = max(balanced_plan(bounds, cost).predicted_s)
    for make in (concat_chunk_plan, lambda b, c: best_fit_groups_plan(b, c, 4), attention_cost_plan):
        assert ours < 0.95 * max(make(bounds, cost).predicted_s)


@pytest.mark.parametrize("world", [3, 4])
@pytest.mark.ranks
def test_executing_a_balanced_plan_is_exact(world):
    """The planner's plan (documents reordered, cuts anywhere, a slow rank) run on real
    processes gives the single-process outputs, loss and gradients."""
    rng = np.random.default_rng(world)
    lengths = [int(x) for x in rng.integers(5, 80, size=12)] + [150]
    batch = pack([np.zeros(n, dtype=np.int64) for n in lengths], list(range(len(lengths))))
    per_token = [1e-6] * world
    per_token[1] = 1.5e-6
    plan = balanced_plan(batch.cu_seqlens.tolist(), CostModel(per_token, ranks_per_node=2)).plan
    assert any(len(p.chain) > 1 for p in plan.pieces)
    cases = [(mixer, "logscan", lengths, plan.to_dict()) for mixer in ("gla", "ssd")]
    per_rank = run_local(world, sp_worker, cases)
    for i, (mixer, *_rest) in enumerate(cases):
        ref = reference(mixer, lengths)
        for rank in range(world):
            got = per_rank[rank][i]
            expected = np.concatenate([ref["logits"][a:b].numpy() for a, b in plan.pieces[rank].spans])
            assert rel(got["logits"], type(got["logits"])(expected)) < TOLERANCE
            assert abs(got["loss"].item() - ref["loss"].item()) / ref["loss"].item() < TOLERANCE
            for g, g_ref in zip(got["grads"], ref["grads"]):
                assert rel(g, g_ref) < TOLERANCE
