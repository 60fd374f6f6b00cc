"""Relaying segment summaries (A, S) between the ranks of a chain, overlapped with the local scan.

Every strategy is an exclusive prefix scan of the ranks' summaries along the chain: it gives
``S_in``, the state entering this rank's piece. Summaries compose as

    (A2, S2) ∘ (A1, S1) = (A2 A1, A2 S1 + S2)        (1 is the earlier segment)

with A a per-key-dim ([H, K, 1]) or per-head ([H, 1, 1]) multiplier of the [H, K, V] state, or
a K×K matrix per head ([H, K, K], the delta rule's transitions, kept in fp32); the
composition is the same, its products matrix products (``apply_transition``). The backward
is the same scan run the other way: the gradient of a rank's outgoing state is the exclusive
scan of (Aᵀ, dS_in) along the reversed chain, so each strategy is written once and serves
both directions.

- chain:     receive from the predecessor, send ``A S_in + S`` on. A rank whose piece holds
             a document start (A = 0, a reset) sends without waiting, so a chain's latency
             is that of its longest run of continuing ranks, not of its length; with
             ``blocks`` > 1 the state travels in blocks of the value dim (independent under
             every transition, diagonal or matrix) and a hop forwards one block while the next
             arrives (ZeCO's pipelined All-Scan).
- allgather: one all-gather of every rank's summary on the world group, then a local
             prefix combine over this chain's earlier ranks (LASP-2 style).
- logscan:   recursive doubling, ceil(log2 n) point-to-point rounds of one summary each.

Overlap: :func:`relay` launches the strategy and returns a function that finishes it; the
caller scans its piece in between, and in backward the relay of the state gradients is
launched before the scan's backward and finished after it (autograd runs nodes latest
first). The point-to-point strategies' messages and combines run on a side stream under
NCCL (its waits are stream waits: the host never blocks, the combine runs when the message
lands) and on one background thread under gloo; the all-gather is an asynchronous
collective issued by the caller, as every collective must be issued in the same order on
every rank. Only point-to-point messages and the fixed world group are used: chains change
every step, and creating process groups per step would be far too slow on NCCL.

Each op's forward communicates once per step: what it received is kept in the step's
:class:`RelayRecord`, and a forward run again to recompute activations (activation
checkpointing) gets it back instead of sending and receiving again. Backward runs the
nodes of the first forward, so the state gradients are relayed once too.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import Tensor
from torch.autograd import Function

from baton.kernels.layout import apply_transition, identity_transition
from baton.parallel.plan import chain_neighbours

STRATEGIES = ("chain", "allgather", "logscan")
TAG_STRIDE = 1 << 14  # point-to-point tags per op: forward below GRAD_TAGS, backward above
GRAD_TAGS = TAG_STRIDE // 2
HOP_TAG = GRAD_TAGS - 1  # the hop counts of a traced chain; blocks and distances stay below
MAX_BLOCKS = 256
# What a layer's cut passes on: a recurrent state (its scan's, or Newton's solves'), a conv
# window, an attention layer's keys and values of the document it continues.
MESSAGE_KINDS = ("scan", "conv", "kv")


def op_name(layer: int, kind: str) -> str:
    """A layer's relay op, as the stats and the planner name it: ``layer3.scan``."""
    return f"layer{layer}.{kind}"


def op_tag(layer: int, kind: str) -> int:
    """The first point-to-point tag of a layer's relay op: every op its own range of tags."""
    return (len(MESSAGE_KINDS) * layer + MESSAGE_KINDS.index(kind)) * TAG_STRIDE


@dataclass
class CommStats:
    """Bytes this rank sent and received per op name, seconds the caller waited for
    communication (what the overlap did not hide), over one step; with hop tracing,
    per op, the dependent hops behind the state this rank received."""

    sent: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    received: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    seconds: float = 0.0
    hops: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)  # the relay thread adds too

    def add(self, name: str, sent: int = 0, received: int = 0) -> None:
        with self.lock:
            self.sent[name] += sent
            self.received[name] += received

    @contextmanager
    def timed(self):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds += time.perf_counter() - start

    def to_dict(self) -> dict:
        sent, received, hops = dict(self.sent), dict(self.received), dict(self.hops)
        return {"sent": sent, "received": received, "seconds": self.seconds, "hops": hops}


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
    carries: bool = True  # the state leaving this rank depends on the one entering it (no reset inside)
    blocks: int = 1  # a chain's state travels in this many blocks (pipelined hops)
    overlap: bool = True  # False: each relay finishes before the local work it could hide behind
    trace_hops: bool = False  # a chain also sends how many dependent hops its state went through

    @property
    def replaying(self) -> bool:
        return self.record.replaying

    @property
    def prev(self) -> int | None:
        return chain_neighbours(self.chain, self.rank)[0]

    @property
    def next(self) -> int | None:
        return chain_neighbours(self.chain, self.rank)[1]


