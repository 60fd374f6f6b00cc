"""What every token mixer declares: the ops through which its sequence continues across a cut
(to the rank, or the slice of a rank's piece, that continues a document) and its output
projection. Parallelism, micro-batches and initialisation read the declaration; they never
probe a mixer's attributes.

A token mixer is an ``nn.Module`` with

- ``forward(x, cu_seqlens=None, state=None, summary_only=False) -> (y, state_after)``: x
  [B, T, d] -> [B, T, d]; with a :class:`~baton.models.state.LayerState` the packed piece's
  first document continues from it and the state after the piece comes back (``summary_only``:
  that state alone, what a rank relays, where the mixer has such a summary);
- ``step(x, state) -> (y, state)``: one token for each of B streams (decoding);
- ``relays``: its :class:`RelayPoints`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RelayPoints:
    """The attributes holding the ops a cut passes through; sequence parallelism swaps each
    for a relaying version with the same call signature (``parallel/sequence.py``).

    ``scan``: a chunked scan; its recurrent state's summary (Â, Ŝ) is relayed.
    ``conv``: a short causal conv; its window (the last ``window`` inputs of ``conv_channels``
    channels) is relayed. Such a mixer also has ``conv_window(x)``: the window after x, the
    last tokens of a piece, from those tokens alone (micro-batches send it before the piece's
    slices have run).
    ``solves``: Newton's linear solves (``models/newton.py``); each iteration's state is relayed.
    ``kv``: an attention op (``models/attention.py:attend``); the keys and values of the first
    document's earlier tokens are gathered. Such a mixer also has ``keys_values(x)`` and
    ``kv_channels`` (per key/value head and token).
    ``output``: the projection into the residual stream (initialised smaller with depth).
    """

    output: str
    scan: str | None = None
    conv: str | None = None
    solves: str | None = None
    kv: str | None = None
