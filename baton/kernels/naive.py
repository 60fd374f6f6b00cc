"""Token-by-token recurrence: the ground truth the chunked scans are tested against."""

from __future__ import annotations

import torch
from torch import Tensor

from baton.kernels.common import compute_dtype, flatten_batch


def naive_recurrence(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    scale: float | None = None,
    initial_state: Tensor | None = None,
    cu_seqlens: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """``S_t = exp(g_t) * S_{t-1} + k_t v_tᵀ``, ``o_t = scale * S_tᵀ q_t``, one token at a time.

    q, k: [B, T, H, K]; v: [B, T, H, V]; g: [B, T, H, K] (per key dim) or [B, T, H]
    (scalar per head), log-space. Returns o [B, T, H, V] and final states [N, H, K, V].
    """
    B, T, H, K = q.shape
    scale = K**-0.5 if scale is None else scale
    cu, n_seqs = flatten_batch(q, cu_seqlens, initial_state)
    dt = compute_dtype(q)
    q, k, v, g = (x.reshape(B * T, *x.shape[2:]).to(dt) for x in (q, k, v, g))
    if g.dim() == 2:
        g = g[..., None]
    outputs, finals = [], []
    for s in range(n_seqs):
        state = initial_state[s].to(dt) if initial_state is not None else q.new_zeros(H, K, v.shape[-1])
        for t in range(int(cu[s]), int(cu[s + 1])):
            state = g[t].exp()[..., None] * state + k[t][..., None] * v[t][:, None, :]
            outputs.append(torch.einsum("hk,hkv->hv", q[t] * scale, state))
        finals.append(state)
    o = torch.stack(outputs).reshape(B, T, H, -1)
    return o, torch.stack(finals)


def naive_delta_recurrence(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    beta: Tensor,
    scale: float | None = None,
    initial_state: Tensor | None = None,
    cu_seqlens: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """The gated delta rule ``S_t = exp(g_t) (I − β_t k_t k_tᵀ) S_{t-1} + β_t k_t v_tᵀ``,
    ``o_t = scale * S_tᵀ q_t``, one token at a time. g, beta: [B, T, H]; the rest as
    :func:`naive_recurrence`."""
    B, T, H, K = q.shape
    scale = K**-0.5 if scale is None else scale
    cu, n_seqs = flatten_batch(q, cu_seqlens, initial_state)
    dt = compute_dtype(q)
    q, k, v, g, beta = (x.reshape(B * T, *x.shape[2:]).to(dt) for x in (q, k, v, g, beta))
    outputs, finals = [], []
    for s in range(n_seqs):
        state = initial_state[s].to(dt) if initial_state is not None else q.new_zeros(H, K, v.shape[-1])
        for t in range(int(cu[s]), int(cu[s + 1])):
            kk = k[t][:, :, None] * k[t][:, None, :]  # [H, K, K]
            transition = g[t].exp()[:, None, None] * (torch.eye(K, dtype=dt) - beta[t][:, None, None] * kk)
            state = transition @ state + beta[t][:, None, None] * k[t][..., None] * v[t][:, None, :]
            outputs.append(torch.einsum("hk,hkv->hv", q[t] * scale, state))
        finals.append(state)
    o = torch.stack(outputs).reshape(B, T, H, -1)
    return o, torch.stack(finals)
