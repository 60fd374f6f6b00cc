"""The state one layer hands from a piece of a document to the piece that continues it."""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor


class LayerState(NamedTuple):
    """What a layer carries from the end of one packed piece into the next.

    ``scan``: the recurrent state [H, K, V] (fp32) after the piece's last document; None for
    zero (a fresh start). ``conv``: the short conv's window, the last ``conv_size - 1`` conv
    inputs [1, W - 1, C] of that document; None for zeros (mixers without a conv ignore it).
    ``transition``: Â, the transition a state entering the piece goes through to its end
    ([H, K, 1] per key dim, [H, 1, 1] for a scalar gate, [H, K, K] for the delta rule),
    composed over the pieces carried so far; None where a document starts inside (a reset:
    nothing entering reaches the end) or nothing was carried yet. (Â, Ŝ) from a zero start is
    the summary a rank relays. ``kv``: an attention layer's keys (un-rotated) and values of
    that document so far [B, P, Hk, 2D] (between slices of a piece: its pieces in order, not
    joined); ``lengths`` [B]: how many of them are valid per stream (decoding several streams
    at once; None: all P).

    A NamedTuple, so that wrappers that walk a module's inputs and outputs (FSDP2,
    checkpointing) see its tensors.
    """

    scan: Tensor | None = None
    conv: Tensor | None = None
    transition: Tensor | None = None
    kv: Tensor | tuple[Tensor, ...] | None = None
    lengths: Tensor | None = None
