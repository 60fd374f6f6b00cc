"""The two small ops sequence parallelism adds around a chunked scan (reference versions).

``segment_summary``: the transition and zero-start state of the stream's last segment,
what a rank publishes to the ranks after it. ``state_correction``: the contribution of an
incoming state to the outputs of the stream's first segment, ``(Ã_t ∘ S_in)ᵀ q_t``.
Both work for per-key-dim gates g [1, T, H, K] and scalar gates g [1, T, H].
"""

from __future__ import annotations

import torch
from torch import Tensor

from baton.kernels.common import compute_dtype


def _gate(g: Tensor) -> Tensor:
    """Cumulative log gate as a multiplier of [*, H, K] keys/queries."""
    return g if g.dim() == 4 else g[..., None]


def segment_summary(k: Tensor, v: Tensor, g: Tensor, start: int) -> tuple[Tensor, Tensor]:
    """Over tokens ``start:`` of a packed stream (batch 1): the log of the cumulative
    transition, [H, K] or [H, 1], and the state produced from a zero start, [H, K, V]."""
    dt = compute_dtype(k)
    b = _gate(g)[0, start:].to(dt).cumsum(0)
    b_last = b[-1] if b.shape[0] else b.new_zeros(b.shape[1:])
    weighted_k = k[0, start:].to(dt) * (b_last - b).exp()
    return b_last, torch.einsum("lhk,lhv->hkv", weighted_k, v[0, start:].to(dt))


def state_correction(q: Tensor, g: Tensor, state: Tensor, end: int, scale: float) -> Tensor:
    """``scale * (q_t ∘ exp(b_t))ᵀ state`` for tokens ``:end``, with ``b_t`` the cumulative
    log gate from the stream start through t: [1, end, H, V]."""
    dt = compute_dtype(q)
    b = _gate(g)[0, :end].to(dt).cumsum(0)
    decayed_q = q[0, :end].to(dt) * b.exp() * scale
    return torch.einsum("lhk,hkv->lhv", decayed_q, state.to(dt))[None]
