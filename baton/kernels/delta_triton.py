"""The delta rule's chunk-to-chunk state walk in Triton, the GPU path of ``delta_ref.py``.

The chunked delta rule does its work for all chunks at once, as batched matrix products and
one unit-triangular solve per chunk (cuBLAS on a GPU), except one sequential walk: the state
entering each chunk, ``S_{c+1} = M_c S_c + U_c`` with ``M_c`` the chunk's K×K transition. In
PyTorch (``layout.chunk_state_recurrence``) that walk is a Python loop over chunks; here it is
one kernel, a program per (sequence, head, value tile) stepping through its sequence's chunks.
Its backward is the same walk run backwards through the transposed transitions,
``G_c = M_cᵀ G_{c+1} + dS_in[c]``, the transitions' gradient one batched product
``dM_c = G_{c+1} S_cᵀ``.

A program's state (K × BV, K up to 256) lives in the output rows themselves: each step reads
the state it stored last and writes the next one row block at a time, so no register tile
holds a whole K×K transition. fp32 throughout, products in full fp32 precision: the walk
compounds its rounding over as many chunks as a sequence has.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.autograd import Function

from baton.kernels.delta_ref import delta_correction_ref, delta_summary_ref
from baton.kernels.layout import ChunkLayout
from baton.kernels.rerun import recomputed
from baton.kernels.tiles import load, store
from baton.kernels.tuning import block


@triton.jit
def _state_walk_kernel(
    M, X, OUT, FINAL, chunk_offsets, H,
    K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, REVERSE: tl.constexpr,
):  # fmt: skip
    """One (sequence, head) and value tile, from the state already in OUT at the walk's first
    chunk: forward ``OUT[c + 1] = M[c] OUT[c] + X[c]``, reverse ``OUT[c - 1] = M[c]ᵀ OUT[c] +
    X[c]``; what the last step makes goes to FINAL."""
    i_nh, i_v = tl.program_id(0).to(tl.int64), tl.program_id(1).to(tl.int64)
    i_n, i_h = i_nh // H, i_nh % H
    first = tl.load(chunk_offsets + i_n).to(tl.int64)
    n = tl.load(chunk_offsets + i_n + 1).to(tl.int64) - first
    for step in range(n):
        if REVERSE:
            c = first + n - 1 - step
            dst = OUT + ((c - 1) * H + i_h) * K * V
        else:
            c = first + step
            dst = OUT + ((c + 1) * H + i_h) * K * V
        if step == n - 1:
            dst = FINAL + i_nh * K * V
        src = OUT + (c * H + i_h) * K * V
        m = M + (c * H + i_h) * K * K
        for i_k in range(K // BK):  # loops, not unrolled: a full-precision product is long code
            acc = load(X + (c * H + i_h) * K * V, K, V, V, 1, i_k * BK, i_v * BV, BK, BV)
            for j_k in range(K // BK):
                if REVERSE:  # block (i, j) of Mᵀ: M's block (j, i), read with swapped strides
                    b_m = load(m, K, K, 1, K, i_k * BK, j_k * BK, BK, BK)
                else:
                    b_m = load(m, K, K, K, 1, i_k * BK, j_k * BK, BK, BK)
                b_s = load(src, K, V, V, 1, j_k * BK, i_v * BV, BK, BV)
                acc += tl.dot(b_m, b_s, input_precision="ieee")
            store(dst, K, V, V, 1, i_k * BK, i_v * BV, BK, BV, acc)
        tl.debug_barrier()  # the next step reads rows other threads of this program wrote


def _walk(M: Tensor, X: Tensor, start: Tensor, offsets: Tensor, layout: ChunkLayout, reverse: bool) -> tuple:
    """Every chunk's walk state and each sequence's last one; ``start`` [N, H, K, V] enters
    each sequence's first chunk (its last one, reverse)."""
    n_chunks, H, K, V = X.shape
    out = torch.empty_like(X)
    firsts = [(b - 1 if reverse else a) for a, b in zip(layout.chunk_offsets[:-1], layout.chunk_offsets[1:]) if b > a]
    has_chunks = [s for s, n in enumerate(layout.chunks_per_seq) if n]
    out[firsts] = start[has_chunks]
    final = start.clone()  # a sequence without chunks ends where it started
    BV = block(V)
    _state_walk_kernel[(layout.n_seqs * H, triton.cdiv(V, BV))](
        M, X, out, final, offsets, H, K=K, V=V, BK=min(K, 64), BV=BV, REVERSE=reverse
    )
    return out, final


class _StateWalk(Function):
    @staticmethod
    def forward(ctx, M: Tensor, U: Tensor, h0: Tensor, layout: ChunkLayout) -> tuple[Tensor, Tensor]:
        offsets = torch.tensor(layout.chunk_offsets, dtype=torch.int32, device=U.device)
        states_in, final = _walk(M, U, h0, offsets, layout, reverse=False)
        ctx.save_for_backward(M, states_in, offsets)
        ctx.layout = layout
        return states_in, final

    @staticmethod
    def backward(ctx, d_states_in: Tensor, d_final: Tensor):
        M, states_in, offsets = ctx.saved_tensors
        d_states_in = torch.zeros_like(states_in) if d_states_in is None else d_states_in.contiguous()
        if d_final is None:
            d_final = states_in.new_zeros(ctx.layout.n_seqs, *states_in.shape[1:])
        d_final = d_final.contiguous()
        # dU[c]: the gradient of the state leaving chunk c; the walk's last step gives dh0.
        dU, dh0 = _walk(M, d_states_in, d_final, offsets, ctx.layout, reverse=True)
        return dU @ states_in.mT, dU, dh0, None


def matrix_state_walk(
    M: Tensor, update: Tensor, layout: ChunkLayout, initial_state: Tensor | None
) -> tuple[Tensor, Tensor]:
    """:func:`baton.kernels.layout.chunk_state_recurrence` for K×K transitions [n_chunks, H, K, K]
    (K a power of two from 16), in fp32: the state entering every chunk and each sequence's final
    state."""
    K, V = update.shape[2:]
    if initial_state is None:
        initial_state = update.new_zeros(layout.n_seqs, update.shape[1], K, V, dtype=torch.float32)
    M, update, initial_state = (x.float().contiguous() for x in (M, update, initial_state))
    return _StateWalk.apply(M, update, initial_state, layout)


def delta_summary_on_walk(
    k: Tensor, v: Tensor, g: Tensor, beta: Tensor, start: int, chunk_size: int
) -> tuple[Tensor, Tensor]:
    """:func:`~baton.kernels.delta_ref.delta_summary_ref` with its state walk here, recomputed
    in backward as the reference is."""
    summary = functools.partial(delta_summary_ref, state_walk=matrix_state_walk)
    return recomputed(summary, k, v, g, beta, start, chunk_size)


def delta_correction_on_walk(
    o: Tensor, q: Tensor, k: Tensor, g: Tensor, beta: Tensor, state: Tensor, end: int, scale: float, chunk_size: int
) -> Tensor:
    """:func:`~baton.kernels.delta_ref.delta_correction_ref` with its state walk here,
    recomputed in backward as the reference is."""
    correction = functools.partial(delta_correction_ref, state_walk=matrix_state_walk)
    return recomputed(correction, o, q, k, g, beta, state, end, scale, chunk_size)
