"""Baseline planners the adaptive one is measured against (benchmarks and tests; the trainer
offers ``concat`` from ``planner.py``). Each returns a :class:`~baton.parallel.planner.PlanResult`
in the same code path, priced by the recurrent cost model.
"""

from __future__ import annotations

import bisect
import time

import numpy as np

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
