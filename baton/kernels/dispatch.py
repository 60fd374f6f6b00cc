"""The kernel ops' public functions: typed, documented, each one row of the table in
``registry.py`` (the Triton kernel on CUDA tensors, the PyTorch reference elsewhere;
``backend.py`` decides, and its ``kernel_backend`` context, config key ``train.kernels``,
forces either). The delta rule's ops run their references with the chunk-to-chunk state walk
in Triton (``delta_triton.py``); ``delta_step`` is its reference everywhere."""

from __future__ import annotations

from torch import Tensor

from baton.kernels.registry import OPS


def chunk_gla(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    scale: float | None = None,
    initial_state: Tensor | None = None,
    cu_seqlens: Tensor | None = None,
    chunk_size: int = 64,
) -> tuple[Tensor, Tensor]:
    """Chunked GLA scan, ``S_t = diag(exp(g_t)) S_{t-1} + k_t v_tᵀ``, ``o_t = scale · S_tᵀ q_t``:
    the Triton kernels on CUDA tensors, else :func:`~baton.kernels.gla_ref.chunk_gla_ref`.

    Args:
        q, k: [B, T, H, K]; v: [B, T, H, V].
        g: [B, T, H, K] log-space forget gates, <= 0.
        scale: multiplies q (default K ** -0.5).
        initial_state: [N, H, K, V], one per sequence (None: zeros).
        cu_seqlens: [N + 1] document boundaries of a packed stream (then B == 1); each
            document starts from its own initial state.
        chunk_size: tokens per chunk (the Triton kernels take 16, 32, 64 or 128).

    Returns:
        o [B, T, H, V] in v's dtype, and the final state of every sequence [N, H, K, V] in
        fp32 (fp64 for fp64 inputs).
    """
    return OPS["chunk_gla"](q, k, v, g, scale, initial_state, cu_seqlens, chunk_size)


def chunk_ssd(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    scale: float | None = None,
    initial_state: Tensor | None = None,
    cu_seqlens: Tensor | None = None,
    chunk_size: int = 64,
) -> tuple[Tensor, Tensor]:
    """Chunked SSD (Mamba2) scan, ``S_t = exp(g_t) S_{t-1} + k_t v_tᵀ`` with one gate per head
    and token: the Triton kernels on CUDA tensors, else :func:`~baton.kernels.ssd_ref.chunk_ssd_ref`.

    Args:
        q, k: [B, T, H, K] (Mamba2's C and B); v: [B, T, H, V] (its x · dt).
        g: [B, T, H] log-space gates, <= 0.
        scale, initial_state, cu_seqlens, chunk_size: as for :func:`chunk_gla`.

    Returns:
        o [B, T, H, V] in v's dtype, and the final state of every sequence [N, H, K, V] fp32.
    """
    return OPS["chunk_ssd"](q, k, v, g, scale, initial_state, cu_seqlens, chunk_size)


def segment_summary(k: Tensor, v: Tensor, g: Tensor, start: int) -> tuple[Tensor, Tensor]:
    """The last segment's log transition and zero-start state (see
    :func:`~baton.kernels.relay_ref.segment_summary_ref`)."""
    return OPS["segment_summary"](k, v, g, start)


def add_state_correction(o: Tensor, q: Tensor, g: Tensor, state: Tensor, end: int, scale: float) -> Tensor:
    """``o`` plus the incoming state's part of tokens ``:end`` (see
    :func:`~baton.kernels.relay_ref.add_state_correction_ref`); the Triton version adds in place."""
    return OPS["add_state_correction"](o, q, g, state, end, scale)


