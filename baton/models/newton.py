"""A nonlinear recurrence ``h_t = f(h_{t-1}, u_t)`` solved for all t at once by Newton's method
(ParaRNN, Danieli et al., arXiv 2510.21450), for cells whose Jacobian ``∂f/∂h`` is diagonal
(ParaGRU) or a 2×2 block per unit (ParaLSTM's state [c, h]).

Each iteration linearises around the current guess and solves the linear recurrence exactly:
``h_t = J_t h_{t-1} + (f(ĥ_{t-1}, u_t) − J_t ĥ_{t-1})`` with ``J_t = ∂f/∂h(ĥ_{t-1}, u_t)`` — a
diagonal scan (``kernels/diag_ref.py``), the recurrence baton relays across ranks. The first
guess is ``f`` applied to a zero state. After k iterations the first k tokens of every document
are exact; Newton's quadratic convergence makes a few iterations reach round-off on the cells'
usual contraction.

Backward is by implicit differentiation at the solution, not through the iterations: the
adjoint ``λ_t = ∂L/∂h_t + J_{t+1}ᵀ λ_{t+1}`` is the same scan run backwards, and the inputs' and
parameters' gradients are one vector-Jacobian product of ``f`` applied to every token at once.

Where the linear solves run is a :class:`WholeSequence` here; sequence parallelism hands in one
that relays each solve's state between ranks (``parallel/sequence.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.autograd import Function

from baton.kernels.diag_ref import sequence_bounds
from baton.kernels.dispatch import diag_scan


@dataclass(frozen=True)
class Cell:
    """A recurrent cell with diagonal recurrent weights. ``step(h_prev, u, *params)``: the next
    state of every token at once (h [B, T, H, D], or [B, T, H, D, 2] with ``pair``: a state of
    two per unit); ``jacobian`` (same arguments): ``∂ step / ∂h_prev``, h's shape (diagonal) or
    a 2×2 block per unit [..., 2, 2]. ``params``: the recurrent weights, each [H, D]."""

    step: Callable[..., Tensor]
    jacobian: Callable[..., Tensor]
    pair: bool = False

    def state_shape(self, params: tuple[Tensor, ...]) -> tuple[int, ...]:
        return (*params[0].shape, 2) if self.pair else tuple(params[0].shape)


def apply_jacobian(J: Tensor, x: Tensor) -> Tensor:
    """``J x`` per unit: elementwise for a diagonal Jacobian, a 2×2 block times a pair otherwise."""
    return (J @ x[..., None])[..., 0] if J.dim() == x.dim() + 1 else J * x


def transposed(J: Tensor, state: Tensor) -> Tensor:
    """Jᵀ per unit (a diagonal Jacobian is its own transpose)."""
    return J.mT if J.dim() == state.dim() + 1 else J


def check_structure(J: Tensor, state: Tensor, jacobian: Callable) -> None:
    """Newton's linear solves here are diagonal or 2×2 block-diagonal scans: refuse anything else."""
    diagonal = J.shape == state.shape
    blocks = J.shape == (*state.shape, 2) and state.shape[-1] == 2
    if not (diagonal or blocks):
        name = getattr(jacobian, "__name__", repr(jacobian))
        raise ValueError(
            f"{name} returned a Jacobian of shape {tuple(J.shape)} for states {tuple(state.shape)}: Newton's "
            "solves need a diagonal cell (the state's shape) or 2x2 blocks per unit ([..., 2, 2] for a [..., 2] state)"
        )


def previous_states(h: Tensor, initial_state: Tensor | None, cu_seqlens: Tensor | None) -> Tensor:
    """``h_{t-1}`` for every token: the token before within its sequence, or the sequence's
    initial state (zero without one) at its first token. h: [B, T, H, D(, 2)]."""
    B, T = h.shape[:2]
    prev = torch.cat([h.new_zeros(B, 1, *h.shape[2:]), h[:, :-1]], dim=1).reshape(B * T, *h.shape[2:])
    bounds = sequence_bounds(B, T, cu_seqlens)
    starts = bounds[:-1][bounds[1:] > bounds[:-1]]
    entering = h.new_zeros(len(starts), *h.shape[2:])
    if initial_state is not None:
        entering = initial_state[(bounds[1:] > bounds[:-1])].to(h.dtype)
    prev = prev.index_put((starts,), entering)  # out of place: the initial state's gradient flows
    return prev.reshape(h.shape)


def next_jacobians(J: Tensor) -> Tensor:
    """``J_{t+1}`` at every token (zero after the last; ``diag_scan`` cuts it at document ends)."""
    return torch.cat([J[:, 1:], J.new_zeros(J.shape[0], 1, *J.shape[2:])], dim=1)


class WholeSequence:
    """Newton's linear solves over sequences that are all in this process."""

    def first_guess(self, h: Tensor, initial_state: Tensor | None, cu_seqlens: Tensor | None) -> Tensor | None:
        """The states entering each sequence under the first guess ``h``: its initial states."""
        return initial_state

    def solve(
        self, J: Tensor, b: Tensor, initial_state: Tensor | None, cu_seqlens: Tensor | None, iteration: int
    ) -> tuple[Tensor, Tensor | None]:
        """``h_t = J_t h_{t-1} + b_t`` in every sequence, and the states that entered them."""
        return diag_scan(J, b, initial_state, cu_seqlens)[0], initial_state

    def adjoint(self, J: Tensor, d_h: Tensor, cu_seqlens: Tensor | None) -> Tensor:
        """``λ_t = ∂L/∂h_t + J_{t+1}ᵀ λ_{t+1}`` in every sequence."""
        return diag_scan(transposed(next_jacobians(J), d_h), d_h, None, cu_seqlens, reverse=True)[0]


