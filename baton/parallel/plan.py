"""The per-step plan: which part of the global packed stream each rank holds, and which
ranks relay recurrent state to each other.

A rank's piece is a list of spans of the global stream. Ranks in one chain hold
consecutive pieces of the stream; a document cut between two of them continues through
the relay. Several chains may run in one step (e.g. ranks 0-2 share a long document while
rank 3 holds short documents alone). Plans are plain data: logged as JSON, replayable.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from baton.data.loader import Batch


class PlanError(ValueError):
    """A plan that does not cover the batch exactly once, or whose chains are inconsistent."""


def chain_neighbours(chain: list[int], rank: int) -> tuple[int | None, int | None]:
    """The ranks before and after ``rank`` in its relay chain (None at an end or alone)."""
    if len(chain) < 2:
        return None, None
    i = chain.index(rank)
    return (chain[i - 1] if i > 0 else None), (chain[i + 1] if i + 1 < len(chain) else None)


@dataclass
class RankPiece:
    spans: list[tuple[int, int]]  # [start, end) ranges of the global packed stream, in the order held
    chain: list[int] = field(default_factory=list)  # ranks of this rank's chain in relay order

    @property
    def n_tokens(self) -> int:
        return sum(end - start for start, end in self.spans)


@dataclass
class StepPlan:
    pieces: list[RankPiece]  # one per rank
    relay: str | None = None  # the relay strategy chosen for this step (parallel.sp.relay=auto)

    @property
    def world_size(self) -> int:
        return len(self.pieces)

    def neighbours(self, rank: int) -> tuple[int | None, int | None]:
        return chain_neighbours(self.pieces[rank].chain, rank)

    def carries(self, rank: int, boundaries: list[int]) -> bool:
        """Whether the state ``rank`` sends on depends on the one it receives: its piece is one
        span inside one document, continued from the rank before (any document start inside
        is a reset)."""
        spans = self.pieces[rank].spans
        if self.neighbours(rank)[0] is None or len(spans) != 1:
            return False
        start, end = spans[0]
        return bisect.bisect_left(boundaries, start) == bisect.bisect_left(boundaries, end)

    def dependency_runs(self, boundaries: list[int]) -> list[list[int]]:
        """Each chain cut where the relayed state stops depending on what came before: in a
        run, every rank after the first forwards what it received, the first (a chain start,
        or a rank that resets) sends without waiting. A run of n ranks is n - 1 dependent
        hops; the relay's latency is its longest run's (``boundaries``: the document ends,
        ``Batch.cu_seqlens``)."""
        runs = []
        for chain in {tuple(p.chain) for p in self.pieces if len(p.chain) > 1}:
            run = [chain[0]]
            for rank in chain[1:]:
                run.append(rank)
                if not self.carries(rank, boundaries):
                    runs.append(run)
                    run = [rank]
            if len(run) > 1:
                runs.append(run)
        return sorted(runs)

    def to_dict(self) -> dict:
        pieces = [{"spans": [list(s) for s in p.spans], "chain": p.chain} for p in self.pieces]
        return {"pieces": pieces} | ({"relay": self.relay} if self.relay else {})

    @classmethod
    def from_dict(cls, d: dict) -> StepPlan:
        return cls([RankPiece([tuple(s) for s in p["spans"]], list(p["chain"])) for p in d["pieces"]], d.get("relay"))

    def validate(self, n_tokens: int) -> None:
        """Every token held exactly once; chains agree across their ranks and join end to start."""
        spans = np.array([s for p in self.pieces for s in p.spans], dtype=np.int64).reshape(-1, 2)
        spans = spans[np.argsort(spans[:, 0], kind="stable")]
        expected_starts = np.concatenate([[0], spans[:-1, 1]])
        bad = np.flatnonzero((spans[:, 0] != expected_starts) | (spans[:, 1] <= spans[:, 0]))
        if len(bad):
            raise PlanError(
                f"spans must tile [0, {n_tokens}) exactly once; gap or overlap at token {expected_starts[bad[0]]}"
            )
        covered = int(spans[-1, 1]) if len(spans) else 0
        if covered != n_tokens:
            raise PlanError(f"spans cover {covered} of {n_tokens} tokens")
        chains = [tuple(p.chain) for p in self.pieces]
        for chain in set(chains):  # each distinct chain once: linear even for very long chains
            for position, rank in enumerate(chain):
                if not 0 <= rank < len(chains) or chains[rank] != chain:
                    other = next(r for r, c in enumerate(chains) if c == chain)
                    raise PlanError(f"ranks {other} and {rank} disagree on their chain")
                nxt = chain[position + 1] if position + 1 < len(chain) else None
                if (
                    nxt is not None
                    and self.pieces[rank].spans
                    and self.pieces[nxt].spans
                    and (self.pieces[rank].spans[-1][1] != self.pieces[nxt].spans[0][0])
                ):
                    raise PlanError(
                        f"rank {rank} ends at token {self.pieces[rank].spans[-1][1]} but its successor {nxt} "
                        f"starts at {self.pieces[nxt].spans[0][0]}"
                    )
        for rank, piece in enumerate(self.pieces):
            if not piece.spans:
                raise PlanError(f"rank {rank} holds no tokens")
            if piece.chain and rank not in chains[rank]:
                raise PlanError(f"rank {rank}'s chain {piece.chain} does not include it")


@dataclass
class LocalBatch:
    """One rank's part of a global batch, ready for the model."""

    tokens: Tensor  # [T_local]
    labels: Tensor  # [T_local]
    cu_seqlens: Tensor  # local document segments
    continues_from_prev: bool  # the first segment is the tail of a document begun on the previous rank
    continues_to_next: bool  # the last segment goes on on the next rank
    first_offset: int = 0  # tokens of the first segment's document before this piece (on earlier ranks)
    # An attention layer's exchange: the ranks holding those earlier tokens and how many each
    # (earliest first), and the ranks whose first document continues this piece's last one.
    kv_from: list[tuple[int, int]] = field(default_factory=list)
    kv_to: list[int] = field(default_factory=list)