def recurrent_step(q: Tensor, k: Tensor, v: Tensor, g: Tensor, state: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """One token of the recurrence for a batch of streams, for decoding (see
    :func:`~baton.kernels.step_ref.recurrent_step_ref`): the output and the new state."""
    return OPS["recurrent_step"](q, k, v, g, state, scale)


def chunk_delta(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    beta: Tensor,
    scale: float | None = None,
    initial_state: Tensor | None = None,
    cu_seqlens: Tensor | None = None,
    chunk_size: int = 64,
) -> tuple[Tensor, Tensor]:
    """Chunked gated delta rule, ``S_t = exp(g_t) (I − β_t k_t k_tᵀ) S_{t-1} + β_t k_t v_tᵀ``
    (see :mod:`~baton.kernels.delta_ref`).

    Args:
        q, k: [B, T, H, K], L2-normalised by the caller; v: [B, T, H, V].
        g: [B, T, H] log-space gates, <= 0; beta: [B, T, H], in [0, 2].
        scale, initial_state, cu_seqlens, chunk_size: as for :func:`chunk_gla`.

    Returns:
        o [B, T, H, V] in v's dtype, and the final state of every sequence [N, H, K, V] fp32.
    """
    return OPS["chunk_delta"](q, k, v, g, beta, scale, initial_state, cu_seqlens, chunk_size)


def delta_summary(k: Tensor, v: Tensor, g: Tensor, beta: Tensor, start: int, chunk_size: int) -> tuple[Tensor, Tensor]:
    """The last segment's transition product [H, K, K] and zero-start state [H, K, V] (see
    :func:`~baton.kernels.delta_ref.delta_summary_ref`)."""
    return OPS["delta_summary"](k, v, g, beta, start, chunk_size)


def delta_correction(
    o: Tensor, q: Tensor, k: Tensor, g: Tensor, beta: Tensor, state: Tensor, end: int, scale: float, chunk_size: int
) -> Tensor:
    """``o`` plus the incoming state's part of tokens ``:end`` under the delta rule (see
    :func:`~baton.kernels.delta_ref.delta_correction_ref`)."""
    return OPS["delta_correction"](o, q, k, g, beta, state, end, scale, chunk_size)


def delta_step(
    q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, state: Tensor, scale: float
) -> tuple[Tensor, Tensor]:
    """One token of the delta rule for a batch of streams, for decoding (see
    :func:`~baton.kernels.delta_ref.delta_step_ref`)."""
    return OPS["delta_step"](q, k, v, g, beta, state, scale)


def norm_gate(x: Tensor, gate: Tensor, weight: Tensor, eps: float | None, norm_first: bool) -> Tensor:
    """RMSNorm with a SiLU output gate (see :func:`~baton.kernels.norm_gate_ref.norm_gate_ref`): one
    fused Triton kernel where the scans run in Triton, the reference's ops elsewhere."""
    return OPS["norm_gate"](x, gate, weight, eps, norm_first)


def diag_scan(
    a: Tensor, b: Tensor, initial_state: Tensor | None, cu_seqlens: Tensor | None, reverse: bool = False
) -> tuple[Tensor, Tensor]:
    """The signed diagonal (or 2×2 block-diagonal) recurrence of Newton's solves, no autograd:
    see :func:`~baton.kernels.diag_ref.diag_scan_ref`."""
    return OPS["diag_scan"](a, b, initial_state, cu_seqlens, reverse)


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    cu_seqlens: Tensor | None = None,
    prefix_k: Tensor | None = None,
    prefix_v: Tensor | None = None,
    scale: float | None = None,
    block: int = 128,
) -> tuple[Tensor, Tensor]:
    """Causal attention within each document of a packed stream, the first document optionally
    continuing a ``prefix`` of keys and values; the output and each query's log-sum-exp
    (:func:`~baton.kernels.attention_ref.attention_ref` has the shapes)."""
    return OPS["attention"](q, k, v, cu_seqlens, prefix_k, prefix_v, scale, block)


def prefix_attention(
    q: Tensor, prefix_k: Tensor, prefix_v: Tensor, scale: float | None = None, block: int = 128
) -> tuple[Tensor, Tensor]:
    """Queries over a prefix of keys they all see: the partial output and its log-sum-exp, to
    merge with the queries' own attention (:func:`~baton.kernels.attention_ref.merge_partials`)."""
    return OPS["prefix_attention"](q, prefix_k, prefix_v, scale, block)
