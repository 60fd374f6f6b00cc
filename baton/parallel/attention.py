"""Attention on the same contiguous partition as the recurrent layers (hybrid models).

A rank's piece is contiguous, so only its first segment can continue a document begun on
earlier ranks of its chain, and only that segment's queries need keys and values from other
ranks: those of the same document's earlier tokens, held by the ranks before it back to the
one the document starts on (``LocalBatch.kv_from``, from the plan). Each of those ranks sends
its last segment's keys and values straight to every later rank that needs them
(``kv_to``), and the receiver gathers its prefix from all of them at once: one hop of latency
whatever the chain's length, where forwarding the prefix rank to rank would make the last rank
wait for every hop before it. A document wholly on one rank costs nothing. Gathered rather than
passed block by block around the chain (ring attention confined to it): every key block a query
needs is on its way at once, so there is nothing for a ring to pipeline, and the receiver knows
each message's size from the plan.

Overlapped: the messages are posted first (:class:`_PostKeysValues`), the rank attends to its
own keys while they travel (its rotary positions are known from the plan: the first document
continues at ``first_offset``), then waits (:class:`_TakePrefix`) and merges the prefix's
partial result with the local one by the log-sum-exp. Backward mirrors it: the prefix's
gradient goes back to its owners as soon as it is known, and a rank adds the gradients the later
ranks return for its keys and values after its own attention's backward. Activation
checkpointing replays the received prefix and sends nothing again (``RelayRecord``).
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.distributed as dist
from torch import Tensor
from torch.autograd import Function

from baton.kernels import attention, prefix_attention
from baton.kernels.attention_ref import merge_partials
from baton.models.rotary import Rotary, document_positions
from baton.parallel.relay import RelayLink, nbytes


class StepView(Protocol):
    """What the exchange reads of the step (``sequence.SequenceParallel``, which imports this
    module: a protocol, not an import back)."""

    first_offset: int
    kv_from: list[tuple[int, int]]
    kv_to: list[int]

    def link(self, layer: int, kind: str) -> RelayLink: ...


class KeysValuesExchange:
    """One attention layer's messages in one step: this rank's last segment's keys and values
    [B, n, Hk, C] to ``sinks``, its prefix from ``sources`` ((rank, tokens), earliest first)."""

    def __init__(self, link: RelayLink, sources: list[tuple[int, int]], sinks: list[int]) -> None:
        self.link, self.sources, self.sinks = link, sources, sinks
        self.works: list = []
        self.buffers: list[Tensor] = []

    def _send(self, tensor: Tensor, dst: int) -> None:
        self.works.append(dist.isend(tensor.contiguous(), dst, tag=self.link.tag))

    def _recv(self, like: Tensor, shape: tuple[int, ...], src: int) -> Tensor:
        buffer = like.new_empty(shape)
        self.works.append(dist.irecv(buffer, src, tag=self.link.tag))
        return buffer

    def _wait(self) -> None:
        with self.link.stats.timed():
            for work in self.works:
                work.wait()
        self.works = []

    def post(self, kv: Tensor, tail_start: int) -> None:
        """Forward: send the tail, post the prefix's receives."""
        if self.link.record.replaying:
            return
        tail = kv[:, tail_start:]
        for dst in self.sinks:
            self._send(tail, dst)
            self.link.stats.add(self.link.name, sent=nbytes(tail))
        self.buffers = [self._recv(kv, (kv.shape[0], n, *kv.shape[2:]), src) for src, n in self.sources]
        if not self.sources:
            self._wait()

    def prefix(self) -> Tensor:
        def communicate() -> Tensor:
            self._wait()
            prefix = torch.cat(self.buffers, dim=1)
            self.link.stats.add(self.link.name, received=nbytes(prefix))
            return prefix

        return self.link.record.once((self.link.name, "prefix"), communicate)

    def return_gradient(self, d_prefix: Tensor) -> None:
        """Backward: each owner's part of the prefix's gradient back to it (not waited for)."""
        start = 0
        for src, n in self.sources:
            self._send(d_prefix[:, start : start + n], src)
            start += n
        self.link.stats.add(self.link.name + ".grad", sent=nbytes(d_prefix))

    def tail_gradient(self, like: Tensor) -> Tensor | None:
        """Backward: the sum of what the later ranks return for this rank's tail."""
        received = [self._recv(like, like.shape, dst) for dst in self.sinks]
        self._wait()
        for grad in received:
            self.link.stats.add(self.link.name + ".grad", received=nbytes(grad))
        return torch.stack(received).sum(0) if received else None


