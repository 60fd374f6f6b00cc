"""Causal attention over a packed stream of documents, blockwise (the CPU path and the ground
truth of the attention op).

A query attends to the keys of its own document up to itself; the stream's first document
may continue one begun before the stream (on earlier ranks of a chain), whose keys and values
come as a ``prefix``: every query of that document sees all of it. Grouped-query attention:
``H`` query heads share ``Hk`` key/value heads, ``H`` a multiple of ``Hk``.

Alongside the output comes each query's log-sum-exp of its scores, so that partial results
over disjoint sets of keys merge exactly (:func:`merge_partials`): a rank can attend to its
own keys while the earlier ranks' keys are still on their way, and merge when they arrive.

Memory: the forward walks query blocks and, for each, the key blocks it can see, with an
online softmax (running maximum and sum), so nothing of size T × T is ever formed; the
backward recomputes each block's probabilities from the log-sum-exp (as flash attention
does) and keeps only the inputs, the output and the log-sum-exp.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd import Function

from baton.kernels.common import compute_dtype


def _document_ids(T: int, cu_seqlens: Tensor | None, device: torch.device) -> Tensor:
    """Each token's document, 0 for the first (which the prefix continues)."""
    if cu_seqlens is None:
        return torch.zeros(T, dtype=torch.long, device=device)
    starts = cu_seqlens.to(device=device, dtype=torch.long)[1:-1]
    return torch.searchsorted(starts, torch.arange(T, device=device), right=True)


class _Layout:
    """Which keys each query block sees: the stream's keys with the prefix in front, their
    documents and positions (the prefix at negative positions, in the first document); or,
    without ``own`` keys, the prefix alone (every query of the first document sees all of it)."""

    def __init__(
        self, T: int, P: int, cu_seqlens: Tensor | None, device: torch.device, block: int, own: bool = True
    ) -> None:
        doc = _document_ids(T, cu_seqlens, device)
        self.query_doc, self.query_pos = doc, torch.arange(T, device=device)
        self.key_doc = torch.cat([doc.new_zeros(P), doc if own else doc[:0]])
        self.key_pos = torch.arange(-P, T if own else 0, device=device)
        bounds = [0, T] if cu_seqlens is None else cu_seqlens.tolist()
        first_start = torch.tensor(bounds[:-1], device=device)[doc]  # each query's document start
        self.first_key = torch.where(doc == 0, 0, first_start + P)  # in the prefixed key index
        self.block, self.T, self.P = block, T, P

    def query_blocks(self):
        for a in range(0, self.T, self.block):
            yield a, min(a + self.block, self.T)

    def key_blocks(self, a: int, b: int):
        """Key blocks [c, d) of the prefixed keys that queries [a, b) can see, with the mask."""
        lo, hi = int(self.first_key[a:b].min()), min(b + self.P, len(self.key_pos))
        for c in range(lo, hi, self.block):
            d = min(c + self.block, hi)
            same = self.query_doc[a:b, None] == self.key_doc[None, c:d]
            visible = same & (self.key_pos[None, c:d] <= self.query_pos[a:b, None])
            yield c, d, visible


def _scores(q: Tensor, k: Tensor, visible: Tensor, scale: float) -> Tensor:
    """[B, H, Tq, Tk] scores of q [B, Tq, H, D] against k [B, Tk, H, D], -inf where not visible."""
    s = torch.einsum("bqhd,bkhd->bhqk", q, k) * scale
    return s.masked_fill(~visible, float("-inf"))


def _expand(x: Tensor, groups: int) -> Tensor:
    """Key/value heads [B, T, Hk, D] repeated for the query heads of their group [B, T, H, D]."""
    return x.repeat_interleave(groups, dim=2) if groups > 1 else x


