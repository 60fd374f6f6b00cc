"""Sequence parallelism applied to a plain model from outside, as torchtitan applies FSDP.

``apply_sequence_parallel`` swaps every token mixer's ``scan`` (and the short ``conv`` of the
mixers that have one; a Newton-trained RNN's linear ``solves``, :class:`RelayedSolves`) for a
relaying version. Each step runs inside ``with sp.step(plan, local):``, which scopes the
plan for the relaying ops; every rank then scans its piece from a zero state:

1. summary of its last segment (cheap, one pass over that segment),
2. relay started: the state entering the piece, from the chain's earlier ranks,
3. the local chunked scan (the bulk of the work, while the relay is in flight),
4. relay finished, and the first segment's outputs corrected with the incoming state.

The backward mirrors it: the correction's backward gives the incoming state's gradient,
whose relay back along the chain is in flight during the scan's backward.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import replace

import torch
from torch import Tensor, nn

from baton.kernels.carry import add_incoming, last_window, segment_transition
from baton.kernels.dispatch import diag_scan
from baton.models.newton import WholeSequence, apply_jacobian, next_jacobians, transposed
from baton.parallel.attention import RelayedAttention
from baton.parallel.plan import LocalBatch, StepPlan
from baton.parallel.relay import (
    MAX_BLOCKS,
    STRATEGIES,
    CommStats,
    RelayLink,
    RelayRecord,
    op_name,
    op_tag,
    recv_head,
    relay,
    relay_now,
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
        self.in_step = False
        self.chain: list[int] = []
        self.any_chain = False
        self.continues_from_prev = self.continues_to_next = self.carries = False
        self.first_offset = 0
        self.kv_from: list[tuple[int, int]] = []
        self.kv_to: list[int] = []

    @contextlib.contextmanager
    def step(self, plan: StepPlan, local: LocalBatch) -> Iterator[CommStats]:
        """The relaying ops of the enclosed forward and backward follow ``plan`` (this rank's
        piece: ``local``); yields the step's relay statistics, complete when the block ends."""
        if self.in_step:
            raise RuntimeError("SequenceParallel.step: a step is already open")
        self.chain = plan.pieces[self.rank].chain
        self.any_chain = any(len(p.chain) > 1 for p in plan.pieces)
        self.strategy = plan.relay or self.relay
        if self.strategy == "auto" and self.any_chain:
            raise ValueError(
                "parallel.sp.relay=auto: the step's plan names no relay (the trainer chooses one per step)"
            )
        self.continues_from_prev = local.continues_from_prev
        self.continues_to_next = local.continues_to_next
        self.first_offset = local.first_offset
        self.kv_from, self.kv_to = local.kv_from, local.kv_to
        # The state at the piece's end depends on the incoming state only when the piece is
        # a single segment continuing a document; any document start inside is a reset.
        self.carries = local.continues_from_prev and len(local.cu_seqlens) == 2
        self.stats = CommStats()  # this step's, still readable after it
        self.record.clear()
        self.in_step = True
        try:
            yield self.stats
        finally:
            self.in_step = False
            self.chain, self.any_chain, self.first_offset = [], False, 0
            self.kv_from, self.kv_to = [], []
            self.continues_from_prev = self.continues_to_next = self.carries = False

    def _check_in_step(self, what: str) -> None:
        if not self.in_step:  # a relaying model called outside a step would silently skip its relays
            raise RuntimeError(f"{what}: a relaying op ran outside `with SequenceParallel.step(plan, local)`")

    @property
    def relaying(self) -> bool:
        """Whether this rank takes part in a relay this step: it is in a chain, or the
        all-gather (a collective on the world group) runs because some rank is."""
        self._check_in_step("sequence parallelism")
        return self.any_chain and (len(self.chain) > 1 or self.strategy == "allgather")

    def link(self, layer: int, kind: str) -> RelayLink:
        """Layer ``layer``'s relay op of ``kind`` (``relay.MESSAGE_KINDS``) in this step."""
        name = op_name(layer, kind)
        self._check_in_step(name)
        chain = self.chain if len(self.chain) > 1 else [self.rank]
        return RelayLink(
            self.rank, self.world_size, chain, self.stats, name, op_tag(layer, kind), self.record, self.carries,
            self.blocks, self.overlap, self.trace_hops,
        )  # fmt: skip

    def exchange_window(
        self, layer: int, x: Tensor, window: Callable[[], Tensor], bounds: list[int], width: int, channels: int
    ) -> tuple[Tensor, Tensor | None]:
        """A short conv's halo across the cut: this piece's last ``width`` conv inputs
        (``window()``, computed from x) sent to the rank continuing its last document, and the
        previous rank's received [B, width, channels] where the first one continues (else
        None); x itself, with what it sends in its graph."""
        link, halo = self.link(layer, "conv"), None
        if self.continues_to_next:
            check_halo_source(self, bounds, width + 1)
            x = send_tail(x, window(), link)
        if self.continues_from_prev:
            halo = recv_head(x, (x.shape[0], width, channels), link)
        return x, halo


