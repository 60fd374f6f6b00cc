"""The two ops sequence parallelism adds around a scan, in Triton (the GPU path of
``relay_ref.py``; same contracts, forward and backward).

- summary of the stream's last segment: ``Ŝ = Σ_t (k_t ∘ exp(b_L − b_t)) v_tᵀ`` and
  ``log Â = b_L`` (b: the cumulative log gate from the segment start);
- correction of the first segment's outputs, in place: ``o_t += scale (q_t ∘ exp(b_t))ᵀ S_in``.

Each program walks ``SPLIT_TOKENS`` of its head's tokens (a long segment is split across
programs so that it fills the GPU) in blocks of ``TOKEN_BLOCK``, the gate cumulated inside
the block. Each block is entered through its log decay from the segment's start or to its
end, block sums cumulated from that side (``_block_log_decays``), so every ``exp`` argument
stays ≤ 0 and no [T, H, K] tensor of cumulative gates is materialised. The splits' parts of
Ŝ and of the incoming state's gradient are summed afterwards; the gate gradients, a prefix
sum (summary) and a suffix sum (correction), are carried along each split's walk and
continued across splits afterwards (``_add_split_offsets``). Forward, each op reads its
inputs once and its gate twice (once for the block sums), and the correction adds into
``o`` in place; backward reads them once more.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from baton.kernels.tiles import load, store
from baton.kernels.tuning import STATE_TUNING, block, head_tiles, operands, state_grid, tuned, untuned

TOKEN_BLOCK = 32
# Tokens of one program's walk: a long segment (up to a rank's whole piece) is split across
# programs so that it still fills the GPU. A multiple of TOKEN_BLOCK.
SPLIT_TOKENS = 1024


@triton.jit
def _split_of(pid, L, H: tl.constexpr, SPLIT: tl.constexpr):
    """The head and the token range [first, end) of the program ``pid`` = split · H + head."""
    i_p, i_h = pid // H, pid % H
    return i_h, i_p * SPLIT, tl.minimum(L, (i_p + 1) * SPLIT)


@triton.jit
def _block_decay(
    g, decays, L, t0, c0, g_st, g_sk, d_sc, d_sk,
    K: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, TO_END: tl.constexpr,
):  # fmt: skip
    """The [BT, BK] tile of decays at tokens t0.. and key dims c0..: from the segment's start
    through each token, or (TO_END) from each token to the segment's end. ``decays`` holds
    each block's log decay from the start to its first token, or from its end to the end
    (``_block_log_decays``); inside the block the gate is cumulated here. Arguments ≤ 0."""
    cols = c0 + tl.arange(0, BK)
    b_g = load(g, L, K, g_st, g_sk, t0, c0, BT, BK).to(tl.float32)
    b_d = tl.load(decays + (t0 // BT) * d_sc + cols * d_sk, mask=cols < K, other=0.0)
    if TO_END:
        log_decay = b_d[None, :] + tl.sum(b_g, axis=0)[None, :] - tl.cumsum(b_g, axis=0)
    else:
        log_decay = b_d[None, :] + tl.cumsum(b_g, axis=0)
    return tl.exp(log_decay)


@tuned("H", "K", "V", **STATE_TUNING)
@triton.jit
def _summary_kernel(
    k, v, g, after, S_parts, L, g_st, g_sh, g_sk, a_sc, a_sh, a_sk,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    SPLIT: tl.constexpr, PRECISION: tl.constexpr, OP: tl.constexpr,
):  # fmt: skip
    """One split's part of Ŝ = Σ_t (k_t ∘ w_t)ᵀ v_t, w_t = exp(b_L − b_t) = exp(after_blk +
    g_blk − b_t), b cumulated within the block."""
    i_k, i_v, i_ph = tl.program_id(0).to(tl.int64), tl.program_id(1).to(tl.int64), tl.program_id(2).to(tl.int64)
    i_h, t_first, t_end = _split_of(i_ph, L, H, SPLIT)
    g_h, d_h = g + i_h * g_sh, after + i_h * a_sh  # this head's gates and block decays
    acc = tl.zeros([BK, BV], dtype=tl.float32)
    for t0 in range(t_first, t_end, BT):
        b_w = _block_decay(g_h, d_h, L, t0, i_k * BK, g_st, g_sk, a_sc, a_sk, K, BT, BK, True)
        b_kw = tl.trans(load(k + i_h * K, L, K, H * K, 1, t0, i_k * BK, BT, BK).to(tl.float32) * b_w).to(OP)
        b_v = load(v + i_h * V, L, V, H * V, 1, t0, i_v * BV, BT, BV).to(OP)
        acc += tl.dot(b_kw, b_v, input_precision=PRECISION)
    store(S_parts + i_ph * K * V, K, V, V, 1, i_k * BK, i_v * BV, BK, BV, acc)


@tuned("H", "K", "V")
@triton.jit
def _summary_key_grad_kernel(
    k, v, g, after, dS, dk, dg, totals, L, g_st, g_sh, g_sk, a_sc, a_sh, a_sk,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    SPLIT: tl.constexpr, PRECISION: tl.constexpr, OP: tl.constexpr,
):  # fmt: skip
    """dk_t = w_t ∘ (dŜ v_t); the gate gradient dg_s = d log Â + Σ_{t<s} k_t ∘ dk_t, a prefix
    sum, here within the split; the split's total goes to ``totals`` (``_add_split_offsets``)."""
    i_k, i_ph = tl.program_id(0).to(tl.int64), tl.program_id(1).to(tl.int64)
    i_h, t_first, t_end = _split_of(i_ph, L, H, SPLIT)
    g_h, d_h = g + i_h * g_sh, after + i_h * a_sh  # this head's gates and block decays
    cols = i_k * BK + tl.arange(0, BK)
    prefix = tl.zeros([BK], dtype=tl.float32)
    for t0 in range(t_first, t_end, BT):
        b_w = _block_decay(g_h, d_h, L, t0, i_k * BK, g_st, g_sk, a_sc, a_sk, K, BT, BK, True)
        b_dkv = tl.zeros([BT, BK], dtype=tl.float32)
        for i_v in range(tl.cdiv(V, BV)):
            b_v = load(v + i_h * V, L, V, H * V, 1, t0, i_v * BV, BT, BV).to(OP)
            b_dst = load(dS + i_h * K * V, V, K, 1, V, i_v * BV, i_k * BK, BV, BK).to(OP)
            b_dkv += tl.dot(b_v, b_dst, input_precision=PRECISION)
        b_dk = b_w * b_dkv
        b_p = load(k + i_h * K, L, K, H * K, 1, t0, i_k * BK, BT, BK).to(tl.float32) * b_dk
        store(dk + i_h * K, L, K, H * K, 1, t0, i_k * BK, BT, BK, b_dk)
        store(dg + i_h * K, L, K, H * K, 1, t0, i_k * BK, BT, BK, prefix[None, :] + tl.cumsum(b_p, axis=0) - b_p)
        prefix += tl.sum(b_p, axis=0)
    tl.store(totals + i_ph * K + cols, prefix, mask=cols < K)


