"""The diagonal linear recurrence ``h_t = a_t ∘ h_{t-1} + b_t`` with signed coefficients, in plain
PyTorch: each Newton iteration of a ParaGRU layer is one (``models/newton.py``), its backward
the same recurrence reversed. Block-diagonal too: with ``a`` of 2×2 blocks per unit (a CIFG
LSTM's state [c, h], ParaLSTM), ``h_t = a_t h_{t-1} + b_t`` per unit with ``h`` a pair.

Unlike the gated scans' log-space gates, ``a_t`` may be negative or above one (a nonlinear
cell's Jacobian), so nothing is factored through ``exp`` of cumulative sums: the scan composes
pairs ``(A, B)`` associatively, ``(A₂, B₂) ∘ (A₁, B₁) = (A₂ A₁, A₂ B₁ + B₂)``, in ⌈log₂ T⌉ rounds of
doubling distance (Hillis–Steele), every round one vectorised pass with no division. A document
start is a reset: its coefficient is replaced by zero and its document's initial state enters
through ``b``.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _flat(x: Tensor) -> Tensor:
    return x.reshape(x.shape[0] * x.shape[1], *x.shape[2:])


def diag_scan_ref(
    a: Tensor,
    b: Tensor,
    initial_state: Tensor | None = None,
    cu_seqlens: Tensor | None = None,
    reverse: bool = False,
) -> tuple[Tensor, Tensor]:
    """``h_t = a_t ∘ h_{t-1} + b_t`` over every sequence (``reverse``: ``h_t = a_t ∘ h_{t+1} + b_t``,
    from each sequence's end).

    Args:
        a, b: [B, T, H, D]; or, for 2×2 blocks, a [B, T, H, D, 2, 2] and b [B, T, H, D, 2].
        initial_state: [N, H, D(, 2)], the state before each sequence's first token (its last,
            reverse); None: zeros.
        cu_seqlens: [N + 1] document boundaries of a packed stream (then B == 1).

    Returns:
        h (b's shape) and each sequence's final state [N, H, D(, 2)] (its initial state where
        it has no tokens), in the inputs' dtype.
    """
    blocks = a.dim() == b.dim() + 1

    def apply(A: Tensor, X: Tensor) -> Tensor:  # A ∘ X, or each block A times its pair X
        return (A @ X[..., None])[..., 0] if blocks else A * X

    B, T = a.shape[:2]
    bounds = torch.arange(B + 1) * T if cu_seqlens is None else cu_seqlens.to("cpu", torch.long)
    if cu_seqlens is not None and B != 1:
        raise ValueError(f"packed input (cu_seqlens) needs batch size 1, got {B}")
    starts, ends = bounds[:-1], bounds[1:]
    nonempty = ends > starts
    first = (ends - 1 if reverse else starts)[nonempty]  # where each sequence's state enters
    A, X = _flat(a).clone(), _flat(b).clone()
    if initial_state is not None:
        X[first] = X[first] + apply(A[first], initial_state[nonempty].to(X.dtype))
    A[first] = 0
    if reverse:
        A, X = A.flip(0), X.flip(0)
    step = 1
    while step < A.shape[0]:  # after this round each position holds the composition of 2·step tokens
        A_prev = torch.cat([A.new_zeros(step, *A.shape[1:]), A[:-step]])
        X_prev = torch.cat([X.new_zeros(step, *X.shape[1:]), X[:-step]])
        A, X = (A @ A_prev if blocks else A * A_prev), apply(A, X_prev) + X
        step *= 2
    if reverse:
        X = X.flip(0)
    last = (starts if reverse else ends - 1)[nonempty]
    final = X.new_zeros(len(starts), *X.shape[1:]) if initial_state is None else initial_state.to(X.dtype).clone()
    final[nonempty] = X[last]
    return X.reshape(b.shape), final
