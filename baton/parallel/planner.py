"""Heterogeneity-adaptive planning for recurrent sequence parallelism, and for hybrids.

For attention, FlexSP must solve a MILP: a sequence's cost grows as L^2, it can only be
split among a power-of-two group that all-to-alls its activations, and so which sequences
share a group matters. For a recurrent layer none of that holds: a token costs the same
wherever it sits, a document can be cut at any token, and a cut costs one fixed-size state
relay per hop. The continuous optimum is therefore explicit: give every rank a share of the
work proportional to its measured speed (water-filled under per-rank memory caps) and cut
one stream of documents at those shares. What remains are small integer effects, handled
greedily:

- documents are laid out longest first, so a long document runs through consecutive ranks
  (one chain) and the many short ones fill the rest;
- a cut moves onto a nearby document end when the work it shifts costs less than the relay
  hop it saves (by at most 1% of a share);
- ranks are visited in node order, so chains stay inside a node where they can.

A hybrid's attention layers keep the same contiguous cuts and pay per layer type: tokens
[a, b) of a document cost ``(b − a)`` token units of recurrent (and projection) work plus
``pair_tokens · (b² − a² + b − a) / 2`` for their (query, key) pairs, so the work along a
document grows quadratically and the cut at a share of it is the root of a quadratic: later
ranks of a long document get fewer of its tokens. A rank continuing a document also receives
its keys and values so far (``kv_hop_seconds_per_token`` per token before the cut), which moves
with the cut: the cuts are found again until they settle.

The result is deterministic given the same inputs, and costs O(documents + ranks).
"""

from __future__ import annotations

import bisect
import functools
import time
from dataclasses import dataclass

import numpy as np

from baton.config import ModelConfig
from baton.data.loader import Batch
from baton.models.flops import flops_per_token, kv_bytes_per_token, relay_bytes_per_hop, relay_messages_per_hop
from baton.parallel.interconnect import Interconnect
from baton.parallel.plan import PlanError, RankPiece, StepPlan, prefix_sources


