"""Sequence parallelism applied to a plain model from outside, as torchtitan applies FSDP.

``apply_sequence_parallel`` swaps every token mixer's ``scan`` (and the short ``conv`` of the
mixers that have one) for a relaying version. Each step the trainer hands the plan to
:meth:`SequenceParallel.set_step`; every rank then scans its piece from a zero state:

1. summary of its last segment (cheap, one pass over that segment),
2. relay started: the state entering the piece, from the chain's earlier ranks,
3. the local chunked scan (the bulk of the work, while the relay is in flight),
4. relay finished, and the first segment's outputs corrected with the incoming state.

The backward mirrors it: the correction's backward gives the incoming state's gradient,
whose relay back along the chain is in flight during the scan's backward.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from baton.kernels.carry import add_incoming, last_window, segment_transition
from baton.parallel.plan import LocalBatch, StepPlan
from baton.parallel.relay import (
    MAX_BLOCKS,
    STRATEGIES,
    TAG_STRIDE,
    CommStats,
    RelayLink,
    RelayRecord,
    recv_head,
    relay,
    send_tail,
)


class SequenceParallel:
    """This rank's view of the current step's plan, shared by every relaying op."""

    def __init__(
        self, rank: int, world_size: int, relay: str, blocks: int = 1, overlap: bool = True, trace_hops: bool = False
    ) -> None:
        if relay not in (*STRATEGIES, "auto"):
            raise ValueError(f"parallel.sp.relay must be one of {', '.join(STRATEGIES)}, auto, got {relay!r}")
        if not 1 <= blocks <= MAX_BLOCKS:
            raise ValueError(f"parallel.sp.relay_blocks must be in [1, {MAX_BLOCKS}], got {blocks}")
        self.rank, self.world_size, self.relay = rank, world_size, relay
        self.strategy = relay  # this step's: the plan's choice under auto
        self.blocks, self.overlap, self.trace_hops = blocks, overlap, trace_hops
        self.stats = CommStats()
        self.record = RelayRecord()  # what this step's relays received, for recomputations
        self.chain: list[int] = []
        self.any_chain = False
        self.continues_from_prev = self.continues_to_next = self.carries = False

    def set_step(self, plan: StepPlan, local: LocalBatch) -> None:
        self.chain = plan.pieces[self.rank].chain
        self.any_chain = any(len(p.chain) > 1 for p in plan.pieces)
        self.strategy = plan.relay or self.relay
        if self.strategy == "auto" and self.any_chain:
            raise ValueError(
                "parallel.sp.relay=auto: the step's plan names no relay (the trainer chooses one per step)"
            )
        self.continues_from_prev = local.continues_from_prev
        self.continues_to_next = local.continues_to_next
        # The state at the piece's end depends on the incoming state only when the piece is
        # a single segment continuing a document; any document start inside is a reset.
        self.carries = local.continues_from_prev and len(local.cu_seqlens) == 2
        self.stats.reset()
        self.record.clear()

    @property
    def relaying(self) -> bool:
        """Whether this rank takes part in a relay this step: it is in a chain, or the
        all-gather (a collective on the world group) runs because some rank is."""
        return self.any_chain and (len(self.chain) > 1 or self.strategy == "allgather")

    def link(self, name: str, tag: int) -> RelayLink:
        chain = self.chain if len(self.chain) > 1 else [self.rank]
        return RelayLink(
            self.rank, self.world_size, chain, self.stats, name, tag, self.record, self.carries, self.blocks,
            self.overlap, self.trace_hops,
        )  # fmt: skip


class RelayedScan:
    """Drop-in for a chunked-scan op (same call signature) on one rank's piece. ``gates``:
    ``g`` for the diagonal scans, ``g, beta`` for the delta rule."""

    def __init__(self, local_scan: Callable, sp: SequenceParallel, name: str, tag: int) -> None:
        self.local_scan, self.sp, self.name, self.tag = local_scan, sp, name, tag

    @torch.compiler.disable  # messages and a relay thread: eager between a compiled block's graphs
    def __call__(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        *gates: Tensor,
        scale: float | None = None,
        cu_seqlens: Tensor | None = None,
        chunk_size: int = 64,
    ) -> tuple[Tensor, None]:
        sp = self.sp
        scale = q.shape[-1] ** -0.5 if scale is None else scale
        bounds = cu_seqlens.tolist()
        if not sp.relaying:
            return self.local_scan(q, k, v, *gates, scale=scale, cu_seqlens=cu_seqlens, chunk_size=chunk_size)[0], None

        A, S = segment_transition(k, v, gates, bounds[-2], chunk_size)
        finish_relay = relay(sp.strategy, A * sp.carries, S, sp.link(self.name, self.tag))
        S_in = None if sp.overlap else finish_relay()
        o, _ = self.local_scan(q, k, v, *gates, scale=scale, cu_seqlens=cu_seqlens, chunk_size=chunk_size)
        S_in = finish_relay() if S_in is None else S_in  # in flight during the scan
        first = bounds[1] if sp.continues_from_prev else 0
        # Applied even when empty so that every rank runs the relay's backward.
        return add_incoming(o, q, k, gates, S_in, first, scale, chunk_size), None


class RelayedConv:
    """Drop-in for ``causal_conv1d``: the first document continues through a halo of the
    previous rank's last ``W - 1`` inputs."""

    def __init__(self, local_conv: Callable, sp: SequenceParallel, name: str, tag: int) -> None:
        self.local_conv, self.sp, self.name, self.tag = local_conv, sp, name, tag

    @torch.compiler.disable
    def __call__(
        self, x: Tensor, weight: Tensor, bias: Tensor | None = None, cu_seqlens: Tensor | None = None
    ) -> Tensor:
        sp, W = self.sp, weight.shape[1]
        link = sp.link(self.name, self.tag)
        bounds = cu_seqlens.tolist()
        halo = None
        if sp.continues_to_next:
            check_halo_source(sp, bounds, W)
            x = send_tail(x, last_window(x, cu_seqlens, None, W - 1), link)
        if sp.continues_from_prev:
            halo = recv_head(x, (x.shape[0], W - 1, x.shape[2]), link)
        return self.local_conv(x, weight, bias, cu_seqlens, left_context=halo)


def check_halo_source(sp: SequenceParallel, bounds: list[int], width: int) -> None:
    """A rank continuing a document into the next one passes its conv's last ``width - 1``
    inputs on; a piece that is all inside one document must hold that many."""
    last = bounds[-1] - bounds[-2]
    if last < width - 1 and len(bounds) == 2 and sp.continues_from_prev:
        raise ValueError(
            f"rank {sp.rank} holds {last} tokens of a document it relays on; pieces inside a "
            f"document need at least conv_size - 1 = {width - 1} tokens"
        )


def apply_sequence_parallel(model: nn.Module, sp: SequenceParallel) -> nn.Module:
    """Make every token mixer of ``model`` relay through ``sp`` (in place; returns the model)."""
    for i, block in enumerate(model.blocks):
        mixer = block.mixer
        mixer.scan = RelayedScan(mixer.scan, sp, f"layer{i}.scan", tag=(2 * i) * TAG_STRIDE)
        if hasattr(mixer, "conv"):
            mixer.conv = RelayedConv(mixer.conv, sp, f"layer{i}.conv", tag=(2 * i + 1) * TAG_STRIDE)
    return model
