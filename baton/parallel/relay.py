"""Relaying segment summaries (A, S) between the ranks of a chain, as autograd functions.

Every strategy starts the relay and returns a function that finishes it, giving ``S_in``,
the state entering this rank's piece, such that ``loss.backward()`` relays state gradients
back along the chain. The caller scans its piece in between, so a relay still in flight
overlaps the scan (the all-gather does, forward and backward; the point-to-point
strategies, whose hops depend on each other, finish at the start). Summaries compose as

    (A2, S2) ∘ (A1, S1) = (A2 A1, A2 S1 + S2)        (1 is the earlier segment)

with A a per-key-dim ([H, K, 1]) or per-head ([H, 1, 1]) multiplier of the [H, K, V] state, or
a K×K matrix per head ([H, K, K], the delta rule's transitions, kept in fp32); the
composition is the same, its products matrix products (``apply_transition``).

- chain:     receive from the predecessor, send ``A S_in + S`` on; latency grows with the chain.
- allgather: one all-gather of every rank's summary on the world group, then a local
             prefix combine over this chain's earlier ranks (LASP-2 style).
- logscan:   recursive doubling, ceil(log2 n) point-to-point rounds of one summary each.

Only point-to-point messages and the fixed world group are used: chains change every
step, and creating process groups per step would be far too slow on NCCL.

Each op's forward communicates once per step: what it received is kept in the step's
:class:`RelayRecord`, and a forward run again to recompute activations (activation
checkpointing) gets it back instead of sending and receiving again. Backward runs the
nodes of the first forward, so the state gradients are relayed once too.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import Tensor
from torch.autograd import Function

from baton.kernels.layout import apply_transition, identity_transition
from baton.parallel.plan import chain_neighbours

STRATEGIES = ("chain", "allgather", "logscan")


@dataclass
class CommStats:
    """Bytes this rank sent and received per op name, and seconds spent communicating
    (waiting included), since the last reset."""

    sent: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    received: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    seconds: float = 0.0

    def add(self, name: str, sent: int = 0, received: int = 0) -> None:
        self.sent[name] += sent
        self.received[name] += received

    @contextmanager
    def timed(self):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds += time.perf_counter() - start

    def reset(self) -> None:
        self.sent.clear()
        self.received.clear()
        self.seconds = 0.0

    def to_dict(self) -> dict:
        return {"sent": dict(self.sent), "received": dict(self.received), "seconds": self.seconds}


@dataclass
class RelayRecord:
    """What the relay ops received in this step's forward, by op and message."""

    received: dict = field(default_factory=dict)
    replaying: bool = False  # inside a recomputation: nothing is sent or received

    def clear(self) -> None:
        self.received.clear()

    @contextmanager
    def replay(self):
        before, self.replaying = self.replaying, True
        try:
            yield
        finally:
            self.replaying = before

    def checkpoint_contexts(self) -> tuple[AbstractContextManager, AbstractContextManager]:
        """``context_fn`` for ``torch.utils.checkpoint``: the first forward communicates, the
        recomputation replays."""
        return nullcontext(), self.replay()

    def once(self, key: tuple, communicate: Callable[[], Tensor | None]) -> Tensor | None:
        """``communicate()`` in the first forward; its result again (a copy: the first one is
        an output of the first forward's graph) when replaying."""
        if self.replaying:
            kept = self.received[key]
            return kept.clone() if kept is not None else None
        self.received[key] = result = communicate()
        return result


@dataclass
class RelayLink:
    """This rank's place in its chain for the current step (plain data, no process groups)."""

    rank: int
    world_size: int
    chain: list[int]
    stats: CommStats
    name: str = ""  # the op's name in the stats (e.g. "layer3.scan")
    tag: int = 0  # distinguishes concurrent point-to-point messages of different ops
    record: RelayRecord = field(default_factory=RelayRecord)

    @property
    def replaying(self) -> bool:
        return self.record.replaying

    @property
    def position(self) -> int:
        return self.chain.index(self.rank)

    @property
    def prev(self) -> int | None:
        return chain_neighbours(self.chain, self.rank)[0]

    @property
    def next(self) -> int | None:
        return chain_neighbours(self.chain, self.rank)[1]


def p2p(
    link: RelayLink,
    send: Tensor | None,
    dst: int | None,
    recv_like: Tensor | None,
    src: int | None,
    tag_offset: int = 0,
) -> Tensor | None:
    """Post a send and a receive together, then wait for both (no ordering deadlocks)."""
    ops, received = [], None
    with link.stats.timed():
        if send is not None and dst is not None:
            ops.append(dist.isend(send.contiguous(), dst, tag=link.tag + tag_offset))
        if recv_like is not None and src is not None:
            received = torch.empty_like(recv_like)
            ops.append(dist.irecv(received, src, tag=link.tag + tag_offset))
        for op in ops:
            op.wait()
    return received