def local_batch(plan: StepPlan, rank: int, batch: Batch) -> LocalBatch:
    piece = plan.pieces[rank]
    bounds = batch.cu_seqlens.tolist()
    boundary = set(bounds)
    cuts, offset = [0], 0
    for start, end in piece.spans:
        inner = bounds[bisect.bisect_right(bounds, start) : bisect.bisect_left(bounds, end)]
        cuts += [offset + b - start for b in inner]
        offset += end - start
        cuts.append(offset)
    tokens = torch.cat([batch.tokens[s:e] for s, e in piece.spans])
    labels = torch.cat([batch.labels[s:e] for s, e in piece.spans])
    prev, nxt = plan.neighbours(rank)
    first = piece.spans[0][0]
    sources = {r: prefix_sources(plan, r, bounds) for r in piece.chain}
    return LocalBatch(
        tokens,
        labels,
        torch.tensor(sorted(set(cuts)), dtype=torch.long),
        continues_from_prev=prev is not None and piece.spans[0][0] not in boundary,
        continues_to_next=nxt is not None and piece.spans[-1][1] not in boundary,
        first_offset=first - bounds[bisect.bisect_right(bounds, first) - 1] if prev is not None else 0,
        kv_from=sources.get(rank, []),
        kv_to=[r for r in piece.chain if any(src == rank for src, _ in sources[r])],
    )


def prefix_sources(plan: StepPlan, rank: int, bounds: list[int]) -> list[tuple[int, int]]:
    """The ranks holding the earlier tokens of the document ``rank``'s piece begins inside, and
    how many each holds (earliest first): back along the chain through every piece that lies
    wholly inside that document, to the one it starts on."""
    first = plan.pieces[rank].spans[0][0]
    prev = plan.neighbours(rank)[0]
    if prev is None or first in set(bounds):
        return []
    remaining, sources = first - bounds[bisect.bisect_right(bounds, first) - 1], []
    while remaining > 0:
        take = min(remaining, plan.pieces[prev].n_tokens)
        sources.insert(0, (prev, take))
        remaining -= take
        prev = plan.neighbours(prev)[0]
    return sources
