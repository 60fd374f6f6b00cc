"""A nonlinear recurrence ``h_t = f(h_{t-1}, u_t)`` solved for all t at once by Newton's method
(ParaRNN, Danieli et al., arXiv 2510.21450), for cells whose Jacobian ``∂f/∂h`` is diagonal.

Each iteration linearises around the current guess and solves the linear recurrence exactly:
``h_t = J_t ∘ h_{t-1} + (f(ĥ_{t-1}, u_t) − J_t ∘ ĥ_{t-1})`` with ``J_t = ∂f/∂h(ĥ_{t-1}, u_t)`` — a
diagonal scan (``kernels/diag_ref.py``), the recurrence baton relays across ranks. The first
guess is ``f`` applied to a zero state. After k iterations the first k tokens of every document
are exact; Newton's quadratic convergence makes a few iterations reach round-off on the cells'
usual contraction.

Backward is by implicit differentiation at the solution, not through the iterations: the
adjoint ``λ_t = ∂L/∂h_t + J_{t+1} ∘ λ_{t+1}`` is the same diagonal scan run backwards, and the
inputs' and parameters' gradients are one vector-Jacobian product of ``f`` applied to every
token at once.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.autograd import Function

from baton.kernels.diag_ref import diag_scan_ref

Cell = Callable[..., Tensor]  # f(h_prev [B, T, H, D], u, *params) -> h [B, T, H, D]
Jacobian = Callable[..., Tensor]  # the diagonal of ∂f/∂h_prev, same arguments, same shape


def previous_states(h: Tensor, initial_state: Tensor | None, cu_seqlens: Tensor | None) -> Tensor:
    """``h_{t-1}`` for every token: the token before within its sequence, or the sequence's
    initial state (zero without one) at its first token. h: [B, T, H, D]."""
    B, T = h.shape[:2]
    prev = torch.cat([h.new_zeros(B, 1, *h.shape[2:]), h[:, :-1]], dim=1).reshape(B * T, *h.shape[2:])
    bounds = torch.arange(B + 1) * T if cu_seqlens is None else cu_seqlens.to("cpu", torch.long)
    starts = bounds[:-1][bounds[1:] > bounds[:-1]]
    entering = h.new_zeros(len(starts), *h.shape[2:])
    if initial_state is not None:
        entering = initial_state[(bounds[1:] > bounds[:-1])].to(h.dtype)
    prev = prev.index_put((starts,), entering)  # out of place: the initial state's gradient flows
    return prev.reshape(h.shape)


def newton_solve(
    cell: Cell,
    jacobian: Jacobian,
    u: Tensor,
    params: tuple[Tensor, ...],
    initial_state: Tensor | None,
    cu_seqlens: Tensor | None,
    iterations: int,
    state_shape: tuple[int, ...],
) -> Tensor:
    """The Newton iterates' last: h [B, T, *state_shape] (no autograd)."""
    zeros = u.new_zeros(*u.shape[:2], *state_shape)
    h = cell(previous_states(zeros, initial_state, cu_seqlens), u, *params)
    for _ in range(iterations):
        prev = previous_states(h, initial_state, cu_seqlens)
        J = jacobian(prev, u, *params)
        h, _ = diag_scan_ref(J, cell(prev, u, *params) - J * prev, initial_state, cu_seqlens)
    return h


class _NewtonRecurrence(Function):
    @staticmethod
    def forward(ctx, cell, jacobian, iterations, cu_seqlens, u, initial_state, *params):
        state_shape = (*params[0].shape,) if params else u.shape[2:]
        with torch.no_grad():
            h = newton_solve(cell, jacobian, u, params, initial_state, cu_seqlens, iterations, state_shape)
        ctx.cell, ctx.jacobian, ctx.cu_seqlens = cell, jacobian, cu_seqlens
        ctx.save_for_backward(h, u, initial_state, *params)
        return h

    @staticmethod
    def backward(ctx, d_h):
        h, u, initial_state, *params = ctx.saved_tensors
        cu = ctx.cu_seqlens
        with torch.no_grad():  # the adjoint: λ_t = ∂L/∂h_t + J_{t+1} ∘ λ_{t+1}, a reverse scan
            J = ctx.jacobian(previous_states(h, initial_state, cu), u, *params)
            J_next = torch.cat([J[:, 1:], J.new_zeros(J.shape[0], 1, *J.shape[2:])], dim=1)
            adjoint, _ = diag_scan_ref(J_next, d_h, None, cu, reverse=True)
        inputs = [u, initial_state, *params]
        leaves = [None if t is None else t.detach().requires_grad_() for t in inputs]
        with torch.enable_grad():  # f applied to every token at once, at the solution
            out = ctx.cell(previous_states(h, leaves[1], cu), leaves[0], *leaves[2:])
            wanted = [t for t in leaves if t is not None]
            found = iter(torch.autograd.grad(out, wanted, adjoint, allow_unused=True))
        grads = [None if t is None else next(found) for t in leaves]
        return None, None, None, None, *grads


def newton_recurrence(
    cell: Cell,
    jacobian: Jacobian,
    u: Tensor,
    params: tuple[Tensor, ...],
    initial_state: Tensor | None = None,
    cu_seqlens: Tensor | None = None,
    iterations: int = 3,
) -> Tensor:
    """h [B, T, H, D] solving ``h_t = cell(h_{t-1}, u_t, *params)`` in every sequence
    (``cu_seqlens``: packed documents, B == 1; ``initial_state`` [N, H, D]: each one's state
    before its first token), after ``iterations`` Newton steps from ``cell`` of a zero state;
    differentiable in u, the initial state and ``params`` (each shaped [H, D]) by implicit
    differentiation."""
    return _NewtonRecurrence.apply(cell, jacobian, iterations, cu_seqlens, u, initial_state, *params)