class _PostKeysValues(Function):
    """Identity on the piece's keys and values; posts the exchange. In backward, adds the
    gradients the later ranks return for the tail."""

    @staticmethod
    def forward(ctx, kv: Tensor, tail_start: int, exchange: KeysValuesExchange) -> Tensor:
        exchange.post(kv.detach(), tail_start)
        ctx.exchange, ctx.tail_start = exchange, tail_start
        return kv.view_as(kv)

    @staticmethod
    def backward(ctx, grad: Tensor):
        returned = ctx.exchange.tail_gradient(grad[:, ctx.tail_start :])
        if returned is not None:
            grad = grad.clone()
            grad[:, ctx.tail_start :] += returned
        return grad, None, None


class _TakePrefix(Function):
    """The prefix, once it has arrived; in backward its gradient goes back to its owners.
    ``kv`` (the posted keys and values) orders it after the post."""

    @staticmethod
    def forward(ctx, kv: Tensor, exchange: KeysValuesExchange) -> Tensor:
        ctx.exchange = exchange
        return exchange.prefix()

    @staticmethod
    def backward(ctx, d_prefix: Tensor):
        ctx.exchange.return_gradient(d_prefix)
        return None, None


def exchange_keys_values(
    sp: StepView, layer: int, kv: Tensor, tail_start: int
) -> tuple[Tensor, KeysValuesExchange | None]:
    """Post layer ``layer``'s exchange of the piece's keys and values ``kv`` (its last segment
    from ``tail_start``); ``kv`` itself, with the exchange in its graph, and the exchange (None
    where this rank takes no part). Take the prefix with :func:`take_prefix`."""
    if not (sp.kv_from or sp.kv_to):
        return kv, None
    exchange = KeysValuesExchange(sp.link(layer, "kv"), sp.kv_from, sp.kv_to)
    return _PostKeysValues.apply(kv, tail_start, exchange), exchange


def take_prefix(kv: Tensor, exchange: KeysValuesExchange | None) -> Tensor | None:
    """The keys and values of the first document's earlier tokens (None: it starts here)."""
    if exchange is None or not exchange.sources:
        return None
    return _TakePrefix.apply(kv, exchange)


class _KeepInGraph(Function):
    """Identity on ``x``; ``t`` gets a zero gradient, so that its backward runs."""

    @staticmethod
    def forward(ctx, x: Tensor, t: Tensor) -> Tensor:
        ctx.t_shape, ctx.t_dtype = t.shape, t.dtype
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad, grad.new_zeros(ctx.t_shape, dtype=ctx.t_dtype)


def keep_in_graph(x: Tensor, t: Tensor) -> Tensor:
    """x, with ``t`` (the keys and values a rank posted) in its graph: the gradients later
    ranks return for them reach whatever ``t`` was computed from."""
    return _KeepInGraph.apply(x, t)


class RelayedAttention:
    """Drop-in for the attention mixer's ``attend`` op (``models/attention.py``) on one rank's
    piece, the prefix coming from the earlier ranks: the output [B, T, H, D]."""

    def __init__(self, sp: StepView, layer: int) -> None:
        self.sp, self.layer = sp, layer

    @torch.compiler.disable  # messages whose sizes the plan sets: eager between a compiled block's graphs
    def __call__(
        self, q: Tensor, kv: Tensor, cu_seqlens: Tensor, rotary: Rotary, scale: float, prefix: Tensor | None = None,
        block: int = 128,
    ) -> Tensor:  # fmt: skip
        sp, bounds = self.sp, cu_seqlens.tolist()
        if prefix is not None:
            raise ValueError("a relayed attention op takes a rank's whole piece, not a carried prefix")
        sp.link(self.layer, "kv")  # refuses to run outside a step
        kv, exchange = exchange_keys_values(sp, self.layer, kv, bounds[-2])
        positions = document_positions(cu_seqlens, q.shape[1], sp.first_offset)
        q = rotary(q, positions)
        k, v = kv.chunk(2, dim=-1)
        o, lse = attention(q, rotary(k, positions), v, cu_seqlens, scale=scale, block=block)  # while in flight
        prefix = take_prefix(kv, exchange)
        if prefix is None:
            return o
        first = bounds[1]
        pk, pv = prefix.chunk(2, dim=-1)
        pk = rotary(pk, torch.arange(prefix.shape[1]))
        o_first, _ = merge_partials(o[:, :first], lse[:, :first], *prefix_attention(q[:, :first], pk, pv, scale, block))
        return torch.cat([o_first, o[:, first:]], dim=1)