def _forward(q, k, v, layout: _Layout, scale: float) -> tuple[Tensor, Tensor]:
    B, T, H, _ = q.shape
    groups = H // k.shape[2]
    o = q.new_zeros(B, T, H, v.shape[-1])
    lse = q.new_full((B, H, T), float("-inf"))
    for a, b in layout.query_blocks():
        m = q.new_full((B, H, b - a), float("-inf"))
        total = q.new_zeros(B, H, b - a)
        acc = q.new_zeros(B, H, b - a, v.shape[-1])
        for c, d, visible in layout.key_blocks(a, b):
            s = _scores(q[:, a:b], _expand(k[:, c:d], groups), visible, scale)
            m_new = torch.maximum(m, s.amax(-1))
            safe = torch.where(torch.isinf(m_new), 0.0, m_new)  # rows with nothing visible yet
            p = torch.exp(s - safe[..., None])
            correction = torch.exp(m - safe)
            total = total * correction + p.sum(-1)
            acc = acc * correction[..., None] + torch.einsum("bhqk,bkhd->bhqd", p, _expand(v[:, c:d], groups))
            m = m_new
        o[:, a:b] = (acc / total.clamp_min(1e-30)[..., None]).transpose(1, 2)
        lse[..., a:b] = torch.where(total > 0, m + total.clamp_min(1e-30).log(), float("-inf"))
    return o, lse.transpose(1, 2)


def _backward(q, k, v, o, lse, d_o, d_lse, layout: _Layout, scale: float) -> tuple[Tensor, Tensor, Tensor]:
    B, T, H, _ = q.shape
    Hk = k.shape[2]
    groups = H // Hk
    dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    lse_h = lse.transpose(1, 2)  # [B, H, T]
    # dL/ds_ij = p_ij (dp_ij - Σ_j p_ij dp_ij + d_lse_i), with dp = d_o · v and Σ_j p dp = d_o · o
    row = torch.einsum("bqhd,bqhd->bhq", d_o, o) - d_lse.transpose(1, 2)
    for a, b in layout.query_blocks():
        lse_block = torch.where(torch.isinf(lse_h[..., a:b]), 0.0, lse_h[..., a:b])
        for c, d, visible in layout.key_blocks(a, b):
            kb, vb = _expand(k[:, c:d], groups), _expand(v[:, c:d], groups)
            p = torch.exp(_scores(q[:, a:b], kb, visible, scale) - lse_block[..., None])
            dp = torch.einsum("bqhd,bkhd->bhqk", d_o[:, a:b], vb)
            ds = p * (dp - row[..., a:b, None]) * scale
            dq[:, a:b] += torch.einsum("bhqk,bkhd->bqhd", ds, kb)
            dk_b = torch.einsum("bhqk,bqhd->bkhd", ds, q[:, a:b])
            dv_b = torch.einsum("bhqk,bqhd->bkhd", p, d_o[:, a:b])
            dk[:, c:d] += dk_b.unflatten(2, (Hk, groups)).sum(3)
            dv[:, c:d] += dv_b.unflatten(2, (Hk, groups)).sum(3)
    return dq, dk, dv


class _Attention(Function):
    """The layout (per-token index tensors) is rebuilt in backward from the boundaries rather
    than kept: kept on ``ctx`` it would outlive activation checkpointing's recomputation."""

    @staticmethod
    def forward(ctx, q, k, v, cu_seqlens: Tensor | None, P: int, block: int, scale: float, own: bool = True):
        ctx.layout_args, ctx.scale = (q.shape[1], P, cu_seqlens, q.device, block, own), scale
        o, lse = _forward(q, k, v, _Layout(*ctx.layout_args), scale)
        ctx.save_for_backward(q, k, v, o, lse)
        return o, lse

    @staticmethod
    def backward(ctx, d_o, d_lse):
        q, k, v, o, lse = ctx.saved_tensors
        d_o = torch.zeros_like(o) if d_o is None else d_o
        d_lse = torch.zeros_like(lse) if d_lse is None else d_lse
        layout = _Layout(*ctx.layout_args)
        return *_backward(q, k, v, o, lse, d_o, d_lse, layout, ctx.scale), None, None, None, None, None


