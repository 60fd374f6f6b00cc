"""One token of the recurrence, for decoding (the reference; the Triton one is in
``step_triton.py``): ``S ← exp(g) ∘ S + k vᵀ``, ``o = scale · Sᵀ q``.

The chunked scans' math one token at a time, for a batch of independent streams: GLA's
per-key-dim gate g [B, H, K] or SSD's scalar gate g [B, H]; q, k [B, H, K], v [B, H, V],
the state [B, H, K, V] in fp32 (fp64 for fp64 inputs).
"""

from __future__ import annotations

import torch
from torch import Tensor

from baton.kernels.common import compute_dtype


def recurrent_step_ref(
    q: Tensor, k: Tensor, v: Tensor, g: Tensor, state: Tensor, scale: float
) -> tuple[Tensor, Tensor]:
    """The output [B, H, V] in v's dtype and the new state [B, H, K, V]."""
    dt = compute_dtype(q)
    gate = (g if g.dim() == 3 else g[..., None]).to(dt)
    S = gate.exp()[..., None] * state.to(dt) + k.to(dt)[..., None] * v.to(dt)[..., None, :]
    o = scale * torch.einsum("bhk,bhkv->bhv", q.to(dt), S)
    return o.to(v.dtype), S
