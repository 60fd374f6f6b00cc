"""Attention on the same contiguous partition as the recurrent layers (hybrid models).

A rank's piece is contiguous, so only its first segment can continue a document begun on
earlier ranks of its chain, and only that segment's queries need keys and values from other
ranks: those of the same document's earlier tokens. They travel along the chain as the conv
halo does, but whole: a rank sends the next one its last segment's keys and values, preceded
by what it received when its piece lies inside that document (the prefix grows by one piece
per hop, and is exactly ``LocalBatch.first_offset`` tokens on arrival). A document wholly on
one rank costs nothing. Gathered rather than passed block by block (ring attention confined to
the chain): one message per hop each way, whose size the receiver knows from the plan, and the
chain's hops are what the recurrent relay pays too. The rank attends to its own keys first
(its rotary positions known from the plan: the first document continues at ``first_offset``)
and merges the prefix's partial result after, by the log-sum-exp, so the local attention does
not depend on the message. Backward returns the prefix's gradient to the rank before, which
keeps its own tokens' part and passes the rest on. The messages are blocking, as the conv
halo's; activation checkpointing replays them (``RelayRecord``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from baton.kernels import attention
from baton.kernels.attention_ref import merge_partials, prefix_attention
from baton.models.rotary import Rotary, document_positions
from baton.parallel.relay import recv_head, send_tail

if TYPE_CHECKING:
    from baton.parallel.sequence import SequenceParallel


class RelayedAttention:
    """Drop-in for the attention mixer's ``attend`` op (``models/attention.py``) on one rank's
    piece, the prefix coming from the chain: the output [B, T, H, D]."""

    def __init__(self, sp: SequenceParallel, layer: int) -> None:
        self.sp, self.layer = sp, layer

    @torch.compiler.disable  # messages whose sizes the plan sets: eager between a compiled block's graphs
    def __call__(
        self, q: Tensor, kv: Tensor, cu_seqlens: Tensor, rotary: Rotary, scale: float, prefix: Tensor | None = None,
        block: int = 128,
    ) -> Tensor:  # fmt: skip
        sp, bounds = self.sp, cu_seqlens.tolist()
        if prefix is not None:
            raise ValueError("a relayed attention op takes a rank's whole piece, not a carried prefix")
        link = sp.link(self.layer, "kv")
        if sp.continues_from_prev:
            prefix = recv_head(kv, (kv.shape[0], sp.first_offset, *kv.shape[2:]), link)
        if sp.continues_to_next:  # the conv halo's messages, sent whole: their gradients come back
            forwarded = prefix if sp.carries else kv[:, :0]
            kv = send_tail(kv, torch.cat([forwarded, kv[:, bounds[-2] :]], dim=1), link)
        positions = document_positions(cu_seqlens, q.shape[1], sp.first_offset)
        q = rotary(q, positions)
        k, v = kv.chunk(2, dim=-1)
        o, lse = attention(q, rotary(k, positions), v, cu_seqlens, scale=scale, block=block)
        if prefix is None:
            return o
        first = bounds[1]
        pk, pv = prefix.chunk(2, dim=-1)
        pk = rotary(pk, torch.arange(prefix.shape[1]))
        o_first, _ = merge_partials(o[:, :first], lse[:, :first], *prefix_attention(q[:, :first], pk, pv, scale))
        return torch.cat([o_first, o[:, first:]], dim=1)
