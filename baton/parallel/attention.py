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

from baton.kernels.attention_ref import attention_ref, merge_partials, prefix_attention
from baton.parallel.relay import recv_head, send_tail
from baton.parallel.sequence import SequenceParallel


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
        prefix = None
        if sp.continues_from_prev:
            prefix = recv_head(kv, (kv.shape[0], sp.first_offset, *kv.shape[2:]), link)
        if sp.continues_to_next:  # the conv halo's messages, sent whole: their gradients come back
            forwarded = prefix if sp.carries else kv[:, :0]
            kv = send_tail(kv, torch.cat([forwarded, kv[:, bounds[-2] :]], dim=1), link)
            k, v = kv.split([D, kv.shape[-1] - D], dim=-1)
        o, lse = attention_ref(q, k, v, cu_seqlens, scale=scale, block=block)
        if prefix is None:
            return o
        first = bounds[1]
        pk, pv = prefix.split([D, prefix.shape[-1] - D], dim=-1)
        o_first, _ = merge_partials(o[:, :first], lse[:, :first], *prefix_attention(q[:, :first], pk, pv, scale))
        return torch.cat([o_first, o[:, first:]], dim=1)
