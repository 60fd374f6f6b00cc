"""The ParaLSTM cell (ParaRNN, Danieli et al., arXiv 2510.21450): an LSTM with coupled input and
forget gates (CIFG) whose recurrent weights are diagonal. Its state per unit is the pair
``[c, h]``, so the Jacobian ``∂[c, h]_t / ∂[c, h]_{t-1}`` is a 2×2 block per unit and each Newton
iteration of ``models/newton.py`` is one block-diagonal scan.

Per head and unit, from the input's pre-activations ``u = (u_f, u_o, u_c)`` and the diagonal
recurrent weights ``(d_f, d_o, d_c)`` (each acting on the previous ``h``):

    f = σ(u_f + d_f h),  o = σ(u_o + d_o h),  c̃ = tanh(u_c + d_c h)
    c' = f c + (1 − f) c̃,  h' = o tanh(c')
"""

from __future__ import annotations

import torch
from torch import Tensor

from baton.models.newton import Cell


def _gates(state: Tensor, u: Tensor, d_f: Tensor, d_o: Tensor, d_c: Tensor) -> tuple[Tensor, ...]:
    c, h = state.unbind(-1)
    u_f, u_o, u_c = u.unbind(-2)
    f, o = torch.sigmoid(u_f + d_f * h), torch.sigmoid(u_o + d_o * h)
    candidate = torch.tanh(u_c + d_c * h)
    c_new = f * c + (1 - f) * candidate
    return c, f, o, candidate, c_new, torch.tanh(c_new)


def lstm_cell(state: Tensor, u: Tensor, d_f: Tensor, d_o: Tensor, d_c: Tensor) -> Tensor:
    """One step for every token at once: state [B, T, H, D, 2] ([c, h] before), u [B, T, H, 3, D];
    the recurrent weights [H, D]. Returns the new [c, h]."""
    _, _, o, _, c_new, tanh_c = _gates(state, u, d_f, d_o, d_c)
    return torch.stack([c_new, o * tanh_c], dim=-1)


def lstm_jacobian(state: Tensor, u: Tensor, d_f: Tensor, d_o: Tensor, d_c: Tensor) -> Tensor:
    """``∂ lstm_cell / ∂state`` per unit, a 2×2 block [[∂c'/∂c, ∂c'/∂h], [∂h'/∂c, ∂h'/∂h]]:
    [B, T, H, D, 2, 2]."""
    c, f, o, candidate, _, tanh_c = _gates(state, u, d_f, d_o, d_c)
    dc_dc = f
    dc_dh = f * (1 - f) * d_f * (c - candidate) + (1 - f) * (1 - candidate * candidate) * d_c
    squash = o * (1 - tanh_c * tanh_c)  # ∂h'/∂c'
    dh_dc = squash * dc_dc
    dh_dh = o * (1 - o) * d_o * tanh_c + squash * dc_dh
    return torch.stack([torch.stack([dc_dc, dc_dh], -1), torch.stack([dh_dc, dh_dh], -1)], -2)


LSTM = Cell(lstm_cell, lstm_jacobian, pair=True)
