"""The two small ops sequence parallelism adds around a chunked scan (reference versions;
the Triton ones are in ``relay_triton.py``).

``segment_summary_ref``: the transition and zero-start state of the stream's last segment,
what a rank publishes to the ranks after it. ``add_state_correction_ref``: adds the
contribution of an incoming state to the outputs of the stream's first segment,
``(Ã_t ∘ S_in)ᵀ q_t``. Both work for per-key-dim gates g [1, T, H, K] and scalar gates
g [1, T, H].
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from baton.kernels.common import compute_dtype


def _gate(g: Tensor) -> Tensor:
    """Log gate as a multiplier of [*, H, K] keys/queries."""
    return g if g.dim() == 4 else g[..., None]


def segment_summary_ref(k: Tensor, v: Tensor, g: Tensor, start: int) -> tuple[Tensor, Tensor]:
    """Over tokens ``start:`` of a packed stream (batch 1): the log of the cumulative
    transition, [H, K] or [H, 1], and the state produced from a zero start, [H, K, V]."""
    dt = compute_dtype(k)
    gate = _gate(g)[0, start:].to(dt)
    # The decay from token t to the end, Σ_{s>t} g_s, summed from the end rather than taken
    # as a difference of two long prefix sums (which loses the small ones to rounding).
    suffix = gate.flip(0).cumsum(0).flip(0)
    after = nn.functional.pad(suffix[1:], (0, 0, 0, 0, 0, 1))
    log_A = suffix[0] if suffix.shape[0] else gate.new_zeros(gate.shape[1:])
    weighted_k = k[0, start:].to(dt) * after.exp()
    return log_A, torch.einsum("lhk,lhv->hkv", weighted_k, v[0, start:].to(dt))


def add_state_correction_ref(o: Tensor, q: Tensor, g: Tensor, state: Tensor, end: int, scale: float) -> Tensor:
    """``o`` with ``scale * (q_t ∘ exp(b_t))ᵀ state`` added for tokens ``:end``, ``b_t`` the
    cumulative log gate from the stream start through t."""
    dt = compute_dtype(q)
    b = _gate(g)[0, :end].to(dt).cumsum(0)
    decayed_q = q[0, :end].to(dt) * b.exp() * scale
    fix = torch.einsum("lhk,hkv->lhv", decayed_q, state.to(dt))[None].to(o.dtype)
    return torch.cat([o[:, :end] + fix, o[:, end:]], dim=1)
