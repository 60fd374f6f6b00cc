"""Heterogeneity-adaptive planning for recurrent sequence parallelism.

For attention, FlexSP must solve a MILP: a sequence's cost grows as L^2, it can only be
split among a power-of-two group that all-to-alls its activations, and so which sequences
share a group matters. For a recurrent layer none of that holds: a token costs the same
wherever it sits, a document can be cut at any token, and a cut costs one fixed-size state
relay per hop. The continuous optimum is therefore explicit: give every rank a share of the
tokens proportional to its measured speed (water-filled under per-rank memory caps) and cut
one stream of documents at those shares. What remains are small integer effects, handled
greedily:

- documents are laid out longest first, so a long document runs through consecutive ranks
  (one chain) and the many short ones fill the rest;
- a cut moves onto a nearby document end when the work it shifts costs less than the relay
  hop it saves (by at most 1% of a share);
- ranks are visited in node order, so chains stay inside a node where they can.

The result is deterministic given the same inputs, and costs O(documents + ranks).
"""

from __future__ import annotations

import bisect
import time
from dataclasses import dataclass

import numpy as np

from baton.parallel.plan import PlanError, RankPiece, StepPlan


@dataclass
class CostModel:
    """Predicted time of one step on one rank (seconds)."""

    seconds_per_token: list[float]  # per rank: compute per token (1 / measured speed)
    segment_overhead_tokens: float = 32.0  # per document piece: half a padded tail chunk on average
    hop_seconds: float = 50e-6  # one state relay between ranks of one node (fwd + bwd)
    inter_node_hop_seconds: float = 200e-6
    ranks_per_node: int = 8
    memory_cap_tokens: list[int] | None = None  # per rank activation budget, in tokens

    @property
    def world_size(self) -> int:
        return len(self.seconds_per_token)

    def node(self, rank: int) -> int:
        return rank // self.ranks_per_node

    def hop(self, a: int, b: int) -> float:
        return self.hop_seconds if self.node(a) == self.node(b) else self.inter_node_hop_seconds

    def rank_time(self, rank: int, tokens: int, segments: int, hops: float) -> float:
        return (tokens + self.segment_overhead_tokens * segments) * self.seconds_per_token[rank] + hops

    def predict(self, plan: StepPlan, boundaries: list[int]) -> list[float]:
        """Per-rank predicted time of ``plan`` over a stream with document ``boundaries``."""
        spans = np.array([s for p in plan.pieces for s in p.spans], dtype=np.int64).reshape(-1, 2)
        bounds = np.asarray(boundaries)
        inside = np.searchsorted(bounds, spans[:, 1], "left") - np.searchsorted(bounds, spans[:, 0], "right")
        owner = np.repeat(np.arange(len(plan.pieces)), [len(p.spans) for p in plan.pieces])
        segments = np.bincount(owner, weights=1 + inside, minlength=len(plan.pieces))
        hops = np.zeros(len(plan.pieces))
        for chain in {tuple(p.chain) for p in plan.pieces if len(p.chain) > 1}:
            for a, b in zip(chain[:-1], chain[1:]):
                hops[a] += self.hop(a, b)
                hops[b] += self.hop(a, b)
        return [self.rank_time(r, p.n_tokens, int(segments[r]), hops[r]) for r, p in enumerate(plan.pieces)]


def water_fill(work: float, speeds: np.ndarray, caps: np.ndarray | None, busy: np.ndarray) -> np.ndarray:
    """Shares of ``work`` (token units) that finish together: rank r gets ``(T - busy_r) *
    speed_r`` for one common finish time T, where ``busy_r`` is time it spends relaying;
    no rank above its cap (fractional)."""
    share = np.zeros(len(speeds))
    free = np.ones(len(speeds), dtype=bool)
    while True:
        remaining = work - share[~free].sum()
        finish = (remaining + (busy[free] * speeds[free]).sum()) / speeds[free].sum()
        share[free] = np.maximum(finish - busy[free], 0) * speeds[free]
        over = free & (share > caps) if caps is not None else np.zeros_like(free)
        if not over.any():
            return share
        share[over] = caps[over]
        free &= ~over
        if not free.any():
            raise PlanError(
                f"the batch ({int(work)} tokens of work) exceeds the ranks' memory caps ({int(caps.sum())})"
            )


@dataclass
class PlanResult:
    plan: StepPlan
    predicted_s: list[float]
    solver: str
    solver_seconds: float

    @property
    def imbalance(self) -> float:
        return max(self.predicted_s) / (sum(self.predicted_s) / len(self.predicted_s))

    def to_dict(self) -> dict:
        return {
            "plan": self.plan.to_dict(),
            "predicted_s": self.predicted_s,
            "solver": self.solver,
            "solver_seconds": self.solver_seconds,
            "imbalance": self.imbalance,
        }


