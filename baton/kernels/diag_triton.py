"""The signed diagonal (or 2×2 block-diagonal) recurrence ``h_t = a_t h_{t-1} + b_t`` of Newton's
solves in Triton: the GPU path of ``diag_ref.py:diag_scan_ref``, under the same contract
(initial states, final states, ``cu_seqlens`` resets, reversed).

The work per token is a few multiply-adds per unit, so the scan is bound by reading a and b.
Each document is cut into chunks of ``CHUNK`` tokens and the units into blocks of ``BLOCK``:

1. every (chunk, block) program scans its chunk from a zero state, keeping only the chunk's
   summary: the product of its transitions and the state it leaves (no stores per token);
2. one program per (document, block) walks the document's chunk summaries in order from its
   initial state: each chunk's entering state, and the document's final state;
3. every (chunk, block) program scans its chunk again from its entering state, storing h.

So a and b are read twice and h written once, with chunks × blocks programs in passes 1 and 3
however long a document is; pass 2 is sequential over chunks only. A reversed scan runs on the
token order flipped. fp32 inside.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from baton.kernels.diag_ref import sequence_bounds

CHUNK = 64  # tokens per chunk
BLOCK = 128  # units per program


@triton.jit
def _apply(a00, a01, a10, a11, x0, x1, PAIR: tl.constexpr):
    """A transition applied to a state: a 2×2 block times the pair (x0, x1), or a ∘ x0."""
    if PAIR:
        return a00 * x0 + a01 * x1, a10 * x0 + a11 * x1
    return a00 * x0, x1


@triton.jit
def _load_transition(A, t, units, mask, n_units, PAIR: tl.constexpr):
    if PAIR:
        base = A + (t * n_units + units) * 4
        a00 = tl.load(base, mask=mask, other=0.0).to(tl.float32)
        a01 = tl.load(base + 1, mask=mask, other=0.0).to(tl.float32)
        a10 = tl.load(base + 2, mask=mask, other=0.0).to(tl.float32)
        a11 = tl.load(base + 3, mask=mask, other=0.0).to(tl.float32)
        return a00, a01, a10, a11
    a = tl.load(A + t * n_units + units, mask=mask, other=0.0).to(tl.float32)
    return a, a, a, a


@triton.jit
def _scan_chunks_kernel(
    A, B, STATE_IN, SUM_A, SUM_S, H, CHUNK_START, CHUNK_END, n_units,
    BLOCK: tl.constexpr, PAIR: tl.constexpr, SUMMARY: tl.constexpr,
):  # fmt: skip
    """SUMMARY: each chunk from zero, storing its transition product and final state; else
    from its entering state, storing h at every token."""
    chunk = tl.program_id(0).to(tl.int64)
    units = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = units < n_units
    width = 2 if PAIR else 1
    start, end = tl.load(CHUNK_START + chunk), tl.load(CHUNK_END + chunk)
    x0 = tl.zeros([BLOCK], dtype=tl.float32)
    x1 = tl.zeros([BLOCK], dtype=tl.float32)
    # the product so far (identity), as a 2×2 block; the diagonal case uses p00 alone
    p00 = tl.full([BLOCK], 1.0, dtype=tl.float32)
    p01 = tl.zeros([BLOCK], dtype=tl.float32)
    p10 = tl.zeros([BLOCK], dtype=tl.float32)
    p11 = tl.full([BLOCK], 1.0, dtype=tl.float32)
    if not SUMMARY:
        x0 = tl.load(STATE_IN + (chunk * n_units + units) * width, mask=mask, other=0.0)
        if PAIR:
            x1 = tl.load(STATE_IN + (chunk * n_units + units) * 2 + 1, mask=mask, other=0.0)
    for t in range(start, end):
        a00, a01, a10, a11 = _load_transition(A, t, units, mask, n_units, PAIR)
        x0, x1 = _apply(a00, a01, a10, a11, x0, x1, PAIR)
        x0 += tl.load(B + (t * n_units + units) * width, mask=mask, other=0.0).to(tl.float32)
        if PAIR:
            x1 += tl.load(B + (t * n_units + units) * 2 + 1, mask=mask, other=0.0).to(tl.float32)
        if SUMMARY:
            if PAIR:
                p00, p10 = _apply(a00, a01, a10, a11, p00, p10, PAIR)
                p01, p11 = _apply(a00, a01, a10, a11, p01, p11, PAIR)
            else:
                p00 = a00 * p00
        else:
            tl.store(H + (t * n_units + units) * width, x0, mask=mask)
            if PAIR:
                tl.store(H + (t * n_units + units) * 2 + 1, x1, mask=mask)
    if SUMMARY:
        tl.store(SUM_S + (chunk * n_units + units) * width, x0, mask=mask)
        if PAIR:
            tl.store(SUM_S + (chunk * n_units + units) * 2 + 1, x1, mask=mask)
            base = SUM_A + (chunk * n_units + units) * 4
            tl.store(base, p00, mask=mask)
            tl.store(base + 1, p01, mask=mask)
            tl.store(base + 2, p10, mask=mask)
            tl.store(base + 3, p11, mask=mask)
        else:
            tl.store(SUM_A + chunk * n_units + units, p00, mask=mask)


@triton.jit
def _walk_chunks_kernel(
    SUM_A, SUM_S, INITIAL, STATE_IN, FINAL, DOC_CHUNKS, n_units,
    BLOCK: tl.constexpr, PAIR: tl.constexpr, HAS_INITIAL: tl.constexpr,
):  # fmt: skip
    """Each document's chunks in order: the state entering each, and the document's last."""
    doc = tl.program_id(0).to(tl.int64)
    units = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = units < n_units
    width = 2 if PAIR else 1
    x0 = tl.zeros([BLOCK], dtype=tl.float32)
    x1 = tl.zeros([BLOCK], dtype=tl.float32)
    if HAS_INITIAL:
        x0 = tl.load(INITIAL + (doc * n_units + units) * width, mask=mask, other=0.0).to(tl.float32)
        if PAIR:
            x1 = tl.load(INITIAL + (doc * n_units + units) * 2 + 1, mask=mask, other=0.0).to(tl.float32)
    for chunk in range(tl.load(DOC_CHUNKS + doc), tl.load(DOC_CHUNKS + doc + 1)):
        tl.store(STATE_IN + (chunk * n_units + units) * width, x0, mask=mask)
        if PAIR:
            tl.store(STATE_IN + (chunk * n_units + units) * 2 + 1, x1, mask=mask)
        a00, a01, a10, a11 = _load_transition(SUM_A, chunk, units, mask, n_units, PAIR)
        x0, x1 = _apply(a00, a01, a10, a11, x0, x1, PAIR)
        x0 += tl.load(SUM_S + (chunk * n_units + units) * width, mask=mask, other=0.0)
        if PAIR:
            x1 += tl.load(SUM_S + (chunk * n_units + units) * 2 + 1, mask=mask, other=0.0)
    tl.store(FINAL + (doc * n_units + units) * width, x0, mask=mask)
    if PAIR:
        tl.store(FINAL + (doc * n_units + units) * 2 + 1, x1, mask=mask)


def _chunks(bounds: list[int], device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """Chunk starts and ends (no chunk crosses a document boundary), each document's first chunk."""
    starts, ends, firsts = [], [], [0]
    for s, e in zip(bounds[:-1], bounds[1:]):
        cuts = list(range(s, e, CHUNK))
        starts += cuts
        ends += [min(c + CHUNK, e) for c in cuts]
        firsts.append(len(starts))
    as_tensor = lambda x: torch.tensor(x, dtype=torch.int64, device=device)  # noqa: E731
    return as_tensor(starts), as_tensor(ends), as_tensor(firsts)