def nbytes(t: Tensor) -> int:
    return t.numel() * t.element_size()


class _ChainRelay(Function):
    @staticmethod
    def forward(ctx, A: Tensor, S: Tensor, link: RelayLink) -> Tensor:
        def communicate() -> Tensor:
            prev, nxt = link.prev, link.next
            S_in = p2p(link, None, None, S, prev) if prev is not None else torch.zeros_like(S)
            if nxt is not None:
                p2p(link, apply_transition(A, S_in) + S, nxt, None, None)
            link.stats.add(link.name, sent=nbytes(S) * (nxt is not None), received=nbytes(S) * (prev is not None))
            return S_in

        S_in = link.record.once((link.name, "chain"), communicate)
        ctx.save_for_backward(A, S_in)
        ctx.link = link
        return S_in

    @staticmethod
    def backward(ctx, dS_in: Tensor):
        A, S_in = ctx.saved_tensors
        link = ctx.link
        dS_out = p2p(link, None, None, S_in, link.next) if link.next is not None else torch.zeros_like(S_in)
        matrix = A.shape[-1] > 1  # the delta rule's; a diagonal one is its own transpose
        if link.prev is not None:
            p2p(link, dS_in + apply_transition(A.mT if matrix else A, dS_out), link.prev, None, None)
        n = nbytes(S_in)
        link.stats.add(link.name + ".grad", sent=n * (link.prev is not None), received=n * (link.next is not None))
        dA = dS_out @ S_in.mT if matrix else (dS_out * S_in).sum_to_size(A.shape)
        return dA, dS_out, None


class _AllGatherStart(Function):
    """Starts an all-gather on the world group and returns its result, not yet filled:
    :class:`_AllGatherWait` completes it. In backward the wait's twin starts the all-reduce
    of the gradients (gloo has no reduce-scatter) and this one waits for it, so with the
    autograd engine's latest-first order the scan's backward runs while it is in flight."""

    @staticmethod
    def forward(ctx, x: Tensor, link: RelayLink, pending: dict) -> Tensor:
        def communicate() -> Tensor:
            gathered = x.new_empty(link.world_size, *x.shape)
            with link.stats.timed():
                pending["forward"] = dist.all_gather(list(gathered.unbind(0)), x.contiguous(), async_op=True)
            n, P = nbytes(x), link.world_size
            link.stats.add(link.name, sent=n * (P - 1), received=n * (P - 1))  # ring all-gather
            return gathered

        ctx.link, ctx.pending = link, pending
        return link.record.once((link.name, "gather"), communicate)

    @staticmethod
    def backward(ctx, grad: Tensor):
        link = ctx.link
        work, reduced = ctx.pending.pop("backward")  # ``grad`` is that buffer, still being reduced
        with link.stats.timed():
            work.wait()
        n, P = nbytes(reduced[0]), link.world_size
        link.stats.add(link.name + ".grad", sent=2 * n * (P - 1), received=2 * n * (P - 1))  # ring all-reduce
        return reduced[link.rank], None, None


class _AllGatherWait(Function):
    @staticmethod
    def forward(ctx, gathered: Tensor, link: RelayLink, pending: dict) -> Tensor:
        if not link.replaying:
            with link.stats.timed():
                pending.pop("forward").wait()
        ctx.link, ctx.pending = link, pending
        return gathered.view_as(gathered)

    @staticmethod
    def backward(ctx, grad: Tensor):
        grad = grad.contiguous().clone()  # reduced in place, in flight until the start's backward
        with ctx.link.stats.timed():
            ctx.pending["backward"] = (dist.all_reduce(grad, async_op=True), grad)
        return grad, None, None


class _Exchange(Function):
    """One recursive-doubling round: send ``x`` ``distance`` ranks down the chain, receive
    from ``distance`` ranks up (the identity summary where there is none)."""

    @staticmethod
    def forward(ctx, x: Tensor, identity: Tensor, link: RelayLink, distance: int) -> Tensor:
        pos, chain = link.position, link.chain
        dst = chain[pos + distance] if pos + distance < len(chain) else None
        src = chain[pos - distance] if pos - distance >= 0 else None

        def communicate() -> Tensor | None:
            received = p2p(link, x, dst, x, src, distance)
            link.stats.add(link.name, sent=nbytes(x) * (dst is not None), received=nbytes(x) * (src is not None))
            return received

        received = link.record.once((link.name, "exchange", distance), communicate)
        ctx.link, ctx.dst, ctx.src, ctx.distance = link, dst, src, distance
        return received if received is not None else identity.clone()

    @staticmethod
    def backward(ctx, grad: Tensor):
        link = ctx.link
        dx = p2p(link, grad if ctx.src is not None else None, ctx.src, grad, ctx.dst, ctx.distance)
        n = nbytes(grad)
        link.stats.add(link.name + ".grad", sent=n * (ctx.src is not None), received=n * (ctx.dst is not None))
        return (dx if dx is not None else torch.zeros_like(grad)), None, None, None