@tuned("H", "K", "V")
@triton.jit
def _summary_value_grad_kernel(
    k, g, after, dS, dv, L, g_st, g_sh, g_sk, a_sc, a_sh, a_sk,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    SPLIT: tl.constexpr, PRECISION: tl.constexpr, OP: tl.constexpr,
):  # fmt: skip
    """dv_t = (k_t ∘ w_t)ᵀ dŜ."""
    i_v, i_ph = tl.program_id(0).to(tl.int64), tl.program_id(1).to(tl.int64)
    i_h, t_first, t_end = _split_of(i_ph, L, H, SPLIT)
    g_h, d_h = g + i_h * g_sh, after + i_h * a_sh  # this head's gates and block decays
    for t0 in range(t_first, t_end, BT):
        acc = tl.zeros([BT, BV], dtype=tl.float32)
        for i_k in range(tl.cdiv(K, BK)):
            b_w = _block_decay(g_h, d_h, L, t0, i_k * BK, g_st, g_sk, a_sc, a_sk, K, BT, BK, True)
            b_kw = (load(k + i_h * K, L, K, H * K, 1, t0, i_k * BK, BT, BK).to(tl.float32) * b_w).to(OP)
            b_ds = load(dS + i_h * K * V, K, V, V, 1, i_k * BK, i_v * BV, BK, BV).to(OP)
            acc += tl.dot(b_kw, b_ds, input_precision=PRECISION)
        store(dv + i_h * V, L, V, H * V, 1, t0, i_v * BV, BT, BV, acc)


