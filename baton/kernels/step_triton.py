"""One token of the recurrence in Triton, for decoding (the GPU path of ``step_ref.py``, same
contract): each program holds one head's state for a tile of value columns, walks the key dim
in tiles, and updates the state and reads the output in one pass over it.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from baton.kernels.tiles import load, store
from baton.kernels.tuning import block


@triton.jit
def _step_kernel(
    q, k, v, g, state, new_state, o, scale,
    K: tl.constexpr, V: tl.constexpr, GW: tl.constexpr, GSK: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
):  # fmt: skip
    """S ← exp(g) ∘ S + k vᵀ and o = scale · Sᵀ q for one (stream, head) and value tile."""
    i_bh, i_v = tl.program_id(0).to(tl.int64), tl.program_id(1).to(tl.int64)
    cols = i_v * BV + tl.arange(0, BV)
    b_v = tl.load(v + i_bh * V + cols, mask=cols < V, other=0.0).to(tl.float32)
    acc = tl.zeros([BV], dtype=tl.float32)
    for i_k in range(tl.cdiv(K, BK)):
        rows = i_k * BK + tl.arange(0, BK)
        b_g = tl.load(g + i_bh * GW + rows * GSK, mask=rows < K, other=0.0).to(tl.float32)
        b_k = tl.load(k + i_bh * K + rows, mask=rows < K, other=0.0).to(tl.float32)
        b_q = tl.load(q + i_bh * K + rows, mask=rows < K, other=0.0).to(tl.float32)
        b_s = load(state + i_bh * K * V, K, V, V, 1, i_k * BK, i_v * BV, BK, BV)
        b_s = tl.exp(b_g)[:, None] * b_s + b_k[:, None] * b_v[None, :]
        store(new_state + i_bh * K * V, K, V, V, 1, i_k * BK, i_v * BV, BK, BV, b_s)
        acc += tl.sum(b_q[:, None] * b_s, axis=0)
    tl.store(o + i_bh * V + cols, (acc * scale).to(o.dtype.element_ty), mask=cols < V)


def recurrent_step_triton(
    q: Tensor, k: Tensor, v: Tensor, g: Tensor, state: Tensor, scale: float
) -> tuple[Tensor, Tensor]:
    """:func:`baton.kernels.step_ref.recurrent_step_ref` in Triton (the state fp32)."""
    B, H, K = q.shape
    V = v.shape[-1]
    q, k, v, g = (x.contiguous() for x in (q, k, v, g))
    state = state.float().contiguous()
    new_state, o = torch.empty_like(state), v.new_empty(B, H, V)
    gate = {"GW": 1, "GSK": 0} if g.dim() == 2 else {"GW": K, "GSK": 1}  # a scalar gate read as broadcast
    BV = block(V)
    _step_kernel[(B * H, triton.cdiv(V, BV))](
        q, k, v, g, state, new_state, o, float(scale), K=K, V=V, BK=block(K), BV=BV, **gate
    )
    return o, new_state
