"""One public function per op: the Triton kernel on CUDA tensors, the PyTorch reference
elsewhere (``backend.py`` decides; its ``kernel_backend`` context, config key ``train.kernels``,
forces either). The delta rule's ops
(``chunk_delta``, ``delta_summary``, ``delta_correction``) run their references with the
chunk-to-chunk state walk in Triton (``delta_triton.py``); ``delta_step`` is its reference."""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import Tensor
from torch.autograd import Function

from baton.kernels import ops
from baton.kernels.backend import check_assembler, use_triton
from baton.kernels.delta_ref import delta_correction_ref, delta_step_ref, delta_summary_ref
from baton.kernels.diag_ref import diag_scan_ref
from baton.kernels.norm import norm_gate_ref
from baton.kernels.relay_ref import add_state_correction_ref, segment_summary_ref
from baton.kernels.step_ref import recurrent_step_ref


def _use_triton(x: Tensor) -> bool:
    """:func:`~baton.kernels.backend.use_triton` for the ops that launch their kernels here
    (eagerly), with the assembler checked; the custom ops check it when they run."""
    if not use_triton(x):
        return False
    check_assembler(x)
    return True


class _Recomputed(Function):
    """A reference op that keeps only its inputs for backward and runs again there, under the
    autocast state of its forward, to differentiate that run. (``torch.utils.checkpoint`` does
    the same but imports torch._dynamo at its first call, a second per process.)"""

    @staticmethod
    def forward(ctx, fn: Callable, *args):
        ctx.fn, ctx.tensors = fn, [i for i, a in enumerate(args) if isinstance(a, Tensor)]
        ctx.others = [None if isinstance(a, Tensor) else a for a in args]
        ctx.save_for_backward(*(args[i] for i in ctx.tensors))
        device = args[ctx.tensors[0]].device.type
        ctx.autocast = device, torch.is_autocast_enabled(device), torch.get_autocast_dtype(device)
        with torch.no_grad():
            return fn(*args)

    @staticmethod
    def backward(ctx, *grads):
        args, wanted = list(ctx.others), []
        for i, t in zip(ctx.tensors, ctx.saved_tensors):
            args[i] = t.detach().requires_grad_(ctx.needs_input_grad[i + 1])
            if ctx.needs_input_grad[i + 1]:
                wanted.append(i)
        device, enabled, dtype = ctx.autocast
        with torch.enable_grad(), torch.autocast(device, dtype=dtype, enabled=enabled):
            outputs = ctx.fn(*args)
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        pairs = [(o, g) for o, g in zip(outputs, grads) if g is not None and o.requires_grad]
        found = torch.autograd.grad(
            [o for o, _ in pairs], [args[i] for i in wanted], [g for _, g in pairs], allow_unused=True
        )
        result = [None] * len(args)
        for i, grad in zip(wanted, found):
            result[i] = grad
        return (None, *result)


def _reference(fn: Callable, *args) -> Tensor | tuple[Tensor, ...]:
    """A reference op, keeping only its inputs for backward and running again there: its einsums
    would keep copies of their operands whose number and size depend on torch's einsum internals;
    this way the CPU path keeps what ``baton memory`` predicts, at the cost of one more forward
    of the op."""
    return _Recomputed.apply(fn, *args) if torch.is_grad_enabled() else fn(*args)


def _scan(kind: str, q, k, v, g, beta, scale, initial_state, cu_seqlens, chunk_size) -> tuple[Tensor, Tensor]:
    """A chunked scan through its custom op (``ops.py``): the Triton scans (GLA and SSD, one
    implementation for both gate layouts), else the reference of ``kind``."""
    scale = float(q.shape[-1] ** -0.5 if scale is None else scale)
    if use_triton(q) and kind != "delta":
        return ops.scan_triton(q, k, v, g, initial_state, cu_seqlens, scale, chunk_size)[:2]
    walk = kind == "delta" and use_triton(q)
    return ops.scan_ref(kind, q, k, v, g, beta, initial_state, cu_seqlens, scale, chunk_size, walk)


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
    return _scan("gla", q, k, v, g, None, scale, initial_state, cu_seqlens, chunk_size)


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
    return _scan("ssd", q, k, v, g, None, scale, initial_state, cu_seqlens, chunk_size)