@dataclass
class CostModel:
    """Predicted time of one step on one rank (seconds)."""

    seconds_per_token: list[float]  # per rank: compute per token (1 / measured speed)
    segment_overhead_tokens: float = 32.0  # per document piece: half a padded tail chunk on average
    hop_seconds: float = 50e-6  # one relay hop between ranks of one node (fwd + bwd), see for_model
    inter_node_hop_seconds: float = 200e-6
    ranks_per_node: int = 8
    memory_cap_tokens: list[int] | None = None  # per rank activation budget, in tokens
    measured: bool = False  # seconds_per_token measured (StepPlanner.calibrate), not the relative 1.0 default
    pair_tokens: float = 0.0  # a hybrid's: one (query, key) pair's work in token units (attention layers)
    kv_hop_seconds_per_token: float = 0.0  # per token of a document before a cut inside a node...
    inter_node_kv_hop_seconds_per_token: float = 0.0  # ...and between nodes: its keys and values

    @property
    def world_size(self) -> int:
        return len(self.seconds_per_token)

    def node(self, rank: int) -> int:
        return rank // self.ranks_per_node

    def hop(self, a: int, b: int) -> float:
        return self.hop_seconds if self.node(a) == self.node(b) else self.inter_node_hop_seconds

    def kv_hop(self, a: int, b: int) -> float:
        same = self.node(a) == self.node(b)
        return self.kv_hop_seconds_per_token if same else self.inter_node_kv_hop_seconds_per_token

    def rank_time(self, rank: int, tokens: int, segments: int, hops: float, pairs: float = 0.0) -> float:
        work = tokens + self.segment_overhead_tokens * segments + self.pair_tokens * pairs
        return work * self.seconds_per_token[rank] + hops

    @classmethod
    def for_model(
        cls, model: ModelConfig, seconds_per_token: list[float], net: Interconnect,
        memory_cap_tokens: list[int] | None = None,
    ) -> CostModel:  # fmt: skip
        """Hops priced by the interconnect from what they carry: the model's summaries
        (``relay_bytes_per_hop``), per layer a message each way (a Newton-trained RNN: one per
        iteration forward and its first guess's; an attention layer's keys and values,
        ``relay_messages_per_hop``), and a hybrid's keys and values per token before the cut;
        attention's pairs priced by FLOPs against the per-token work."""
        nbytes, messages = relay_bytes_per_hop(model), relay_messages_per_hop(model)
        flops, kv = flops_per_token(model), kv_bytes_per_token(model)
        return cls(
            seconds_per_token,
            hop_seconds=net.hop(nbytes, 0, 0, messages),
            inter_node_hop_seconds=net.hop(nbytes, 0, net.ranks_per_node, messages),
            ranks_per_node=net.ranks_per_node,
            memory_cap_tokens=memory_cap_tokens,
            pair_tokens=flops.attention_pair / flops.forward,
            kv_hop_seconds_per_token=net.hop(kv, 0, 0, 0),
            inter_node_kv_hop_seconds_per_token=net.hop(kv, 0, net.ranks_per_node, 0),
        )

    def predict(self, plan: StepPlan, boundaries: list[int]) -> list[float]:
        """Per-rank predicted time of ``plan`` over a stream with document ``boundaries``."""
        segments, pairs = piece_work(plan, boundaries)
        hops = np.zeros(len(plan.pieces))
        for chain in {tuple(p.chain) for p in plan.pieces if len(p.chain) > 1}:
            for a, b in zip(chain[:-1], chain[1:]):
                hops[a] += self.hop(a, b)
                hops[b] += self.hop(a, b)
        if self.pair_tokens:
            hops += self.keys_values_seconds(plan, boundaries)
        return [self.rank_time(r, p.n_tokens, int(segments[r]), hops[r], pairs[r]) for r, p in enumerate(plan.pieces)]

    def keys_values_seconds(self, plan: StepPlan, boundaries: list[int]) -> np.ndarray:
        """Per rank, a hybrid's keys and values on the wire (``parallel/attention.py``): its
        prefix in from the ranks holding it, its last segment out to each rank continuing it;
        in and out at once (full duplex), not counted as hidden behind the attention."""
        incoming, outgoing = np.zeros(len(plan.pieces)), np.zeros(len(plan.pieces))
        bounds = np.asarray(boundaries)
        for r, piece in enumerate(plan.pieces):
            for src, n in prefix_sources(plan, r, boundaries) if piece.chain else []:
                incoming[r] += n * self.kv_hop(src, r)
                end = plan.pieces[src].spans[-1][1]
                tail = end - max(plan.pieces[src].spans[-1][0], bounds[np.searchsorted(bounds, end, "left") - 1])
                outgoing[src] += tail * self.kv_hop(src, r)
        return np.maximum(incoming, outgoing)

    def work(self, plan: StepPlan, boundaries: list[int]) -> np.ndarray:
        """Per rank, the work units of its piece (tokens, tails, attention's pairs)."""
        segments, pairs = piece_work(plan, boundaries)
        tokens = np.array([p.n_tokens for p in plan.pieces], dtype=float)
        return tokens + self.segment_overhead_tokens * segments + self.pair_tokens * pairs


