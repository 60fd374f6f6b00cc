"""A scan over one piece of a longer stream: a state enters the piece's first document and
leaves its last one. This is the relay between ranks (``../shared/DESIGN.md``) applied in time
on one rank, with the same two ops:

- the piece is scanned from a zero state, then the incoming state's part is added to the
  outputs of its first segment: ``o_t += (Ã_t ∘ S_in)ᵀ q_t`` (``add_state_correction``);
- the state after the piece is the summary of its last segment, ``(Â, Ŝ)``
  (``segment_summary``), composed with the incoming one when the piece is a single segment:
  ``S_out = Â S_in + Ŝ``. A document start inside the piece is a reset, so then
  ``S_out = Ŝ``.

Both ops are differentiable, so the incoming state's gradient flows back to whatever
produced it: the piece before, or the relay from the previous rank.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from baton.kernels.dispatch import add_state_correction, segment_summary


def state_after(
    k: Tensor, v: Tensor, g: Tensor, cu_seqlens: Tensor, state_in: Tensor | None, decay_in: Tensor | None
) -> tuple[Tensor, Tensor | None]:
    """The state [H, K, V] after a packed piece (batch 1) whose first document continues from
    ``state_in`` (None: zero), and the log transition across the piece added to ``decay_in``
    (None where a document starts inside the piece)."""
    bounds = cu_seqlens.tolist()
    log_A, S = segment_summary(k, v, g, bounds[-2])
    if len(bounds) > 2:  # a reset inside: only the last segment reaches the end
        return S, None
    if state_in is not None:
        S = log_A.exp()[..., None] * state_in + S
    return S, log_A if decay_in is None else decay_in + log_A


def scan_carrying(
    scan: Callable,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    scale: float | None,
    cu_seqlens: Tensor,
    chunk_size: int,
    state_in: Tensor | None,
) -> Tensor:
    """``scan``'s outputs over a packed piece whose first document continues from ``state_in``
    [H, K, V] (None: starts fresh)."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    o, _ = scan(q, k, v, g, scale=scale, cu_seqlens=cu_seqlens, chunk_size=chunk_size)
    if state_in is None:
        return o
    return add_state_correction(o, q, g, state_in, int(cu_seqlens[1]), scale)


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