@tuned("H", "K", "V", restore=("o",))
@triton.jit
def _correction_kernel(
    o, q, g, before, S_in, scale, L, g_st, g_sh, g_sk, b_sc, b_sh, b_sk,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    SPLIT: tl.constexpr, PRECISION: tl.constexpr, OP: tl.constexpr,
):  # fmt: skip
    """o_t += scale (q_t ∘ exp(b_t)) S_in, b_t = before_blk + the gate cumulated in the block."""
    i_v, i_ph = tl.program_id(0).to(tl.int64), tl.program_id(1).to(tl.int64)
    i_h, t_first, t_end = _split_of(i_ph, L, H, SPLIT)
    g_h, d_h = g + i_h * g_sh, before + i_h * b_sh  # this head's gates and block decays
    for t0 in range(t_first, t_end, BT):
        acc = load(o + i_h * V, L, V, H * V, 1, t0, i_v * BV, BT, BV).to(tl.float32)
        for i_k in range(tl.cdiv(K, BK)):
            b_d = _block_decay(g_h, d_h, L, t0, i_k * BK, g_st, g_sk, b_sc, b_sk, K, BT, BK, False)
            b_q = load(q + i_h * K, L, K, H * K, 1, t0, i_k * BK, BT, BK).to(tl.float32)
            b_qg = (b_q * b_d * scale).to(OP)
            b_s = load(S_in + i_h * K * V, K, V, V, 1, i_k * BK, i_v * BV, BK, BV).to(OP)
            acc += tl.dot(b_qg, b_s, input_precision=PRECISION)
        store(o + i_h * V, L, V, H * V, 1, t0, i_v * BV, BT, BV, acc)


@tuned("H", "K", "V", **STATE_TUNING)
@triton.jit
def _correction_state_grad_kernel(
    q, g, before, do, dS_parts, scale, L, g_st, g_sh, g_sk, b_sc, b_sh, b_sk,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    SPLIT: tl.constexpr, PRECISION: tl.constexpr, OP: tl.constexpr,
):  # fmt: skip
    """One split's part of dS_in = scale Σ_t (q_t ∘ exp(b_t)) do_tᵀ."""
    i_k, i_v, i_ph = tl.program_id(0).to(tl.int64), tl.program_id(1).to(tl.int64), tl.program_id(2).to(tl.int64)
    i_h, t_first, t_end = _split_of(i_ph, L, H, SPLIT)
    g_h, d_h = g + i_h * g_sh, before + i_h * b_sh  # this head's gates and block decays
    acc = tl.zeros([BK, BV], dtype=tl.float32)
    for t0 in range(t_first, t_end, BT):
        b_d = _block_decay(g_h, d_h, L, t0, i_k * BK, g_st, g_sk, b_sc, b_sk, K, BT, BK, False)
        b_q = load(q + i_h * K, L, K, H * K, 1, t0, i_k * BK, BT, BK).to(tl.float32)
        b_qg = tl.trans(b_q * b_d * scale).to(OP)
        b_do = load(do + i_h * V, L, V, H * V, 1, t0, i_v * BV, BT, BV).to(OP)
        acc += tl.dot(b_qg, b_do, input_precision=PRECISION)
    store(dS_parts + i_ph * K * V, K, V, V, 1, i_k * BK, i_v * BV, BK, BV, acc)