def newton_solve(
    cell: Cell,
    u: Tensor,
    params: tuple[Tensor, ...],
    initial_state: Tensor | None,
    cu_seqlens: Tensor | None,
    iterations: int,
    solves: WholeSequence,
) -> tuple[Tensor, Tensor | None]:
    """The last Newton iterate h and the states that entered its sequences (no autograd)."""
    zeros = u.new_zeros(*u.shape[:2], *cell.state_shape(params))
    h = cell.step(previous_states(zeros, initial_state, cu_seqlens), u, *params)
    entering = solves.first_guess(h, initial_state, cu_seqlens)
    for k in range(iterations):
        prev = previous_states(h, entering, cu_seqlens)
        J = cell.jacobian(prev, u, *params)
        if k == 0:
            check_structure(J, prev, cell.jacobian)
        b = cell.step(prev, u, *params) - apply_jacobian(J, prev)
        h, entering = solves.solve(J, b, initial_state, cu_seqlens, k)
    return h, entering


class _NewtonRecurrence(Function):
    @staticmethod
    def forward(ctx, cell, iterations, cu_seqlens, solves, check, u, initial_state, *params):
        with torch.no_grad():
            h, entering = newton_solve(cell, u, params, initial_state, cu_seqlens, iterations, solves)
            residual = h.new_zeros(())
            if check:  # ‖h − f(h)‖ relative to ‖h‖ over this process's tokens
                residual = (h - cell.step(previous_states(h, entering, cu_seqlens), u, *params)).norm() / h.norm()
        ctx.cell, ctx.cu_seqlens, ctx.solves = cell, cu_seqlens, solves
        ctx.given_initial = initial_state is not None
        ctx.save_for_backward(h, u, entering, *params)
        ctx.mark_non_differentiable(residual)
        return h, residual

    @staticmethod
    def backward(ctx, d_h, _):
        h, u, entering, *params = ctx.saved_tensors
        cu = ctx.cu_seqlens
        with torch.no_grad():
            J = ctx.cell.jacobian(previous_states(h, entering, cu), u, *params)
            adjoint = ctx.solves.adjoint(J, d_h.contiguous(), cu)
        # The states that entered from outside (another rank's) are constants here: the relay
        # took their gradients back in the adjoint.
        inputs = [u, entering if ctx.given_initial else None, *params]
        leaves = [None if t is None else t.detach().requires_grad_() for t in inputs]
        with torch.enable_grad():  # f applied to every token at once, at the solution
            before = previous_states(h, leaves[1] if ctx.given_initial else entering, cu)
            out = ctx.cell.step(before, leaves[0], *leaves[2:])
            wanted = [t for t in leaves if t is not None]
            found = iter(torch.autograd.grad(out, wanted, adjoint, allow_unused=True))
        grads = [None if t is None else next(found) for t in leaves]
        return None, None, None, None, None, *grads


@torch.compiler.disable  # Python loops over iterations and documents: eager between a compiled block's graphs
def newton_recurrence(
    cell: Cell,
    u: Tensor,
    params: tuple[Tensor, ...],
    initial_state: Tensor | None = None,
    cu_seqlens: Tensor | None = None,
    iterations: int = 3,
    solves: WholeSequence | None = None,
    check: bool = False,
) -> tuple[Tensor, Tensor]:
    """h [B, T, H, D(, 2)] solving ``h_t = cell.step(h_{t-1}, u_t, *params)`` in every sequence
    (``cu_seqlens``: packed documents, B == 1; ``initial_state`` [N, H, D(, 2)]: each one's state
    before its first token), after ``iterations`` Newton steps from ``cell`` of a zero state;
    differentiable in u, the initial state and ``params`` (each shaped [H, D]) by implicit
    differentiation. Also ``‖h − f(h)‖ / ‖h‖`` with ``check`` (else zero)."""
    if iterations < 1:
        raise ValueError(f"model.newton_iterations must be >= 1, got {iterations}")
    solves = WholeSequence() if solves is None else solves
    return _NewtonRecurrence.apply(cell, iterations, cu_seqlens, solves, check, u, initial_state, *params)


def sequential_recurrence(
    cell: Cell, u: Tensor, params: tuple[Tensor, ...], initial_state: Tensor | None = None,
    cu_seqlens: Tensor | None = None,
) -> Tensor:  # fmt: skip
    """The reference: the cell applied token after token (autograd through the loop)."""
    B, T = u.shape[:2]
    state_shape = cell.state_shape(params)
    bounds = sequence_bounds(B, T, cu_seqlens).tolist()
    flat = u.reshape(B * T, *u.shape[2:])
    out = []
    for n, (start, end) in enumerate(zip(bounds[:-1], bounds[1:])):
        h = flat.new_zeros(state_shape) if initial_state is None else initial_state[n].to(u.dtype)
        for t in range(start, end):
            h = cell.step(h, flat[t], *params)
            out.append(h)
    return torch.stack(out).reshape(B, T, *state_shape)