def diag_scan_triton(
    a: Tensor,
    b: Tensor,
    initial_state: Tensor | None = None,
    cu_seqlens: Tensor | None = None,
    reverse: bool = False,
) -> tuple[Tensor, Tensor]:
    """Same arguments and results as :func:`~baton.kernels.diag_ref.diag_scan_ref`."""
    pair = a.dim() == b.dim() + 1
    Bsz, T = b.shape[:2]
    state_shape = b.shape[2:]
    units = state_shape.numel() // (2 if pair else 1)
    bounds = sequence_bounds(Bsz, T, cu_seqlens).tolist()
    a_flat = a.reshape(Bsz * T, -1).float()
    b_flat = b.reshape(Bsz * T, -1).float()
    initial = None if initial_state is None else initial_state.reshape(len(bounds) - 1, -1).float()
    if reverse:  # the same scan over the tokens (and documents) in the opposite order
        L = Bsz * T
        a_flat, b_flat = a_flat.flip(0), b_flat.flip(0)
        bounds = [L - x for x in bounds[::-1]]
        initial = None if initial is None else initial.flip(0)
    a_flat, b_flat = a_flat.contiguous(), b_flat.contiguous()
    starts, ends, firsts = _chunks(bounds, b.device)
    n_chunks, n_docs = len(starts), len(bounds) - 1
    chunk_states = b_flat.new_empty(n_chunks, b_flat.shape[1])
    sum_a = a_flat.new_empty(n_chunks, a_flat.shape[1])
    sum_s = b_flat.new_empty(n_chunks, b_flat.shape[1])
    final = b_flat.new_empty(n_docs, b_flat.shape[1])
    h = torch.empty_like(b_flat)
    blocks = triton.cdiv(units, BLOCK)
    if n_chunks:
        _scan_chunks_kernel[(n_chunks, blocks)](
            a_flat, b_flat, chunk_states, sum_a, sum_s, h, starts, ends, units, BLOCK, pair, True
        )
    _walk_chunks_kernel[(n_docs, blocks)](
        sum_a, sum_s, initial if initial is not None else final, chunk_states, final, firsts, units,
        BLOCK, pair, initial is not None,
    )  # fmt: skip
    if n_chunks:
        _scan_chunks_kernel[(n_chunks, blocks)](
            a_flat, b_flat, chunk_states, sum_a, sum_s, h, starts, ends, units, BLOCK, pair, False
        )
    if reverse:
        h, final = h.flip(0), final.flip(0)
    return h.reshape(b.shape).to(b.dtype), final.reshape(n_docs, *state_shape).to(b.dtype)
