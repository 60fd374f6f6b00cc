"""Input handling shared by every scan op: batch vs packed documents, dtypes, checks."""

from __future__ import annotations

import torch
from torch import Tensor

from baton.kernels.layout import ChunkLayout, build_layout, to_chunks

TRITON_CHUNK_SIZES = (16, 32, 64, 128)  # the Triton scans' chunks are power-of-two tiles of 16 rows or more


def compute_dtype(x: Tensor) -> torch.dtype:
    """State and accumulation precision: fp32, or fp64 when the inputs are fp64 (tests)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def flatten_batch(q: Tensor, cu_seqlens: Tensor | None, initial_state: Tensor | None) -> tuple[Tensor, int]:
    """Return ``cu_seqlens`` of the flattened [B*T] stream and the number of sequences.

    Without ``cu_seqlens`` every batch row is one sequence; with it the batch must be 1 and
    the stream holds ``len(cu_seqlens) - 1`` packed documents.
    """
    B, T = q.shape[:2]
    if cu_seqlens is None:
        cu_seqlens = torch.arange(B + 1, dtype=torch.long) * T
    else:
        if B != 1:
            raise ValueError(f"packed input (cu_seqlens) needs batch size 1, got {B}")
        cu_seqlens = cu_seqlens.to("cpu", torch.long)
        if int(cu_seqlens[-1]) != T:
            raise ValueError(f"cu_seqlens ends at {int(cu_seqlens[-1])} but the stream has {T} tokens")
    n_seqs = len(cu_seqlens) - 1
    if initial_state is not None and initial_state.shape[0] != n_seqs:
        raise ValueError(f"initial_state has {initial_state.shape[0]} states for {n_seqs} sequences")
    return cu_seqlens, n_seqs


def chunked_inputs(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    scale: float | None,
    initial_state: Tensor | None,
    cu_seqlens: Tensor | None,
    chunk_size: int,
) -> tuple[list[Tensor], ChunkLayout]:
    """q (scaled), k, v, g in the compute dtype, laid out as document-aligned chunks
    [n_chunks, chunk_size, H, ...]; and the layout (to map outputs back)."""
    B, T = q.shape[:2]
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    cu, _ = flatten_batch(q, cu_seqlens, initial_state)
    dt = compute_dtype(q)
    layout = build_layout(cu, chunk_size, q.device)
    qc, kc, vc, gc = (to_chunks(x.reshape(B * T, *x.shape[2:]).to(dt), layout) for x in (q, k, v, g))
    return [qc * scale, kc, vc, gc], layout
