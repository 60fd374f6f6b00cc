"""A scan over one piece of a longer stream: a state enters the piece's first document and
leaves its last one. This is the relay between ranks (``../shared/DESIGN.md``) applied in time
on one rank, with the same two ops:

- the piece is scanned from a zero state, then the incoming state's part is added to the
  outputs of its first segment (:func:`add_incoming`);
- the state after the piece is the summary of its last segment, ``(Â, Ŝ)``
  (:func:`segment_transition`), composed with the incoming one when the piece is a single
  segment: ``S_out = Â S_in + Ŝ``. A document start inside the piece is a reset, so then
  ``S_out = Ŝ``.

``gates`` is ``(g,)`` for the diagonal scans (GLA, SSD: Â a per-key-dim or per-head
multiplier, [H, K, 1] or [H, 1, 1]) and ``(g, beta)`` for the delta rule (Â a K×K matrix per
head). All ops are differentiable, so the incoming state's gradient flows back to whatever
produced it: the piece before, or the relay from the previous rank. Under ``torch.compile``
the carrying functions run eagerly between a block's graphs (``torch.compiler.disable``): they
read document boundaries as numbers, which would otherwise recompile per boundary layout.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from baton.kernels.dispatch import add_state_correction, delta_correction, delta_summary, segment_summary
from baton.kernels.layout import apply_transition


def segment_transition(
    k: Tensor, v: Tensor, gates: tuple[Tensor, ...], start: int, chunk_size: int
) -> tuple[Tensor, Tensor]:
    """The summary of tokens ``start:`` of a packed piece (batch 1): the transition Â a state
    entering there goes through to the end, and the state Ŝ [H, K, V] they leave from zero."""
    if len(gates) == 2:
        return delta_summary(k, v, *gates, start, chunk_size)
    log_A, S = segment_summary(k, v, gates[0], start)
    return log_A.exp()[..., None], S


def add_incoming(
    o: Tensor, q: Tensor, k: Tensor, gates: tuple[Tensor, ...], state: Tensor, end: int, scale: float, chunk_size: int
) -> Tensor:
    """``o`` plus the part of tokens ``:end`` that comes from ``state`` entering the piece."""
    if len(gates) == 2:
        return delta_correction(o, q, k, *gates, state, end, scale, chunk_size)
    return add_state_correction(o, q, gates[0], state, end, scale)


@torch.compiler.disable
def state_after(
    k: Tensor,
    v: Tensor,
    gates: tuple[Tensor, ...],
    cu_seqlens: Tensor,
    state_in: Tensor | None,
    transition_in: Tensor | None,
    chunk_size: int,
) -> tuple[Tensor, Tensor | None]:
    """The state [H, K, V] after a packed piece (batch 1) whose first document continues from
    ``state_in`` (None: zero), and the transition across the piece composed after
    ``transition_in`` (None where a document starts inside the piece)."""
    bounds = cu_seqlens.tolist()
    A, S = segment_transition(k, v, gates, bounds[-2], chunk_size)
    if len(bounds) > 2:  # a reset inside: only the last segment reaches the end
        return S, None
    if state_in is not None:
        S = apply_transition(A, state_in) + S
    return S, A if transition_in is None else apply_transition(A, transition_in)


@torch.compiler.disable
def scan_carrying(
    scan: Callable,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    gates: tuple[Tensor, ...],
    scale: float | None,
    cu_seqlens: Tensor,
    chunk_size: int,
    state_in: Tensor | None,
) -> Tensor:
    """``scan``'s outputs over a packed piece whose first document continues from ``state_in``
    [H, K, V] (None: starts fresh)."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    o, _ = scan(q, k, v, *gates, scale=scale, cu_seqlens=cu_seqlens, chunk_size=chunk_size)
    if state_in is None:
        return o
    return add_incoming(o, q, k, gates, state_in, int(cu_seqlens[1]), scale, chunk_size)


@torch.compiler.disable
def conv_carrying(
    conv: Callable,
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    cu_seqlens: Tensor,
    window_in: Tensor | None,
    width: int,
) -> tuple[Tensor, Tensor]:
    """The short conv over a packed piece x [1, T, C] whose first document continues through
    ``window_in`` (the ``width`` = W - 1 inputs before the piece; None: zeros), and the window
    after it."""
    out = conv(x, weight, bias, cu_seqlens, left_context=window_in)
    return out, last_window(x, cu_seqlens, window_in, width)


def tail_window(project: Callable[[Tensor], Tensor], x: Tensor, width: int) -> Tensor:
    """The conv window after x [B, T', d], the last tokens of a piece's last document (what the
    conv of a piece continuing it needs first): ``project`` (to the conv's inputs) of those
    tokens only."""
    tail = project(x[:, x.shape[1] - min(width, x.shape[1]) :])
    return last_window(tail, torch.tensor([0, tail.shape[1]]), None, width)


def last_window(x: Tensor, cu_seqlens: Tensor, window_in: Tensor | None, width: int) -> Tensor:
    """The last ``width`` rows of x [B, T, C]'s last document (a short conv's window for what
    continues it), continued back into ``window_in`` when that document is also the piece's
    first; zeros where the document has no rows."""
    bounds = cu_seqlens.tolist()
    doc = x[:, bounds[-2] :]
    if window_in is not None and len(bounds) == 2:
        doc = torch.cat([window_in.to(x.dtype), doc], dim=1)
    tail = doc[:, doc.shape[1] - min(width, doc.shape[1]) :]
    return F.pad(tail, (0, 0, width - tail.shape[1], 0))
