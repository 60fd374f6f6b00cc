"""Sequence micro-batches (``train.micro_tokens``): a rank's piece processed in consecutive
slices, with the recurrent state carried exactly from each slice into the next. Applied to
the model from outside (``parallelize``), after activation checkpointing, before sharding.

This is the relay between ranks (``../shared/DESIGN.md``) applied in time on one rank. A slice
starts from the state the slice before left: its scan runs from zero and the incoming
state's part is added to its first segment's outputs; the state it leaves is the summary
(Â, Ŝ) of its last segment, composed with the incoming one when the slice is one segment
(``kernels/carry.py``; the SSD conv carries its last ``conv_size - 1`` inputs the same way).
A document start inside a slice is a reset, so documents cross slice boundaries exactly as
they cross rank boundaries. In backward each slice's incoming-state gradient flows to the
slice before, as the relay's state gradients flow to the rank before.

The piece advances layer by layer, each block over all of its slices before the next block,
not the whole model slice by slice: the relay between ranks works per layer (a rank's state
at layer l needs the layer-l summaries of the ranks before it, which need their whole pieces
at layer l), so this order keeps every relay strategy as parallel as without slices. Per
block, when the step relays state:

1. the conv windows are exchanged (from a projection of the last tokens only); an attention
   layer instead of 1-2 sends its last segment's keys and values (a projection of those tokens)
   to the ranks continuing that document and gathers its first document's from the ranks
   before, the first slice's prefix (each later slice attends to the keys and values of its
   document's earlier slices too, carried as a state);
2. the summary of the piece's last segment is composed over that segment's slices (summaries
   compose associatively), recomputed in backward, and relayed by the chosen strategy:
   the same messages and bytes as without slices;
3. the slices run in order, the first from the relayed state, each recomputed in backward
   (the checkpointing policy applies per slice).

What stays alive: the piece's block inputs (what full checkpointing keeps anyway), one
slice of one block's activations while it is recomputed, and one state per slice boundary.
Slice cuts inside a document fall a whole number of chunks after its start (the piece's
start for the first one), so the chunked scans tile each slice as they tile the piece.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from baton.models.state import LayerState
from baton.parallel.attention import exchange_keys_values, keep_in_graph, take_prefix
from baton.parallel.relay import relay
from baton.parallel.sequence import SequenceParallel


def slice_cuts(bounds: list[int], micro_tokens: int, chunk_size: int) -> list[int]:
    """Cut points 0 = c_0 < ... < c_n = T of slices of at most ``micro_tokens`` tokens (a
    multiple of ``chunk_size``) over a piece with document ``bounds``; a cut inside a document
    falls a multiple of ``chunk_size`` tokens after its start."""
    cuts = [0]
    while cuts[-1] + micro_tokens < bounds[-1]:
        cut = cuts[-1] + micro_tokens
        start = bounds[bisect.bisect_right(bounds, cut) - 1]  # of the document holding token `cut`
        cuts.append(start + (cut - start) // chunk_size * chunk_size)
    return [*cuts, bounds[-1]]


def local_bounds(bounds: list[int], a: int, b: int) -> Tensor:
    """The document bounds of tokens [a, b) of a piece, relative to a."""
    inside = bounds[bisect.bisect_right(bounds, a) : bisect.bisect_left(bounds, b)]
    return torch.tensor([0, *(x - a for x in inside), b - a])


class SlicedBlock:
    """A block's forward over a rank's piece in slices (replaces ``block.forward``)."""

    def __init__(
        self, block: nn.Module, forward: Callable, sp: SequenceParallel, layer: int, micro_tokens: int, chunk: int
    ) -> None:
        self.block, self.forward, self.sp, self.layer = block, forward, sp, layer
        self.micro_tokens, self.chunk = micro_tokens, chunk

    def __call__(self, x: Tensor, cu_seqlens: Tensor, state: LayerState | None = None) -> tuple[Tensor, None]:
        if state is not None:
            raise ValueError("a block in micro-batches takes a rank's whole piece, not a carried state")
        bounds = cu_seqlens.tolist()
        cuts, starts = slice_cuts(bounds, self.micro_tokens, self.chunk), set(bounds)
        x, carried = self._relay_in(x, bounds, cuts)
        outputs = []
        for a, b in zip(cuts[:-1], cuts[1:]):
            state_in = carried if a == 0 or a not in starts else LayerState()  # a document start: a reset
            y, carried = self.forward(x[:, a:b], local_bounds(bounds, a, b), state_in)
            outputs.append(y)
        return torch.cat(outputs, dim=1), None

    def _summary(self, x: Tensor, cu_seqlens: Tensor, state: LayerState) -> LayerState:
        return self.block.mixer(self.block.mixer_norm(x), cu_seqlens, state, summary_only=True)[1]

    def _relay_in(self, x: Tensor, bounds: list[int], cuts: list[int]) -> tuple[Tensor, LayerState]:
        """The state entering the piece, relayed from the ranks before (a fresh one where the
        step relays nothing); x itself, with the conv window it sends on in its graph."""
        sp, mixer, layer = self.sp, self.block.mixer, self.layer
        if not sp.relaying:
            return x, LayerState()
        if mixer.relays.kv:
            return self._keys_values_in(x, bounds)
        halo = None
        if mixer.relays.conv:

            def window() -> Tensor:
                start = max(bounds[-2], bounds[-1] - mixer.window)
                return mixer.conv_window(self.block.mixer_norm(x[:, start:])).to(x.dtype)

            x, halo = sp.exchange_window(layer, x, window, bounds, mixer.window, mixer.conv_channels)
        summary = LayerState(conv=halo if sp.carries else None)
        last = bounds[-2]
        for a, b in zip(cuts[:-1], cuts[1:]):
            if b > last:
                a = max(a, last)
                summary = checkpoint(self._summary, x[:, a:b], local_bounds(bounds, a, b), summary, use_reentrant=False)
        A = summary.transition * sp.carries
        S_in = relay(sp.strategy, A, summary.scan, sp.link(layer, "scan"))()
        # A zero state where nothing continues keeps the relay in the graph: its backward sends
        # messages other ranks wait for.
        return x, LayerState(S_in, halo) if sp.continues_from_prev else LayerState(S_in * 0)

    def _keys_values_in(self, x: Tensor, bounds: list[int]) -> tuple[Tensor, LayerState]:
        """An attention layer's: the first document's keys and values from the earlier ranks
        (``parallel/attention.py``'s exchange), the first slice's prefix; this piece's last
        segment's sent on (from a projection of those tokens: the slices have not run yet)."""
        mixer = self.block.mixer
        if not (self.sp.kv_from or self.sp.kv_to):
            return x, LayerState()
        last = bounds[-2]
        own = mixer.keys_values(self.block.mixer_norm(x[:, last:])).to(x.dtype)
        own, exchange = exchange_keys_values(self.sp, self.layer, own, 0)
        prefix = take_prefix(own, exchange)
        # The tail's gradient (from the ranks it went to) reaches x through `own`, kept in the graph.
        x = keep_in_graph(x, own)
        return x, LayerState(kv=prefix)


def apply_micro_batches(model: nn.Module, sp: SequenceParallel, micro_tokens: int, chunk_size: int) -> None:
    """Run every block of ``model`` over slices of ``micro_tokens`` tokens (in place); each
    block's forward, as checkpointing left it, runs once per slice."""
    for layer, block in enumerate(model.blocks):
        block.forward = SlicedBlock(block, block.forward, sp, layer, micro_tokens, chunk_size)
