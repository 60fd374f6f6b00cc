"""Chunked GLA scan in plain PyTorch: per-key-dim gates, ``S_t = diag(exp(g_t)) S_{t-1} + k_t v_tᵀ``.

This is the reference every GLA kernel is tested against, and the CPU path. Stable for any
decay: every ``exp`` below has a non-positive argument. Within a chunk, pairs of tokens in
different sub-blocks factor through the first token of the later sub-block; pairs inside
one sub-block use the explicit pairwise decay.
"""

from __future__ import annotations

import torch
from torch import Tensor

from baton.kernels.common import chunked_inputs
from baton.kernels.layout import chunk_state_recurrence, from_chunks

SUB_BLOCK = 16


def _intra_chunk_scores(q: Tensor, k: Tensor, b: Tensor) -> Tensor:
    """A[n, h, i, j] = sum_k q_i k_j exp(b_i - b_j) for j <= i; q, k, b: [N, C, H, K]."""
    N, C, H, K = q.shape
    c = min(SUB_BLOCK, C)
    P = C // c
    qb, kb, bb = (x.view(N, P, c, H, K) for x in (q, k, b))
    ref = bb[:, :, 0]  # cumulative gate at each sub-block's first token: [N, P, H, K]

    # Earlier sub-blocks: exp(b_i - b_j) = exp(b_i - ref_p) * exp(ref_p - b_j), both <= 1.
    q_ref = qb * (bb - ref[:, :, None]).exp()
    earlier = torch.arange(C, device=q.device)[None, :] < (torch.arange(P, device=q.device) * c)[:, None]
    expo = (ref[:, :, None] - b[:, None]).masked_fill(~earlier[None, :, :, None, None], 0.0)
    k_ref = (k[:, None] * expo.exp()).masked_fill(~earlier[None, :, :, None, None], 0.0)
    scores = torch.einsum("npihk,npjhk->nhpij", q_ref, k_ref).reshape(N, H, C, C)

    # Same sub-block: explicit pairwise decay, masked to j <= i before the exp.
    causal = torch.ones(c, c, dtype=torch.bool, device=q.device).tril()
    pair = (bb[:, :, :, None] - bb[:, :, None, :]).masked_fill(~causal[:, :, None, None], float("-inf"))
    diag = torch.einsum("npihk,npijhk,npjhk->nhpij", qb, pair.exp(), kb)
    eye = torch.eye(P, dtype=q.dtype, device=q.device)
    return scores + torch.einsum("nhpij,pr->nhpirj", diag, eye).reshape(N, H, C, C)


def chunk_gla_ref(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    scale: float | None = None,
    initial_state: Tensor | None = None,
    cu_seqlens: Tensor | None = None,
    chunk_size: int = 64,
) -> tuple[Tensor, Tensor]:
    """q, k, g: [B, T, H, K] (g: log-space gates <= 0); v: [B, T, H, V].

    ``cu_seqlens`` (with B == 1) marks packed documents: the state resets at each one.
    ``initial_state``: [N, H, K, V], one per sequence. Returns o [B, T, H, V] in v's dtype
    and the final state of every sequence [N, H, K, V] in fp32 (fp64 for fp64 inputs).
    """
    if chunk_size > SUB_BLOCK and chunk_size % SUB_BLOCK:
        raise ValueError(f"chunk_size must be <= {SUB_BLOCK} or a multiple of it, got {chunk_size}")
    B, T = q.shape[:2]
    (qc, kc, vc, gc), layout = chunked_inputs(q, k, v, g, scale, initial_state, cu_seqlens, chunk_size)

    b = gc.cumsum(1)
    b_last = b[:, -1]
    o = torch.einsum("nhij,njhv->nihv", _intra_chunk_scores(qc, kc, b), vc)
    update = torch.einsum("nchk,nchv->nhkv", kc * (b_last[:, None] - b).exp(), vc)
    states_in, final = chunk_state_recurrence(b_last.exp()[..., None], update, layout, initial_state)
    o = o + torch.einsum("nchk,nhkv->nchv", qc * b.exp(), states_in)
    return from_chunks(o, layout).reshape(B, T, *v.shape[2:]).to(v.dtype), final
