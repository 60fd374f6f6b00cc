"""Chunked SSD (Mamba2) scan in plain PyTorch: one scalar gate per head and token.

``S_t = exp(g_t) S_{t-1} + k_t v_tᵀ``, ``o_t = scale * S_tᵀ q_t``. The reference for the SSD
kernels and the CPU path. With a scalar gate the intra-chunk decay is a [C, C] matrix per
head, formed from pairwise differences of the cumulative gate (no overflow).
"""

from __future__ import annotations

import torch
from torch import Tensor

from baton.kernels.common import chunked_inputs
from baton.kernels.layout import chunk_state_recurrence, from_chunks


def chunk_ssd_ref(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    scale: float | None = None,
    initial_state: Tensor | None = None,
    cu_seqlens: Tensor | None = None,
    chunk_size: int = 64,
) -> tuple[Tensor, Tensor]:
    """q, k: [B, T, H, K]; v: [B, T, H, V]; g: [B, T, H] log-space gates <= 0.

    Same contract as :func:`baton.kernels.gla_ref.chunk_gla_ref`.
    """
    B, T = q.shape[:2]
    (qc, kc, vc, gc), layout = chunked_inputs(q, k, v, g, scale, initial_state, cu_seqlens, chunk_size)

    b = gc.cumsum(1)  # [N, C, H]
    b_last = b[:, -1]
    C = qc.shape[1]
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    segsum = (b.transpose(1, 2)[..., :, None] - b.transpose(1, 2)[..., None, :]).masked_fill(~causal, float("-inf"))
    scores = torch.einsum("nihk,njhk->nhij", qc, kc) * segsum.exp()
    o = torch.einsum("nhij,njhv->nihv", scores, vc)
    update = torch.einsum("nchk,nchv->nhkv", kc * (b_last[:, None] - b).exp()[..., None], vc)
    states_in, final = chunk_state_recurrence(b_last.exp()[..., None, None], update, layout, initial_state)
    o = o + torch.einsum("nchk,nhkv->nchv", qc * b.exp()[..., None], states_in)
    return from_chunks(o, layout).reshape(B, T, *v.shape[2:]).to(v.dtype), final
