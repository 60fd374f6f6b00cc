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

Parts = list[Tensor]  # a 2×2 block as its four entries [a00, a01, a10, a11], a pair as its two,
# each its own contiguous tensor (elementwise products of contiguous tensors are far faster than
# batched 2×2 matrix products); a diagonal coefficient or state is a list of one


def _parts(x: Tensor, entries: int) -> Parts:
    """[B, T, ...] flattened to tokens, split into its ``entries`` (4: a 2×2 block, 2: a pair)."""
    flat = x.reshape(x.shape[0] * x.shape[1], *x.shape[2:])
    if entries == 1:
        return [flat]
    units = flat.shape[: flat.dim() - (2 if entries == 4 else 1)]
    return [p.contiguous() for p in flat.reshape(*units, entries).unbind(-1)]


def _apply(A: Parts, X: Parts) -> Parts:
    """A X: a 2×2 block times a pair, or a diagonal product."""
    if len(A) == 1:
        return [A[0] * X[0]]
    return [A[0] * X[0] + A[1] * X[1], A[2] * X[0] + A[3] * X[1]]


def _compose(A: Parts, B: Parts) -> Parts:
    """A B: the later transition on the left."""
    if len(A) == 1:
        return [A[0] * B[0]]
    return [A[0] * B[0] + A[1] * B[2], A[0] * B[1] + A[1] * B[3], A[2] * B[0] + A[3] * B[2], A[2] * B[1] + A[3] * B[3]]


def _shifted(P: Parts, step: int) -> Parts:
    """Each entry ``step`` tokens later (zeros before)."""
    return [torch.cat([p.new_zeros(step, *p.shape[1:]), p[:-step]]) for p in P]


def sequence_bounds(batch: int, length: int, cu_seqlens: Tensor | None) -> Tensor:
    """Each sequence's token boundaries in the flattened [B·T] tokens (on the CPU): the packed
    documents' ``cu_seqlens``, or the B rows of T tokens."""
    return torch.arange(batch + 1) * length if cu_seqlens is None else cu_seqlens.to("cpu", torch.long)


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
    pair = a.dim() == b.dim() + 1
    B, T = a.shape[:2]
    bounds = sequence_bounds(B, T, cu_seqlens)
    if cu_seqlens is not None and B != 1:
        raise ValueError(f"packed input (cu_seqlens) needs batch size 1, got {B}")
    starts, ends = bounds[:-1], bounds[1:]
    nonempty = ends > starts
    first = (ends - 1 if reverse else starts)[nonempty]  # where each sequence's state enters
    A, X = _parts(a, 4 if pair else 1), _parts(b, 2 if pair else 1)
    A, X = [p.clone() for p in A], [p.clone() for p in X]
    if initial_state is not None:
        entering = _parts(initial_state[nonempty].to(X[0].dtype)[None], 2 if pair else 1)
        for x, add in zip(X, _apply([p[first] for p in A], entering)):
            x[first] += add
    for p in A:
        p[first] = 0
    if reverse:
        A, X = [p.flip(0) for p in A], [p.flip(0) for p in X]
    step = 1
    while step < A[0].shape[0]:  # after this round each position holds the composition of 2·step tokens
        A_prev, X_prev = _shifted(A, step), _shifted(X, step)
        X = [x + y for x, y in zip(_apply(A, X_prev), X)]
        A = _compose(A, A_prev)
        step *= 2
    if reverse:
        X = [p.flip(0) for p in X]
    h = torch.stack(X, -1) if pair else X[0]
    last = (starts if reverse else ends - 1)[nonempty]
    final = h.new_zeros(len(starts), *h.shape[1:]) if initial_state is None else initial_state.to(h.dtype).clone()
    final[nonempty] = h[last]
    return h.reshape(b.shape), final
