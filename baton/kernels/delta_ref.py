"""Chunked gated delta rule in plain PyTorch (Gated DeltaNet, arXiv 2412.06464):

    S_t = α_t (I − β_t k_t k_tᵀ) S_{t−1} + β_t k_t v_tᵀ,    o_t = scale · S_tᵀ q_t,

with α_t = exp(g_t) one gate per head and token, β_t in [0, 2] (eigenvalues of the
transition in [−1, 1] with unit-norm keys). This is the reference every delta-rule kernel is
tested against, and the CPU path.

Written as ``S_t = α_t S_{t−1} + k_t u_tᵀ`` with the *new values* ``u_t = β_t (v_t − α_t
S_{t−1}ᵀ k_t)``, a chunk is a scalar-gated scan whose values depend on each other through
one unit lower-triangular system (the WY/UT form of the product of Householder-like
transitions, Yang et al. 2024, arXiv 2406.06484). Within a chunk of C tokens entered by the
state S, with γ_t the gate's product from the chunk start through t and Γ_ts = γ_t / γ_s:

    (I + L) U = diag(β) V − diag(β γ) K S,         L = strictly lower part of diag(β) (Γ ∘ K Kᵀ),

so ``U = Ũ − W S`` with ``[Ũ | W] = (I + L)⁻¹ [diag(β) V | diag(β γ) K]``; then

    O = diag(γ) Q S + (Γ ∘ Q Kᵀ, causal) U,        S' = (γ_C I − K̃ᵀ W) S + K̃ᵀ Ũ,

with K̃_t = (γ_C / γ_t) k_t. Across chunks the state moves by the K×K transition
``γ_C I − K̃ᵀ W``, the matrix version of the diagonal scans' decay. Every ``exp`` has a
non-positive argument; the triangular solve runs in fp32 (fp64 for fp64 inputs).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from baton.kernels.common import chunked_inputs, compute_dtype
from baton.kernels.layout import chunk_state_recurrence, from_chunks, to_chunks


def chunk_delta_ref(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    beta: Tensor,
    scale: float | None = None,
    initial_state: Tensor | None = None,
    cu_seqlens: Tensor | None = None,
    chunk_size: int = 64,
    state_walk: Callable = chunk_state_recurrence,
) -> tuple[Tensor, Tensor]:
    """q, k: [B, T, H, K] (the model L2-normalises them); v: [B, T, H, V]; g: [B, T, H] log
    gates <= 0; beta: [B, T, H].

    ``cu_seqlens`` (with B == 1) marks packed documents: the state resets at each one.
    ``initial_state``: [N, H, K, V], one per sequence. Returns o [B, T, H, V] in v's dtype
    and the final state of every sequence [N, H, K, V] in fp32 (fp64 for fp64 inputs).
    ``state_walk``: what walks the state from chunk to chunk (``delta_triton.py`` on a GPU).
    """
    B, T = q.shape[:2]
    (qc, kc, vc, gc), layout = chunked_inputs(q, k, v, g, scale, initial_state, cu_seqlens, chunk_size)
    bc = to_chunks(beta.reshape(B * T, -1).to(compute_dtype(q)), layout)  # [N, C, H]
    C = chunk_size

    b = gc.cumsum(1)  # [N, C, H]: log γ
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    pair = (b[:, :, None] - b[:, None, :]).masked_fill(~causal[:, :, None], float("-inf"))  # [N, t, s, H]
    decay = pair.exp().permute(0, 3, 1, 2)  # Γ_ts, zero above the diagonal: [N, H, C, C]
    strict = torch.einsum("nthk,nshk->nhts", kc, kc) * decay * bc.permute(0, 2, 1)[..., None]
    system = strict.tril(-1) + torch.eye(C, dtype=strict.dtype, device=q.device)
    rhs = torch.cat([vc * bc[..., None], kc * (bc * b.exp())[..., None]], dim=-1).transpose(1, 2)  # [N, H, C, V+K]
    solved = torch.linalg.solve_triangular(system, rhs, upper=False, unitriangular=True)
    U_tilde, W = solved.split([vc.shape[-1], kc.shape[-1]], dim=-1)

    b_last = b[:, -1]  # [N, H]
    k_to_end = kc * (b_last[:, None] - b).exp()[..., None]  # K̃: [N, C, H, K]
    eye = torch.eye(kc.shape[-1], dtype=kc.dtype, device=q.device)
    transition = b_last.exp()[..., None, None] * eye - torch.einsum("nchk,nhcj->nhkj", k_to_end, W)
    update = torch.einsum("nchk,nhcv->nhkv", k_to_end, U_tilde)
    states_in, final = state_walk(transition, update, layout, initial_state)

    U = U_tilde - W @ states_in  # [N, H, C, V]
    scores = torch.einsum("nthk,nshk->nhts", qc, kc) * decay
    o = torch.einsum("nchk,nhkv->nchv", qc * b.exp()[..., None], states_in) + (scores @ U).transpose(1, 2)
    return from_chunks(o, layout).reshape(B, T, *v.shape[2:]).to(v.dtype), final


def delta_summary_ref(
    k: Tensor, v: Tensor, g: Tensor, beta: Tensor, start: int, chunk_size: int,
    state_walk: Callable = chunk_state_recurrence,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """Over tokens ``start:`` of a packed stream (batch 1): the product of their transitions
    M [H, K, K] and the state they produce from a zero start S [H, K, V] (fp32). One scan of
    the segment with the identity appended to its state: ``[S | M]`` starts as ``[0 | I]``
    and the appended columns take no input."""
    dt = compute_dtype(k)
    H, K, V = k.shape[2], k.shape[3], v.shape[3]
    k, v, g, beta = (x[:, start:] for x in (k, v, g, beta))
    widened = torch.cat([v.to(dt), v.new_zeros(*v.shape[:3], K, dtype=dt)], dim=-1)
    identity = torch.cat([k.new_zeros(H, K, V, dtype=dt), torch.eye(K, dtype=dt).expand(H, K, K)], dim=-1)
    zero_queries = torch.zeros_like(k)
    _, final = chunk_delta_ref(zero_queries, k, widened, g, beta, 1.0, identity[None], None, chunk_size, state_walk)
    return final[0, ..., V:], final[0, ..., :V]


def delta_correction_ref(
    o: Tensor, q: Tensor, k: Tensor, g: Tensor, beta: Tensor, state: Tensor, end: int, scale: float, chunk_size: int,
    state_walk: Callable = chunk_state_recurrence,
) -> Tensor:  # fmt: skip
    """``o`` plus the incoming state's part of tokens ``:end``: the outputs of the same
    transitions applied to ``state`` alone, with no values entering (the recurrence is linear
    in the state and the values together)."""
    if end == 0:  # nothing continues; ``state`` stays in the graph (zero gradient) as in the other ops
        return o + 0 * state.sum().to(o.dtype)
    q, k, g, beta = (x[:, :end] for x in (q, k, g, beta))
    zero_values = o.new_zeros(1, end, *o.shape[2:])
    fix, _ = chunk_delta_ref(q, k, zero_values, g, beta, scale, state[None], None, chunk_size, state_walk)
    return torch.cat([o[:, :end] + fix.to(o.dtype), o[:, end:]], dim=1)


def delta_step_ref(
    q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, state: Tensor, scale: float
) -> tuple[Tensor, Tensor]:
    """One token for a batch of streams (decoding): q, k [B, H, K], v [B, H, V], g and beta
    [B, H], the state [B, H, K, V] in fp32. The output [B, H, V] in v's dtype and the new state."""
    dt = compute_dtype(q)
    q, k, v, g, beta = (x.to(dt) for x in (q, k, v, g, beta))
    S = state.to(dt)
    kS = torch.einsum("bhk,bhkv->bhv", k, S)
    S = g.exp()[..., None, None] * (S - beta[..., None, None] * k[..., None] * kS[..., None, :])
    S = S + beta[..., None, None] * k[..., None] * v[..., None, :]
    return (scale * torch.einsum("bhk,bhkv->bhv", q, S)).to(v.dtype), S