def p2p(send: Tensor | None, dst: int | None, recv_like: Tensor | None, src: int | None, tag: int) -> Tensor | None:
    """Post a send and a receive together, then wait for both (no ordering deadlocks)."""
    ops, received = [], None
    if send is not None and dst is not None:
        ops.append(dist.isend(send.contiguous(), dst, tag=tag))
    if recv_like is not None and src is not None:
        received = torch.empty_like(recv_like)
        ops.append(dist.irecv(received, src, tag=tag))
    for op in ops:
        op.wait()
    return received


def nbytes(t: Tensor) -> int:
    return t.numel() * t.element_size()


class _ThreadRunner:
    """gloo: the relay's messages and combines on one background thread, jobs in the order
    submitted (the same on every rank: layer by layer)."""

    def __init__(self) -> None:
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="baton-relay")

    def submit(self, job: Callable[[], Tensor], *inputs: Tensor) -> Callable[[], Tensor]:
        def run() -> Tensor:
            with torch.no_grad():  # grad mode is per thread; the relay builds no graph
                return job()

        return self.pool.submit(run).result


class _StreamRunner:
    """NCCL: the same jobs enqueued on a side stream. A work handle's wait there is a stream
    wait, so the host never blocks; the caller's stream waits for the side stream at the end."""

    def __init__(self, device: torch.device) -> None:
        self.stream = torch.cuda.Stream(device)

    def submit(self, job: Callable[[], Tensor], *inputs: Tensor) -> Callable[[], Tensor]:
        caller = torch.cuda.current_stream(self.stream.device)
        self.stream.wait_stream(caller)
        for t in inputs:  # allocated on the caller's stream, used on the side stream
            t.record_stream(self.stream)
        with torch.cuda.stream(self.stream), torch.no_grad():
            out = job()

        def wait() -> Tensor:
            caller.wait_stream(self.stream)
            out.record_stream(caller)
            return out

        return wait


_RUNNERS: dict[torch.device, _ThreadRunner | _StreamRunner] = {}


def runner_for(t: Tensor) -> _ThreadRunner | _StreamRunner:
    if t.device not in _RUNNERS:
        _RUNNERS[t.device] = _StreamRunner(t.device) if t.is_cuda else _ThreadRunner()
    return _RUNNERS[t.device]


def _chain_scan(A: Tensor, S: Tensor, link: RelayLink, order: list[int], tag: int, name: str) -> Tensor:
    """Receive the state from the rank before in ``order``, send ``A S_in + S`` to the one
    after; block by block, and without waiting where this rank's piece resets the state."""
    prev, nxt = chain_neighbours(order, link.rank)
    parts = S.tensor_split(link.blocks, dim=-1)
    received = [torch.empty_like(p, memory_format=torch.contiguous_format) for p in parts]
    recvs = [dist.irecv(buf, prev, tag=tag + b) for b, buf in enumerate(received)] if prev is not None else []
    sends = []
    if nxt is not None and not link.carries:  # a reset: what leaves does not depend on what arrives
        sends = [dist.isend(p.contiguous(), nxt, tag=tag + b) for b, p in enumerate(parts)]
    for b, part in enumerate(parts):
        if prev is None:
            received[b].zero_()
        else:
            recvs[b].wait()
        if nxt is not None and link.carries:
            sends.append(dist.isend((apply_transition(A, received[b]) + part).contiguous(), nxt, tag=tag + b))
    if link.trace_hops:
        _relay_hop_count(link, prev, nxt, tag, name, S.device)
    for s in sends:
        s.wait()
    n = sum(p.numel() for p in parts) * S.element_size()
    link.stats.add(name, sent=n * (nxt is not None), received=n * (prev is not None))
    return torch.cat(received, dim=-1)


def _relay_hop_count(
    link: RelayLink, prev: int | None, nxt: int | None, tag: int, name: str, device: torch.device
) -> None:
    """Pass on the number of dependent hops behind the outgoing state (one past the incoming
    count if this rank forwarded what it received, else one), recording the incoming count."""
    hops = torch.zeros(1, dtype=torch.int64, device=device)
    if prev is not None:
        dist.recv(hops, prev, tag=tag + HOP_TAG)
    link.stats.hops[name] = int(hops)  # a tracing mode: waits for the count, also on a GPU
    if nxt is not None:
        dist.send(hops + 1 if link.carries else torch.ones_like(hops), nxt, tag=tag + HOP_TAG)


