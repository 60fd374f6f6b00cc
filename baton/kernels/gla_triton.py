"""Chunked GLA / SSD scans in Triton, forward and backward (the GPU path).

Same math and layout as the references in ``gla_ref.py`` / ``ssd_ref.py``: document-aligned
chunks [N, C, H, *], log gates cumulated within each chunk: per key dim [N, C, H, K] (GLA),
or one per head [N, C, H] (SSD), which the kernels read as a GLA gate equal across key dims
(key stride 0). The work splits into passes, as in flash-linear-attention:

forward   1. intra-chunk scores A [N, H, C, C] (tensor cores across 16-token sub-blocks,
             the pairwise decay row by row inside one; every ``exp`` has a non-positive
             argument; with scalar SSD gates the decay is a plain [C, C] matrix and the
             whole chunk is one block)
          2. state pass: the state entering each chunk, one program per (sequence, head,
             key block, value block) walking that sequence's chunks
          3. output: ``scale (q ∘ exp(b)) S_in + A v``
backward  1. state-gradient pass (the same walk in reverse), giving dS leaving each chunk
          2. dA = scale · do vᵀ;  dv = Aᵀ do + (k ∘ exp(b_last − b)) dS
          3. intra-chunk dq, dk from dA (sub-blocks as in forward 1)
          4. inter-chunk dq, dk, and the gate gradient as a reverse cumulative sum

The recurrence runs and accumulates in fp32; bf16/fp16 operands feed the tensor cores in
their own dtype, fp32 operands use exact (IEEE) products. The per-chunk states kept for the
backward are stored in the input dtype (they enter only matrix products as operands);
final states and the initial-state gradient are fp32. Warps and pipeline stages, and the
key / value tiles of the intra-chunk kernels and the state walks, are autotuned per GPU and
shape (``tuned``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from baton.kernels.common import TRITON_CHUNK_SIZES, flatten_batch
from baton.kernels.layout import build_layout, from_chunks, to_chunks
from baton.kernels.tiles import load, store
from baton.kernels.tuning import (
    INTRA_TUNING,
    PRODUCT_TUNING,
    STATE_TUNING,
    block,
    head_tiles,
    intra_key_tile,
    operands,
    score_block,
    state_grid,
    tuned,
    untuned,
)


@triton.jit
def _gate_row(g_chunk, t, cols, H: tl.constexpr, K: tl.constexpr, GW: tl.constexpr, GSK: tl.constexpr):
    """Token t's cumulative gates at key dims ``cols``, its chunk's and head's gates at
    ``g_chunk``: GW values per token and head (K, or 1 for a scalar gate), key stride GSK."""
    return tl.load(g_chunk + t * H * GW + cols * GSK, mask=cols < K, other=0.0)


@tuned("H", "K", "C", "SCALAR", **INTRA_TUNING)
@triton.jit
def _intra_scores_kernel(
    q, k, gc, A, scale,
    H: tl.constexpr, K: tl.constexpr, C: tl.constexpr, BC: tl.constexpr, BK: tl.constexpr,
    SCALAR: tl.constexpr, GW: tl.constexpr, GSK: tl.constexpr, PRECISION: tl.constexpr, OP: tl.constexpr,
):  # fmt: skip
    """A[n, h, i, j] = scale · Σ_k q_ik k_jk exp(b_ik − b_jk) for j ≤ i, one BC×BC block."""
    i_nh, i_i, i_j = tl.program_id(0).to(tl.int64), tl.program_id(1).to(tl.int64), tl.program_id(2).to(tl.int64)
    i_n, i_h = i_nh // H, i_nh % H
    if i_j <= i_i:
        base = (i_n * C * H + i_h) * K
        base_g = (i_n * C * H + i_h) * GW
        rows = tl.arange(0, BC)
        acc = tl.zeros([BC, BC], dtype=tl.float32)
        if SCALAR:
            # One gate per token: A = (q kᵀ) ∘ exp(b_i − b_j), the decay a plain [16, 16] matrix.
            for i_k in range(tl.cdiv(K, BK)):
                b_q = load(q + base, C, K, H * K, 1, i_i * BC, i_k * BK, BC, BK)
                b_kt = load(k + base, K, C, 1, H * K, i_k * BK, i_j * BC, BK, BC)
                acc += tl.dot(b_q.to(OP), b_kt.to(OP), input_precision=PRECISION)
            g_i = tl.load(gc + base_g + (i_i * BC + rows) * H * GW)
            g_j = tl.load(gc + base_g + (i_j * BC + rows) * H * GW)
            causal = i_i * BC + rows[:, None] >= i_j * BC + rows[None, :]
            acc *= tl.exp(tl.where(causal, g_i[:, None] - g_j[None, :], float("-inf")))
        else:
            for i_k in range(tl.cdiv(K, BK)):
                cols = i_k * BK + tl.arange(0, BK)
                b_q = load(q + base, C, K, H * K, 1, i_i * BC, i_k * BK, BC, BK).to(tl.float32)
                b_gq = load(gc + base_g, C, K, H * GW, GSK, i_i * BC, i_k * BK, BC, BK)
                if i_j < i_i:
                    # exp(b_i − b_j) = exp(b_i − b_ref) · exp(b_ref − b_j), ref = first row of block i.
                    g_ref = _gate_row(gc + base_g, i_i * BC, cols, H, K, GW, GSK)
                    b_kt = load(k + base, K, C, 1, H * K, i_k * BK, i_j * BC, BK, BC).to(tl.float32)
                    b_gkt = load(gc + base_g, K, C, GSK, H * GW, i_k * BK, i_j * BC, BK, BC)
                    b_qg = (b_q * tl.exp(b_gq - g_ref[None, :])).to(OP)
                    b_kg = (b_kt * tl.exp(g_ref[:, None] - b_gkt)).to(OP)
                    acc += tl.dot(b_qg, b_kg, input_precision=PRECISION)
                else:
                    # Diagonal block: one key row at a time, the pairwise decay masked before exp.
                    for j in range(BC):
                        row = base + (i_i * BC + j) * H * K + cols
                        k_j = tl.load(k + row, mask=cols < K, other=0.0).to(tl.float32)
                        g_j = _gate_row(gc + base_g, i_i * BC + j, cols, H, K, GW, GSK)
                        decay = tl.exp(tl.where(rows[:, None] >= j, b_gq - g_j[None, :], float("-inf")))
                        col = tl.sum(b_q * k_j[None, :] * decay, axis=1)
                        acc += tl.where(rows[None, :] == j, col[:, None], 0.0)
        store(A + i_nh * C * C, C, C, C, 1, i_i * BC, i_j * BC, BC, BC, acc * scale)


@tuned("H", "K", "V", "C", "GW", **STATE_TUNING)
@triton.jit
def _state_forward_kernel(
    k, v, gc, chunk_offsets, h0, states_in, final,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    HAS_H0: tl.constexpr, GW: tl.constexpr, GSK: tl.constexpr, PRECISION: tl.constexpr, OP: tl.constexpr,
):  # fmt: skip
    """Walk one sequence's chunks: record the entering state, then
    S ← exp(b_last) S + Σ_t (k_t exp(b_last − b_t)) v_tᵀ."""
    i_k, i_v, i_sh = tl.program_id(0).to(tl.int64), tl.program_id(1).to(tl.int64), tl.program_id(2).to(tl.int64)
    i_s, i_h = i_sh // H, i_sh % H
    c_first, c_end = tl.load(chunk_offsets + i_s), tl.load(chunk_offsets + i_s + 1)
    cols = i_k * BK + tl.arange(0, BK)
    p_state = (i_sh * K) * V  # [S, H, K, V] offset of this (sequence, head)
    b_h = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_H0:
        b_h += load(h0 + p_state, K, V, V, 1, i_k * BK, i_v * BV, BK, BV)
    for c in range(c_first, c_end):
        store(states_in + (c * H + i_h) * K * V, K, V, V, 1, i_k * BK, i_v * BV, BK, BV, b_h)
        base_k = (c * C * H + i_h) * K
        base_g = (c * C * H + i_h) * GW
        g_last = _gate_row(gc + base_g, C - 1, cols, H, K, GW, GSK)
        b_kt = load(k + base_k, K, C, 1, H * K, i_k * BK, 0, BK, C).to(tl.float32)
        b_gt = load(gc + base_g, K, C, GSK, H * GW, i_k * BK, 0, BK, C)
        b_v = load(v + (c * C * H + i_h) * V, C, V, H * V, 1, 0, i_v * BV, C, BV)
        b_kg = (b_kt * tl.exp(g_last[:, None] - b_gt)).to(OP)
        b_h = b_h * tl.exp(g_last)[:, None] + tl.dot(b_kg, b_v.to(OP), input_precision=PRECISION)
    store(final + p_state, K, V, V, 1, i_k * BK, i_v * BV, BK, BV, b_h)


@tuned("H", "K", "V", "C", "GW", **PRODUCT_TUNING)
@triton.jit
def _output_kernel(
    q, v, gc, states_in, A, o, scale,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    GW: tl.constexpr, GSK: tl.constexpr, PRECISION: tl.constexpr, OP: tl.constexpr,
):  # fmt: skip
    """o = scale · (q ∘ exp(b)) S_in + A v for one chunk, head and value block."""
    i_v, i_nh = tl.program_id(0).to(tl.int64), tl.program_id(1).to(tl.int64)
    i_n, i_h = i_nh // H, i_nh % H
    acc = tl.zeros([C, BV], dtype=tl.float32)
    for i_k in range(tl.cdiv(K, BK)):
        base_k = (i_n * C * H + i_h) * K
        base_g = (i_n * C * H + i_h) * GW
        b_q = load(q + base_k, C, K, H * K, 1, 0, i_k * BK, C, BK)
        b_g = load(gc + base_g, C, K, H * GW, GSK, 0, i_k * BK, C, BK)
        b_qg = (b_q.to(tl.float32) * tl.exp(b_g) * scale).to(OP)
        b_h = load(states_in + i_nh * K * V, K, V, V, 1, i_k * BK, i_v * BV, BK, BV).to(OP)
        acc += tl.dot(b_qg, b_h, input_precision=PRECISION)
    b_v = load(v + (i_n * C * H + i_h) * V, C, V, H * V, 1, 0, i_v * BV, C, BV)
    acc += tl.dot(load(A + i_nh * C * C, C, C, C, 1, 0, 0, C, C).to(OP), b_v.to(OP), input_precision=PRECISION)
    store(o + (i_n * C * H + i_h) * V, C, V, H * V, 1, 0, i_v * BV, C, BV, acc)


@tuned("H", "K", "V", "C", "GW", **STATE_TUNING)
@triton.jit
def _state_backward_kernel(
    q, do, gc, chunk_offsets, d_final, d_out, d_h0, scale,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    HAS_DFINAL: tl.constexpr, GW: tl.constexpr, GSK: tl.constexpr, PRECISION: tl.constexpr, OP: tl.constexpr,
):  # fmt: skip
    """Walk one sequence's chunks backwards: record dS leaving each chunk, then
    dS ← exp(b_last) dS + scale · (q ∘ exp(b))ᵀ do. What is left is the initial state's gradient."""
    i_k, i_v, i_sh = tl.program_id(0).to(tl.int64), tl.program_id(1).to(tl.int64), tl.program_id(2).to(tl.int64)
    i_s, i_h = i_sh // H, i_sh % H
    c_first, c_end = tl.load(chunk_offsets + i_s), tl.load(chunk_offsets + i_s + 1)
    cols = i_k * BK + tl.arange(0, BK)
    p_state = (i_sh * K) * V
    b_dh = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_DFINAL:
        b_dh += load(d_final + p_state, K, V, V, 1, i_k * BK, i_v * BV, BK, BV)
    for step in range(c_end - c_first):
        c = c_end - 1 - step
        store(d_out + (c * H + i_h) * K * V, K, V, V, 1, i_k * BK, i_v * BV, BK, BV, b_dh)
        base_k = (c * C * H + i_h) * K
        base_g = (c * C * H + i_h) * GW
        g_last = _gate_row(gc + base_g, C - 1, cols, H, K, GW, GSK)
        b_do = load(do + (c * C * H + i_h) * V, C, V, H * V, 1, 0, i_v * BV, C, BV)
        b_qt = load(q + base_k, K, C, 1, H * K, i_k * BK, 0, BK, C).to(tl.float32)
        b_qg = (b_qt * tl.exp(load(gc + base_g, K, C, GSK, H * GW, i_k * BK, 0, BK, C)) * scale).to(OP)
        b_dh = b_dh * tl.exp(g_last)[:, None] + tl.dot(b_qg, b_do.to(OP), input_precision=PRECISION)
    store(d_h0 + p_state, K, V, V, 1, i_k * BK, i_v * BV, BK, BV, b_dh)


