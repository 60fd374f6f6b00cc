"""Gated full attention, the attention layer of Qwen3-Next / Qwen3.5's hybrids: grouped-query
heads, a per-head RMSNorm on queries and keys, rotary on a fraction of the head dims at each
token's position within its document, and a sigmoid output gate computed from the layer input.

Its keys and values are what a piece continuing a document needs (``relays.kv``): the
mixer's ``attend`` op takes them un-rotated, with the document's earlier ones as a ``prefix``,
and rotates both at their positions (the prefix's at 0..P-1, the piece's first document from
P on), so a prefix means the same thing whether it comes from the slices before on this rank
(micro-batches), from earlier ranks (sequence parallelism) or from a decoding cache.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from baton.config import ModelConfig
from baton.kernels import attention, cached_attention
from baton.models.mixer import RelayPoints
from baton.models.norm import RMSNorm
from baton.models.rotary import Rotary, document_positions
from baton.models.state import LayerState


@torch.compiler.disable  # reads document boundaries as numbers: eager between a compiled block's graphs
def attend(
    q: Tensor, kv: Tensor, cu_seqlens: Tensor | None, rotary: Rotary, scale: float,
    prefix: Tensor | tuple[Tensor, ...] | None = None, block: int = 128,
) -> Tensor:  # fmt: skip
    """Causal attention of a packed piece: q [B, T, H, D], kv [B, T, Hk, 2D] (keys then values,
    un-rotated), ``prefix`` [B, P, Hk, 2D] the keys and values of the first document's earlier
    tokens (or its pieces in order). The output [B, T, H, D]."""
    if isinstance(prefix, tuple):  # the pieces slices carried: joined here, transient under checkpointing
        prefix = torch.cat(prefix, dim=1)
    P = 0 if prefix is None else prefix.shape[1]
    positions = document_positions(cu_seqlens, q.shape[1], P)
    k, v = kv.chunk(2, dim=-1)
    prefix_k = prefix_v = None
    if prefix is not None:
        prefix_k, prefix_v = prefix.chunk(2, dim=-1)
        prefix_k = rotary(prefix_k, torch.arange(P))
    o, _ = attention(rotary(q, positions), rotary(k, positions), v, cu_seqlens, prefix_k, prefix_v, scale, block)
    return o


def kv_after(
    kv: Tensor, prefix: Tensor | tuple[Tensor, ...] | None, cu_seqlens: Tensor | None
) -> Tensor | tuple[Tensor, ...]:
    """The keys and values of the piece's last document so far, what a piece continuing it
    attends to: the piece's last segment, after the prefix when the piece is one segment (as
    pieces, not joined: slices that each keep their input would otherwise keep a copy each of
    a growing prefix, memory quadratic in the slices)."""
    last = 0 if cu_seqlens is None else int(cu_seqlens[-2])
    if last == 0 and prefix is not None:
        return (*(prefix if isinstance(prefix, tuple) else (prefix,)), kv)
    return kv[:, last:]


class GatedAttentionMixer(nn.Module):
    """``self.attend`` is the attention op (:func:`attend`); sequence parallelism swaps it."""

    relays = RelayPoints(output="o_proj", kv="attend")

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d, H, Hk, D = cfg.d_model, cfg.attn_heads, cfg.attn_kv_heads, cfg.attn_head_dim
        self.n_heads, self.kv_heads, self.head_dim, self.block = H, Hk, D, cfg.attn_block
        self.kv_channels = 2 * D  # per key/value head: what a message carries per token
        self.q_proj = nn.Linear(d, H * D, bias=False)
        self.k_proj = nn.Linear(d, Hk * D, bias=False)
        self.v_proj = nn.Linear(d, Hk * D, bias=False)
        self.gate_proj = nn.Linear(d, H * D, bias=False)
        self.q_norm = RMSNorm(D, eps=cfg.norm_eps)
        self.k_norm = RMSNorm(D, eps=cfg.norm_eps)
        self.rotary = Rotary(cfg.rotary_dims, cfg.rotary_theta)
        self.o_proj = nn.Linear(H * D, d, bias=False)
        self.attend = attend

    def _queries(self, x: Tensor) -> Tensor:
        return self.q_norm(self.q_proj(x).unflatten(-1, (self.n_heads, self.head_dim)))

    def keys_values(self, x: Tensor) -> Tensor:
        """The un-rotated keys (normed) and values of x [B, T, d]: [B, T, Hk, 2D]."""
        k = self.k_norm(self.k_proj(x).unflatten(-1, (self.kv_heads, self.head_dim)))
        return torch.cat([k, self.v_proj(x).unflatten(-1, (self.kv_heads, self.head_dim))], dim=-1)

    def _output(self, o: Tensor, x: Tensor) -> Tensor:
        return self.o_proj(o.flatten(-2) * torch.sigmoid(self.gate_proj(x)))

    def forward(
        self, x: Tensor, cu_seqlens: Tensor | None = None, state: LayerState | None = None, summary_only: bool = False
    ) -> tuple[Tensor | None, LayerState | None]:
        """x: [B, T, d] -> [B, T, d]. With ``state`` (a packed piece, B == 1) the piece's first
        document continues the keys and values ``state.kv``, and the last document's keys and
        values so far come back; ``summary_only`` returns them alone."""
        kv = self.keys_values(x)
        prefix = None if state is None else state.kv
        after = None if state is None else LayerState(kv=kv_after(kv, prefix, cu_seqlens))
        if summary_only:
            return None, after
        o = self.attend(self._queries(x), kv, cu_seqlens, self.rotary, self.head_dim**-0.5, prefix, self.block)
        return self._output(o, x), after

    def step(self, x: Tensor, state: LayerState) -> tuple[Tensor, LayerState]:
        """One token for each of B streams (decoding): x [B, d] -> [B, d]; the state: the cache
        of keys and values [B, P, Hk, 2D], stream b's first ``state.lengths[b]`` valid."""
        B = x.shape[0]
        new = self.keys_values(x[:, None])
        if state.kv is None:
            cache, lengths = new, new.new_zeros(B, dtype=torch.long)
        else:
            cache, lengths = torch.cat([state.kv, torch.zeros_like(new)], dim=1), state.lengths
            cache[torch.arange(B), lengths] = new[:, 0]
        k, v = cache.chunk(2, dim=-1)
        k = self.rotary(k, torch.arange(cache.shape[1]))
        q = self.rotary(self._queries(x[:, None]), lengths[:, None])
        o = cached_attention(q, k, v, lengths + 1, self.head_dim**-0.5)
        return self._output(o[:, 0], x), LayerState(kv=cache, lengths=lengths + 1)