def _logscan(A: Tensor, S: Tensor, link: RelayLink, order: list[int], tag: int, name: str) -> Tensor:
    """Exclusive scan by recursive doubling. After round d, X covers the 2^(d+1) summaries
    ending at this rank and E the 2^(d+1) - 1 before it; E's state is S_in at the end."""
    pos = order.index(link.rank)
    X_A, X_S = A, S
    E_A, E_S = identity_transition(A), torch.zeros_like(S)
    distance = 1
    while distance < len(order):
        dst = order[pos + distance] if pos + distance < len(order) else None
        src = order[pos - distance] if pos - distance >= 0 else None
        flat = _flat(X_A, X_S)
        received = p2p(flat, dst, flat, src, tag + distance)
        link.stats.add(name, sent=nbytes(flat) * (dst is not None), received=nbytes(flat) * (src is not None))
        if received is not None:
            R_A, R_S = _unflat(received, A.shape, S.shape)
            E_A, E_S = apply_transition(E_A, R_A), apply_transition(E_A, R_S) + E_S
            X_A, X_S = apply_transition(X_A, R_A), apply_transition(X_A, R_S) + X_S
        distance *= 2
    return E_S


def _launch_on_runner(scan: Callable) -> Callable:
    def launch(A: Tensor, S: Tensor, link: RelayLink, order: list[int], tag: int, name: str) -> Callable[[], Tensor]:
        return runner_for(S).submit(lambda: scan(A, S, link, order, tag, name), A, S)

    return launch


def _launch_allgather(
    A: Tensor, S: Tensor, link: RelayLink, order: list[int], tag: int, name: str
) -> Callable[[], Tensor]:
    """All-gather every rank's summary (an asynchronous collective, issued here), then combine
    the ones before this rank in ``order``."""
    flat = _flat(A, S).contiguous()
    gathered = flat.new_empty(link.world_size, *flat.shape)
    work = dist.all_gather(list(gathered.unbind(0)), flat, async_op=True)
    n, P = nbytes(flat), link.world_size
    link.stats.add(name, sent=n * (P - 1), received=n * (P - 1))  # ring all-gather

    def finish() -> Tensor:
        work.wait()
        all_A, all_S = _unflat(gathered, A.shape, S.shape)
        S_in = torch.zeros_like(S)
        for r in order[: order.index(link.rank)]:
            S_in = apply_transition(all_A[r], S_in) + all_S[r]
        return S_in

    return finish


LAUNCH = {
    "chain": _launch_on_runner(_chain_scan),
    "allgather": _launch_allgather,
    "logscan": _launch_on_runner(_logscan),
}


class _InFlight:
    """One op's relay in one step: launched before the local work, finished after it; in
    backward the same with (Aᵀ, dS_in) along the reversed chain."""

    def __init__(self, strategy: str, link: RelayLink) -> None:
        self.launch, self.link = LAUNCH[strategy], link

    def start(self, A: Tensor, S: Tensor) -> None:
        self.A = A
        if not self.link.replaying:
            self.pending = self.launch(A, S, self.link, *_direction(self.link, backward=False))

    def finish(self) -> Tensor:
        def wait() -> Tensor:
            with self.link.stats.timed():
                return self.pending()

        self.S_in = self.link.record.once((self.link.name, "relay"), wait)
        return self.S_in

    def start_backward(self, dS_in: Tensor) -> None:
        link, A = self.link, self.A
        At = A.mT if A.shape[-1] > 1 else A  # a diagonal transition is its own transpose
        self.pending = self.launch(At, dS_in, link, *_direction(link, backward=True))
        if not link.overlap:
            with link.stats.timed():
                dS_out = self.pending()
            self.pending = lambda: dS_out

    def finish_backward(self) -> tuple[Tensor, Tensor]:
        with self.link.stats.timed():
            dS_out = self.pending()  # the gradient of the state this rank sent on
        A, S_in = self.A, self.S_in
        dA = dS_out @ S_in.mT if A.shape[-1] > 1 else (dS_out * S_in).sum_to_size(A.shape)
        return dA, dS_out


class _Start(Function):
    @staticmethod
    def forward(ctx, A: Tensor, S: Tensor, relay: _InFlight) -> Tensor:
        relay.start(A.detach(), S.detach())
        ctx.relay = relay
        return S.new_empty(0)  # ties the finish to this node: its backward runs after the finish's

    @staticmethod
    def backward(ctx, _: Tensor):
        return *ctx.relay.finish_backward(), None


