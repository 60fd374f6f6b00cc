"""Document-aligned chunk layout and the inter-chunk state recurrence shared by the scans.

A packed stream of documents (``cu_seqlens``) is laid out so that every chunk belongs to
exactly one document (the last chunk of a document is zero-padded), as
flash-linear-attention's varlen kernels do. State resets at document boundaries then need
no masks: a document's first chunk simply starts from that document's initial state.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class ChunkLayout:
    chunk_size: int
    chunk_offsets: list[int]  # first chunk of each sequence; len = n_seqs + 1
    token_index: Tensor  # where each packed token lives in the flat padded layout
    n_chunks: int

    @property
    def n_seqs(self) -> int:
        return len(self.chunk_offsets) - 1

    @property
    def chunks_per_seq(self) -> list[int]:
        return [b - a for a, b in zip(self.chunk_offsets[:-1], self.chunk_offsets[1:])]


def build_layout(cu_seqlens: Tensor, chunk_size: int, device: torch.device) -> ChunkLayout:
    bounds = [int(x) for x in cu_seqlens.tolist()]
    if bounds[0] != 0 or any(b < a for a, b in zip(bounds[:-1], bounds[1:])):
        raise ValueError(f"cu_seqlens must start at 0 and be non-decreasing, got {bounds[:8]}...")
    offsets, index = [0], []
    for start, end in zip(bounds[:-1], bounds[1:]):
        index.append(torch.arange(end - start) + offsets[-1] * chunk_size)
        offsets.append(offsets[-1] + -(-(end - start) // chunk_size))
    token_index = torch.cat(index).to(device) if index else torch.zeros(0, dtype=torch.long)
    return ChunkLayout(chunk_size, offsets, token_index, offsets[-1])


def to_chunks(x: Tensor, layout: ChunkLayout) -> Tensor:
    """[T, *rest] packed tokens -> [n_chunks, chunk_size, *rest], zero padded (a view when
    no sequence needs padding)."""
    if layout.n_chunks * layout.chunk_size == x.shape[0]:
        return x.view(layout.n_chunks, layout.chunk_size, *x.shape[1:])
    padded = x.new_zeros(layout.n_chunks * layout.chunk_size, *x.shape[1:])
    padded = padded.index_copy(0, layout.token_index, x)
    return padded.view(layout.n_chunks, layout.chunk_size, *x.shape[1:])


def from_chunks(y: Tensor, layout: ChunkLayout) -> Tensor:
    """Inverse of :func:`to_chunks`: drop the padding, back to [T, *rest]."""
    if layout.n_chunks * layout.chunk_size == layout.token_index.numel():
        return y.reshape(-1, *y.shape[2:])
    return y.reshape(layout.n_chunks * layout.chunk_size, *y.shape[2:])[layout.token_index]


def apply_transition(A: Tensor, S: Tensor) -> Tensor:
    """A transition applied to states [..., K, V]: ``A ∘ S`` for a diagonal one, [..., K, 1]
    or [..., 1, 1] (a gate per key dim or per head), ``A S`` for a matrix [..., K, K] (the
    delta rule's)."""
    return A @ S if A.shape[-1] > 1 else A * S


def identity_transition(A: Tensor) -> Tensor:
    """The transition that leaves a state as it is, shaped as ``A``."""
    if A.shape[-1] > 1:
        return torch.eye(A.shape[-1], dtype=A.dtype, device=A.device).expand_as(A)
    return torch.ones_like(A)


def chunk_state_recurrence(
    decay: Tensor,
    update: Tensor,
    layout: ChunkLayout,
    initial_state: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """Run ``S <- decay[c] S + update[c]`` over each sequence's chunks.

    decay: [n_chunks, H, K or 1, 1] (diagonal) or [n_chunks, H, K, K] (a matrix, see
    :func:`apply_transition`); update: [n_chunks, H, K, V]; initial_state:
    [n_seqs, H, K, V] or None (zeros). Returns the state entering every chunk
    [n_chunks, H, K, V] and each sequence's final state [n_seqs, H, K, V].

    Sequences are visited longest first, so at chunk step ``n`` the sequences still
    running are a prefix of that order and each step is one batched update.
    """
    n_seqs, counts = layout.n_seqs, layout.chunks_per_seq
    H, K, V = update.shape[1:]
    order = sorted(range(n_seqs), key=lambda s: -counts[s])
    state = initial_state.to(update.dtype)[order] if initial_state is not None else update.new_zeros(n_seqs, H, K, V)
    starts = torch.tensor([layout.chunk_offsets[s] for s in order], dtype=torch.long)
    entering_idx, entering, finished = [], [], []
    active = n_seqs
    for step in range(max(counts, default=0) + 1):
        still = active
        while still > 0 and counts[order[still - 1]] <= step:
            still -= 1
        if still < active:
            finished.append(state[still:active])
            state, active = state[:still], still
        if active == 0:
            break
        idx = (starts[:active] + step).to(update.device)
        entering_idx.append(idx)
        entering.append(state)
        state = apply_transition(decay[idx], state) + update[idx]
    final_sorted = torch.cat(finished[::-1]) if finished else update.new_zeros(0, H, K, V)
    final = final_sorted[torch.argsort(torch.tensor(order)).to(update.device)]
    if entering:
        idx = torch.cat(entering_idx)
        states_in = torch.cat(entering)[torch.argsort(idx)]
    else:
        states_in = update.new_zeros(0, H, K, V)
    return states_in, final