def balanced_plan(boundaries: list[int], cost: CostModel, min_piece: int = 4) -> PlanResult:
    """Cut the batch's documents (``boundaries``: the packed stream's cu_seqlens) across
    ranks in proportion to their speed; see the module docstring.

    Two levels: first the nodes take shares of the work, their boundaries moved onto a
    document end where the shifted work (spread over the node) costs less than an
    inter-node relay; then each node divides its part among its ranks, twice: the second
    time giving ranks that relay correspondingly less work.
    """
    start_time = time.perf_counter()
    R, total = cost.world_size, boundaries[-1]
    if total < R * min_piece:
        raise PlanError(f"a batch of {total} tokens cannot feed {R} ranks {min_piece} tokens each")

    # Layout: documents longest first (ties by position: deterministic), as stream spans.
    bounds = np.asarray(boundaries, dtype=np.int64)
    docs = np.argsort(-np.diff(bounds), kind="stable")
    docs = docs[bounds[docs + 1] > bounds[docs]]
    layout = np.stack([bounds[docs], bounds[docs + 1]], axis=1)
    lengths = (layout[:, 1] - layout[:, 0]).astype(float)
    ends = np.cumsum(lengths).astype(int).tolist()
    doc_ends = set(ends) | {0}
    # Work, in token units: every document piece also costs a padded tail chunk.
    overhead = cost.segment_overhead_tokens
    work_ends = np.cumsum(lengths + overhead)
    speeds = 1.0 / np.asarray(cost.seconds_per_token, dtype=float)
    caps = None
    if cost.memory_cap_tokens is not None:  # token caps, in work units (tokens + tail overhead)
        caps = np.asarray(cost.memory_cap_tokens, dtype=float) * work_ends[-1] / total
    per_token = float(np.median(cost.seconds_per_token))
    share = total / R

    def to_position(work: float) -> int:
        d = min(int(np.searchsorted(work_ends, work)), len(layout) - 1)
        into_doc = work - (work_ends[d] - lengths[d])
        return ends[d] - int(lengths[d]) + int(round(min(max(into_doc, 0), lengths[d])))

    def to_work(position: int) -> float:
        d = bisect.bisect_right(ends, position)
        done = work_ends[d - 1] if d else 0.0
        return done if position in doc_ends else done + overhead + position - (ends[d - 1] if d else 0)

    def snapped(cut: int, tolerance: float) -> int:
        near = ends[bisect.bisect_left(ends, cut - tolerance) : bisect.bisect_right(ends, cut + tolerance)]
        return min(near, key=lambda e: (abs(e - cut), e)) if near else cut

    def divide(
        lo: int, hi: int, unit_speeds: np.ndarray, unit_caps, busy: np.ndarray, tolerance: float, hop: float
    ) -> list[int]:
        """Cut layout positions [lo, hi) among units (ranks or whole nodes) finishing together,
        twice: the second pass charges each unit ``hop`` seconds for every relay the first
        pass's cuts need, and keeps which cuts sit on document ends."""
        n = len(unit_speeds)
        tolerances = [tolerance] * (n - 1)
        for attempt in range(2):
            shares = water_fill(to_work(hi) - to_work(lo), unit_speeds, unit_caps, busy)
            cuts, work = [lo], to_work(lo)
            for i, unit_share in enumerate(shares[:-1]):
                work += unit_share
                cut = snapped(to_position(work), tolerances[i])
                cuts.append(min(max(cut, cuts[-1] + min_piece), hi - min_piece * (n - 1 - i)))
            cuts.append(hi)
            if attempt == 0:
                relays = np.array([c not in doc_ends for c in cuts[1:-1]], dtype=float)
                busy = busy + (np.concatenate([relays, [0]]) + np.concatenate([[0], relays])) * hop
                tolerances = [t if c in doc_ends else 0.0 for t, c in zip(tolerances, cuts[1:-1])]
        return cuts

    nodes: dict[int, list[int]] = {}
    for r in range(R):
        nodes.setdefault(cost.node(r), []).append(r)
    node_ranks = [nodes[n] for n in sorted(nodes)]
    # Level 1: node boundaries. A relay between nodes delays two ranks, which their node
    # makes up by giving them less work: it costs the node hop / (ranks in node).
    node_speed = np.array([speeds[ranks].sum() for ranks in node_ranks])
    node_caps = None if caps is None else np.array([caps[ranks].sum() for ranks in node_ranks])
    inter_tolerance = min(2 * cost.inter_node_hop_seconds / per_token, 0.01 * share * cost.ranks_per_node)
    node_hop = cost.inter_node_hop_seconds / cost.ranks_per_node
    anchors = divide(0, total, node_speed, node_caps, np.zeros(len(node_ranks)), inter_tolerance, node_hop)

    # Level 2: ranks inside each node, with the relays they will do priced in.
    intra_tolerance = min(cost.hop_seconds / per_token, 0.01 * share)
    order, cuts = [], [0]
    for n, ranks in enumerate(node_ranks):
        busy = np.zeros(len(ranks))
        busy[0] += cost.inter_node_hop_seconds * (anchors[n] not in doc_ends)
        busy[-1] += cost.inter_node_hop_seconds * (anchors[n + 1] not in doc_ends)
        order += ranks
        rank_caps = None if caps is None else caps[ranks]
        cuts += divide(anchors[n], anchors[n + 1], speeds[ranks], rank_caps, busy, intra_tolerance, cost.hop_seconds)[
            1:
        ]

    if cost.memory_cap_tokens is not None:
        cuts = _enforce_caps(cuts, [cost.memory_cap_tokens[r] for r in order])
    pieces: list[RankPiece] = [RankPiece([]) for _ in range(R)]
    for i, spans in enumerate(_layout_spans(layout, np.asarray(ends), cuts)):
        pieces[order[i]].spans = spans
    _link_chains(pieces, order, cuts, doc_ends)
    plan = StepPlan(pieces)
    plan.validate(total)
    return PlanResult(plan, cost.predict(plan, boundaries), "proportional-cut", time.perf_counter() - start_time)


