"""The chunked scans as ``torch.library`` custom ops, so that ``torch.compile`` takes a block
whole: each scan is one opaque node with a fake (shape-only) implementation and its own
backward, and the Python inside (the document layout read from ``cu_seqlens``, the kernel
launches) never reaches the tracer. :mod:`baton.kernels.dispatch` picks the op per call.

- ``baton::scan_ref`` runs a PyTorch reference (``kind``: ``gla``, ``ssd`` or ``delta``) and
  keeps only its inputs (it computes in fp32 whatever autocast says, as the kernels
  accumulate); its backward op runs the reference again and differentiates that run (what
  activation checkpointing would do; an op cannot hold an autograd graph from its forward to
  its backward). This keeps what ``baton memory`` predicts whatever einsum keeps.
  For ``delta``, ``walk`` puts the chunk-to-chunk state walk in Triton (the GPU path).
- ``baton::scan_triton`` runs the Triton GLA / SSD scans and also returns what their backward
  reads: the cumulative gates, the state entering each chunk and the intra-chunk scores, laid
  out in document-aligned chunks whose number depends on ``cu_seqlens``' values (an unbacked
  size to the tracer).
- ``baton::norm_gate``: the fused RMSNorm with a SiLU output gate (``norm_gate_triton.py``).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable

import torch
from torch import Tensor
from torch.library import custom_op

from baton.kernels.backend import check_assembler
from baton.kernels.common import compute_dtype
from baton.kernels.delta_ref import chunk_delta_ref
from baton.kernels.gla_ref import chunk_gla_ref
from baton.kernels.rerun import rerun_vjp
from baton.kernels.ssd_ref import chunk_ssd_ref

REFERENCES = {"gla": chunk_gla_ref, "ssd": chunk_ssd_ref, "delta": chunk_delta_ref}


def _sequences(q: Tensor, cu_seqlens: Tensor | None) -> int:
    return q.shape[0] if cu_seqlens is None else cu_seqlens.shape[0] - 1


@contextlib.contextmanager
def _autograd_inside(device: str):
    """Autograd within an op's implementation, in fp32 whatever autocast says. Custom ops run
    below autograd: its dispatch keys are excluded there, so a reference run inside would
    record nothing to differentiate. This lifts that exclusion for the recompute
    (``torch.func.vjp`` would avoid it, but cannot pass through the Triton state walk's
    autograd.Function, nor a custom op with autograd)."""
    excluded = torch._C._dispatch_tls_local_exclude_set()
    autograd = torch._C._dispatch_keyset_full() - torch._C._after_autograd_keyset
    with torch._C._ForceDispatchKeyGuard(torch._C._dispatch_tls_local_include_set(), excluded - autograd):
        with torch.autocast(device, enabled=False):
            yield


def _primals(*inputs: Tensor | None) -> list[Tensor]:
    """The differentiable inputs given, in the order the backward ops return their gradients."""
    return [t for t in inputs if t is not None]


def _reference_of_primals(
    kind: str, walk: bool, has_beta: bool, has_state: bool, scale: float, cu_seqlens: Tensor | None, chunk_size: int
) -> Callable[..., tuple[Tensor, Tensor]]:
    reference = REFERENCES[kind]
    if walk:
        from baton.kernels.delta_triton import matrix_state_walk

        reference = functools.partial(reference, state_walk=matrix_state_walk)

    def run(*primals: Tensor) -> tuple[Tensor, Tensor]:
        q, k, v, g, *rest = primals
        beta = rest.pop(0) if has_beta else None
        initial_state = rest.pop(0) if has_state else None
        gates = (g, beta) if has_beta else (g,)
        return reference(q, k, v, *gates, scale, initial_state, cu_seqlens, chunk_size)

    return run


@custom_op("baton::scan_ref", mutates_args=())
def scan_ref(
    kind: str,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    beta: Tensor | None,
    initial_state: Tensor | None,
    cu_seqlens: Tensor | None,
    scale: float,
    chunk_size: int,
    walk: bool,
) -> tuple[Tensor, Tensor]:
    if walk:
        check_assembler(q)
    run = _reference_of_primals(kind, walk, beta is not None, initial_state is not None, scale, cu_seqlens, chunk_size)
    with torch.autocast(q.device.type, enabled=False):
        return run(*_primals(q, k, v, g, beta, initial_state))


@scan_ref.register_fake
def _(kind, q, k, v, g, beta, initial_state, cu_seqlens, scale, chunk_size, walk):
    final = q.new_empty(_sequences(q, cu_seqlens), q.shape[2], k.shape[-1], v.shape[-1], dtype=compute_dtype(q))
    return torch.empty_like(v), final


@custom_op("baton::scan_ref_backward", mutates_args=())
def scan_ref_backward(
    kind: str,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    beta: Tensor | None,
    initial_state: Tensor | None,
    cu_seqlens: Tensor | None,
    scale: float,
    chunk_size: int,
    walk: bool,
    d_out: Tensor,
    d_final: Tensor,
) -> list[Tensor]:
    run = _reference_of_primals(kind, walk, beta is not None, initial_state is not None, scale, cu_seqlens, chunk_size)
    primals = _primals(q, k, v, g, beta, initial_state)
    context = _autograd_inside(q.device.type)
    return rerun_vjp(run, primals, range(len(primals)), (d_out, d_final), context, materialize=True)


@scan_ref_backward.register_fake
def _(kind, q, k, v, g, beta, initial_state, cu_seqlens, scale, chunk_size, walk, d_out, d_final):
    return [torch.empty_like(t) for t in _primals(q, k, v, g, beta, initial_state)]


def _save_inputs(ctx, inputs, output) -> None:
    kind, q, k, v, g, beta, initial_state, cu_seqlens, scale, chunk_size, walk = inputs
    ctx.save_for_backward(q, k, v, g, beta, initial_state, cu_seqlens)
    ctx.settings = kind, scale, chunk_size, walk


def _scan_ref_grads(ctx, d_out: Tensor, d_final: Tensor | None):
    q, k, v, g, beta, initial_state, cu_seqlens = ctx.saved_tensors
    kind, scale, chunk_size, walk = ctx.settings
    if d_final is None:
        d_final = q.new_zeros(_sequences(q, cu_seqlens), q.shape[2], k.shape[-1], v.shape[-1], dtype=compute_dtype(q))
    grads = iter(scan_ref_backward(
        kind, q, k, v, g, beta, initial_state, cu_seqlens, scale, chunk_size, walk, d_out, d_final
    ))  # fmt: skip
    inputs = (q, k, v, g, beta, initial_state)
    return None, *(None if t is None else next(grads) for t in inputs), None, None, None, None


scan_ref.register_autograd(_scan_ref_grads, setup_context=_save_inputs)


@custom_op("baton::scan_triton", mutates_args=())
def scan_triton(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    initial_state: Tensor | None,
    cu_seqlens: Tensor | None,
    scale: float,
    chunk_size: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    from baton.kernels.gla_triton import scan_forward

    check_assembler(q)
    o, final, saved = scan_forward(q, k, v, g, initial_state, cu_seqlens, scale, chunk_size)
    # o may be a view of the chunked result: detached, autograd sees a plain output (which the
    # relay's correction may then add into in place)
    return o.detach(), final, *saved


@scan_triton.register_fake
def _(q, k, v, g, initial_state, cu_seqlens, scale, chunk_size):
    H, K, V, C = q.shape[2], q.shape[3], v.shape[-1], chunk_size
    chunks = torch.library.get_ctx().new_dynamic_size()
    gates = g.new_empty(chunks, C, *g.shape[2:], dtype=torch.float32)  # [n, C, H(, K)]
    states_in = k.new_empty(chunks, H, K, V)
    scores = q.new_empty(chunks, H, C, C, dtype=torch.float32)
    final = q.new_empty(_sequences(q, cu_seqlens), H, K, V, dtype=torch.float32)
    return torch.empty_like(v), final, gates, states_in, scores


@custom_op("baton::scan_triton_backward", mutates_args=())
def scan_triton_backward(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    initial_state: Tensor | None,
    cu_seqlens: Tensor | None,
    scale: float,
    chunk_size: int,
    gates: Tensor,
    states_in: Tensor,
    scores: Tensor,
    g_dtype: torch.dtype,
    d_out: Tensor,
    d_final: Tensor | None,
) -> list[Tensor]:
    from baton.kernels.gla_triton import scan_backward

    saved = gates, states_in, scores
    grads = scan_backward(q, k, v, initial_state, cu_seqlens, scale, chunk_size, saved, g_dtype, d_out, d_final)
    return [t for t in grads if t is not None]


@scan_triton_backward.register_fake
def _(q, k, v, initial_state, cu_seqlens, scale, chunk_size, gates, states_in, scores, g_dtype, d_out, d_final):
    d_gates = q.new_empty(*q.shape[:2], *gates.shape[2:], dtype=g_dtype)
    return [torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), d_gates, *_primals(initial_state)]


def _save_triton(ctx, inputs, output) -> None:
    q, k, v, g, initial_state, cu_seqlens, scale, chunk_size = inputs
    # g itself is not kept: the backward reads its cumulative sums (saved among the outputs)
    ctx.save_for_backward(q, k, v, initial_state, cu_seqlens, *output[2:])
    ctx.settings = scale, chunk_size
    ctx.g_dtype = g.dtype
    ctx.mark_non_differentiable(*output[2:])


def _scan_triton_grads(ctx, d_out: Tensor, d_final: Tensor | None, *_):
    q, k, v, initial_state, cu_seqlens, *saved = ctx.saved_tensors
    d_out = torch.zeros_like(v) if d_out is None else d_out
    grads = scan_triton_backward(
        q, k, v, initial_state, cu_seqlens, *ctx.settings, *saved, ctx.g_dtype, d_out, d_final
    )  # fmt: skip
    d_initial = grads[4] if initial_state is not None else None
    return *grads[:4], d_initial, None, None, None


scan_triton.register_autograd(_scan_triton_grads, setup_context=_save_triton)


def chunk_scan_triton(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    scale: float | None = None,
    initial_state: Tensor | None = None,
    cu_seqlens: Tensor | None = None,
    chunk_size: int = 64,
) -> tuple[Tensor, Tensor]:
    """GLA (g [B, T, H, K]) or SSD (g [B, T, H]) chunked scan; the contract of
    :func:`baton.kernels.gla_ref.chunk_gla_ref`. Needs ``chunk_size`` in ``TRITON_CHUNK_SIZES``.
    Differentiable through the custom op ``baton::scan_triton``."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    o, final, *_ = scan_triton(q, k, v, g, initial_state, cu_seqlens, float(scale), chunk_size)
    return o, final