@tuned("H", "V", "C")
@triton.jit
def _score_grad_kernel(
    do, v, dA, scale,
    H: tl.constexpr, V: tl.constexpr, C: tl.constexpr, BV: tl.constexpr, PRECISION: tl.constexpr, OP: tl.constexpr,
):  # fmt: skip
    """dA = scale · do vᵀ, causal (the scale folded in so that dq = dA (k ∘ decay))."""
    i_nh = tl.program_id(0).to(tl.int64)
    i_n, i_h = i_nh // H, i_nh % H
    rows = tl.arange(0, C)
    acc = tl.zeros([C, C], dtype=tl.float32)
    for i_v in range(tl.cdiv(V, BV)):
        base_v = (i_n * C * H + i_h) * V
        b_do = load(do + base_v, C, V, H * V, 1, 0, i_v * BV, C, BV)
        b_vt = load(v + base_v, V, C, 1, H * V, i_v * BV, 0, BV, C).to(OP)
        acc += tl.dot(b_do.to(OP), b_vt, input_precision=PRECISION)
    acc = tl.where(rows[:, None] >= rows[None, :], acc * scale, 0.0)
    store(dA + i_nh * C * C, C, C, C, 1, 0, 0, C, C, acc)


@tuned("H", "K", "V", "C", "GW", **PRODUCT_TUNING)
@triton.jit
def _value_grad_kernel(
    k, gc, do, A, d_out, dv,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    GW: tl.constexpr, GSK: tl.constexpr, PRECISION: tl.constexpr, OP: tl.constexpr,
):  # fmt: skip
    """dv = Aᵀ do + (k ∘ exp(b_last − b)) dS_out."""
    i_v, i_nh = tl.program_id(0).to(tl.int64), tl.program_id(1).to(tl.int64)
    i_n, i_h = i_nh // H, i_nh % H
    base_v = (i_n * C * H + i_h) * V
    b_do = load(do + base_v, C, V, H * V, 1, 0, i_v * BV, C, BV)
    acc = tl.dot(load(A + i_nh * C * C, C, C, 1, C, 0, 0, C, C).to(OP), b_do.to(OP), input_precision=PRECISION)
    for i_k in range(tl.cdiv(K, BK)):
        cols = i_k * BK + tl.arange(0, BK)
        base_k = (i_n * C * H + i_h) * K
        base_g = (i_n * C * H + i_h) * GW
        g_last = _gate_row(gc + base_g, C - 1, cols, H, K, GW, GSK)
        b_k = load(k + base_k, C, K, H * K, 1, 0, i_k * BK, C, BK).to(tl.float32)
        b_g = load(gc + base_g, C, K, H * GW, GSK, 0, i_k * BK, C, BK)
        b_kg = (b_k * tl.exp(g_last[None, :] - b_g)).to(OP)
        b_dh = load(d_out + i_nh * K * V, K, V, V, 1, i_k * BK, i_v * BV, BK, BV).to(OP)
        acc += tl.dot(b_kg, b_dh, input_precision=PRECISION)
    store(dv + base_v, C, V, H * V, 1, 0, i_v * BV, C, BV, acc)