def attention_ref(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    cu_seqlens: Tensor | None = None,
    prefix_k: Tensor | None = None,
    prefix_v: Tensor | None = None,
    scale: float | None = None,
    block: int = 128,
) -> tuple[Tensor, Tensor]:
    """Causal attention within each document of a packed stream.

    Args:
        q: [B, T, H, D]; k: [B, T, Hk, D]; v: [B, T, Hk, Dv], H a multiple of Hk.
        cu_seqlens: [N + 1] document boundaries of a packed stream (then B == 1; None: each
            batch row one document).
        prefix_k, prefix_v: [B, P, Hk, D | Dv], the keys and values of the earlier tokens of
            the stream's first document (None: it starts here).
        scale: multiplies the scores (default D ** -0.5).
        block: query and key tokens per block (memory O(T · block)).

    Returns:
        o [B, T, H, Dv] in v's dtype, and the log-sum-exp of every query's scores [B, T, H]
        in fp32 (fp64 for fp64 inputs; -inf where a query sees no key, which never happens
        for a causal query, as it sees itself).
    """
    B, T, H, D = q.shape
    if H % k.shape[2]:
        raise ValueError(f"{H} query heads are not a multiple of {k.shape[2]} key/value heads")
    if cu_seqlens is not None and B != 1:
        raise ValueError(f"packed input (cu_seqlens) needs batch size 1, got {B}")
    scale = D**-0.5 if scale is None else scale
    dt = compute_dtype(q)
    if prefix_k is not None:
        k, v = torch.cat([prefix_k, k], dim=1), torch.cat([prefix_v, v], dim=1)
    o, lse = _Attention.apply(q.to(dt), k.to(dt), v.to(dt), cu_seqlens, k.shape[1] - T, block, float(scale))
    return o.to(v.dtype), lse


def prefix_attention(
    q: Tensor, prefix_k: Tensor, prefix_v: Tensor, scale: float | None = None, block: int = 128
) -> tuple[Tensor, Tensor]:
    """Queries q [B, T, H, D] over a prefix of keys they all see, [B, P, Hk, D | Dv]: the partial
    result and its log-sum-exp, for :func:`merge_partials`; blockwise as :func:`attention_ref`
    (P is the part of one document on earlier ranks: it may be far longer than T)."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    dt = compute_dtype(q)
    P = prefix_k.shape[1]
    o, lse = _Attention.apply(q.to(dt), prefix_k.to(dt), prefix_v.to(dt), None, P, block, float(scale), False)
    return o.to(prefix_v.dtype), lse


def merge_partials(o1: Tensor, lse1: Tensor, o2: Tensor, lse2: Tensor) -> tuple[Tensor, Tensor]:
    """Attention over two disjoint sets of keys, from each set's output [B, T, H, Dv] and
    log-sum-exp [B, T, H]: exact (softmax weights renormalised by the total)."""
    lse = torch.logaddexp(lse1, lse2)
    w1 = torch.exp(lse1 - torch.where(torch.isinf(lse), 0.0, lse))[..., None]
    w2 = torch.exp(lse2 - torch.where(torch.isinf(lse), 0.0, lse))[..., None]
    return (w1 * o1.to(w1.dtype) + w2 * o2.to(w2.dtype)).to(o1.dtype), lse


def cached_attention(q: Tensor, k: Tensor, v: Tensor, lengths: Tensor, scale: float | None = None) -> Tensor:
    """Decoding: q [B, 1, H, D] over a cache k [B, P, Hk, D], v [B, P, Hk, Dv] of which stream
    b's first ``lengths[b]`` entries are valid; the output [B, 1, H, Dv]."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    dt = compute_dtype(q)
    groups = q.shape[2] // k.shape[2]
    s = torch.einsum("bqhd,bkhd->bhqk", q.to(dt), _expand(k.to(dt), groups)) * scale
    valid = torch.arange(k.shape[1], device=k.device)[None] < lengths.to(k.device)[:, None]
    s = s.masked_fill(~valid[:, None, None], float("-inf"))
    o = torch.einsum("bhqk,bkhd->bqhd", torch.softmax(s, dim=-1), _expand(v.to(dt), groups))
    return o.to(v.dtype)


def naive_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    cu_seqlens: Tensor | None = None,
    prefix_k: Tensor | None = None,
    prefix_v: Tensor | None = None,
    scale: float | None = None,
) -> tuple[Tensor, Tensor]:
    """The same from the whole T × (P + T) score matrix at once (tests only)."""
    B, T, H, D = q.shape
    scale = D**-0.5 if scale is None else scale
    if prefix_k is not None:
        k, v = torch.cat([prefix_k, k], dim=1), torch.cat([prefix_v, v], dim=1)
    layout = _Layout(T, k.shape[1] - T, cu_seqlens, q.device, k.shape[1] + T)
    _, _, visible = next(layout.key_blocks(0, T))
    groups = H // k.shape[2]
    s = _scores(q, _expand(k, groups), visible, scale)
    lse = torch.logsumexp(s, dim=-1)
    o = torch.einsum("bhqk,bkhd->bqhd", torch.softmax(s, dim=-1), _expand(v, groups))
    return o.to(v.dtype), lse.transpose(1, 2)