class RelayedScan:
    """Drop-in for a chunked-scan op (same call signature) on one rank's piece. ``gates``:
    ``g`` for the diagonal scans, ``g, beta`` for the delta rule."""

    def __init__(self, local_scan: Callable, sp: SequenceParallel, layer: int) -> None:
        self.local_scan, self.sp, self.layer = local_scan, sp, layer

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
        finish_relay = relay(sp.strategy, A * sp.carries, S, sp.link(self.layer, "scan"))
        S_in = None if sp.overlap else finish_relay()
        o, _ = self.local_scan(q, k, v, *gates, scale=scale, cu_seqlens=cu_seqlens, chunk_size=chunk_size)
        S_in = finish_relay() if S_in is None else S_in  # in flight during the scan
        first = bounds[1] if sp.continues_from_prev else 0
        # Applied even when empty so that every rank runs the relay's backward.
        return add_incoming(o, q, k, gates, S_in, first, scale, chunk_size), None


class RelayedConv:
    """Drop-in for ``causal_conv1d``: the first document continues through a halo of the
    previous rank's last ``W - 1`` inputs."""

    def __init__(self, local_conv: Callable, sp: SequenceParallel, layer: int) -> None:
        self.local_conv, self.sp, self.layer = local_conv, sp, layer

    @torch.compiler.disable
    def __call__(
        self, x: Tensor, weight: Tensor, bias: Tensor | None = None, cu_seqlens: Tensor | None = None
    ) -> Tensor:
        width = weight.shape[1] - 1

        def window() -> Tensor:
            return last_window(x, cu_seqlens, None, width)

        x, halo = self.sp.exchange_window(self.layer, x, window, cu_seqlens.tolist(), width, x.shape[2])
        return self.local_conv(x, weight, bias, cu_seqlens, left_context=halo)