def segment_summary(k: Tensor, v: Tensor, g: Tensor, start: int) -> tuple[Tensor, Tensor]:
    """The last segment's log transition and zero-start state (see :func:`segment_summary_ref`)."""
    if _use_triton(k):
        from baton.kernels.relay_triton import segment_summary_triton

        return segment_summary_triton(k, v, g, start)
    return _reference(segment_summary_ref, k, v, g, start)


def add_state_correction(o: Tensor, q: Tensor, g: Tensor, state: Tensor, end: int, scale: float) -> Tensor:
    """``o`` plus the incoming state's part of tokens ``:end`` (see :func:`add_state_correction_ref`);
    the Triton version adds in place."""
    if _use_triton(q):
        from baton.kernels.relay_triton import add_state_correction_triton

        return add_state_correction_triton(o, q, g, state, end, scale)
    return _reference(add_state_correction_ref, o, q, g, state, end, scale)


def recurrent_step(q: Tensor, k: Tensor, v: Tensor, g: Tensor, state: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """One token of the recurrence for a batch of streams, for decoding (see
    :func:`~baton.kernels.step_ref.recurrent_step_ref`): the output and the new state."""
    if _use_triton(q):
        from baton.kernels.step_triton import recurrent_step_triton

        return recurrent_step_triton(q, k, v, g, state, scale)
    return recurrent_step_ref(q, k, v, g, state, scale)


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
    return _scan("delta", q, k, v, g, beta, scale, initial_state, cu_seqlens, chunk_size)


def delta_summary(k: Tensor, v: Tensor, g: Tensor, beta: Tensor, start: int, chunk_size: int) -> tuple[Tensor, Tensor]:
    """The last segment's transition product [H, K, K] and zero-start state [H, K, V] (see
    :func:`~baton.kernels.delta_ref.delta_summary_ref`)."""
    return _reference(_on_walk(delta_summary_ref, k), k, v, g, beta, start, chunk_size)


def delta_correction(
    o: Tensor, q: Tensor, k: Tensor, g: Tensor, beta: Tensor, state: Tensor, end: int, scale: float, chunk_size: int
) -> Tensor:
    """``o`` plus the incoming state's part of tokens ``:end`` under the delta rule (see
    :func:`~baton.kernels.delta_ref.delta_correction_ref`)."""
    return _reference(_on_walk(delta_correction_ref, q), o, q, k, g, beta, state, end, scale, chunk_size)


def _on_walk(op: Callable, x: Tensor) -> Callable:
    """A delta-rule op with its chunk-to-chunk state walk in Triton where the Triton path runs:
    its batched per-chunk work stays in PyTorch (cuBLAS), see ``delta_triton.py``."""
    if not _use_triton(x):
        return op
    from baton.kernels.delta_triton import matrix_state_walk

    return functools.partial(op, state_walk=matrix_state_walk)


def delta_step(
    q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, state: Tensor, scale: float
) -> tuple[Tensor, Tensor]:
    """One token of the delta rule for a batch of streams, for decoding (see
    :func:`~baton.kernels.delta_ref.delta_step_ref`)."""
    return delta_step_ref(q, k, v, g, beta, state, scale)


def norm_gate(x: Tensor, gate: Tensor, weight: Tensor, eps: float | None, norm_first: bool) -> Tensor:
    """RMSNorm with a SiLU output gate (see :func:`~baton.kernels.norm.norm_gate_ref`): one
    fused Triton kernel where the scans run in Triton, the reference's ops elsewhere."""
    if not use_triton(x):
        return norm_gate_ref(x, gate, weight, eps, norm_first)
    eps = torch.finfo(x.dtype).eps if eps is None else eps
    with torch.autocast(x.device.type, enabled=False):  # fp32 inside whatever autocast says, as rms_norm
        return ops.norm_gate(x, gate, weight, eps, norm_first)[0]


def diag_scan(
    a: Tensor, b: Tensor, initial_state: Tensor | None, cu_seqlens: Tensor | None, reverse: bool = False
) -> tuple[Tensor, Tensor]:
    """The signed diagonal (or 2×2 block-diagonal) recurrence of Newton's solves, no autograd:
    see :func:`~baton.kernels.diag_ref.diag_scan_ref`."""
    if _use_triton(b):
        from baton.kernels.diag_triton import diag_scan_triton

        return diag_scan_triton(a, b, initial_state, cu_seqlens, reverse)
    return diag_scan_ref(a, b, initial_state, cu_seqlens, reverse)
