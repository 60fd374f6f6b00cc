"""Packed batches of whole documents with a rank-independent, resumable cursor.

The cursor counts documents consumed since the start of training, over all ranks: epoch
``cursor // n_docs`` visits the documents in a permutation seeded by (seed, epoch), and a
global batch takes whole documents from there until the token budget is full. Any number
of ranks can then split the same global batch, and resume restores the exact position.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from baton.data.corpus import Corpus

IGNORE = -100


@dataclass
class Batch:
    tokens: Tensor  # [T] packed documents
    labels: Tensor  # [T] next token inside the same document, IGNORE at each document's end
    cu_seqlens: Tensor  # [n_docs + 1] document boundaries in the packed stream
    doc_ids: list  # every document's corpus index (a mixture's: [source, index]), in packing order

    @property
    def n_tokens(self) -> int:
        return int(self.tokens.numel())

    @property
    def n_targets(self) -> int:
        return int((self.labels != IGNORE).sum())


def pack(docs: list[np.ndarray], doc_ids: list[int]) -> Batch:
    tokens = np.concatenate(docs) if docs else np.zeros(0, dtype=np.int64)
    labels = np.full_like(tokens, IGNORE)
    cu = np.zeros(len(docs) + 1, dtype=np.int64)
    np.cumsum([len(d) for d in docs], out=cu[1:])
    for start, end in zip(cu[:-1], cu[1:]):
        labels[start : end - 1] = tokens[start + 1 : end]
    return Batch(torch.from_numpy(tokens), torch.from_numpy(labels), torch.from_numpy(cu), list(doc_ids))


class PackedLoader:
    """Yields :class:`Batch` es of at most ``tokens_per_batch`` tokens from ``doc_ids``.

    A document longer than the budget is cropped to it. ``doc_ids`` (default: all) is the
    split this loader draws from.
    """

    def __init__(self, corpus: Corpus, tokens_per_batch: int, seed: int, doc_ids: np.ndarray | None = None) -> None:
        self.corpus, self.tokens_per_batch, self.seed = corpus, tokens_per_batch, seed
        self.doc_ids = np.arange(corpus.n_docs) if doc_ids is None else np.asarray(doc_ids)
        if len(self.doc_ids) == 0:
            raise ValueError(f"{corpus.path}: no documents in this split")
        self.cursor = 0
        self._epoch, self._order = -1, self.doc_ids

    def _doc_at(self, position: int) -> int:
        epoch, index = divmod(position, len(self.doc_ids))
        if epoch != self._epoch:
            self._epoch = epoch
            self._order = np.random.default_rng([self.seed, epoch]).permutation(self.doc_ids)
        return int(self._order[index])

    def next_batch(self) -> Batch:
        docs, ids, total = [], [], 0
        while True:
            doc_id = self._doc_at(self.cursor)
            length = min(self.corpus.doc_len(doc_id), self.tokens_per_batch)
            if docs and total + length > self.tokens_per_batch:
                break
            docs.append(self.corpus.doc(doc_id, max_tokens=length))
            ids.append(doc_id)
            total += length
            self.cursor += 1
        return pack(docs, ids)

    def __iter__(self):
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict:
        return {"cursor": self.cursor}

    def load_state_dict(self, state: dict) -> None:
        self.cursor = int(state["cursor"])