class _Finish(Function):
    @staticmethod
    def forward(ctx, token: Tensor, relay: _InFlight) -> Tensor:
        ctx.relay = relay
        return relay.finish()

    @staticmethod
    def backward(ctx, dS_in: Tensor):
        ctx.relay.start_backward(dS_in.detach().contiguous())
        return dS_in.new_empty(0), None


def _direction(link: RelayLink, backward: bool) -> tuple[list[int], int, str]:
    """The order of the ranks, the tags and the stats name of a relay: forward along the
    chain, backward (state gradients) along it reversed, on tags and a name of their own."""
    if backward:
        return link.chain[::-1], link.tag + GRAD_TAGS, link.name + ".grad"
    return link.chain, link.tag, link.name


def relay(strategy: str, A: Tensor, S: Tensor, link: RelayLink) -> Callable[[], Tensor]:
    """Start relaying this rank's summary ``(A, S)`` along ``link.chain``; the returned
    function finishes it, giving the state entering this rank's piece (differentiable: the
    backward relays the state gradients back along the chain)."""
    in_flight = _InFlight(strategy, link)
    token = _Start.apply(A, S, in_flight)
    return lambda: _Finish.apply(token, in_flight)


def relay_now(strategy: str, A: Tensor, S: Tensor, link: RelayLink, backward: bool = False) -> Tensor:
    """The same scan of summaries, finished before it returns and outside autograd, for ops
    that differentiate themselves (Newton's solves relay their adjoint with ``backward``)."""
    with link.stats.timed():
        return LAUNCH[strategy](A, S, link, *_direction(link, backward))()


def _flat(A: Tensor, S: Tensor) -> Tensor:
    return torch.cat([A.reshape(-1), S.reshape(-1)])


def _unflat(x: Tensor, A_shape: torch.Size, S_shape: torch.Size) -> tuple[Tensor, Tensor]:
    nA = A_shape.numel()
    return x[..., :nA].reshape(*x.shape[:-1], *A_shape), x[..., nA:].reshape(*x.shape[:-1], *S_shape)


def _blocking_p2p(
    link: RelayLink, send: Tensor | None, dst: int | None, recv_like: Tensor | None, src: int | None
) -> Tensor | None:
    """The conv halo's messages: a few tokens' inputs, exchanged by the caller (time counted)."""
    with link.stats.timed():
        return p2p(send, dst, recv_like, src, link.tag)


class _SendTail(Function):
    """Identity on ``x``; sends ``tail`` to the next rank, and in backward adds the gradient
    the next rank returns for it."""

    @staticmethod
    def forward(ctx, x: Tensor, tail: Tensor, link: RelayLink) -> Tensor:
        def communicate() -> None:
            _blocking_p2p(link, tail, link.next, None, None)
            link.stats.add(link.name, sent=nbytes(tail))

        link.record.once((link.name, "tail"), communicate)
        ctx.link, ctx.tail_shape = link, tail.shape
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad_x: Tensor):
        link = ctx.link
        grad_tail = _blocking_p2p(link, None, None, grad_x.new_empty(ctx.tail_shape), link.next)
        link.stats.add(link.name + ".grad", received=nbytes(grad_tail))
        return grad_x, grad_tail, None


class _RecvHead(Function):
    """Receives the previous rank's tail; in backward sends its gradient back. ``anchor``
    (this rank's input, which requires grad) puts the op into the autograd graph."""

    @staticmethod
    def forward(ctx, anchor: Tensor, shape: tuple[int, ...], link: RelayLink) -> Tensor:
        def communicate() -> Tensor:
            received = _blocking_p2p(link, None, None, anchor.new_empty(shape), link.prev)
            link.stats.add(link.name, received=nbytes(received))
            return received

        ctx.link = link
        return link.record.once((link.name, "head"), communicate)

    @staticmethod
    def backward(ctx, grad: Tensor):
        _blocking_p2p(ctx.link, grad, ctx.link.prev, None, None)
        ctx.link.stats.add(ctx.link.name + ".grad", sent=nbytes(grad))
        return None, None, None


def send_tail(x: Tensor, tail: Tensor, link: RelayLink) -> Tensor:
    """``tail`` must be computed from ``x`` (its gradient is added into x's)."""
    return _SendTail.apply(x, tail, link)


def recv_head(anchor: Tensor, shape: tuple[int, ...], link: RelayLink) -> Tensor:
    return _RecvHead.apply(anchor, shape, link)