@tuned("H", "K", "V")
@triton.jit
def _correction_query_grad_kernel(
    q, g, before, do, S_in, dq, dg, totals, scale, L, g_st, g_sh, g_sk, b_sc, b_sh, b_sk,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    SPLIT: tl.constexpr, PRECISION: tl.constexpr, OP: tl.constexpr,
):  # fmt: skip
    """dq_t = scale exp(b_t) ∘ (S_in do_t); the gate gradient dg_s = Σ_{t≥s} q_t ∘ dq_t, a
    suffix sum, here within the split (walked from its last block); the split's total goes
    to ``totals`` (``_add_split_offsets``)."""
    i_k, i_ph = tl.program_id(0).to(tl.int64), tl.program_id(1).to(tl.int64)
    i_h, t_first, t_end = _split_of(i_ph, L, H, SPLIT)
    g_h, d_h = g + i_h * g_sh, before + i_h * b_sh  # this head's gates and block decays
    cols = i_k * BK + tl.arange(0, BK)
    suffix = tl.zeros([BK], dtype=tl.float32)
    n_blocks = tl.cdiv(t_end - t_first, BT)
    for step in range(n_blocks):
        t0 = t_first + (n_blocks - 1 - step) * BT
        b_d = _block_decay(g_h, d_h, L, t0, i_k * BK, g_st, g_sk, b_sc, b_sk, K, BT, BK, False)
        b_dsq = tl.zeros([BT, BK], dtype=tl.float32)
        for i_v in range(tl.cdiv(V, BV)):
            b_do = load(do + i_h * V, L, V, H * V, 1, t0, i_v * BV, BT, BV).to(OP)
            b_st = load(S_in + i_h * K * V, V, K, 1, V, i_v * BV, i_k * BK, BV, BK).to(OP)
            b_dsq += tl.dot(b_do, b_st, input_precision=PRECISION)
        b_dq = b_dsq * b_d * scale
        b_p = load(q + i_h * K, L, K, H * K, 1, t0, i_k * BK, BT, BK).to(tl.float32) * b_dq
        b_dg = suffix[None, :] + tl.cumsum(b_p, axis=0, reverse=True)
        store(dq + i_h * K, L, K, H * K, 1, t0, i_k * BK, BT, BK, b_dq)
        store(dg + i_h * K, L, K, H * K, 1, t0, i_k * BK, BT, BK, b_dg)
        suffix += tl.sum(b_p, axis=0)
    tl.store(totals + i_ph * K + cols, suffix, mask=cols < K)


def _gate_strides(g: Tensor) -> tuple[int, int, int]:
    """(token, head, key) strides of a [L, H, K] or scalar [L, H] gate (key stride 0)."""
    return (g.stride(0), g.stride(1), g.stride(2)) if g.dim() == 3 else (g.stride(0), g.stride(1), 0)