def reference_scan(reference: Callable, *args, **kwargs) -> tuple[Tensor, Tensor]:
    """``reference`` (a chunked scan of ``REFERENCES``, called as it is) through the custom op
    ``baton::scan_ref``: it keeps only its inputs and runs again in backward."""
    call = inspect.signature(reference).bind(*args, **kwargs)
    call.apply_defaults()
    a = call.arguments
    kind = next(kind for kind, fn in REFERENCES.items() if fn is reference)
    scale = float(a["q"].shape[-1] ** -0.5 if a["scale"] is None else a["scale"])
    return scan_ref(
        kind, a["q"], a["k"], a["v"], a["g"], a.get("beta"), a["initial_state"], a["cu_seqlens"], scale,
        a["chunk_size"], False,
    )  # fmt: skip


def chunk_delta_on_walk(
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
    """The GPU path of the delta rule: its reference with the chunk-to-chunk state walk in
    Triton (``delta_triton.py``; the batched per-chunk work stays in cuBLAS), through
    ``baton::scan_ref``."""
    scale = float(q.shape[-1] ** -0.5 if scale is None else scale)
    return scan_ref("delta", q, k, v, g, beta, initial_state, cu_seqlens, scale, chunk_size, True)


def norm_gate_fused(x: Tensor, gate: Tensor, weight: Tensor, eps: float | None, norm_first: bool) -> Tensor:
    """:func:`~baton.kernels.norm_gate_ref.norm_gate_ref` in one Triton kernel (``baton::norm_gate``),
    in fp32 inside whatever autocast says, as the reference's rms_norm."""
    eps = torch.finfo(x.dtype).eps if eps is None else eps
    with torch.autocast(x.device.type, enabled=False):
        return norm_gate(x, gate, weight, eps, norm_first)[0]


@custom_op("baton::norm_gate", mutates_args=())
def norm_gate(x: Tensor, gate: Tensor, weight: Tensor, eps: float, norm_first: bool) -> tuple[Tensor, Tensor]:
    """RMSNorm with a SiLU output gate, one Triton kernel (``norm_gate_triton.py``): the
    output and every row's statistic (kept for backward)."""
    from baton.kernels.norm_gate_triton import norm_gate_forward

    check_assembler(x)
    return norm_gate_forward(x, gate, weight, eps, norm_first)


@norm_gate.register_fake
def _(x, gate, weight, eps, norm_first):
    out = x.new_empty(x.shape, dtype=torch.promote_types(x.dtype, gate.dtype))
    return out, x.new_empty(x.numel() // x.shape[-1], dtype=torch.float32)


@custom_op("baton::norm_gate_backward", mutates_args=())
def norm_gate_backward(
    x: Tensor, gate: Tensor, weight: Tensor, rstd: Tensor, d_out: Tensor, norm_first: bool
) -> tuple[Tensor, Tensor, Tensor]:
    from baton.kernels.norm_gate_triton import norm_gate_backward as backward

    return backward(x, gate, weight, rstd, d_out, norm_first)


@norm_gate_backward.register_fake
def _(x, gate, weight, rstd, d_out, norm_first):
    return torch.empty_like(x), torch.empty_like(gate), torch.empty_like(weight)


def _save_norm_gate(ctx, inputs, output) -> None:
    x, gate, weight, _, norm_first = inputs
    ctx.save_for_backward(x, gate, weight, output[1])
    ctx.norm_first = norm_first
    ctx.mark_non_differentiable(output[1])


def _norm_gate_grads(ctx, d_out: Tensor, _):
    x, gate, weight, rstd = ctx.saved_tensors
    return *norm_gate_backward(x, gate, weight, rstd, d_out, ctx.norm_first), None, None


norm_gate.register_autograd(_norm_gate_grads, setup_context=_save_norm_gate)