class RelayedSolves(WholeSequence):
    """Newton's linear solves (``models/newton.py``) on one rank's piece. Each iteration's
    recurrence ``h_t = J_t h_{t-1} + b_t`` is relayed like a linear mixer's scan: the piece is
    scanned from zero, its last segment's summary ``(∏ J, h_end)`` relayed, the first segment
    corrected by the incoming state ``S_in`` (``h_t += J_t ⋯ J_first S_in``), which is also the
    state entering the piece at the next iteration's linearisation. The first guess needs the
    previous rank's last guess: one more message, with a zero transition. In backward the
    adjoint's reverse scan relays ``(∏ Jᵀ, J_firstᵀ λ_first)`` along the reversed chain and
    corrects the last segment. Not overlapped: the local work a relay could hide behind is one
    elementwise scan. Forward messages are recorded, so a recomputed forward (checkpointing)
    does not send them again.

    States travel as [H, D, 1] (ParaGRU, a diagonal transition [H, D, 1]) or [H, D, 2, 1]
    (ParaLSTM's [c, h], a 2×2 block transition [H, D, 2, 2]), the relay's two forms.
    """

    def __init__(self, sp: SequenceParallel, layer: int) -> None:
        self.sp, self.layer = sp, layer

    def _exchange(self, A: Tensor, S: Tensor, key: str, backward: bool = False, carries: bool = True) -> Tensor:
        """The state entering this piece (forward) or the gradient of the one leaving it
        (backward), as the chosen strategy relays it: [H, D(, 2)]."""
        sp = self.sp
        # one block: the relay's blocks split a state's last dim, here a single column
        link = replace(sp.link(self.layer, "scan"), blocks=1, carries=sp.carries and carries)
        A = A[..., None] if A.dim() == S.dim() else A

        def communicate() -> Tensor:
            return relay_now(sp.strategy, A, S[..., None], link, backward)[..., 0]

        return communicate() if backward else link.record.once((link.name, key), communicate)

    def _entering(self, S_in: Tensor, cu_seqlens: Tensor) -> Tensor | None:
        """Each document's entering state: S_in for the first one where it continues."""
        if not self.sp.continues_from_prev:
            return None
        entering = S_in.new_zeros(len(cu_seqlens) - 1, *S_in.shape)
        entering[0] = S_in
        return entering

    def _transition(self, J: Tensor, bounds: list[int]) -> Tensor:
        """What a state entering the piece goes through to its end: zero past a document start
        (a first token's Jacobian is the cell's at the document's initial state, not a reset)."""
        return transition_product(J[0, bounds[-2] :]) * self.sp.carries

    def first_guess(self, h: Tensor, initial_state: Tensor | None, cu_seqlens: Tensor | None) -> Tensor | None:
        if not self.sp.relaying:
            return initial_state
        last = h[0, -1]
        return self._entering(self._exchange(torch.zeros_like(last), last, "guess", carries=False), cu_seqlens)

    def solve(
        self, J: Tensor, b: Tensor, initial_state: Tensor | None, cu_seqlens: Tensor | None, iteration: int
    ) -> tuple[Tensor, Tensor | None]:
        if not self.sp.relaying:
            return super().solve(J, b, initial_state, cu_seqlens, iteration)
        bounds = cu_seqlens.tolist()
        h, finals = diag_scan(J, b, None, cu_seqlens)
        S_in = self._exchange(self._transition(J, bounds), finals[-1], f"iteration{iteration}")
        if self.sp.continues_from_prev:
            first = bounds[1]
            h[:, :first] += diag_scan(J[:, :first], torch.zeros_like(b[:, :first]), S_in[None], None)[0]
        return h, self._entering(S_in, cu_seqlens)

    def adjoint(self, J: Tensor, d_h: Tensor, cu_seqlens: Tensor | None) -> Tensor:
        if not self.sp.relaying:
            return super().adjoint(J, d_h, cu_seqlens)
        bounds = cu_seqlens.tolist()
        after = transposed(next_jacobians(J), d_h)
        adjoint = diag_scan(after, d_h, None, cu_seqlens, reverse=True)[0]
        # the gradient of the state entering the piece, from this piece (zero from the ranks after)
        d_in = apply_jacobian(transposed(J[0, 0], d_h[0, 0]), adjoint[0, 0]) * self.sp.continues_from_prev
        A = transposed(self._transition(J, bounds), d_h[0, 0])
        d_out = self._exchange(A, d_in, "adjoint", backward=True)
        if self.sp.continues_to_next:
            last = bounds[-2]
            leaving = torch.zeros_like(d_h[:, last:])
            leaving[0, -1] = d_out
            adjoint[:, last:] += diag_scan(after[:, last:], leaving, None, None, reverse=True)[0]
        return adjoint


def transition_product(J: Tensor) -> Tensor:
    """``J_{T-1} ⋯ J_0`` of a segment's Jacobians [T, H, D(, 2, 2)], pairwise in log depth."""
    if J.dim() == 3:
        return J.prod(0)
    while J.shape[0] > 1:
        if J.shape[0] % 2:  # an identity after the last keeps the pairs in order
            J = torch.cat([J, torch.eye(2, dtype=J.dtype, device=J.device).expand_as(J[:1])])
        J = J[1::2] @ J[0::2]  # the later on the left
    return J[0]


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
    """Make every token mixer of ``model`` relay through ``sp`` at the points it declares
    (``models/mixer.py:RelayPoints``; in place; returns the model)."""
    for layer, block in enumerate(model.blocks):
        mixer, points = block.mixer, block.mixer.relays
        if points.scan:
            setattr(mixer, points.scan, RelayedScan(getattr(mixer, points.scan), sp, layer))
        if points.conv:
            setattr(mixer, points.conv, RelayedConv(getattr(mixer, points.conv), sp, layer))
        if points.solves:
            setattr(mixer, points.solves, RelayedSolves(sp, layer))
        if points.kv:
            setattr(mixer, points.kv, RelayedAttention(sp, layer))
    return model
