"""Attention on the same contiguous partition as the recurrent layers (groundwork of the hybrid
models: the attention mixer that calls it is still to come).

A rank's piece is contiguous, so only its first segment can continue a document begun on
earlier ranks of its chain, and only that segment's queries need keys and values from other
ranks: those of the same document's earlier tokens. They travel along the chain as the conv
halo does, but whole: a rank sends the next one its last segment's keys and values, preceded
by what it received when its piece lies inside that document (the prefix grows by one piece
per hop, and is exactly ``LocalBatch.first_offset`` tokens on arrival). A document wholly on
one rank costs nothing. Gathered rather than passed block by block (ring attention confined to
the chain): one message per hop each way, whose size the receiver knows from the plan; the
rank attends to its own keys first and merges the prefix's partial result after, by the
log-sum-exp, so the local attention does not depend on the message. Backward returns the
prefix's gradient to the rank before, which keeps its own tokens' part and passes the rest on.
Not overlapped yet: the messages are blocking, as the conv halo's.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd import Function

from baton.kernels.attention_ref import attention_ref, merge_partials, prefix_attention
from baton.parallel.relay import RelayLink, nbytes, p2p
from baton.parallel.sequence import SequenceParallel


def _exchange(link: RelayLink, send: Tensor | None, dst: int | None, like: Tensor | None, src: int | None):
    with link.stats.timed():
        return p2p(send, dst, like, src, link.tag)


class _RecvPrefix(Function):
    """The previous rank's keys and values of this piece's first document; in backward their
    gradient goes back. ``anchor`` (this rank's keys and values) puts it into the graph."""

    @staticmethod
    def forward(ctx, anchor: Tensor, tokens: int, link: RelayLink) -> Tensor:
        def communicate() -> Tensor:
            like = anchor.new_empty(anchor.shape[0], tokens, *anchor.shape[2:])
            received = _exchange(link, None, None, like, link.prev)
            link.stats.add(link.name, received=nbytes(received))
            return received

        ctx.link = link
        return link.record.once((link.name, "prefix"), communicate)

    @staticmethod
    def backward(ctx, grad: Tensor):
        _exchange(ctx.link, grad.contiguous(), ctx.link.prev, None, None)
        ctx.link.stats.add(ctx.link.name + ".grad", sent=nbytes(grad))
        return None, None, None


class _SendPrefix(Function):
    """Identity on this piece's keys and values ``kv``; sends the next rank ``forwarded`` (what
    this rank received, where its piece lies inside the document) then the last segment's,
    from token ``start``. In backward the next rank's gradient of them splits back."""

    @staticmethod
    def forward(ctx, kv: Tensor, forwarded: Tensor, start: int, link: RelayLink) -> Tensor:
        sent = torch.cat([forwarded, kv[:, start:]], dim=1)

        def communicate() -> None:
            _exchange(link, sent, link.next, None, None)
            link.stats.add(link.name, sent=nbytes(sent))

        link.record.once((link.name, "tail"), communicate)
        ctx.link, ctx.start, ctx.sent_shape, ctx.forwarded = link, start, sent.shape, forwarded.shape[1]
        return kv.view_as(kv)

    @staticmethod
    def backward(ctx, grad_kv: Tensor):
        link = ctx.link
        grad_sent = _exchange(link, None, None, grad_kv.new_empty(ctx.sent_shape), link.next)
        link.stats.add(link.name + ".grad", received=nbytes(grad_sent))
        grad_kv = grad_kv.clone()
        grad_kv[:, ctx.start :] += grad_sent[:, ctx.forwarded :]
        return grad_kv, grad_sent[:, : ctx.forwarded], None, None


class RelayedAttention:
    """Drop-in for the attention op on one rank's piece (:func:`attention_ref`'s arguments,
    the prefix coming from the chain): the output [B, T, H, Dv]."""

    def __init__(self, sp: SequenceParallel, layer: int) -> None:
        self.sp, self.layer = sp, layer

    @torch.compiler.disable  # messages whose sizes the plan sets: eager between a compiled block's graphs
    def __call__(
        self, q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Tensor, scale: float | None = None, block: int = 128
    ) -> Tensor:
        sp, bounds = self.sp, cu_seqlens.tolist()
        link = sp.link(self.layer, "kv")
        D = k.shape[-1]
        kv = torch.cat([k, v], dim=-1)  # one message of both per hop
        prefix = _RecvPrefix.apply(kv, sp.first_offset, link) if sp.continues_from_prev else None
        if sp.continues_to_next:
            forwarded = prefix if sp.carries else kv[:, :0]
            kv = _SendPrefix.apply(kv, forwarded, bounds[-2], link)
            k, v = kv.split([D, kv.shape[-1] - D], dim=-1)
        o, lse = attention_ref(q, k, v, cu_seqlens, scale=scale, block=block)
        if prefix is None:
            return o
        first = bounds[1]
        pk, pv = prefix.split([D, prefix.shape[-1] - D], dim=-1)
        o_first, _ = merge_partials(o[:, :first], lse[:, :first], *prefix_attention(q[:, :first], pk, pv, scale))
        return torch.cat([o_first, o[:, first:]], dim=1)