def _enforce_caps(cuts: list[int], caps: list[int]) -> list[int]:
    """Move cuts so that no piece exceeds its token cap (snapping and the tail overhead
    can push a piece a little past the share its cap allowed)."""
    cuts = list(cuts)
    for i in range(len(caps) - 1):  # forward: push excess onto later pieces
        cuts[i + 1] = min(cuts[i + 1], cuts[i] + caps[i])
    for i in range(len(caps) - 1, 0, -1):  # backward: and back onto earlier ones
        cuts[i] = max(cuts[i], cuts[i + 1] - caps[i])
    if any(b - a > c or b <= a for a, b, c in zip(cuts[:-1], cuts[1:], caps)):
        raise PlanError(f"the batch ({cuts[-1]} tokens) does not fit the ranks' memory caps ({sum(caps)} tokens)")
    return cuts


def _layout_spans(layout: np.ndarray, ends: np.ndarray, cuts: list[int]) -> list[list[tuple[int, int]]]:
    """Stream spans of each [cuts[i], cuts[i+1]) range of layout positions."""
    starts = ends - (layout[:, 1] - layout[:, 0])
    # Every document piece between consecutive cut points (cuts and document starts merged).
    points = np.union1d(np.asarray(cuts), np.concatenate([[0], ends]))
    lo, hi = points[:-1], points[1:]
    doc = np.searchsorted(ends, lo, "right")
    a = layout[doc, 0] + (lo - starts[doc])
    b = a + (hi - lo)
    piece = np.searchsorted(np.asarray(cuts), lo, "right") - 1
    out: list[list[tuple[int, int]]] = [[] for _ in range(len(cuts) - 1)]
    for p, x, y in zip(piece.tolist(), a.tolist(), b.tolist()):
        out[p].append((x, y))
    return out


def _link_chains(pieces: list[RankPiece], ranks: list[int], cuts: list[int], doc_ends: set[int]) -> None:
    """Chains: runs of consecutive ``ranks`` (holding [cuts[i], cuts[i+1])) whose shared cut
    falls inside a document; a cut on a document end starts a new chain."""
    runs = [[ranks[0]]]
    for i in range(1, len(ranks)):
        if cuts[i] in doc_ends:
            runs.append([])
        runs[-1].append(ranks[i])
    for run in runs:
        for r in run:
            pieces[r].chain = list(run) if len(run) > 1 else []


# Baselines, in the same code path (each returns a PlanResult the trainer can execute).


def concat_chunk_plan(boundaries: list[int], cost: CostModel) -> PlanResult:
    """Common practice: cut the packed stream into equal token pieces, one per rank, and
    drop the state at each cut (no relay: a cut document restarts from zero)."""
    start_time = time.perf_counter()
    R, total = cost.world_size, boundaries[-1]
    edges = [total * i // R for i in range(R + 1)]
    plan = StepPlan([RankPiece([(a, b)]) for a, b in zip(edges[:-1], edges[1:])])
    plan.validate(total)
    return PlanResult(plan, cost.predict(plan, boundaries), "concat-chunk", time.perf_counter() - start_time)


def fixed_sp_plan(boundaries: list[int], cost: CostModel, sp_size: int) -> PlanResult:
    """Fixed SP degree: ``R / sp_size`` groups; whole documents go to groups best-fit
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
        spans = _layout_spans(np.asarray(layout, dtype=np.int64).reshape(-1, 2), np.asarray(ends), cuts)
        pieces += [RankPiece(s) for s in spans]
        _link_chains(pieces, list(range(g * sp_size, (g + 1) * sp_size)), cuts, set(ends))
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