def piece_work(plan: StepPlan, boundaries: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Per rank: its document pieces, and the (query, key) pairs causal attention scores over
    them (a piece [a, b) of a document, positions within it: (b² − a² + b − a) / 2)."""
    spans = np.array([s for p in plan.pieces for s in p.spans], dtype=np.int64).reshape(-1, 2)
    bounds = np.asarray(boundaries)
    inside = np.searchsorted(bounds, spans[:, 1], "left") - np.searchsorted(bounds, spans[:, 0], "right")
    owner = np.repeat(np.arange(len(plan.pieces)), [len(p.spans) for p in plan.pieces])
    segments = np.bincount(owner, weights=1 + inside, minlength=len(plan.pieces))
    # The spans cover the stream: split it at every span edge and document boundary, and give
    # each stretch [lo, hi) to the span holding it.
    order = np.argsort(spans[:, 0], kind="stable")
    points = np.union1d(bounds, spans.ravel())
    lo, hi = points[:-1], points[1:]
    held = order[np.searchsorted(spans[order, 0], lo, "right") - 1]
    start = bounds[np.searchsorted(bounds, lo, "right") - 1]
    a, b = (lo - start).astype(float), (hi - start).astype(float)
    pairs = np.bincount(owner[held], weights=(b * b - a * a + b - a) / 2, minlength=len(plan.pieces))
    return segments, pairs


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


@dataclass
class DocumentLayout:
    """The batch's documents laid out longest first (ties by position: deterministic), as
    positions 0..total on one line; work is measured in token units, where every document
    piece also costs a padded tail chunk (``overhead`` tokens), and a hybrid's first x tokens
    of a document ``x + pair_tokens · (x² + x) / 2`` (attention's pairs)."""

    spans: np.ndarray  # [n_docs, 2] stream spans, in layout order
    ends: list[int]  # layout position where each document ends
    lengths: np.ndarray  # tokens of each document (float)
    work_ends: np.ndarray  # work done at each document end
    overhead: float
    pair_tokens: float = 0.0

    @classmethod
    def longest_first(cls, boundaries: list[int], overhead: float, pair_tokens: float = 0.0) -> DocumentLayout:
        bounds = np.asarray(boundaries, dtype=np.int64)
        docs = np.argsort(-np.diff(bounds), kind="stable")
        docs = docs[bounds[docs + 1] > bounds[docs]]
        spans = np.stack([bounds[docs], bounds[docs + 1]], axis=1)
        lengths = (spans[:, 1] - spans[:, 0]).astype(float)
        work = np.cumsum(lengths + pair_tokens * (lengths**2 + lengths) / 2 + overhead)
        return cls(spans, np.cumsum(lengths).astype(int).tolist(), lengths, work, overhead, pair_tokens)

    @functools.cached_property
    def doc_ends(self) -> set[int]:  # built once: the planner asks for every cut it weighs
        return set(self.ends) | {0}

    def _work_in(self, x: float) -> float:
        """The work of a document's first x tokens."""
        return x + self.pair_tokens * (x * x + x) / 2

    def _tokens_in(self, work: float) -> float:
        """The inverse: how many of a document's first tokens ``work`` pays for."""
        c = self.pair_tokens
        if not c:
            return work
        b = 1 + c / 2
        return 2 * work / (b + np.sqrt(b * b + 2 * c * work))  # the quadratic's root, stable form

    def to_position(self, work: float) -> int:
        """The layout position at which ``work`` token units are done."""
        d = min(int(np.searchsorted(self.work_ends, work)), len(self.spans) - 1)
        length = self.lengths[d]
        into_doc = self._tokens_in(max(work - (self.work_ends[d] - self._work_in(length)), 0.0))
        return self.ends[d] - int(length) + int(round(min(into_doc, length)))

    def to_work(self, position: int) -> float:
        """Token units of work before layout ``position`` (a cut inside a document adds one
        more piece, so one more tail)."""
        d = bisect.bisect_right(self.ends, position)
        done = self.work_ends[d - 1] if d else 0.0
        if position in self.doc_ends:
            return done
        return done + self.overhead + self._work_in(position - (self.ends[d - 1] if d else 0))

    def before_cut(self, position: int) -> int:
        """Tokens of the document holding ``position`` before it (what a cut there relays)."""
        d = bisect.bisect_right(self.ends, position)
        return 0 if position in self.doc_ends else position - (self.ends[d - 1] if d else 0)

    def snapped(self, cut: int, tolerance: float) -> int:
        """The document end nearest ``cut`` within ``tolerance`` tokens, or ``cut``."""
        ends = self.ends
        near = ends[bisect.bisect_left(ends, cut - tolerance) : bisect.bisect_right(ends, cut + tolerance)]
        return min(near, key=lambda e: (abs(e - cut), e)) if near else cut


KV_PASSES = 8


def divide(
    layout: DocumentLayout,
    lo: int,
    hi: int,
    speeds: np.ndarray,
    caps: np.ndarray | None,
    busy: np.ndarray,
    tolerance: float,
    hop: float,
    min_piece: int,
    kv_hop: float = 0.0,
) -> list[int]:
    """Cut layout positions [lo, hi) among units (ranks or whole nodes) of ``speeds`` so that
    they finish together, twice: the second pass charges each unit ``hop`` seconds for every
    relay the first pass's cuts need (and ``kv_hop`` per token of the document before the
    cut: a hybrid's keys and values), and keeps which cuts sit on document ends."""
    n, doc_ends = len(speeds), layout.doc_ends
    tolerances = [tolerance] * (n - 1)
    base = busy
    # Recurrent hops cost the same wherever the cut falls: one correction pass. A hybrid's keys
    # and values grow with the cut's place in its document, which moves with the busy time:
    # a few more passes to a fixed point.
    for attempt in range(KV_PASSES if kv_hop else 2):
        shares = water_fill(layout.to_work(hi) - layout.to_work(lo), speeds, caps, busy)
        cuts, work = [lo], layout.to_work(lo)
        for i, unit_share in enumerate(shares[:-1]):
            work += unit_share
            cut = layout.snapped(layout.to_position(work), tolerances[i])
            cuts.append(min(max(cut, cuts[-1] + min_piece), hi - min_piece * (n - 1 - i)))
        cuts.append(hi)
        relays = np.array([(c not in doc_ends) * hop for c in cuts[1:-1]])
        busy = base + np.concatenate([relays, [0]]) + np.concatenate([[0], relays])
        if kv_hop:
            busy += kv_hop * keys_values_tokens(layout, cuts)
        if attempt == 0:
            tolerances = [t if c in doc_ends else 0.0 for t, c in zip(tolerances, cuts[1:-1])]
    return cuts


def keys_values_tokens(layout: DocumentLayout, cuts: list[int]) -> np.ndarray:
    """Per unit holding layout positions [cuts[i], cuts[i + 1]): the tokens of keys and values
    it receives (its first document's earlier tokens) or sends (its part of them, once to each
    later unit continuing that document), whichever is more (full duplex)."""
    n = len(cuts) - 1
    incoming, outgoing = np.zeros(n), np.zeros(n)
    for i in range(1, n):
        before = layout.before_cut(cuts[i])
        if not before:
            continue
        incoming[i] = before
        start = cuts[i] - before  # the document's start
        for k in range(i - 1, -1, -1):
            outgoing[k] += max(0, min(cuts[k + 1], cuts[i]) - max(cuts[k], start))
            if cuts[k] <= start:
                break
    return np.maximum(incoming, outgoing)


def _ranks_by_node(cost: CostModel) -> list[list[int]]:
    nodes: dict[int, list[int]] = {}
    for r in range(cost.world_size):
        nodes.setdefault(cost.node(r), []).append(r)
    return [nodes[n] for n in sorted(nodes)]


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
    layout = DocumentLayout.longest_first(boundaries, cost.segment_overhead_tokens, cost.pair_tokens)
    doc_ends = layout.doc_ends
    speeds = 1.0 / np.asarray(cost.seconds_per_token, dtype=float)
    caps = None
    if cost.memory_cap_tokens is not None:  # token caps, in work units (tokens + tail overhead)
        caps = np.asarray(cost.memory_cap_tokens, dtype=float) * layout.work_ends[-1] / total
    per_token, share = float(np.median(cost.seconds_per_token)), total / R

    # Level 1: node boundaries. A relay between nodes delays two ranks, which their node
    # makes up by giving them less work: it costs the node hop / (ranks in node).
    node_ranks = _ranks_by_node(cost)
    node_speed = np.array([speeds[ranks].sum() for ranks in node_ranks])
    node_caps = None if caps is None else np.array([caps[ranks].sum() for ranks in node_ranks])
    inter_tolerance = min(2 * cost.inter_node_hop_seconds / per_token, 0.01 * share * cost.ranks_per_node)
    node_hop = cost.inter_node_hop_seconds / cost.ranks_per_node
    node_kv_hop = cost.inter_node_kv_hop_seconds_per_token / cost.ranks_per_node
    anchors = divide(
        layout, 0, total, node_speed, node_caps, np.zeros(len(node_ranks)), inter_tolerance, node_hop, min_piece,
        node_kv_hop,
    )  # fmt: skip

    # Level 2: ranks inside each node, with the relays they will do priced in. A hybrid's keys
    # and values run between ranks of any node, at either rate: after a first pass that prices
    # them inside the node only, each pass takes every rank's from the last pass's plan, and
    # the best plan found is kept.
    intra_tolerance = min(cost.hop_seconds / per_token, 0.01 * share)
    exchanged = cost.pair_tokens and cost.kv_hop_seconds_per_token
    best, kv_seconds = None, None
    for _ in range(KV_PASSES if exchanged else 1):
        order, cuts = [], [0]
        for n, ranks in enumerate(node_ranks):
            busy = np.zeros(len(ranks))
            busy[0] += cost.inter_node_hop_seconds * (anchors[n] not in doc_ends)
            busy[-1] += cost.inter_node_hop_seconds * (anchors[n + 1] not in doc_ends)
            kv_hop = cost.kv_hop_seconds_per_token
            if kv_seconds is None:
                busy[0] += cost.inter_node_kv_hop_seconds_per_token * layout.before_cut(anchors[n])
            else:
                busy, kv_hop = busy + kv_seconds[ranks], 0.0
            order += ranks
            rank_caps = None if caps is None else caps[ranks]
            node_cuts = divide(
                layout, anchors[n], anchors[n + 1], speeds[ranks], rank_caps, busy, intra_tolerance,
                cost.hop_seconds, min_piece, kv_hop,
            )  # fmt: skip
            cuts += node_cuts[1:]
        plan = _plan_of(layout, order, cuts, cost, total)
        predicted = cost.predict(plan, boundaries)
        if best is None or max(predicted) < max(best[1]):
            best = plan, predicted
        if exchanged:
            kv_seconds = cost.keys_values_seconds(plan, boundaries)
    plan, predicted = best
    return PlanResult(plan, predicted, "proportional-cut", time.perf_counter() - start_time)


def _plan_of(layout: DocumentLayout, order: list[int], cuts: list[int], cost: CostModel, total: int) -> StepPlan:
    """The plan giving rank ``order[i]`` layout positions [cuts[i], cuts[i + 1])."""
    if cost.memory_cap_tokens is not None:
        cuts = _enforce_caps(cuts, [cost.memory_cap_tokens[r] for r in order])
    pieces: list[RankPiece] = [RankPiece([]) for _ in order]
    for i, spans in enumerate(layout_spans(layout.spans, np.asarray(layout.ends), cuts)):
        pieces[order[i]].spans = spans
    link_chains(pieces, order, cuts, layout.doc_ends)
    plan = StepPlan(pieces)
    plan.validate(total)
    return plan


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


def layout_spans(layout: np.ndarray, ends: np.ndarray, cuts: list[int]) -> list[list[tuple[int, int]]]:
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


def link_chains(pieces: list[RankPiece], ranks: list[int], cuts: list[int], doc_ends: set[int]) -> None:
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


def _balanced_cuts(prefix: list[int], parts: int) -> list[int]:
    """Indices into ``prefix`` (document boundaries) that split the tokens into ``parts``
    nearly equal runs of whole documents."""
    total, cuts = prefix[-1], [0]
    for p in range(1, parts):
        target = total * p / parts
        i = bisect.bisect_left(prefix, target)
        if i > 0 and target - prefix[i - 1] < prefix[i] - target:
            i -= 1
        cuts.append(min(max(i, cuts[-1]), len(prefix) - 1))
    return cuts + [len(prefix) - 1]


def even_groups_plan(batch: Batch, world_size: int, sp_size: int) -> StepPlan:
    """The ``fixed`` planner: ``world_size // sp_size`` groups take equal shares of whole
    documents in stream order; inside a group the share is cut into ``sp_size`` equal pieces
    relayed as one chain. Blind to speed; exact."""
    if world_size % sp_size:
        raise PlanError(f"parallel.sp.size={sp_size} must divide the world size {world_size}")
    bounds = batch.cu_seqlens.tolist()
    if bounds[-1] < world_size:
        raise PlanError(f"a batch of {bounds[-1]} tokens cannot feed {world_size} ranks; raise data.tokens_per_batch")
    groups = _balanced_cuts(bounds, world_size // sp_size)
    if any(bounds[b] - bounds[a] < sp_size for a, b in zip(groups[:-1], groups[1:])):
        # Too few documents to give every group whole ones: one chain over all ranks instead.
        return even_groups_plan(batch, world_size, world_size)
    pieces = []
    for g in range(world_size // sp_size):
        start, end = bounds[groups[g]], bounds[groups[g + 1]]
        edges = [start + (end - start) * i // sp_size for i in range(sp_size + 1)]
        chain = list(range(g * sp_size, (g + 1) * sp_size)) if sp_size > 1 else []
        pieces += [RankPiece([(edges[i], edges[i + 1])], chain) for i in range(sp_size)]
    return StepPlan(pieces)


PLANNERS = ("fixed", "balanced", "concat")


def make_plan(kind: str, batch: Batch, cost: CostModel, sp_size: int, min_piece: int) -> tuple[StepPlan, dict]:
    """The step's plan by the planner ``kind`` (``parallel.planner.kind``), and what the
    planner says of it (predicted per-rank time, solver; nothing for ``fixed``). Every rank
    computes the same plan from the same inputs: the planners are deterministic."""
    if kind == "fixed":
        plan = even_groups_plan(batch, cost.world_size, sp_size)
        plan.validate(batch.n_tokens)
        return plan, {}
    bounds = batch.cu_seqlens.tolist()
    result = balanced_plan(bounds, cost, min_piece) if kind == "balanced" else concat_chunk_plan(bounds, cost)
    return result.plan, {k: v for k, v in result.to_dict().items() if k != "plan"}


def concat_chunk_plan(boundaries: list[int], cost: CostModel) -> PlanResult:
    """Common practice: cut the packed stream into equal token pieces, one per rank, and
    drop the state at each cut (no relay: a cut document restarts from zero)."""
    start_time = time.perf_counter()
    R, total = cost.world_size, boundaries[-1]
    edges = [total * i // R for i in range(R + 1)]
    plan = StepPlan([RankPiece([(a, b)]) for a, b in zip(edges[:-1], edges[1:])])
    plan.validate(total)
    return PlanResult(plan, cost.predict(plan, boundaries), "concat-chunk", time.perf_counter() - start_time)