@tuned("H", "K", "C", "SCALAR", **INTRA_TUNING)
@triton.jit
def _intra_grad_kernel(
    q, k, gc, dA, dq, dk,
    H: tl.constexpr, K: tl.constexpr, C: tl.constexpr, BC: tl.constexpr, BK: tl.constexpr,
    SCALAR: tl.constexpr, GW: tl.constexpr, GSK: tl.constexpr, PRECISION: tl.constexpr, OP: tl.constexpr,
):  # fmt: skip
    """Intra-chunk dq (rows of sub-block i) and dk (sub-block i as the key side) from dA.

    dq_i = Σ_{j≤i} dA_ij k_j exp(b_i − b_j); dk_j = Σ_{i≥j} dA_ij q_i exp(b_i − b_j). Across
    sub-blocks the decay factors through the first row of the query-side block (dq) or the
    last row of the key-side block (dk), so both factors stay <= 1.
    """
    i_nh, i_i, i_k = tl.program_id(0).to(tl.int64), tl.program_id(1).to(tl.int64), tl.program_id(2).to(tl.int64)
    i_n, i_h = i_nh // H, i_nh % H
    base = (i_n * C * H + i_h) * K
    base_g = (i_n * C * H + i_h) * GW
    p_dA = dA + i_nh * C * C
    rows = tl.arange(0, BC)
    cols = i_k * BK + tl.arange(0, BK)
    n_blocks = tl.cdiv(C, BC)
    b_g = load(gc + base_g, C, K, H * GW, GSK, i_i * BC, i_k * BK, BC, BK)
    b_dq = tl.zeros([BC, BK], dtype=tl.float32)
    b_dk = tl.zeros([BC, BK], dtype=tl.float32)
    if SCALAR:
        # dq = (dA ∘ D) k and dk = (dA ∘ D)ᵀ q with D_ij = exp(b_i − b_j): plain matrix products.
        g_here = tl.load(gc + base_g + (i_i * BC + rows) * H * GW)
        for i_j in range(i_i + 1):
            g_there = tl.load(gc + base_g + (i_j * BC + rows) * H * GW)
            causal = i_i * BC + rows[:, None] >= i_j * BC + rows[None, :]
            decay = tl.exp(tl.where(causal, g_here[:, None] - g_there[None, :], float("-inf")))
            b_w = load(p_dA, C, C, C, 1, i_i * BC, i_j * BC, BC, BC) * decay
            b_kj = load(k + base, C, K, H * K, 1, i_j * BC, i_k * BK, BC, BK)
            b_dq += tl.dot(b_w.to(OP), b_kj.to(OP), input_precision=PRECISION)
        for i_j in range(i_i, n_blocks):
            g_there = tl.load(gc + base_g + (i_j * BC + rows) * H * GW)
            causal = i_j * BC + rows[None, :] >= i_i * BC + rows[:, None]
            decay = tl.exp(tl.where(causal, g_there[None, :] - g_here[:, None], float("-inf")))
            b_wt = load(p_dA, C, C, 1, C, i_i * BC, i_j * BC, BC, BC) * decay  # [j, i]
            b_qj = load(q + base, C, K, H * K, 1, i_j * BC, i_k * BK, BC, BK)
            b_dk += tl.dot(b_wt.to(OP), b_qj.to(OP), input_precision=PRECISION)
    else:
        g_first = _gate_row(gc + base_g, i_i * BC, cols, H, K, GW, GSK)
        for i_j in range(i_i):
            b_kj = load(k + base, C, K, H * K, 1, i_j * BC, i_k * BK, BC, BK).to(tl.float32)
            b_gj = load(gc + base_g, C, K, H * GW, GSK, i_j * BC, i_k * BK, BC, BK)
            b_kg = (b_kj * tl.exp(g_first[None, :] - b_gj)).to(OP)
            b_da = load(p_dA, C, C, C, 1, i_i * BC, i_j * BC, BC, BC).to(OP)
            b_dq += tl.dot(b_da, b_kg, input_precision=PRECISION)
        b_dq *= tl.exp(b_g - g_first[None, :])
        g_last = _gate_row(gc + base_g, i_i * BC + BC - 1, cols, H, K, GW, GSK)
        for i_j in range(i_i + 1, n_blocks):
            b_qj = load(q + base, C, K, H * K, 1, i_j * BC, i_k * BK, BC, BK).to(tl.float32)
            b_gj = load(gc + base_g, C, K, H * GW, GSK, i_j * BC, i_k * BK, BC, BK)
            b_qg = (b_qj * tl.exp(b_gj - g_last[None, :])).to(OP)
            b_dat = load(p_dA, C, C, 1, C, i_i * BC, i_j * BC, BC, BC).to(OP)  # dA[j, i]
            b_dk += tl.dot(b_dat, b_qg, input_precision=PRECISION)
        b_dk *= tl.exp(g_last[None, :] - b_g)
        # Diagonal block, one row t at a time: t as the key side of dq, as the query side of dk.
        for t in range(BC):
            row = base + (i_i * BC + t) * H * K + cols
            k_t = tl.load(k + row, mask=cols < K, other=0.0).to(tl.float32)
            q_t = tl.load(q + row, mask=cols < K, other=0.0).to(tl.float32)
            g_t = _gate_row(gc + base_g, i_i * BC + t, cols, H, K, GW, GSK)
            dA_col = tl.load(p_dA + (i_i * BC + rows) * C + i_i * BC + t)  # dA[i, t]
            dA_row = tl.load(p_dA + (i_i * BC + t) * C + i_i * BC + rows)  # dA[t, j]
            to_q = tl.exp(tl.where(rows[:, None] >= t, b_g - g_t[None, :], float("-inf")))
            to_k = tl.exp(tl.where(rows[:, None] <= t, g_t[None, :] - b_g, float("-inf")))
            b_dq += dA_col[:, None] * k_t[None, :] * to_q
            b_dk += dA_row[:, None] * q_t[None, :] * to_k
    store(dq + base, C, K, H * K, 1, i_i * BC, i_k * BK, BC, BK, b_dq)
    store(dk + base, C, K, H * K, 1, i_i * BC, i_k * BK, BC, BK, b_dk)