def _block_log_decays(g: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per token block, the log decay from the segment's start to the block's start and from
    the block's end to the segment's end, fp32 [n_blocks, H(, K)]: block sums cumulated from
    either side, never a difference of two long prefix sums (that loses the small ones).
    And the segment's total log decay [H(, K)]."""
    n_full = g.shape[0] // TOKEN_BLOCK
    sums = g[: n_full * TOKEN_BLOCK].unflatten(0, (n_full, TOKEN_BLOCK)).sum(1, dtype=torch.float32)
    if g.shape[0] > n_full * TOKEN_BLOCK:
        sums = torch.cat([sums, g[n_full * TOKEN_BLOCK :].sum(0, keepdim=True, dtype=torch.float32)])
    before, after = _exclusive_sums(sums)
    return before.contiguous(), after.contiguous(), sums.sum(0)


def _exclusive_sums(x: Tensor) -> tuple[Tensor, Tensor]:
    """Along dim 0, the sum of the entries before each one and of those after it, each
    cumulated from its own side."""
    zero = torch.zeros_like(x[:1])
    return torch.cat([zero, x.cumsum(0)[:-1]]), torch.cat([x.flip(0).cumsum(0).flip(0)[1:], zero])


def _splits(L: int) -> int:
    return max(1, triton.cdiv(L, SPLIT_TOKENS))


def _split_gate_grad(L: int, like: Tensor) -> tuple[Tensor, Tensor]:
    """Buffers of a kernel's per-key-dim gate gradient, [whole splits of tokens, H, K], and of
    each split's total, [n_splits, H, K], fp32, for ``_add_split_offsets``."""
    shape = like.shape[1:]
    return (
        like.new_empty(_splits(L) * SPLIT_TOKENS, *shape, dtype=torch.float32),
        like.new_empty(_splits(L), *shape, dtype=torch.float32),
    )


def _add_split_offsets(dg: Tensor, offsets: Tensor, L: int) -> Tensor:
    """Add each split's offset [n_splits, H, K] to its tokens' gate gradients; drop the padding."""
    dg.unflatten(0, (offsets.shape[0], SPLIT_TOKENS)).add_(offsets[:, None])
    return dg[:L]


def _fold_gate_grad(dg: Tensor, g: Tensor) -> Tensor:
    return (dg if g.dim() == 3 else dg.sum(-1)).to(g.dtype)


def _launch_shape(x: Tensor, v_dim: int) -> dict:
    """Shape constants and operand settings of a relay kernel over a segment x [L, H, K]."""
    L, H, K = x.shape
    prec, op = operands(x)
    return {"H": H, "K": K, "V": v_dim, "BT": TOKEN_BLOCK, "SPLIT": SPLIT_TOKENS, "PRECISION": prec, "OP": op}


def summary_state(*, k: Tensor, v: Tensor, g: Tensor, after: Tensor) -> Tensor:
    """Ŝ [H, K, V] fp32: each split's part, summed."""
    L, H, K = k.shape
    V = v.shape[-1]
    S_parts = k.new_empty(_splits(L), H, K, V, dtype=torch.float32)
    _summary_kernel[state_grid(K, V, _splits(L) * H)](
        k, v, g, after, S_parts, L, *_gate_strides(g), *_gate_strides(after),
        **_launch_shape(k, V), **untuned(**head_tiles(K, V)),
    )  # fmt: skip
    return S_parts.sum(0)


def summary_grads(
    *, k: Tensor, v: Tensor, g: Tensor, after: Tensor, dS: Tensor, d_log_A: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """dk, dv and the gate gradient (a prefix sum: every token's gate reaches b_L, a split's
    prefix starts after the splits before it)."""
    L, H, K = k.shape
    V = v.shape[-1]
    shape, BK, BV = _launch_shape(k, V), block(K), block(V)
    strides = (*_gate_strides(g), *_gate_strides(after))
    dk, dv = torch.empty_like(k), torch.empty_like(v)
    dg, totals = _split_gate_grad(L, k)
    _summary_key_grad_kernel[(triton.cdiv(K, BK), _splits(L) * H)](
        k, v, g, after, dS, dk, dg, totals, L, *strides, **shape, BK=BK, BV=BV
    )
    _summary_value_grad_kernel[(triton.cdiv(V, BV), _splits(L) * H)](
        k, g, after, dS, dv, L, *strides, **shape, BK=BK, BV=BV
    )
    dg = _add_split_offsets(dg, _exclusive_sums(totals)[0] + d_log_A, L)
    return dk, dv, _fold_gate_grad(dg, g)


def correct_in_place(*, o: Tensor, q: Tensor, g: Tensor, before: Tensor, S_in: Tensor, scale: float) -> None:
    """o[:L] += scale (q ∘ exp(b)) S_in."""
    L, H, K = q.shape
    V = o.shape[-1]
    BK, BV = block(K), block(V)
    _correction_kernel[(triton.cdiv(V, BV), _splits(L) * H)](
        o, q, g, before, S_in, scale, L, *_gate_strides(g), *_gate_strides(before),
        **_launch_shape(q, V), BK=BK, BV=BV,
    )  # fmt: skip


def correction_grads(
    *, q: Tensor, g: Tensor, before: Tensor, S_in: Tensor, do: Tensor, scale: float
) -> tuple[Tensor, Tensor, Tensor]:
    """dq, the gate gradient (a suffix sum, continued across splits) and dS_in."""
    L, H, K = q.shape
    V = do.shape[-1]
    shape, BK = _launch_shape(q, V), block(K)
    strides = (*_gate_strides(g), *_gate_strides(before))
    dS_parts = S_in.new_empty(_splits(L), H, K, V, dtype=torch.float32)
    _correction_state_grad_kernel[state_grid(K, V, _splits(L) * H)](
        q, g, before, do, dS_parts, scale, L, *strides, **shape, **untuned(**head_tiles(K, V))
    )
    dq = torch.empty_like(q)
    dg, totals = _split_gate_grad(L, q)
    _correction_query_grad_kernel[(triton.cdiv(K, BK), _splits(L) * H)](
        q, g, before, do, S_in, dq, dg, totals, scale, L, *strides, **shape, BK=BK, BV=block(V)
    )
    dg = _add_split_offsets(dg, _exclusive_sums(totals)[1], L)
    return dq, _fold_gate_grad(dg, g), dS_parts.sum(0).to(S_in.dtype)


class _SegmentSummary(torch.autograd.Function):
    @staticmethod
    def forward(ctx, k, v, g):
        _, after, total = _block_log_decays(g)
        S = summary_state(k=k, v=v, g=g, after=after)
        ctx.save_for_backward(k, v, g, after)
        log_A = total if g.dim() == 3 else total[:, None].expand(*k.shape[1:])
        return log_A, S

    @staticmethod
    def backward(ctx, d_log_A, dS):
        k, v, g, after = ctx.saved_tensors
        L, H, K = k.shape
        dS = dS.float().contiguous() if dS is not None else k.new_zeros(H, K, v.shape[-1], dtype=torch.float32)
        d_log_A = d_log_A.float() if d_log_A is not None else k.new_zeros(H, K, dtype=torch.float32)
        return summary_grads(k=k, v=v, g=g, after=after, dS=dS, d_log_A=d_log_A)


class _AddStateCorrection(torch.autograd.Function):
    @staticmethod
    def forward(ctx, o, q, g, S_in, scale):
        before = _block_log_decays(g)[0]
        correct_in_place(o=o, q=q, g=g, before=before, S_in=S_in, scale=scale)
        ctx.mark_dirty(o)
        ctx.save_for_backward(q, g, before, S_in)
        ctx.scale = scale
        return o

    @staticmethod
    def backward(ctx, do):
        q, g, before, S_in = ctx.saved_tensors
        do_seg = do[: q.shape[0]].contiguous()
        dq, dg, dS_in = correction_grads(q=q, g=g, before=before, S_in=S_in, do=do_seg, scale=ctx.scale)
        return do, dq, dg, dS_in, None


def segment_summary_triton(k: Tensor, v: Tensor, g: Tensor, start: int) -> tuple[Tensor, Tensor]:
    """:func:`baton.kernels.relay_ref.segment_summary_ref` in Triton."""
    k, v, g = (x[0, start:].contiguous() for x in (k, v, g))
    log_A, S = _SegmentSummary.apply(k, v, g)
    return (log_A if g.dim() == 3 else log_A[:, :1]), S


def add_state_correction_triton(o: Tensor, q: Tensor, g: Tensor, state: Tensor, end: int, scale: float) -> Tensor:
    """:func:`baton.kernels.relay_ref.add_state_correction_ref` in Triton, in place on ``o``."""
    q, g = (x[0, :end].contiguous() for x in (q, g))
    return _AddStateCorrection.apply(o[0].contiguous(), q, g, state.contiguous(), float(scale))[None]
