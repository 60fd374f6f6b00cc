"""Every kernel op, one row each: its plain PyTorch reference (the CPU path and the ground
truth), its Triton implementation, a token-by-token loop where one states the math plainest,
how the reference path differentiates, whether it runs through custom ops (whose fake
functions ``ops.py`` registers with them), and a small example. The public functions
(``dispatch.py``) call the rows; ``compile_offline`` compiles every row's Triton
implementation for GPUs that are not here; ``tests/kernels/test_registry.py`` walks every row
naive → reference → Triton.

Adding an op is one row plus its two implementations, the same signature for both:

    # kernels/my_op_ref.py: def my_op_ref(x: Tensor, g: Tensor) -> Tensor  (its docstring: the contract)
    # kernels/my_op_triton.py: def my_op_triton(x: Tensor, g: Tensor) -> Tensor  (its own backward)
    "my_op": KernelOp(my_op_ref, "baton.kernels.my_op_triton:my_op_triton", "recompute", example=_my_op_example),

and a typed public function in ``dispatch.py`` with the docstring users read,
``def my_op(x, g): return OPS["my_op"](x, g)``.

``backward``, of the reference path: ``autograd`` (as written), ``recompute`` (keeps only its
inputs and runs again in backward, ``rerun.py``), ``scan op`` (the same through the custom op
``baton::scan_ref``, which ``torch.compile`` takes as one node, ``ops.py``), ``none`` (no
autograd: decoding, Newton's solves). A Triton implementation brings its own backward.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from baton.kernels.attention_ref import attention_ref, naive_attention
from baton.kernels.backend import check_assembler, use_triton
from baton.kernels.conv import causal_conv1d, conv_step
from baton.kernels.delta_ref import chunk_delta_ref, delta_correction_ref, delta_step_ref, delta_summary_ref
from baton.kernels.diag_ref import diag_scan_ref
from baton.kernels.gla_ref import chunk_gla_ref
from baton.kernels.naive import naive_delta_recurrence, naive_recurrence
from baton.kernels.norm_gate_ref import norm_gate_ref
from baton.kernels.ops import chunk_delta_on_walk, chunk_scan_triton, norm_gate_fused, reference_scan
from baton.kernels.relay_ref import add_state_correction_ref, segment_summary_ref
from baton.kernels.rerun import recomputed
from baton.kernels.ssd_ref import chunk_ssd_ref
from baton.kernels.step_ref import recurrent_step_ref


@dataclass(frozen=True)
class Shape:
    """An example's sizes: tokens, heads, key and value dims per head, chunk, gate layout
    (``gla``: one per key dim, ``ssd``: one per head)."""

    T: int = 40
    H: int = 2
    K: int = 16
    V: int = 16
    chunk: int = 16
    gates: str = "gla"


Call = tuple[tuple, dict]  # positional and keyword arguments
TILING = ("chunk_size", "block")  # keywords that change how an op tiles its work, not what it computes
Example = Callable[[Shape, torch.dtype, torch.Generator], list[Call]]  # the calls that exercise an op


@dataclass(frozen=True)
class KernelOp:
    reference: Callable
    # "module:function", imported where it first runs; the function itself for the custom ops of
    # ops.py (always imported, and torch.compile traces no import); None: the reference everywhere
    triton: str | Callable | None
    backward: str  # of the reference path: autograd | recompute | scan op | none
    naive: Callable | None = None  # the same contract plainest (one token at a time), without TILING keywords
    example: Example | None = None
    compile_dims: tuple[int, int] = (128, 128)  # key and value dims compile_offline compiles at
    # The op runs through torch.library custom ops (ops.py) that torch.compile takes whole, each
    # with its fake (meta) function registered beside it (test_registry checks their shapes
    # against real runs): the choice here must stay a plain decision it can trace, and the
    # ops check the assembler when they run.
    custom_op: bool = False

    def triton_function(self) -> Callable:
        if callable(self.triton):
            return self.triton
        module, name = self.triton.split(":")
        return getattr(importlib.import_module(module), name)

    def __call__(self, *args, **kwargs):
        """The Triton implementation where the backend decides so for the first argument's
        device, else the reference (as ``backward`` says)."""
        x = args[0]
        if self.triton is not None and use_triton(x):
            if not self.custom_op:
                check_assembler(x)
            return self.triton_function()(*args, **kwargs)
        if self.backward == "recompute":
            return recomputed(self.reference, *args, **kwargs)
        if self.backward == "scan op":
            return reference_scan(self.reference, *args, **kwargs)
        return self.reference(*args, **kwargs)


def _randn(gen: torch.Generator, dtype: torch.dtype, *shape: int) -> Tensor:
    return torch.randn(*shape, generator=gen).to(dtype)


def _gate(s: Shape, gen: torch.Generator, layout: str | None = None) -> Tensor:
    """Log gates <= 0, per key dim or per head."""
    per_key = (layout or s.gates) == "gla"
    return -torch.rand(1, s.T, s.H, *((s.K,) if per_key else ()), generator=gen)


def _documents(s: Shape) -> Tensor:
    return torch.tensor([0, s.T // 3, s.T])  # two documents, the first cut inside a chunk


def _scan_example(layout: str) -> Example:
    def example(s: Shape, dtype: torch.dtype, gen: torch.Generator) -> list[Call]:
        q, k = _randn(gen, dtype, 1, s.T, s.H, s.K), _randn(gen, dtype, 1, s.T, s.H, s.K)
        v, g = _randn(gen, dtype, 1, s.T, s.H, s.V), _gate(s, gen, layout)
        h0 = _randn(gen, torch.float32, 2, s.H, s.K, s.V)
        return [((q, k, v, g), {"initial_state": h0, "cu_seqlens": _documents(s), "chunk_size": s.chunk})]

    return example


def _delta_inputs(s: Shape, dtype: torch.dtype, gen: torch.Generator) -> tuple[Tensor, ...]:
    q, k = _randn(gen, dtype, 1, s.T, s.H, s.K), F.normalize(torch.randn(1, s.T, s.H, s.K, generator=gen), dim=-1)
    v, g = _randn(gen, dtype, 1, s.T, s.H, s.V), _gate(s, gen, "ssd")
    beta = 2 * torch.rand(1, s.T, s.H, generator=gen)  # negative eigenvalues too
    return q, k.to(dtype), v, g, beta


def _delta_scan_example(s: Shape, dtype: torch.dtype, gen: torch.Generator) -> list[Call]:
    h0 = _randn(gen, torch.float32, 2, s.H, s.K, s.V)
    return [(_delta_inputs(s, dtype, gen), {"initial_state": h0, "cu_seqlens": _documents(s), "chunk_size": s.chunk})]


def _summary_example(s: Shape, dtype: torch.dtype, gen: torch.Generator) -> list[Call]:
    k, v, g = _randn(gen, dtype, 1, s.T, s.H, s.K), _randn(gen, dtype, 1, s.T, s.H, s.V), _gate(s, gen)
    return [((k, v, g, s.T // 3), {})]


def _correction_example(s: Shape, dtype: torch.dtype, gen: torch.Generator) -> list[Call]:
    o, q, g = _randn(gen, dtype, 1, s.T, s.H, s.V), _randn(gen, dtype, 1, s.T, s.H, s.K), _gate(s, gen)
    return [((o, q, g, _randn(gen, torch.float32, s.H, s.K, s.V), s.T // 3, s.K**-0.5), {})]


def _step_example(s: Shape, dtype: torch.dtype, gen: torch.Generator) -> list[Call]:
    B = 3  # streams
    q, k, v = (_randn(gen, dtype, B, s.H, d) for d in (s.K, s.K, s.V))
    g = _gate(s, gen)[0, :B]
    return [((q, k, v, g, _randn(gen, torch.float32, B, s.H, s.K, s.V), s.K**-0.5), {})]


def _delta_summary_example(s: Shape, dtype: torch.dtype, gen: torch.Generator) -> list[Call]:
    _, k, v, g, beta = _delta_inputs(s, dtype, gen)
    return [((k, v, g, beta, s.T // 3, s.chunk), {})]


def _delta_correction_example(s: Shape, dtype: torch.dtype, gen: torch.Generator) -> list[Call]:
    q, k, v, g, beta = _delta_inputs(s, dtype, gen)
    state = _randn(gen, torch.float32, s.H, s.K, s.V)
    return [((torch.zeros_like(v), q, k, g, beta, state, s.T // 3, s.K**-0.5, s.chunk), {})]


def _delta_step_example(s: Shape, dtype: torch.dtype, gen: torch.Generator) -> list[Call]:
    q, k, v, g, beta = (t[0, :3] for t in _delta_inputs(s, dtype, gen))
    return [((q, k, v, g, beta, _randn(gen, torch.float32, 3, s.H, s.K, s.V), s.K**-0.5), {})]


def _norm_gate_example(s: Shape, dtype: torch.dtype, gen: torch.Generator) -> list[Call]:
    """Norm then gate per head (GLA's and GDN's order), gate then norm over a Mamba2 layer's
    inner width (16 heads' worth)."""
    calls = []
    for width, norm_first in ((s.V, True), (16 * s.V, False)):
        x, gate = _randn(gen, dtype, s.T, width), _randn(gen, dtype, s.T, width)
        calls.append(((x, gate, 1 + 0.1 * torch.randn(width, generator=gen), 1e-6, norm_first), {}))
    return calls


def _diag_example(s: Shape, dtype: torch.dtype, gen: torch.Generator) -> list[Call]:
    """ParaGRU's diagonal solve forward, ParaLSTM's 2x2 blocks reversed (its adjoint)."""
    calls = []
    for pair in ((), (2,)):
        a = torch.rand(1, s.T, s.H, s.K, *pair, *pair, generator=gen) - 0.5  # signed Jacobians
        b = torch.randn(1, s.T, s.H, s.K, *pair, generator=gen)
        calls.append(((a, b, torch.randn(2, s.H, s.K, *pair, generator=gen), _documents(s), bool(pair)), {}))
    return calls


def _attention_example(s: Shape, dtype: torch.dtype, gen: torch.Generator) -> list[Call]:
    """Grouped-query (twice the query heads), three documents, the first continuing a prefix of
    5 tokens; blocks smaller than a document."""
    q = _randn(gen, dtype, 1, s.T, 2 * s.H, s.K)
    k, v = _randn(gen, dtype, 1, s.T, s.H, s.K), _randn(gen, dtype, 1, s.T, s.H, s.V)
    prefix_k, prefix_v = _randn(gen, dtype, 1, 5, s.H, s.K), _randn(gen, dtype, 1, 5, s.H, s.V)
    cu = torch.tensor([0, s.T // 3, s.T // 3 + 7, s.T])
    return [((q, k, v, cu, prefix_k, prefix_v), {"block": s.chunk // 2})]


def _conv_example(s: Shape, dtype: torch.dtype, gen: torch.Generator) -> list[Call]:
    x, weight = _randn(gen, dtype, 1, s.T, s.V), torch.randn(s.V, 4, generator=gen)
    return [((x, weight, torch.randn(s.V, generator=gen), _documents(s)), {})]


def _conv_step_example(s: Shape, dtype: torch.dtype, gen: torch.Generator) -> list[Call]:
    x, window = _randn(gen, dtype, 3, s.V), _randn(gen, dtype, 3, 3, s.V)
    return [((x, window, torch.randn(s.V, 4, generator=gen), torch.randn(s.V, generator=gen)), {})]


GDN_HEAD = (256, 512)  # Gated DeltaNet's 1.3B head: the delta rule's walk at its largest tiles

OPS: dict[str, KernelOp] = {
    "chunk_gla": KernelOp(
        chunk_gla_ref,
        chunk_scan_triton,
        "scan op",
        naive_recurrence,
        _scan_example("gla"),
        custom_op=True,
    ),
    "chunk_ssd": KernelOp(
        chunk_ssd_ref,
        chunk_scan_triton,
        "scan op",
        naive_recurrence,
        _scan_example("ssd"),
        custom_op=True,
    ),
    "chunk_delta": KernelOp(
        chunk_delta_ref,
        chunk_delta_on_walk,
        "scan op",
        naive_delta_recurrence,
        _delta_scan_example,
        GDN_HEAD,
        custom_op=True,
    ),  # fmt: skip
    "segment_summary": KernelOp(
        segment_summary_ref, "baton.kernels.relay_triton:segment_summary_triton", "recompute", example=_summary_example
    ),
    "add_state_correction": KernelOp(
        add_state_correction_ref,
        "baton.kernels.relay_triton:add_state_correction_triton",
        "recompute",
        example=_correction_example,
    ),  # fmt: skip
    "recurrent_step": KernelOp(
        recurrent_step_ref, "baton.kernels.step_triton:recurrent_step_triton", "none", example=_step_example
    ),
    "delta_summary": KernelOp(
        delta_summary_ref,
        "baton.kernels.delta_triton:delta_summary_on_walk",
        "recompute",
        example=_delta_summary_example,
        compile_dims=GDN_HEAD,
    ),  # fmt: skip
    "delta_correction": KernelOp(
        delta_correction_ref,
        "baton.kernels.delta_triton:delta_correction_on_walk",
        "recompute",
        example=_delta_correction_example,
        compile_dims=GDN_HEAD,
    ),  # fmt: skip
    "delta_step": KernelOp(delta_step_ref, None, "none", example=_delta_step_example),
    "norm_gate": KernelOp(norm_gate_ref, norm_gate_fused, "autograd", example=_norm_gate_example, custom_op=True),
    "diag_scan": KernelOp(diag_scan_ref, "baton.kernels.diag_triton:diag_scan_triton", "none", example=_diag_example),
    "causal_conv1d": KernelOp(causal_conv1d, None, "autograd", example=_conv_example),
    "attention": KernelOp(attention_ref, None, "autograd", naive_attention, _attention_example),
    "conv_step": KernelOp(conv_step, None, "none", example=_conv_step_example),
}