@tuned("H", "K", "V", "C", "GW", **PRODUCT_TUNING)
@triton.jit
def _inter_grad_kernel(
    q, k, v, gc, do, states_in, d_out, dq_intra, dk_intra, dq, dk, dg, scale,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    GW: tl.constexpr, GSK: tl.constexpr, PRECISION: tl.constexpr, OP: tl.constexpr,
):  # fmt: skip
    """dq, dk: the intra-chunk parts (fp32) plus the inter-chunk ones; and the gate gradient,
    dg = reverse cumsum over the chunk of (q dq − k dk), where the chunk's
    last row also carries Σ_v S_out ∘ dS_out through b_last."""
    i_k, i_nh = tl.program_id(0).to(tl.int64), tl.program_id(1).to(tl.int64)
    i_n, i_h = i_nh // H, i_nh % H
    base_k = (i_n * C * H + i_h) * K
    base_g = (i_n * C * H + i_h) * GW
    rows = tl.arange(0, C)
    cols = i_k * BK + tl.arange(0, BK)
    b_dq_inter = tl.zeros([C, BK], dtype=tl.float32)
    b_dk_inter = tl.zeros([C, BK], dtype=tl.float32)
    b_h_dh = tl.zeros([BK], dtype=tl.float32)
    for i_v in range(tl.cdiv(V, BV)):
        base_v = (i_n * C * H + i_h) * V
        b_do = load(do + base_v, C, V, H * V, 1, 0, i_v * BV, C, BV)
        b_ht = load(states_in + i_nh * K * V, V, K, 1, V, i_v * BV, i_k * BK, BV, BK)
        b_dht = load(d_out + i_nh * K * V, V, K, 1, V, i_v * BV, i_k * BK, BV, BK)
        b_dq_inter += tl.dot(b_do.to(OP), b_ht.to(OP), input_precision=PRECISION)
        b_v = load(v + base_v, C, V, H * V, 1, 0, i_v * BV, C, BV)
        b_dk_inter += tl.dot(b_v.to(OP), b_dht.to(OP), input_precision=PRECISION)
        b_h_dh += tl.sum(b_ht.to(tl.float32) * b_dht.to(tl.float32), axis=0)
    b_q = load(q + base_k, C, K, H * K, 1, 0, i_k * BK, C, BK).to(tl.float32)
    b_k = load(k + base_k, C, K, H * K, 1, 0, i_k * BK, C, BK).to(tl.float32)
    b_g = load(gc + base_g, C, K, H * GW, GSK, 0, i_k * BK, C, BK)
    g_last = _gate_row(gc + base_g, C - 1, cols, H, K, GW, GSK)
    b_dk_inter *= tl.exp(g_last[None, :] - b_g)
    b_dq = load(dq_intra + base_k, C, K, H * K, 1, 0, i_k * BK, C, BK) + b_dq_inter * scale * tl.exp(b_g)
    b_dk = load(dk_intra + base_k, C, K, H * K, 1, 0, i_k * BK, C, BK) + b_dk_inter
    # Through b_last: the carried state exp(b_last) S_in and the chunk's update.
    last = b_h_dh * tl.exp(g_last) + tl.sum(b_k * b_dk_inter, axis=0)
    b_dgc = b_q * b_dq - b_k * b_dk + tl.where(rows[:, None] == C - 1, last[None, :], 0.0)
    b_dg = tl.cumsum(b_dgc, axis=0, reverse=True)
    store(dq + base_k, C, K, H * K, 1, 0, i_k * BK, C, BK, b_dq)
    store(dk + base_k, C, K, H * K, 1, 0, i_k * BK, C, BK, b_dk)
    store(dg + base_k, C, K, H * K, 1, 0, i_k * BK, C, BK, b_dg)


