"""A mixture of corpora with weights (``data.sources``), sampled deterministically.

Document slots are numbered globally from the start of training. Slot j draws from source
``s(j)``, chosen in proportion to the weights by a generator seeded with (seed, block of j):
a function of the seed and j alone. Each source walks its own training documents in a
permutation per epoch, as :class:`~baton.data.loader.PackedLoader` walks one corpus, with a
cursor of its own. The state (the global slot and every source's cursor) is independent of
the number of ranks, so every rank packs the same batches and a resume at any world size
continues with exactly the documents that come next.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from baton.data.corpus import Corpus
from baton.data.loader import Batch, pack

BLOCK = 4096  # slots whose sources one generator call draws
SALT = 0x6D6978  # keeps the source choices' stream apart from the permutations'


@dataclass
class Source:
    name: str
    corpus: Corpus
    weight: float
    train_ids: np.ndarray
    eval_ids: np.ndarray


class MixtureLoader:
    """Batches of whole documents from ``sources``, the :class:`PackedLoader` interface.
    A document's id in a batch is ``[source index, document index]``."""

    def __init__(self, sources: list[Source], tokens_per_batch: int, seed: int) -> None:
        self.sources, self.tokens_per_batch, self.seed = sources, tokens_per_batch, seed
        weights = np.asarray([s.weight for s in sources], dtype=float)
        self.weights = weights / weights.sum()
        self.slot, self.cursors = 0, [0] * len(sources)
        self._block, self._choices = -1, np.zeros(0, dtype=np.int64)
        self._orders: dict[tuple[int, int], np.ndarray] = {}

    def source_of(self, slot: int) -> int:
        block, index = divmod(slot, BLOCK)
        if block != self._block:
            rng = np.random.default_rng([self.seed, SALT, block])
            self._block, self._choices = block, rng.choice(len(self.sources), size=BLOCK, p=self.weights)
        return int(self._choices[index])

    def _doc(self, source: int, position: int) -> int:
        ids = self.sources[source].train_ids
        epoch, index = divmod(position, len(ids))
        key = (source, epoch)
        if key not in self._orders:  # the current epoch of each source only
            self._orders = {k: v for k, v in self._orders.items() if k[0] != source}
            self._orders[key] = np.random.default_rng([self.seed, source, epoch]).permutation(ids)
        return int(self._orders[key][index])

    def next_batch(self) -> Batch:
        docs, ids, total = [], [], 0
        while True:
            s = self.source_of(self.slot)
            doc_id = self._doc(s, self.cursors[s])
            corpus = self.sources[s].corpus
            length = min(corpus.doc_len(doc_id), self.tokens_per_batch)
            if docs and total + length > self.tokens_per_batch:
                break
            docs.append(corpus.doc(doc_id, max_tokens=length))
            ids.append([s, doc_id])
            total += length
            self.slot, self.cursors[s] = self.slot + 1, self.cursors[s] + 1
        return pack(docs, ids)

    def state_dict(self) -> dict:
        return {"slot": self.slot, "cursors": list(self.cursors)}

    def load_state_dict(self, state: dict) -> None:
        self.slot, self.cursors = int(state["slot"]), [int(c) for c in state["cursors"]]
