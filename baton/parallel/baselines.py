"""Baseline planners the adaptive one is measured against (benchmarks and tests; the trainer
offers ``concat`` from ``planner.py``). Each returns a :class:`~baton.parallel.planner.PlanResult`
in the same code path, priced by the same cost model (a hybrid's attention pairs and keys and
values included).

For hybrids, the splits people use for attention: equal contiguous cuts (exact with the relay,
blind to attention's quadratic cost), and zigzag head-tail chunks (Megatron-LM and Llama 3
context parallelism: each document in 2P chunks, rank r taking chunks r and 2P - 1 - r, so that
causal attention work evens out), costed with what their recurrent layers then need: the
tokens back in order, an all-to-all into head-parallel layout and back per recurrent layer in
forward and in backward, and for attention all keys and values around the group's ring.
"""

from __future__ import annotations

import bisect
import time

import numpy as np

from baton.config import ModelConfig
from baton.models.flops import attention_layers, kv_bytes_per_token
from baton.parallel.interconnect import Interconnect
from baton.parallel.plan import PlanError, RankPiece, StepPlan
from baton.parallel.planner import CostModel, PlanResult, balanced_plan, layout_spans, link_chains


def best_fit_groups_plan(boundaries: list[int], cost: CostModel, sp_size: int) -> PlanResult:
    """FlexSP-style fixed SP degree: ``R / sp_size`` groups; whole documents go to groups best-fit
    decreasing by token count; each group cuts its documents evenly over its ranks. Its
    speed-blind cuts and whole-document packing are what the adaptive plan improves on."""
    start_time = time.perf_counter()
    R, total = cost.world_size, boundaries[-1]
    if R % sp_size:
        raise PlanError(f"sp_size={sp_size} must divide the world size {R}")
    n_groups = R // sp_size
    capacity = -(-total // n_groups)
    # A document longer than a group's share is split into independent sequences (its state
    # is dropped between them), as fixed-degree systems do.
    items = [(a, min(a + capacity, b)) for a, b in zip(boundaries[:-1], boundaries[1:]) for a in range(a, b, capacity)]
    items.sort(key=lambda span: (span[0] - span[1], span[0]))
    loads, members = [0] * n_groups, [[] for _ in range(n_groups)]
    for a, b in items:
        fits = [g for g in range(n_groups) if loads[g] + b - a <= capacity]
        g = max(fits, key=lambda g: (loads[g], -g)) if fits else min(range(n_groups), key=lambda g: (loads[g], g))
        loads[g] += b - a
        members[g].append((a, b))
    pieces = []
    for g in range(n_groups):
        layout = members[g]
        ends = np.cumsum([b - a for a, b in layout]).astype(int).tolist()
        size = ends[-1] if ends else 0
        if size < sp_size:
            raise PlanError(f"group {g} got {size} tokens for {sp_size} ranks")
        cuts = [size * i // sp_size for i in range(sp_size + 1)]
        spans = layout_spans(np.asarray(layout, dtype=np.int64).reshape(-1, 2), np.asarray(ends), cuts)
        pieces += [RankPiece(s) for s in spans]
        link_chains(pieces, list(range(g * sp_size, (g + 1) * sp_size)), cuts, set(ends))
    plan = StepPlan(pieces)
    plan.validate(total)
    return PlanResult(
        plan, cost.predict(plan, boundaries), f"fixed-sp{sp_size}-best-fit", time.perf_counter() - start_time
    )


def attention_cost_plan(
    boundaries: list[int], cost: CostModel, alpha1: float = 1.0, alpha2: float = 2048.0
) -> PlanResult:
    """FlexSP's cost model (a document of length L costs alpha1 L^2 + alpha2 L) driving the
    same proportional cut: what a planner built for attention does to a recurrent model.
    Documents are cut where the *attention* work balances; the predicted time comes from
    the recurrent cost model, the true one here."""
    start_time = time.perf_counter()
    lengths = np.diff(boundaries).astype(float)
    weights = alpha1 * lengths**2 + alpha2 * lengths
    # Map attention work onto a virtual token axis, cut there, and map the cuts back.
    virtual = np.maximum(1, np.round(weights / weights.sum() * boundaries[-1])).astype(int)
    v_bounds = [0, *np.cumsum(virtual).tolist()]
    flat = CostModel([1.0] * cost.world_size, 0.0, 0.0, 0.0, cost.ranks_per_node)
    v_plan = balanced_plan(v_bounds, flat).plan
    pieces = []
    for piece in v_plan.pieces:
        spans = []
        for a, b in piece.spans:
            d = bisect.bisect_right(v_bounds, a) - 1
            scale = lengths[d] / virtual[d]
            lo = boundaries[d] + int(round((a - v_bounds[d]) * scale))
            hi = boundaries[d] + int(round((b - v_bounds[d]) * scale))
            if hi > lo:
                spans.append((lo, hi))
        pieces.append(RankPiece(spans, piece.chain))
    if any(not p.spans for p in pieces):
        raise PlanError("the attention cost model leaves a rank less than one token of a long document")
    plan = StepPlan(pieces)
    plan.validate(boundaries[-1])
    return PlanResult(plan, cost.predict(plan, boundaries), "attention-cost", time.perf_counter() - start_time)


def equal_split_plan(boundaries: list[int], cost: CostModel) -> PlanResult:
    """The packed stream cut into equal token pieces, one per rank, the state relayed across
    every cut (exact): contiguous like the balanced plan, but blind to speed and to attention."""
    start_time = time.perf_counter()
    R, total = cost.world_size, boundaries[-1]
    cuts = [total * i // R for i in range(R + 1)]
    pieces = [RankPiece([]) for _ in range(R)]
    for r, spans in enumerate(layout_spans(np.asarray([[0, total]]), np.asarray([total]), cuts)):
        pieces[r].spans = spans
    link_chains(pieces, list(range(R)), cuts, set(boundaries))
    plan = StepPlan(pieces)
    plan.validate(total)
    return PlanResult(plan, cost.predict(plan, boundaries), "equal-contiguous", time.perf_counter() - start_time)


def zigzag_plan(
    boundaries: list[int], cost: CostModel, model: ModelConfig, net: Interconnect, group: int = 8,
    dtype_bytes: int = 2,
) -> PlanResult:  # fmt: skip
    """Zigzag context parallelism over groups of ``group`` ranks: whole documents to groups
    (best fit decreasing, as ``best_fit_groups_plan``), each document of a group cut into
    2·group chunks (Megatron pads it to a multiple of 2·group; the padding is not charged here),
    rank i of the group holding chunks i and 2·group − 1 − i. Priced by the cost model (work,
    attention's pairs per chunk), plus per recurrent layer four all-to-alls of the layer's
    activations (``d_model`` per token, into head-parallel order and back, forward and
    backward), plus per attention layer the ring: every other rank's keys and values in,
    forward and their gradients in backward. The plan's pieces are not contiguous: it is
    priced, not run (the trainer's recurrent relay needs contiguous pieces)."""
    start_time = time.perf_counter()
    R = cost.world_size
    grouped = best_fit_groups_plan(boundaries, cost, group).plan
    pieces, extra = [], np.zeros(R)
    bounds = np.asarray(boundaries)
    recurrent = model.n_layers - attention_layers(model)
    for g in range(R // group):
        ranks = list(range(g * group, (g + 1) * group))
        spans = sorted(s for r in ranks for s in grouped.pieces[r].spans)
        held = [[] for _ in ranks]
        for a, b in _split_at(spans, bounds):
            n = b - a
            chunk = -(-n // (2 * group))  # padded to 2·group chunks of equal size
            for i in range(group):
                for c in (i, 2 * group - 1 - i):
                    lo, hi = a + c * chunk, min(a + (c + 1) * chunk, b)
                    if hi > lo:
                        held[i].append((lo, hi))
        group_tokens = sum(b - a for a, b in spans)
        for i, r in enumerate(ranks):
            pieces.append(RankPiece(held[i] or [spans[0]]))
            mine = sum(b - a for a, b in held[i])
            a2a = 4 * recurrent * mine * model.d_model * dtype_bytes * (group - 1) / group
            ring = (group_tokens - mine) * kv_bytes_per_token(model, dtype_bytes)
            extra[r] = net.hop(a2a + ring, ranks[0], ranks[-1], 4 * recurrent * (group - 1))
    plan = StepPlan(pieces)
    predicted = [t + x for t, x in zip(cost.predict(plan, boundaries), extra)]
    return PlanResult(plan, predicted, f"zigzag-cp{group}", time.perf_counter() - start_time)


def _split_at(spans: list[tuple[int, int]], bounds: np.ndarray) -> list[tuple[int, int]]:
    """The spans cut at document boundaries: one (a, b) per document piece."""
    out = []
    for a, b in spans:
        inner = bounds[(bounds > a) & (bounds < b)].tolist()
        out += list(zip([a, *inner], [*inner, b]))
    return out
