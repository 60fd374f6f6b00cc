"""The ParaGRU cell (ParaRNN, Danieli et al., arXiv 2510.21450): a GRU whose recurrent weights
are diagonal, so that its Jacobian ``∂h_t/∂h_{t-1}`` is diagonal and each Newton iteration of
``models/newton.py`` is one diagonal scan.

Per head and hidden unit, from the input's pre-activations ``u = (u_z, u_r, u_c)`` (the block-
diagonal input projection's output) and the diagonal recurrent weights ``(d_z, d_r, d_c)``:

    z = σ(u_z + d_z h),  r = σ(u_r + d_r h),  c = tanh(u_c + d_c (r h)),  h' = (1 − z) h + z c
"""

from __future__ import annotations

import torch
from torch import Tensor

from baton.models.newton import Cell


def _gates(h: Tensor, u: Tensor, d_z: Tensor, d_r: Tensor, d_c: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    u_z, u_r, u_c = u.unbind(-2)
    z, r = torch.sigmoid(u_z + d_z * h), torch.sigmoid(u_r + d_r * h)
    return z, r, torch.tanh(u_c + d_c * (r * h))


def gru_cell(h: Tensor, u: Tensor, d_z: Tensor, d_r: Tensor, d_c: Tensor) -> Tensor:
    """One step for every token at once: h [B, T, H, D] the states before, u [B, T, H, 3, D];
    the recurrent weights [H, D]."""
    z, _, c = _gates(h, u, d_z, d_r, d_c)
    return (1 - z) * h + z * c


def gru_jacobian(h: Tensor, u: Tensor, d_z: Tensor, d_r: Tensor, d_c: Tensor) -> Tensor:
    """The diagonal of ``∂ gru_cell / ∂h`` at h (same arguments): signed, not bounded by one."""
    z, r, c = _gates(h, u, d_z, d_r, d_c)
    dz = z * (1 - z) * d_z
    dc = (1 - c * c) * d_c * (r + h * r * (1 - r) * d_r)
    return (1 - z) + (c - h) * dz + z * dc


GRU = Cell(gru_cell, gru_jacobian)