def _gate_layout(gc: Tensor) -> dict[str, int]:
    """How the kernels read the cumulative gates: GW values per (token, head) with key stride
    GSK, [N, C, H, K] per-key-dim gates or [N, C, H] scalar ones read as if broadcast."""
    return {"GW": 1, "GSK": 0} if gc.dim() == 3 else {"GW": gc.shape[-1], "GSK": 1}


def _shape(q: Tensor, v: Tensor) -> dict[str, int]:
    """The kernels' shape constants from chunked q [N, C, H, K] and v [N, C, H, V]."""
    N, C, H, K = q.shape
    return {"H": H, "K": K, "V": v.shape[-1], "C": C}


def intra_chunk_scores(*, q: Tensor, k: Tensor, gc: Tensor, scale: float) -> Tensor:
    """Forward pass 1: A [N, H, C, C] fp32, causal, the scale folded in."""
    N, C, H, K = q.shape
    scalar, (prec, op) = gc.dim() == 3, operands(q)
    A = q.new_zeros(N, H, C, C, dtype=torch.float32)
    BC = score_block(C, scalar)
    _intra_scores_kernel[(N * H, C // BC, C // BC)](
        q, k, gc, A, scale, H=H, K=K, C=C, BC=BC, SCALAR=scalar, PRECISION=prec, OP=op,
        **_gate_layout(gc), **untuned(BK=intra_key_tile(K, scalar)),
    )  # fmt: skip
    return A


def chunk_states(
    *, k: Tensor, v: Tensor, gc: Tensor, chunk_offsets: Tensor, h0: Tensor | None
) -> tuple[Tensor, Tensor]:
    """Forward pass 2: the state entering every chunk [N, H, K, V] (in the input dtype: the
    products read them as operands anyway) and each sequence's final state [S, H, K, V] fp32."""
    N, C, H, K = k.shape
    V, S, (prec, op) = v.shape[-1], chunk_offsets.numel() - 1, operands(k)
    states_in = k.new_empty(N, H, K, V)
    final = k.new_empty(S, H, K, V, dtype=torch.float32)
    _state_forward_kernel[state_grid(K, V, S * H)](
        k, v, gc, chunk_offsets, h0, states_in, final, H=H, K=K, V=V, C=C, HAS_H0=h0 is not None,
        PRECISION=prec, OP=op, **_gate_layout(gc), **untuned(**head_tiles(K, V)),
    )  # fmt: skip
    return states_in, final


def chunk_output(*, q: Tensor, v: Tensor, gc: Tensor, states_in: Tensor, A: Tensor, scale: float) -> Tensor:
    """Forward pass 3: o = scale (q ∘ exp(b)) S_in + A v, [N, C, H, V] in v's dtype."""
    shape, (prec, op) = _shape(q, v), operands(q)
    o = torch.empty_like(v)
    _output_kernel[lambda tile: (triton.cdiv(shape["V"], tile["BV"]), q.shape[0] * shape["H"])](
        q, v, gc, states_in, A, o, scale, **shape, PRECISION=prec, OP=op,
        **_gate_layout(gc), **untuned(**head_tiles(shape["K"], shape["V"])),
    )  # fmt: skip
    return o


def chunk_state_grads(
    *, q: Tensor, do: Tensor, gc: Tensor, chunk_offsets: Tensor, d_final: Tensor | None, scale: float
) -> tuple[Tensor, Tensor]:
    """Backward pass 1: dS leaving every chunk [N, H, K, V] and the initial states' gradient
    [S, H, K, V] fp32."""
    N, C, H, K = q.shape
    V, S, (prec, op) = do.shape[-1], chunk_offsets.numel() - 1, operands(q)
    d_out = q.new_empty(N, H, K, V)
    d_h0 = q.new_empty(S, H, K, V, dtype=torch.float32)
    _state_backward_kernel[state_grid(K, V, S * H)](
        q, do, gc, chunk_offsets, d_final, d_out, d_h0, scale, H=H, K=K, V=V, C=C, HAS_DFINAL=d_final is not None,
        PRECISION=prec, OP=op, **_gate_layout(gc), **untuned(**head_tiles(K, V)),
    )  # fmt: skip
    return d_out, d_h0


def score_grads(*, do: Tensor, v: Tensor, scale: float) -> Tensor:
    """Backward pass 2a: dA = scale · do vᵀ [N, H, C, C] fp32, causal."""
    N, C, H, V = v.shape
    prec, op = operands(v)
    dA = v.new_empty(N, H, C, C, dtype=torch.float32)
    _score_grad_kernel[(N * H,)](do, v, dA, scale, H=H, V=V, C=C, BV=block(V), PRECISION=prec, OP=op)
    return dA


def value_grads(*, k: Tensor, gc: Tensor, do: Tensor, A: Tensor, d_out: Tensor) -> Tensor:
    """Backward pass 2b: dv = Aᵀ do + (k ∘ exp(b_last − b)) dS_out, in do's dtype."""
    shape, (prec, op) = _shape(k, do), operands(k)
    dv = torch.empty_like(do)
    _value_grad_kernel[lambda tile: (triton.cdiv(shape["V"], tile["BV"]), k.shape[0] * shape["H"])](
        k, gc, do, A, d_out, dv, **shape, PRECISION=prec, OP=op,
        **_gate_layout(gc), **untuned(**head_tiles(shape["K"], shape["V"])),
    )  # fmt: skip
    return dv


def intra_chunk_grads(*, q: Tensor, k: Tensor, gc: Tensor, dA: Tensor) -> tuple[Tensor, Tensor]:
    """Backward pass 3: the intra-chunk parts of dq and dk, fp32."""
    N, C, H, K = q.shape
    scalar, (prec, op) = gc.dim() == 3, operands(q)
    dq = q.new_empty(q.shape, dtype=torch.float32)
    dk = q.new_empty(q.shape, dtype=torch.float32)
    BC = score_block(C, scalar)
    _intra_grad_kernel[lambda tile: (N * H, C // BC, triton.cdiv(K, tile["BK"]))](
        q, k, gc, dA, dq, dk, H=H, K=K, C=C, BC=BC, SCALAR=scalar, PRECISION=prec, OP=op,
        **_gate_layout(gc), **untuned(BK=intra_key_tile(K, scalar)),
    )  # fmt: skip
    return dq, dk


def inter_chunk_grads(
    *, q: Tensor, k: Tensor, v: Tensor, gc: Tensor, do: Tensor, states_in: Tensor, d_out: Tensor,
    dq_intra: Tensor, dk_intra: Tensor, scale: float, g_dtype: torch.dtype,
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """Backward pass 4: dq, dk (intra plus inter-chunk parts) and the gate gradient, per key
    dim, accumulated in fp32 and stored once in the gate dtype; a scalar gate's is summed over
    the key dims first, in fp32."""
    shape, (prec, op), scalar = _shape(q, v), operands(q), gc.dim() == 3
    dg = q.new_empty(q.shape, dtype=torch.float32 if scalar else g_dtype)
    dq, dk = torch.empty_like(q), torch.empty_like(k)
    _inter_grad_kernel[lambda tile: (triton.cdiv(shape["K"], tile["BK"]), q.shape[0] * shape["H"])](
        q, k, v, gc, do, states_in, d_out, dq_intra, dk_intra, dq, dk, dg, scale, **shape, PRECISION=prec, OP=op,
        **_gate_layout(gc), **untuned(**head_tiles(shape["K"], shape["V"])),
    )  # fmt: skip
    return dq, dk, dg.sum(-1).to(g_dtype) if scalar else dg


def _forward(q, k, v, gc, scale, chunk_offsets, h0):
    A = intra_chunk_scores(q=q, k=k, gc=gc, scale=scale)
    states_in, final = chunk_states(k=k, v=v, gc=gc, chunk_offsets=chunk_offsets, h0=h0)
    o = chunk_output(q=q, v=v, gc=gc, states_in=states_in, A=A, scale=scale)
    return o, final, states_in, A


def _backward(q, k, v, gc, do, d_final, scale, chunk_offsets, states_in, A, g_dtype):
    d_out, d_h0 = chunk_state_grads(q=q, do=do, gc=gc, chunk_offsets=chunk_offsets, d_final=d_final, scale=scale)
    dA = score_grads(do=do, v=v, scale=scale)
    dv = value_grads(k=k, gc=gc, do=do, A=A, d_out=d_out)
    dq_intra, dk_intra = intra_chunk_grads(q=q, k=k, gc=gc, dA=dA)
    dq, dk, dg = inter_chunk_grads(
        q=q, k=k, v=v, gc=gc, do=do, states_in=states_in, d_out=d_out, dq_intra=dq_intra, dk_intra=dk_intra,
        scale=scale, g_dtype=g_dtype,
    )  # fmt: skip
    return dq, dk, dv, dg, d_h0


def _chunked(tensors: tuple[Tensor, ...], initial_state, cu_seqlens, chunk_size):
    """``tensors`` [B, T, H, *] in the document-aligned chunk layout [N, C, H, *], with the
    layout and each sequence's first chunk (a device tensor, as the state walks read it)."""
    B, T = tensors[0].shape[:2]
    cu, _ = flatten_batch(tensors[0], cu_seqlens, initial_state)
    layout = build_layout(cu, chunk_size, tensors[0].device)
    chunked = [to_chunks(x.reshape(B * T, *x.shape[2:]), layout) for x in tensors]
    offsets = torch.tensor(layout.chunk_offsets, dtype=torch.int64, device=tensors[0].device)
    return chunked, layout, offsets


def scan_forward(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    initial_state: Tensor | None,
    cu_seqlens: Tensor | None,
    scale: float,
    chunk_size: int,
) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor, Tensor]]:
    """o [B, T, H, V], the final states [S, H, K, V] fp32, and what :func:`scan_backward` reads
    besides q, k, v: the cumulative gates, the state entering each chunk and the intra-chunk
    scores."""
    if chunk_size not in TRITON_CHUNK_SIZES:
        raise ValueError(f"the Triton scans need chunk_size in {TRITON_CHUNK_SIZES}, got {chunk_size}")
    if q.dtype == torch.float64:
        raise ValueError("the Triton scans take fp32, bf16 or fp16 inputs, not fp64")
    (q_c, k_c, v_c, g_c), layout, offsets = _chunked((q, k, v, g), initial_state, cu_seqlens, chunk_size)
    gc = g_c.cumsum(1, dtype=torch.float32)  # SSD's scalar gates: [N, C, H]
    h0 = initial_state.float().contiguous() if initial_state is not None else None
    o, final, states_in, A = _forward(q_c.contiguous(), k_c.contiguous(), v_c.contiguous(), gc, scale, offsets, h0)
    return from_chunks(o, layout).reshape(v.shape), final, (gc, states_in, A)


def scan_backward(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    initial_state: Tensor | None,
    cu_seqlens: Tensor | None,
    scale: float,
    chunk_size: int,
    saved: tuple[Tensor, Tensor, Tensor],
    g_dtype: torch.dtype,
    d_out: Tensor,
    d_final: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None]:
    """Gradients of q, k, v, the gates (in the inputs' shapes, the gates' in ``g_dtype``) and of
    the initial state (None without one)."""
    gc, states_in, A = saved
    (q_c, k_c, v_c, do), layout, offsets = _chunked((q, k, v, d_out), initial_state, cu_seqlens, chunk_size)
    d_final = d_final.contiguous() if d_final is not None else None
    dq, dk, dv, dg, d_h0 = _backward(
        q_c.contiguous(), k_c.contiguous(), v_c.contiguous(), gc, do.contiguous(), d_final, scale, offsets,
        states_in, A, g_dtype,
    )  # fmt: skip
    B, T = q.shape[:2]
    grads = (from_chunks(d, layout).reshape(B, T, *d.shape[2:]) for d in (dq, dk, dv, dg))
    return *grads, d_h0 if initial_state is not None else None