def _flat(A: Tensor, S: Tensor) -> Tensor:
    return torch.cat([A.reshape(-1), S.reshape(-1)])


def _unflat(x: Tensor, A_shape: torch.Size, S_shape: torch.Size) -> tuple[Tensor, Tensor]:
    nA = A_shape.numel()
    return x[..., :nA].reshape(*x.shape[:-1], *A_shape), x[..., nA:].reshape(*x.shape[:-1], *S_shape)


def relay_chain(A: Tensor, S: Tensor, link: RelayLink) -> Callable[[], Tensor]:
    S_in = _ChainRelay.apply(A, S, link)
    return lambda: S_in


def relay_allgather(A: Tensor, S: Tensor, link: RelayLink) -> Callable[[], Tensor]:
    pending: dict = {}  # the in-flight work handles, from each start to its wait
    gathered = _AllGatherStart.apply(_flat(A, S), link, pending)

    def finish() -> Tensor:
        all_A, all_S = _unflat(_AllGatherWait.apply(gathered, link, pending), A.shape, S.shape)
        # Start from a zero that is still connected to the gather, so that every rank runs
        # the gather's backward (a collective) even if nothing flows into its own piece.
        S_in = all_S[link.rank] * 0
        for r in link.chain[: link.position] if len(link.chain) > 1 else []:
            S_in = apply_transition(all_A[r], S_in) + all_S[r]
        return S_in

    return finish


def relay_logscan(A: Tensor, S: Tensor, link: RelayLink) -> Callable[[], Tensor]:
    """Exclusive scan by recursive doubling. After round d, X covers the 2^(d+1) summaries
    ending at this rank and E the 2^(d+1) - 1 before it; E's state is S_in at the end."""
    no_op = identity_transition(A)
    identity = _flat(no_op, torch.zeros_like(S))
    X_A, X_S = A, S
    E_A, E_S = no_op, torch.zeros_like(S)
    distance = 1
    while distance < len(link.chain):
        R_A, R_S = _unflat(_Exchange.apply(_flat(X_A, X_S), identity, link, distance), A.shape, S.shape)
        E_A, E_S = apply_transition(E_A, R_A), apply_transition(E_A, R_S) + E_S
        X_A, X_S = apply_transition(X_A, R_A), apply_transition(X_A, R_S) + X_S
        distance *= 2
    return lambda: E_S


RELAYS = {"chain": relay_chain, "allgather": relay_allgather, "logscan": relay_logscan}


class _SendTail(Function):
    """Identity on ``x``; sends ``tail`` to the next rank, and in backward adds the gradient
    the next rank returns for it."""

    @staticmethod
    def forward(ctx, x: Tensor, tail: Tensor, link: RelayLink) -> Tensor:
        def communicate() -> None:
            p2p(link, tail, link.next, None, None)
            link.stats.add(link.name, sent=nbytes(tail))

        link.record.once((link.name, "tail"), communicate)
        ctx.link, ctx.tail_shape = link, tail.shape
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad_x: Tensor):
        link = ctx.link
        grad_tail = p2p(link, None, None, grad_x.new_empty(ctx.tail_shape), link.next)
        link.stats.add(link.name + ".grad", received=nbytes(grad_tail))
        return grad_x, grad_tail, None


class _RecvHead(Function):
    """Receives the previous rank's tail; in backward sends its gradient back. ``anchor``
    (this rank's input, which requires grad) puts the op into the autograd graph."""

    @staticmethod
    def forward(ctx, anchor: Tensor, shape: tuple[int, ...], link: RelayLink) -> Tensor:
        def communicate() -> Tensor:
            received = p2p(link, None, None, anchor.new_empty(shape), link.prev)
            link.stats.add(link.name, received=nbytes(received))
            return received

        ctx.link = link
        return link.record.once((link.name, "head"), communicate)

    @staticmethod
    def backward(ctx, grad: Tensor):
        p2p(ctx.link, grad, ctx.link.prev, None, None)
        ctx.link.stats.add(ctx.link.name + ".grad", sent=nbytes(grad))
        return None, None, None


def send_tail(x: Tensor, tail: Tensor, link: RelayLink) -> Tensor:
    """``tail`` must be computed from ``x`` (its gradient is added into x's)."""
    return _SendTail.apply(x, tail, link)


def recv_head(anchor: Tensor, shape: tuple[int, ...], link: RelayLink) -> Tensor:
    return _RecvHead.apply(anchor, shape, link)
